package main

// Providers (issue 12): `postwarden providers ls` prints the provider table
// and the limits in force; `postwarden providers explain DOMAIN` follows a
// domain from its MX lookup to its provider and the shaping that applies.
// Neither needs a store, so both run in this process even beside a daemon.

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/providers"
	"github.com/postwarden/postwarden/suppression/address"
)

// providerTable builds the table of cfg: the built-in table with
// delivery.providers merged over it, and delivery.shaping.
func providerTable(cfg *configs.Server) (*providers.Table, error) {
	src := cfg.Delivery.ProviderTable
	if src == nil {
		var err error
		if src, err = configs.BuiltinProviders(); err != nil {
			return nil, err
		}
	}
	pc := providers.Config{Default: src.Default, DefaultSource: src.DefaultSource, Shaping: cfg.Delivery.Shaping}
	for _, r := range src.Rules {
		pc.Providers = append(pc.Providers, providers.Provider{Name: r.Name, Title: r.Title, Suffixes: r.Suffixes, Limits: r.Shaping, Source: r.Source})
	}
	return providers.New(pc)
}

// providerRow is one line of `providers ls --json`.
type providerRow struct {
	Name                  string   `json:"name"`
	Title                 string   `json:"title"`
	Suffixes              []string `json:"suffixes"`
	Connections           int      `json:"connections"`
	Rate                  string   `json:"rate"`
	MessagesPerConnection int      `json:"messages_per_connection"`
	Override              string   `json:"override,omitempty"` // the delivery.shaping key that changed the shipped limits
	Source                string   `json:"source"`
}

// explainResult is the answer of `providers explain --json`.
type explainResult struct {
	Domain                string           `json:"domain"`
	Route                 string           `json:"route,omitempty"` // delivery.routes sends this domain's mail there, not to its MX
	MX                    []providers.MX   `json:"mx"`
	TTLSeconds            int64            `json:"ttl_seconds"`
	NullMX                bool             `json:"null_mx,omitempty"`
	ImplicitMX            bool             `json:"implicit_mx,omitempty"`
	Provider              string           `json:"provider,omitempty"`
	Title                 string           `json:"title,omitempty"`
	Site                  bool             `json:"site,omitempty"`
	MatchedHost           string           `json:"matched_host,omitempty"`   // the MX host that decided
	MatchedSuffix         string           `json:"matched_suffix,omitempty"` // the rule it matched
	Connections           int              `json:"connections"`
	Rate                  string           `json:"rate"`
	MessagesPerConnection int              `json:"messages_per_connection"`
	Limits                providers.Limits `json:"-"` // in force
	Shipped               providers.Limits `json:"-"`
	ShippedText           string           `json:"shipped"`
	ByProvider            string           `json:"override_by_provider,omitempty"` // delivery.shaping key
	ByDomain              string           `json:"override_by_domain,omitempty"`   // delivery.shaping key
	ProviderOverride      string           `json:"provider_override,omitempty"`    // what that entry sets
	DomainOverride        string           `json:"domain_override,omitempty"`
	Source                string           `json:"source,omitempty"`
	Resolver              string           `json:"resolver"`
}

func (c *cli) providersCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "providers", Short: "Mailbox providers: the table, and which one a domain reaches"}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "The provider table: MX suffixes, the limits in force (after delivery.shaping) and where they come from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := c.loadConfig()
			if err != nil {
				return err
			}
			t, err := providerTable(cfg)
			if err != nil {
				return err
			}
			if err := c.providersLs(t); err != nil {
				return err
			}
			return c.providersLive(cmd.Context(), cfg)
		},
	}
	explain := &cobra.Command{
		Use:   "explain DOMAIN",
		Short: "Look up DOMAIN's MX hosts (with their TTL), find its provider, and show the shaping that applies",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, domain, err := c.configAndDomain("providers explain", args[0])
			if err != nil {
				return err
			}
			t, err := providerTable(cfg)
			if err != nil {
				return err
			}
			r, err := providers.NewResolver(providers.ResolverConfig{Server: cfg.Delivery.Resolver, Timeout: dnsTimeout}, t, zerolog.Nop())
			if err != nil {
				return err
			}
			dest, err := r.Resolve(cmd.Context(), domain)
			if errors.Is(err, providers.ErrNoDomain) {
				return no("providers explain: %s: no such domain (resolver %s)", domain, r.Server())
			}
			if err != nil {
				return fmt.Errorf("providers explain: %w", err)
			}
			res := explainResult{Domain: domain, Route: cfg.Delivery.Routes[domain], MX: dest.MX, TTLSeconds: int64(dest.TTL / time.Second),
				NullMX: dest.NullMX, ImplicitMX: dest.Implicit, Resolver: r.Server()}
			if !dest.NullMX {
				p := dest.Provider
				s := t.Explain(domain, p)
				res.Provider, res.Title, res.Site, res.Source = p.Name, p.Title, p.Site, p.Source
				res.Limits = s.Limits
				_, res.MatchedHost, res.MatchedSuffix = t.MatchRule(dest.Hosts())
				res.Connections, res.Rate, res.MessagesPerConnection = s.Limits.Connections, providers.FormatRate(s.Limits.Rate), s.Limits.MessagesPerConnection
				res.Shipped, res.ShippedText, res.ByProvider, res.ByDomain = s.Shipped, limitsText(s.Shipped), s.ByProvider, s.ByDomain
				if s.ByProvider != "" {
					res.ProviderOverride = setText(s.ProviderOverride)
				}
				if s.ByDomain != "" {
					res.DomainOverride = setText(s.DomainOverride)
				}
			}
			return c.printExplain(res)
		},
	}
	cmd.AddCommand(ls, explain)
	return cmd
}

