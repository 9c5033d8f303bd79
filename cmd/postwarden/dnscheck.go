package main

// DNS: the records postwarden needs published (`postwarden dns`) and a check
// of what is published (`postwarden check-dns DOMAIN`).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/dkim"
)

// dnsTimeout bounds all the lookups of one check-dns run.
const dnsTimeout = 10 * time.Second

// wantRecord is one record postwarden needs published.
type wantRecord struct {
	Kind  string // DKIM, SPF, DMARC, MX
	Name  string // owner name, no trailing dot
	Type  string // TXT or MX
	Value string // what to publish
	// DKIM: the p= value to compare; MX: the host to find.
	match string
}

// dnsRecordView is a record to publish as `dns --json` prints it.
type dnsRecordView struct {
	Kind  string `json:"kind"` // DKIM, SPF, DMARC, MX
	Name  string `json:"name"` // owner name, no trailing dot
	Type  string `json:"type"` // TXT or MX
	Value string `json:"value"`
}

// zone returns the record as a zone-file line.
func (w wantRecord) zone() string {
	if w.Type == "MX" {
		return fmt.Sprintf("%s. IN MX %s", w.Name, w.Value)
	}
	return fmt.Sprintf("%s. IN TXT %q", w.Name, w.Value)
}

// spfMechanism says which hosts send for us: the relay in relay mode, else this host.
func spfMechanism(cfg *configs.Server) string {
	if cfg.Delivery.Mode == configs.ModeRelay {
		if u, err := url.Parse(cfg.Delivery.Relay); err == nil && u.Hostname() != "" {
			if net.ParseIP(u.Hostname()) != nil {
				if strings.Contains(u.Hostname(), ":") {
					return "ip6:" + u.Hostname()
				}
				return "ip4:" + u.Hostname()
			}
			return "a:" + u.Hostname()
		}
	}
	return "a:" + strings.TrimSuffix(cfg.Hostname, ".")
}

// neededRecords lists the records to publish for the configured domains:
// each DKIM key; SPF and DMARC for each signing (From) domain; and, with a
// bounce domain, its MX (pointing at hostname) and its SPF.
func neededRecords(cfg *configs.Server, keys []*dkim.Key) []wantRecord {
	var out []wantRecord
	spf := "v=spf1 " + spfMechanism(cfg) + " ~all" // RFC 7208
	seen := map[string]bool{}
	for _, k := range keys {
		out = append(out, wantRecord{Kind: "DKIM", Name: k.RecordName(), Type: "TXT", Value: k.TXTValue(), match: k.PublicKeyBase64()})
	}
	for _, k := range keys {
		if seen[k.Domain] {
			continue
		}
		seen[k.Domain] = true
		out = append(out,
			wantRecord{Kind: "SPF", Name: k.Domain, Type: "TXT", Value: spf},
			// RFC 7489 §6.3: p=none monitors without affecting delivery; rua gets the aggregate reports.
			wantRecord{Kind: "DMARC", Name: "_dmarc." + k.Domain, Type: "TXT", Value: "v=DMARC1; p=none; rua=mailto:dmarc-reports@" + k.Domain})
	}
	if bd := strings.TrimSuffix(cfg.BounceDomain, "."); bd != "" {
		host := strings.TrimSuffix(cfg.Hostname, ".")
		out = append(out,
			wantRecord{Kind: "MX", Name: bd, Type: "MX", Value: "10 " + host + ".", match: host},
			wantRecord{Kind: "SPF", Name: bd, Type: "TXT", Value: spf})
	}
	return out
}

// printDNSRecords writes the records to publish in zone-file form.
func printDNSRecords(w io.Writer, cfg *configs.Server, keys []*dkim.Key) {
	recs := neededRecords(cfg, keys)
	section := func(kind, title string) {
		first := true
		for _, r := range recs {
			if r.Kind != kind {
				continue
			}
			if first {
				fmt.Fprintf(w, "\n; %s\n", title)
				first = false
			}
			if kind == "DKIM" {
				for _, k := range keys {
					if k.RecordName() == r.Name {
						fmt.Fprintln(w, k.DNSRecord()) // long values split into strings
					}
				}
				continue
			}
			fmt.Fprintln(w, r.zone())
		}
	}
	fmt.Fprint(w, "; DKIM (RFC 6376): one TXT record per configured key")
	section("DKIM", "")
	section("SPF", "SPF (RFC 7208): who may send for the From domain(s) and the bounce domain; merge with an existing v=spf1 record, one per name")
	section("DMARC", "DMARC (RFC 7489): p=none to start, aggregate reports to rua")
	section("MX", "bounce domain: bounces and feedback reports come back to this host (smtp_listen)")
}

// dnsLookup is what check-dns asks the DNS; tests replace it.
type dnsLookup struct {
	TXT func(ctx context.Context, name string) ([]string, error)
	MX  func(ctx context.Context, name string) ([]*net.MX, error)
}

// resolverLookup uses the resolver at addr ("" = the system's).
func resolverLookup(addr string) dnsLookup {
	r := net.DefaultResolver
	if addr != "" {
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: 3 * time.Second}
			return d.DialContext(ctx, network, addr)
		}}
	}
	return dnsLookup{TXT: r.LookupTXT, MX: r.LookupMX}
}

// Check results.
const (
	dnsOK        = "OK"
	dnsMissing   = "MISSING"
	dnsDifferent = "DIFFERENT"
)

// dnsCheck is one line of check-dns.
type dnsCheck struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Status string `json:"status"`
	Found  string `json:"found,omitempty"`
	Want   string `json:"want"`
}

