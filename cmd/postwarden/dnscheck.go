package main

// DNS: the records postwarden needs published (`postwarden dns`) and a check
// of what is published (`postwarden check-dns DOMAIN`).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/preflight"
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

// spfSenders are what sends for us as the config says: the egress sources'
// addresses, and the relay's host in relay mode ("" otherwise).
func spfSenders(cfg *configs.Server) (sources []string, relay string) {
	for _, s := range cfg.Delivery.Sources {
		sources = append(sources, s.Address)
	}
	if cfg.Delivery.Mode == configs.ModeRelay {
		if u, err := url.Parse(cfg.Delivery.Relay); err == nil {
			relay = u.Hostname()
		}
	}
	return sources, relay
}

// spfRecord is the SPF record that authorises what sends for us
// (preflight's rule: the egress sources, else the relay, else this host).
func spfRecord(cfg *configs.Server) string {
	sources, relay := spfSenders(cfg)
	return preflight.SPFRecord(sources, relay, cfg.Hostname)
}

// neededRecords lists the records to publish for the configured domains:
// each DKIM key; SPF and DMARC for each signing (From) domain; and, with a
// bounce domain, its MX (pointing at hostname) and its SPF.
func neededRecords(cfg *configs.Server, keys []*dkim.Key) []wantRecord {
	var out []wantRecord
	spf := spfRecord(cfg) // RFC 7208
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

// Check results of check-dns: a preflight verdict, or for a record that is
// not as needed, whether it is missing or different.
const (
	dnsOK        = "OK"
	dnsMissing   = "MISSING"
	dnsDifferent = "DIFFERENT"
)

// dnsCheck is one line of check-dns.
type dnsCheck struct {
	Kind     string `json:"kind"` // DKIM, SPF, DMARC, ALIGN, MX
	Name     string `json:"name"`
	Status   string `json:"status"` // OK, MISSING, DIFFERENT, FAIL, WARN
	Found    string `json:"found,omitempty"`
	Want     string `json:"want,omitempty"`
	Detail   string `json:"detail,omitempty"`
	Resolver string `json:"resolver"` // the DNS server asked ("system" for the system's)
}

// checkKinds names preflight's DNS checks as check-dns prints them.
var checkKinds = map[string]string{"dkim-dns": "DKIM", "spf": "SPF", "dmarc": "DMARC", "dmarc-dkim": "ALIGN", "mx": "MX"}

// dnsView is a preflight check as check-dns prints it.
func dnsView(ch preflight.Check, resolver string) dnsCheck {
	v := dnsCheck{Kind: checkKinds[ch.Check], Name: ch.Subject, Status: string(ch.Status), Found: ch.Found, Want: ch.Want, Detail: ch.Detail, Resolver: resolver}
	if v.Kind == "" {
		v.Kind = ch.Check
	}
	switch ch.State {
	case preflight.StateMissing:
		v.Status = dnsMissing
	case preflight.StateDifferent:
		v.Status = dnsDifferent
	}
	if v.Want == "" && ch.Fix != "" {
		v.Want = ch.Fix
	}
	return v
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
		Short: "Evaluate the published DKIM, SPF, DMARC (and bounce MX) records of DOMAIN as campaign validate does, through delivery.resolver; exit 0 if all OK, 1 if not, 2 if the DNS could not be asked",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, domain, err := c.configAndDomain("check-dns", args[0])
			if err != nil {
				return err
			}
			if _, _, err := loadDKIM(cfg, false); err != nil {
				return err
			}
			chk, err := c.newPreflight(cfg, false, false)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), dnsTimeout)
			defer cancel()
			return c.checkDNS(ctx, chk, cfg, domain)
		},
	}
}

// checkDNS runs preflight's DNS checks of domain and prints them, naming the
// resolver asked.
func (c *cli) checkDNS(ctx context.Context, chk *preflight.Checker, cfg *configs.Server, domain string) error {
	checks := chk.Domain(ctx, domain)
	if len(checks) == 0 {
		var domains []string
		for _, k := range cfg.DKIM {
			domains = append(domains, k.Domain)
		}
		if cfg.BounceDomain != "" {
			domains = append(domains, cfg.BounceDomain)
		}
		sort.Strings(domains)
		domains = slices.Compact(domains)
		return &exitError{code: 2, msg: fmt.Sprintf("check-dns: %s is not a configured domain (DKIM or bounce domain): %s", domain, strings.Join(domains, ", "))}
	}
	for _, ch := range checks { // a lookup that failed: nothing is known
		if ch.State == preflight.StateUnchecked {
			return fmt.Errorf("check-dns %s: %s %s: %s", domain, checkKinds[ch.Check], ch.Subject, ch.Detail)
		}
	}
	resolver := cfg.Delivery.Resolver
	if resolver == "" {
		resolver = "system"
	}
	if !c.jsonOut {
		fmt.Fprintf(c.stdout, "check-dns %s via %s\n", domain, chk.Via())
	}
	bad := 0
	for _, pc := range checks {
		ch := dnsView(pc, resolver)
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
			if ch.Detail != "" {
				fmt.Fprintf(c.stdout, "          why:   %s\n", oneLine(ch.Detail, 120))
			}
			if ch.Found != "" {
				fmt.Fprintf(c.stdout, "          found: %s\n", oneLine(ch.Found, 120))
			}
			fmt.Fprintf(c.stdout, "          want:  %s\n", oneLine(ch.Want, 120))
		}
	}
	if bad > 0 {
		return no("check-dns %s: %d of %d records not as needed (via %s)", domain, bad, len(checks), chk.Via())
	}
	return nil
}