// limitsText writes limits for a person: "connections 5, rate 5/s, 50 per connection".
func limitsText(l providers.Limits) string {
	val := func(n int) string {
		if n == 0 {
			return "none"
		}
		return fmt.Sprint(n)
	}
	rate := providers.FormatRate(l.Rate)
	if rate == "" {
		rate = "none"
	}
	return fmt.Sprintf("connections %s, rate %s, messages per connection %s", val(l.Connections), rate, val(l.MessagesPerConnection))
}

// setText writes only the fields a delivery.shaping entry sets.
func setText(l providers.Limits) string {
	var parts []string
	if l.Connections != 0 {
		parts = append(parts, fmt.Sprintf("connections %d", l.Connections))
	}
	if l.Rate != 0 {
		parts = append(parts, "rate "+providers.FormatRate(l.Rate))
	}
	if l.MessagesPerConnection != 0 {
		parts = append(parts, fmt.Sprintf("messages per connection %d", l.MessagesPerConnection))
	}
	return strings.Join(parts, ", ")
}

func (c *cli) providersLs(t *providers.Table) error {
	_, defSource := t.Default()
	rows := []providerRow{{Name: providers.DefaultName, Title: "any destination no rule names (one site per MX host set)", Suffixes: []string{}, Source: defSource}}
	site := providers.Provider{Site: true}
	s := t.Explain("", site)
	rows[0].Connections, rows[0].Rate, rows[0].MessagesPerConnection, rows[0].Override = s.Limits.Connections, providers.FormatRate(s.Limits.Rate), s.Limits.MessagesPerConnection, s.ByProvider
	for _, p := range t.Providers() {
		s := t.Explain("", p)
		rows = append(rows, providerRow{Name: p.Name, Title: p.Title, Suffixes: p.Suffixes, Connections: s.Limits.Connections,
			Rate: providers.FormatRate(s.Limits.Rate), MessagesPerConnection: s.Limits.MessagesPerConnection, Override: s.ByProvider, Source: p.Source})
	}
	if c.jsonOut {
		for _, r := range rows {
			b, _ := json.Marshal(r)
			fmt.Fprintf(c.stdout, "%s\n", b)
		}
		return nil
	}
	w := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "PROVIDER\tCONN\tRATE\tMSG/CONN\tSHAPING\tMX SUFFIXES")
	for _, r := range rows {
		over := "-"
		if r.Override != "" {
			over = "delivery.shaping." + r.Override
		}
		suf := strings.Join(r.Suffixes, " ")
		if suf == "" {
			suf = "(site: the MX host set)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, countOrDash(r.Connections), orDash(r.Rate), countOrDash(r.MessagesPerConnection), over, suf)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, "\nsources:")
	for _, r := range rows {
		fmt.Fprintf(c.stdout, "  %s: %s\n", r.Name, oneLine(r.Source, 400))
	}
	return nil
}

func countOrDash(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (c *cli) printExplain(r explainResult) error {
	if c.jsonOut {
		b, _ := json.Marshal(r)
		fmt.Fprintf(c.stdout, "%s\n", b)
		return nil
	}
	w := c.stdout
	fmt.Fprintf(w, "domain    %s\n", r.Domain)
	switch {
	case r.NullMX:
		fmt.Fprintf(w, "mx        null MX (RFC 7505): the domain takes no mail; ttl %ds\n", r.TTLSeconds)
		return nil
	case r.ImplicitMX:
		fmt.Fprintf(w, "mx        none: the domain itself (RFC 5321 §5.1); negative ttl %ds\n", r.TTLSeconds)
	default:
		for i, m := range r.MX {
			label := "mx"
			if i > 0 {
				label = ""
			}
			fmt.Fprintf(w, "%-9s %d %s\n", label, m.Pref, m.Host)
		}
		fmt.Fprintf(w, "ttl       %ds (resolver %s)\n", r.TTLSeconds, r.Resolver)
	}
	if r.Route != "" {
		fmt.Fprintf(w, "route     %s (delivery.routes: mail goes there, not to the MX)\n", r.Route)
	}
	kind := fmt.Sprintf("MX host %s matches suffix rule %s", r.MatchedHost, r.MatchedSuffix)
	if r.Site {
		kind = "no rule matched: a site of its own MX host set"
	}
	fmt.Fprintf(w, "provider  %s (%s)\n", r.Provider, kind)
	if r.Title != "" && !r.Site {
		fmt.Fprintf(w, "          %s\n", r.Title)
	}
	fmt.Fprintf(w, "shaping   %s\n", limitsText(r.Limits))
	if r.ByProvider == "" && r.ByDomain == "" {
		fmt.Fprintf(w, "          as shipped, no delivery.shaping entry applies\n")
	} else {
		fmt.Fprintf(w, "          shipped: %s\n", r.ShippedText)
		if r.ByProvider != "" {
			fmt.Fprintf(w, "          delivery.shaping.%s (provider): %s\n", r.ByProvider, r.ProviderOverride)
		}
		if r.ByDomain != "" {
			fmt.Fprintf(w, "          delivery.shaping.%s (domain, wins): %s\n", r.ByDomain, r.DomainOverride)
		}
	}
	if r.Source != "" {
		fmt.Fprintf(w, "source    %s\n", oneLine(r.Source, 400))
	}
	return nil
}

// configAndDomain loads the server configuration and normalises the
// command's DOMAIN argument, an error naming the command.
func (c *cli) configAndDomain(command, arg string) (*configs.Server, string, error) {
	cfg, err := c.loadConfig()
	if err != nil {
		return nil, "", err
	}
	domain, err := address.NormalizeDomain(arg)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %q: %w", command, arg, err)
	}
	return cfg, domain, nil
}
