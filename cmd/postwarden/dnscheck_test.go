package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/mtatest"
)

// stubDNS answers from maps; a name absent from both is NXDOMAIN.
func stubDNS(txt map[string][]string, mx map[string][]*net.MX) dnsLookup {
	nx := func(name string) error { return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true} }
	return dnsLookup{
		TXT: func(_ context.Context, name string) ([]string, error) {
			if v, ok := txt[name]; ok {
				return v, nil
			}
			return nil, nx(name)
		},
		MX: func(_ context.Context, name string) ([]*net.MX, error) {
			if v, ok := mx[name]; ok {
				return v, nil
			}
			return nil, nx(name)
		},
	}
}

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
	cfg := &configs.Server{Hostname: "mail.example.com", BounceDomain: "bounce.example.com", Delivery: configs.Delivery{Mode: "mx"}}
	keys := []*dkim.Key{key}

	cases := []struct {
		name   string
		domain string
		txt    map[string][]string
		mx     map[string][]*net.MX
		code   int
		want   []string
	}{
		{"all published", "example.com", map[string][]string{
			"pw1._domainkey.example.com": {"v=DKIM1; k=ed25519; p=" + key.PublicKeyBase64()},
			"example.com":                {"google-site-verification=x", "v=spf1 a:mail.example.com ~all"},
			"_dmarc.example.com":         {"v=DMARC1; p=reject"},
		}, nil, 0, []string{"OK        DKIM  pw1._domainkey.example.com", "OK        SPF   example.com", "OK        DMARC _dmarc.example.com"}},
		{"nothing published", "example.com", nil, nil, 1, []string{"MISSING   DKIM", "MISSING   SPF", "MISSING   DMARC", "want:  v=spf1 a:mail.example.com ~all", "want:  v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"}},
		{"another key", "example.com", map[string][]string{
			"pw1._domainkey.example.com": {"v=DKIM1; k=ed25519; p=" + otherKey.PublicKeyBase64()},
			"example.com":                {"v=spf1 -all"},
			"_dmarc.example.com":         {"v=DMARC1; p=none"},
		}, nil, 1, []string{"DIFFERENT DKIM", "found: v=DKIM1; k=ed25519; p=" + otherKey.PublicKeyBase64(), "OK        SPF", "OK        DMARC"}},
		{"bounce domain", "bounce.example.com", map[string][]string{"bounce.example.com": {"v=spf1 a:mail.example.com ~all"}},
			map[string][]*net.MX{"bounce.example.com": {{Host: "mx.elsewhere.example.", Pref: 10}}}, 1,
			[]string{"DIFFERENT MX    bounce.example.com", "found: mx.elsewhere.example", "want:  10 mail.example.com.", "OK        SPF   bounce.example.com"}},
		{"bounce domain ok", "bounce.example.com", map[string][]string{"bounce.example.com": {"v=spf1 a:mail.example.com ~all"}},
			map[string][]*net.MX{"bounce.example.com": {{Host: "MAIL.example.com.", Pref: 10}}}, 0, []string{"OK        MX"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			c := &cli{stdout: &out}
			err := c.checkDNS(context.Background(), stubDNS(tc.txt, tc.mx), cfg, keys, tc.domain)
			if code := exitCode(err); code != tc.code {
				t.Fatalf("exit %d (%v), want %d\n%s", code, err, tc.code, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}

	// A lookup failure (not "no such record") is an error, not MISSING.
	failing := dnsLookup{TXT: func(context.Context, string) ([]string, error) {
		return nil, &net.DNSError{Err: "server misbehaving", Name: "x", IsTemporary: true}
	}}
	c := &cli{stdout: &bytes.Buffer{}}
	if err := c.checkDNS(context.Background(), failing, cfg, keys, "example.com"); exitCode(err) != 2 || !strings.Contains(err.Error(), "server misbehaving") {
		t.Fatalf("lookup failure: %v", err)
	}
	if err := c.checkDNS(context.Background(), failing, cfg, keys, "unrelated.example"); exitCode(err) != 2 || !strings.Contains(err.Error(), "not a configured domain") {
		t.Fatalf("unconfigured domain: %v", err)
	}
}

// check-dns with delivery.resolver on a closed loopback port says so clearly.
func TestCheckDNSResolverDown(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	closed := freeAddr(t) // nothing listens there any more
	cfg := strings.Replace(readConfig(t, h), "delivery:\n", "delivery:\n  resolver: "+closed+"\n", 1)
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
