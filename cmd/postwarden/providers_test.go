package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/mtatest"
)

// Every shipped provider's example MX hosts match that provider.
func TestProviderTableExamples(t *testing.T) {
	cfg := &configs.Server{}
	table, err := providerTable(cfg)
	if err != nil {
		t.Fatal(err)
	}
	builtin, err := configs.BuiltinProviders()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range builtin.Rules {
		for _, h := range r.Examples {
			for _, host := range []string{h, strings.ToUpper(h) + "."} {
				if got := table.Match([]string{host}).Name; got != r.Name {
					t.Errorf("%s matches %s, want %s", host, got, r.Name)
				}
			}
		}
	}
}

// mxServer is a real DNS server on 127.0.0.1 (UDP) serving fixed MX records.
func mxServer(t *testing.T, mx map[string][]string) string {
	t.Helper()
	var mu sync.Mutex
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		mu.Lock()
		hosts, ok := mx[strings.ToLower(q.Name)]
		mu.Unlock()
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for i, h := range hosts {
			m.Answer = append(m.Answer, &dns.MX{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 1800},
				Preference: uint16(10 * (i + 1)), Mx: dns.Fqdn(h)})
		}
		w.WriteMsg(m)
	})
	addr, stop, err := mtatest.StartDNS(handler)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

func TestProvidersExplainThroughBinary(t *testing.T) {
	mx := map[string][]string{
		"acme.example.":  {"acme-example.mail.protection.outlook.com"},
		"shop.example.":  {"mx2.hosting.example", "mx1.hosting.example"},
		"other.example.": {"mx1.hosting.example", "mx2.hosting.example"},
	}
	for i := range 30 {
		mx[fmt.Sprintf("tenant%02d.example.", i)] = []string{fmt.Sprintf("tenant%02d-example.mail.protection.outlook.com", i)}
	}
	addr := mxServer(t, mx)
	h := newHarness(t, mtatest.Options{})
	cfg := strings.Replace(h.withoutResolver(readConfig(t, h)), "delivery:\n", fmt.Sprintf(`delivery:
  resolver: %s
  shaping:
    microsoft: {connections: 20, rate: 300/m}
    "acme.example": {connections: 2}
`, addr), 1)
	h.write("postwarden.yaml", cfg)

	out := h.mustRun(0, "providers", "explain", "ACME.example").stdout
	t.Logf("providers explain ACME.example:\n%s", out)
	for _, want := range []string{"10 acme-example.mail.protection.outlook.com", "ttl       1800s (resolver " + addr, "provider  microsoft (MX host acme-example.mail.protection.outlook.com matches suffix rule mail.protection.outlook.com)",
		"shaping   connections 2, rate 300/m, messages per connection 50", "delivery.shaping.microsoft (provider): connections 20, rate 300/m", "delivery.shaping.acme.example (domain, wins): connections 2",
		"route     127.0.0.1:"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain acme.example lacks %q:\n%s", want, out)
		}
	}
	for i := range 30 {
		type res struct {
			Provider    string `json:"provider"`
			Connections int    `json:"connections"`
			TTL         int64  `json:"ttl_seconds"`
			ByDomain    string `json:"override_by_domain"`
		}
		r := jsonLines[res](t, h.mustRun(0, "--json", "providers", "explain", fmt.Sprintf("tenant%02d.example", i)).stdout)
		if len(r) != 1 || r[0].Provider != "microsoft" || r[0].Connections != 20 || r[0].TTL != 1800 || r[0].ByDomain != "" {
			t.Errorf("tenant%02d: %+v", i, r)
		}
	}
	a := h.mustRun(0, "providers", "explain", "shop.example").stdout
	b := h.mustRun(0, "providers", "explain", "other.example").stdout
	const site = "provider  site:mx1.hosting.example+mx2.hosting.example (no rule matched"
	if !strings.Contains(a, site) || !strings.Contains(b, site) || !strings.Contains(a, "as shipped") {
		t.Errorf("two domains on one MX set share a site:\n%s\n%s", a, b)
	}
	if r := h.run("providers", "explain", "missing.example"); r.code != 1 || !strings.Contains(r.stderr, "no such domain") {
		t.Errorf("missing domain: exit %d\n%s", r.code, r.stderr)
	}
}

func TestProvidersLs(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	cfg := strings.Replace(readConfig(t, h), "delivery:\n", "delivery:\n  shaping:\n    yahoo: {messages_per_connection: 10}\n", 1)
	h.write("postwarden.yaml", cfg)
	out := h.mustRun(0, "providers", "ls").stdout
	for _, want := range []string{"PROVIDER", "microsoft", "mail.protection.outlook.com", "delivery.shaping.yahoo", "sources:", "KumoMTA shaping.toml"} {
		if !strings.Contains(out, want) {
			t.Errorf("ls lacks %q:\n%s", want, out)
		}
	}
	type row struct {
		Name     string   `json:"name"`
		Suffixes []string `json:"suffixes"`
		MPC      int      `json:"messages_per_connection"`
		Override string   `json:"override"`
		Source   string   `json:"source"`
	}
	rows := jsonLines[row](t, h.mustRun(0, "--json", "providers", "ls").stdout)
	found := false
	for _, r := range rows {
		if r.Source == "" {
			t.Errorf("%s has no source", r.Name)
		}
		if r.Name == "yahoo" {
			found = r.MPC == 10 && r.Override == "yahoo"
		}
	}
	if !found || rows[0].Name != "default" {
		t.Errorf("ls --json: %+v", rows)
	}
}
