package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/mtatest"
)

// dnsZone serves records on a loopback DNS server.
func dnsZone(t *testing.T, records ...string) (*mtatest.Zone, string) {
	t.Helper()
	return mtatest.ServeZone(t, records...)
}

// check-dns evaluates what a loopback DNS server publishes with preflight's
// rules: SPF with an SPF library (so v=spf1 -all fails), the DKIM key
// compared, DMARC parsed and aligned, the bounce domain's MX.
func TestCheckDNSComparison(t *testing.T) {
	dir := t.TempDir()
	key, _, err := dkim.LoadOrCreate(dir+"/k.key", "example.com", "pw1", "ed25519")
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _, err := dkim.LoadOrCreate(dir+"/o.key", "example.com", "pw1", "ed25519")
	if err != nil {
		t.Fatal(err)
	}
	host := "mail.example.com. 300 IN A 192.0.2.25" // this host: what a:mail.example.com authorises
	cases := []struct {
		name    string
		domain  string
		records []string
		code    int
		want    []string
	}{
		{"all published", "example.com", []string{host, key.DNSRecord(),
			`example.com. IN TXT "google-site-verification=x"`, `example.com. IN TXT "v=spf1 a:mail.example.com ~all"`,
			`_dmarc.example.com. IN TXT "v=DMARC1; p=reject"`,
		}, 0, []string{"OK        DKIM  pw1._domainkey.example.com", "OK        SPF   example.com", "OK        DMARC _dmarc.example.com", "OK        ALIGN example.com"}},
		{"nothing published", "example.com", []string{host}, 1, []string{"MISSING   DKIM", "MISSING   SPF", "MISSING   DMARC",
			"want:  v=spf1 a:mail.example.com ~all", "want:  v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"}},
		{"another key, spf -all", "example.com", []string{host, otherKey.DNSRecord(),
			`example.com. IN TXT "v=spf1 -all"`, `_dmarc.example.com. IN TXT "v=DMARC1; p=none"`,
		}, 1, []string{"DIFFERENT DKIM", "found: v=DKIM1; k=ed25519; p=" + otherKey.PublicKeyBase64(),
			"FAIL      SPF   example.com", "why:   does not authorise 192.0.2.25 (fail)", "found: v=spf1 -all", "OK        DMARC"}},
		{"bounce domain", "bounce.example.com", []string{host, `bounce.example.com. IN TXT "v=spf1 a:mail.example.com ~all"`,
			"bounce.example.com. IN MX 10 mx.elsewhere.example."}, 1,
			[]string{"DIFFERENT MX    bounce.example.com", "found: mx.elsewhere.example", "want:  10 mail.example.com.", "OK        SPF   bounce.example.com"}},
		{"bounce domain ok", "bounce.example.com", []string{host, `bounce.example.com. IN TXT "v=spf1 a:mail.example.com ~all"`,
			"bounce.example.com. IN MX 10 MAIL.example.com."}, 0, []string{"OK        MX"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := dnsZone(t, tc.records...)
			cfg := &configs.Server{Hostname: "mail.example.com", BounceDomain: "bounce.example.com",
				DKIM:     []configs.DKIM{{Domain: "example.com", Selector: "pw1", KeyFile: dir + "/k.key", Type: "ed25519"}},
				Delivery: configs.Delivery{Mode: "mx", Resolver: addr}}
			var out bytes.Buffer
			c := &cli{stdout: &out, stderr: &bytes.Buffer{}}
			chk, err := c.newPreflight(cfg, false, false)
			if err != nil {
				t.Fatal(err)
			}
			err = c.checkDNS(context.Background(), chk, cfg, tc.domain)
			if code := exitCode(err); code != tc.code {
				t.Fatalf("exit %d (%v), want %d\n%s", code, err, tc.code, out.String())
			}
			for _, w := range append(tc.want, "check-dns "+tc.domain+" via resolver "+addr) {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}

	// A lookup failure (not "no such record") is an error naming the
	// resolver, not MISSING; a domain not configured is refused.
	zone, addr := dnsZone(t)
	zone.SetMissing(dns.RcodeServerFailure)
	cfg := &configs.Server{Hostname: "mail.example.com", BounceDomain: "bounce.example.com",
		DKIM:     []configs.DKIM{{Domain: "example.com", Selector: "pw1", KeyFile: dir + "/k.key", Type: "ed25519"}},
		Delivery: configs.Delivery{Mode: "mx", Resolver: addr}}
	c := &cli{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	chk, err := c.newPreflight(cfg, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.checkDNS(context.Background(), chk, cfg, "example.com"); exitCode(err) != 2 ||
		!strings.Contains(err.Error(), "server misbehaving") || !strings.Contains(err.Error(), "resolver "+addr) {
		t.Fatalf("lookup failure: %v", err)
	}
	if err := c.checkDNS(context.Background(), chk, cfg, "unrelated.example"); exitCode(err) != 2 || !strings.Contains(err.Error(), "not a configured domain") {
		t.Fatalf("unconfigured domain: %v", err)
	}
}

// check-dns through the binary asks delivery.resolver, names it, and
// reports v=spf1 -all as a failure; --json carries the resolver too.
func TestCheckDNSConfiguredResolver(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mustRun(0, "dkim", "keygen", "--domain", "example.com", "--selector", "pw1")
	key, _, err := dkim.LoadOrCreate(filepath.Join(h.dir, "var", "dkim", "example.com.pw1.key"), "example.com", "pw1", "rsa")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.dns.Add(key.DNSRecord(), "mail.test.example. IN A 192.0.2.25",
		`example.com. IN TXT "v=spf1 -all"`, `_dmarc.example.com. IN TXT "v=DMARC1; p=none"`); err != nil {
		t.Fatal(err)
	}
	r := h.mustRun(1, "check-dns", "example.com")
	for _, w := range []string{"check-dns example.com via resolver " + h.dnsAddr, "OK        DKIM", "FAIL      SPF   example.com",
		"does not authorise 192.0.2.25 (fail)", "want:  v=spf1 a:mail.test.example ~all", "OK        DMARC"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("check-dns lacks %q:\n%s", w, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "via resolver "+h.dnsAddr) {
		t.Errorf("the error does not name the resolver: %s", r.stderr)
	}
	if !slices.Contains(h.dns.Queries(), "TXT example.com.") {
		t.Errorf("the configured resolver was not asked: %v", h.dns.Queries())
	}
	for _, v := range jsonLines[dnsCheck](t, h.mustRun(1, "--json", "check-dns", "example.com").stdout) {
		if v.Resolver != h.dnsAddr || v.Kind == "SPF" && v.Status != "FAIL" {
			t.Errorf("--json: %+v", v)
		}
	}
	// Capture mode skips a campaign's DNS checks, never check-dns's.
	h.write("postwarden.yaml", strings.Replace(readConfig(t, h), "mode: mx", "mode: capture", 1))
	if r := h.mustRun(1, "check-dns", "example.com"); !strings.Contains(r.stdout, "FAIL      SPF   example.com") {
		t.Errorf("check-dns in capture mode:\n%s", r.stdout)
	}
}

// check-dns with delivery.resolver on a closed loopback port says so clearly.
func TestCheckDNSResolverDown(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	closed := freeAddr(t) // nothing listens there any more
	cfg := strings.Replace(h.withoutResolver(readConfig(t, h)), "delivery:\n", "delivery:\n  resolver: "+closed+"\n", 1)
	h.write("postwarden.yaml", cfg)
	h.mustRun(0, "dkim", "keygen", "--domain", "example.com", "--selector", "pw1")
	r := h.run("check-dns", "example.com")
	if r.code != 2 || !strings.Contains(r.stderr, "resolver "+closed) || !strings.Contains(r.stderr, "look up") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

func TestDNSPrintsSPFDMARCAndBounceMX(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.appendConfig("bounce_domain: bounce.example.com\n")
	h.mustRun(0, "dkim", "keygen", "--domain", "example.com", "--selector", "pw1")
	out := h.mustRun(0, "dns").stdout
	for _, want := range []string{
		"pw1._domainkey.example.com. IN TXT",
		`example.com. IN TXT "v=spf1 a:mail.test.example ~all"`,
		`_dmarc.example.com. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"`,
		"bounce.example.com. IN MX 10 mail.test.example.",
		`bounce.example.com. IN TXT "v=spf1 a:mail.test.example ~all"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dns lacks %s:\n%s", want, out)
		}
	}
	// --json: one object per record, the same records.
	got := map[string]dnsRecordView{}
	for _, r := range jsonLines[dnsRecordView](t, h.mustRun(0, "--json", "dns").stdout) {
		got[r.Kind+" "+r.Type+" "+r.Name] = r
	}
	if len(got) != 5 || got["SPF TXT example.com"].Value != "v=spf1 a:mail.test.example ~all" ||
		got["MX MX bounce.example.com"].Value != "10 mail.test.example." ||
		!strings.HasPrefix(got["DKIM TXT pw1._domainkey.example.com"].Value, "v=DKIM1; k=rsa; p=") {
		t.Errorf("dns --json: %+v", got)
	}
}

func readConfig(t *testing.T, h *harness) string {
	t.Helper()
	data, err := os.ReadFile(h.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