// notFound reports whether err only says the name or record does not exist.
func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// checkDNS compares what is published for domain with what is needed.
func checkDNS(ctx context.Context, look dnsLookup, domain string, want []wantRecord) ([]dnsCheck, error) {
	var out []dnsCheck
	for _, w := range want {
		if w.Name != domain && w.Name != "_dmarc."+domain && !strings.HasSuffix(w.Name, "._domainkey."+domain) {
			continue
		}
		c := dnsCheck{Kind: w.Kind, Name: w.Name, Want: w.Value, Status: dnsMissing}
		if w.Type == "MX" {
			mxs, err := look.MX(ctx, w.Name)
			if err != nil && !notFound(err) {
				return out, fmt.Errorf("look up MX %s: %w", w.Name, err)
			}
			var hosts []string
			for _, mx := range mxs {
				h := strings.TrimSuffix(mx.Host, ".")
				hosts = append(hosts, h)
				if strings.EqualFold(h, w.match) {
					c.Status = dnsOK
				}
			}
			if c.Status != dnsOK && len(hosts) > 0 {
				c.Status = dnsDifferent
			}
			c.Found = strings.Join(hosts, ", ")
			out = append(out, c)
			continue
		}
		txts, err := look.TXT(ctx, w.Name)
		if err != nil && !notFound(err) {
			return out, fmt.Errorf("look up TXT %s: %w", w.Name, err)
		}
		for _, t := range txts {
			switch w.Kind {
			case "DKIM":
				tags := dkimTags(t)
				if tags["v"] != "" && tags["v"] != "DKIM1" || tags["p"] == "" {
					continue
				}
				c.Found = t
				if tags["p"] == w.match {
					c.Status = dnsOK
				} else if c.Status != dnsOK {
					c.Status = dnsDifferent
				}
			case "SPF":
				if t == "v=spf1" || strings.HasPrefix(strings.ToLower(t), "v=spf1 ") {
					c.Found, c.Status = t, dnsOK
				}
			case "DMARC":
				if strings.HasPrefix(strings.ToUpper(strings.ReplaceAll(t, " ", "")), "V=DMARC1") {
					c.Found, c.Status = t, dnsOK
				}
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// dkimTags parses "tag=value; …" (RFC 6376 §3.2), dropping whitespace in values.
func dkimTags(s string) map[string]string {
	tags := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		tags[strings.TrimSpace(k)] = strings.Join(strings.Fields(v), "")
	}
	return tags
}

func (c *cli) dnsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "dns",
		Short: "Print the DNS records to publish (DKIM, SPF, DMARC, bounce domain MX), in zone-file form",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := c.loadConfig()
			if err != nil {
				return err
			}
			keys, created, err := loadDKIM(cfg, false)
			if err != nil {
				return err
			}
			for _, k := range created {
				fmt.Fprintf(c.stderr, "generated DKIM key %s\n", k.Path)
			}
			if c.jsonOut { // one object per record: kind, name, type, value
				enc := json.NewEncoder(c.stdout)
				for _, r := range neededRecords(cfg, keys) {
					if err := enc.Encode(dnsRecordView{Kind: r.Kind, Name: r.Name, Type: r.Type, Value: r.Value}); err != nil {
						return err
					}
				}
				return nil
			}
			printDNSRecords(c.stdout, cfg, keys)
			return nil
		},
	}
}

func (c *cli) checkDNSCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check-dns DOMAIN",
		Short: "Compare the published DKIM, SPF, DMARC (and bounce MX) records of DOMAIN with what is needed; exit 0 if all OK, 1 if not",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, domain, err := c.configAndDomain("check-dns", args[0])
			if err != nil {
				return err
			}
			keys, _, err := loadDKIM(cfg, false)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), dnsTimeout)
			defer cancel()
			return c.checkDNS(ctx, resolverLookup(cfg.Delivery.Resolver), cfg, keys, domain)
		},
	}
}

// checkDNS runs and prints the comparison; via names the resolver in errors.
func (c *cli) checkDNS(ctx context.Context, look dnsLookup, cfg *configs.Server, keys []*dkim.Key, domain string) error {
	want := neededRecords(cfg, keys)
	checks, err := checkDNS(ctx, look, domain, want)
	if err != nil {
		via := "the system resolver"
		if cfg.Delivery.Resolver != "" {
			via = "resolver " + cfg.Delivery.Resolver
		}
		return fmt.Errorf("check-dns %s: %w (via %s)", domain, err, via)
	}
	if len(checks) == 0 {
		var domains []string
		for _, w := range want {
			if w.Kind == "SPF" {
				domains = append(domains, w.Name)
			}
		}
		sort.Strings(domains)
		return &exitError{code: 2, msg: fmt.Sprintf("check-dns: %s is not a configured domain (DKIM or bounce domain): %s", domain, strings.Join(domains, ", "))}
	}
	bad := 0
	for _, ch := range checks {
		if ch.Status != dnsOK {
			bad++
		}
		if c.jsonOut {
			b, _ := json.Marshal(ch)
			fmt.Fprintf(c.stdout, "%s\n", b)
			continue
		}
		fmt.Fprintf(c.stdout, "%-9s %-5s %s\n", ch.Status, ch.Kind, ch.Name)
		if ch.Status != dnsOK {
			if ch.Found != "" {
				fmt.Fprintf(c.stdout, "          found: %s\n", oneLine(ch.Found, 120))
			}
			fmt.Fprintf(c.stdout, "          want:  %s\n", oneLine(ch.Want, 120))
		}
	}
	if bad > 0 {
		return no("check-dns %s: %d of %d records not as needed", domain, bad, len(checks))
	}
	return nil
}
