package preflight

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/templates"
)

// source is the egress address of the tests (TEST-NET-1, never dialled).
const source = "192.0.2.10"

// fixture is a sending setup for example.test and a loopback DNS server.
type fixture struct {
	zone *mtatest.Zone
	addr string
	cfg  Config
	msg  Message
}

// goodRecords publish everything a campaign from ana@example.test needs.
func goodRecords(key *dkim.Key) []string {
	return []string{
		key.DNSRecord(),
		`example.test. 300 IN TXT "v=spf1 ip4:` + source + ` ~all"`,
		`bounce.example.test. 300 IN TXT "v=spf1 ip4:` + source + ` -all"`,
		`bounce.example.test. 300 IN MX 10 mail.example.test.`,
		`_dmarc.example.test. 300 IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@example.test"`,
		`www.example.test. 300 IN A 192.0.2.80`,
		`mail.example.test. 300 IN A ` + source,
	}
}

// newFixture builds a fixture; edit, when set, changes the published records.
func newFixture(t *testing.T, html string, edit func(rs []string, key *dkim.Key) []string) *fixture {
	t.Helper()
	dir := t.TempDir()
	key, _, err := dkim.LoadOrCreate(filepath.Join(dir, "k.key"), "example.test", "pw1", "ed25519")
	if err != nil {
		t.Fatal(err)
	}
	records := goodRecords(key)
	if edit != nil {
		records = edit(records, key)
	}
	zone, addr := mtatest.ServeZone(t, records...)
	if html == "" {
		html = `<p>Hello {{.FirstName}}, see <a href="https://www.example.test/news">the news</a>.</p>
<p><a href="{{.UnsubscribeURL}}">Unsubscribe</a> <a href="{{.PrivacyURL}}">Privacy</a></p>`
	}
	set, err := templates.Parse(filepath.Join(dir, "note"), []byte(html),
		[]byte("Hello {{.FirstName}}\nUnsubscribe: {{.UnsubscribeURL}}\nPrivacy: {{.PrivacyURL}}\n"), "A note for {{.Company}}")
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{zone: zone, addr: addr,
		cfg: Config{Resolver: addr, Hostname: "mail.example.test", Sources: []string{source},
			BounceDomain: "bounce.example.test", Keys: []*dkim.Key{key}, PublicURL: "https://mail.example.test"},
		msg: Message{Templates: set, From: "Ana Ruiz <ana@example.test>", PrivacyURL: "https://www.example.test/privacy", ListID: "news.mail.example.test"},
	}
}

// run runs the campaign checks of f.
func (f *fixture) run(t *testing.T) []Check {
	t.Helper()
	c, err := New(f.cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return c.Campaign(context.Background(), f.msg)
}

// find returns the checks named check.
func find(checks []Check, check string) []Check {
	var out []Check
	for _, c := range checks {
		if c.Check == check {
			out = append(out, c)
		}
	}
	return out
}

func dump(checks []Check) string {
	var b strings.Builder
	for _, c := range checks {
		fmt.Fprintf(&b, "%-4s %-10s %s: %s | %s\n", c.Status, c.Check, c.Subject, c.Detail, c.Fix)
	}
	return b.String()
}

// want fails the test unless the one check named check has status st and
// its detail or fix says each of says.
func want(t *testing.T, checks []Check, check string, st Status, says ...string) Check {
	t.Helper()
	got := find(checks, check)
	if len(got) != 1 {
		t.Fatalf("%d %s checks, want 1:\n%s", len(got), check, dump(checks))
	}
	if got[0].Status != st {
		t.Fatalf("%s: %s, want %s:\n%s", check, got[0].Status, st, dump(checks))
	}
	for _, s := range says {
		if !strings.Contains(got[0].Detail+" "+got[0].Fix, s) {
			t.Errorf("%s does not say %q:\n%s", check, s, dump(checks))
		}
	}
	return got[0]
}

func TestCampaignPasses(t *testing.T) {
	f := newFixture(t, "", nil)
	checks := f.run(t)
	t.Log("\n" + dump(checks))
	for _, c := range checks {
		if c.Status != OK {
			t.Errorf("not OK: %+v\n%s", c, dump(checks))
		}
	}
	want(t, checks, "spf", OK, "pass for 1 address(es), from the egress sources")
	want(t, checks, "dkim-dns", OK)
	want(t, checks, "dmarc", OK, "p=none")
	want(t, checks, "link", OK, "2 link(s)", "every domain resolves")
	if Failed(checks) {
		t.Fatal("Failed on a passing setup")
	}
	// SPF was evaluated through the loopback server: the envelope domain
	// with VERP is the bounce domain.
	if !strings.Contains(strings.Join(f.zone.Queries(), " "), "TXT bounce.example.test.") {
		t.Errorf("no SPF lookup of the bounce domain: %v", f.zone.Queries())
	}
}

func TestSPFFailAll(t *testing.T) {
	f := newFixture(t, "", func(rs []string, _ *dkim.Key) []string {
		rs[2] = `bounce.example.test. 300 IN TXT "v=spf1 -all"`
		return rs
	})
	checks := f.run(t)
	c := want(t, checks, "spf", Fail, "does not authorise 192.0.2.10 (fail)", "ip4:192.0.2.10")
	if c.State != "" || c.Found != "v=spf1 -all" {
		t.Errorf("spf state %q found %q", c.State, c.Found)
	}
	if !Failed(checks) {
		t.Error("not Failed")
	}
	// Without VERP the From domain is the envelope domain, and it passes.
	f.cfg.BounceDomain = ""
	want(t, f.run(t), "spf", OK)
}

func TestSPFMissingAndSoftfail(t *testing.T) {
	f := newFixture(t, "", nil)
	f.cfg.BounceDomain = ""
	f.cfg.Sources = []string{"192.0.2.99"} // not in example.test's record: ~all softfails
	want(t, f.run(t), "spf", Fail, "192.0.2.99 (softfail)")
	f.cfg.BounceDomain = "nospf.example.test"
	c := want(t, f.run(t), "spf", Fail, "no SPF record", `publish TXT at nospf.example.test: "v=spf1 ip4:192.0.2.99 ~all"`)
	if c.State != StateMissing {
		t.Errorf("state %q", c.State)
	}
}

func TestDMARCMissing(t *testing.T) {
	f := newFixture(t, "", func(rs []string, _ *dkim.Key) []string {
		return slices.DeleteFunc(rs, func(r string) bool { return strings.HasPrefix(r, "_dmarc.") })
	})
	checks := f.run(t)
	c := want(t, checks, "dmarc", Fail, "no DMARC record", `publish TXT at _dmarc.example.test: "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.test"`)
	if c.State != StateMissing {
		t.Errorf("state %q", c.State)
	}
	// Alignment is still judged, under the default relaxed modes.
	want(t, checks, "dmarc-dkim", OK, "adkim=r")
	want(t, checks, "dmarc-spf", OK, "aspf=r")
}

func TestDMARCStrictAlignment(t *testing.T) {
	f := newFixture(t, "", func(rs []string, _ *dkim.Key) []string {
		for i, r := range rs {
			if strings.HasPrefix(r, "_dmarc.") {
				rs[i] = `_dmarc.example.test. 300 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"`
			}
		}
		return rs
	})
	// A From on a subdomain: the organizational domain's record applies
	// (RFC 7489 §6.6.3); d=example.test is not strictly aligned with it.
	f.msg.From = "News <news@news.example.test>"
	f.zone.Add(`news.example.test. 300 IN TXT "v=spf1 ip4:` + source + ` -all"`)
	checks := f.run(t)
	want(t, checks, "dmarc", OK, "p=reject adkim=s aspf=s")
	want(t, checks, "dmarc-dkim", Fail, "does not align with From news.example.test under adkim=s")
	want(t, checks, "dmarc-spf", Warn, "bounce.example.test does not align", "aspf=r")
}

func TestDKIMRecordMismatch(t *testing.T) {
	other, _, err := dkim.LoadOrCreate(filepath.Join(t.TempDir(), "o.key"), "example.test", "pw1", "ed25519")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, "", func(rs []string, _ *dkim.Key) []string {
		rs[0] = other.DNSRecord() // another key's record at pw1._domainkey
		return rs
	})
	checks := f.run(t)
	c := want(t, checks, "dkim-dns", Fail, "another key is published", "publish (replacing it): pw1._domainkey.example.test. IN TXT")
	if c.State != StateDifferent || !strings.Contains(c.Found, other.PublicKeyBase64()) {
		t.Errorf("state %q found %q", c.State, c.Found)
	}
	// No record at all: missing.
	f3 := newFixture(t, "", func(rs []string, _ *dkim.Key) []string { return rs[1:] })
	want(t, f3.run(t), "dkim-dns", Fail, "no DKIM key record")
	// No key for the From domain at all.
	f3.msg.From = "ana@elsewhere.test"
	want(t, f3.run(t), "dkim", Fail, "no DKIM key signs", "dkim keygen --domain elsewhere.test")
}

func TestPublicURL(t *testing.T) {
	f := newFixture(t, "", nil)
	for _, tc := range []struct {
		url  string
		st   Status
		says string
	}{
		{"https://mail.example.test", OK, "https"},
		{"http://mail.example.test", Fail, "RFC 8058"},
		{"http://127.0.0.1:8025", Warn, "local test"},
		{"http://localhost:8025", Warn, "local test"},
		{"mail.example.test", Fail, "not an absolute URL"},
	} {
		f.cfg.PublicURL = tc.url
		f.cfg.Offline = true
		want(t, f.run(t), "public-url", tc.st, tc.says)
	}
}

func TestMessageSize(t *testing.T) {
	big := strings.Repeat("<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n", 2000) // ~130 KB
	f := newFixture(t, big+`<a href="{{.UnsubscribeURL}}">u</a> <a href="{{.PrivacyURL}}">p</a>`, nil)
	f.cfg.Offline = true
	checks := f.run(t)
	want(t, checks, "size", Warn, "Gmail clips", "under 100 KB")
	if Failed(checks) {
		t.Errorf("a warning failed the run:\n%s", dump(checks))
	}

	huge := strings.Repeat("x", MaxSize+1)
	f = newFixture(t, huge+`<a href="{{.UnsubscribeURL}}">u</a> <a href="{{.PrivacyURL}}">p</a>`, nil)
	f.cfg.Offline = true
	checks = f.run(t)
	want(t, checks, "size", Fail, "over 10 MB")
	if !Failed(checks) {
		t.Error("oversize not Failed")
	}
}

func TestLinks(t *testing.T) {
	html := `<a href="http://www.example.test/plain">plain</a>
<a href="https://bit.ly/3xYz">short</a> <a href="https://go.rebrand.ly/x">short2</a>
<img src="https://cdn.nowhere.test/logo.png"> <a href="mailto:ana@example.test">mail</a> <a href="#top">top</a>
<a href="{{.UnsubscribeURL}}">u</a> <a href="{{.PrivacyURL}}">p</a>`
	f := newFixture(t, html, nil)
	checks := find(f.run(t), "link")
	got := map[string]Check{}
	for _, c := range checks {
		got[c.Subject] = c
	}
	for url, says := range map[string]string{
		"http://www.example.test/plain":     "not an https link",
		"https://bit.ly/3xYz":               "URL shortener bit.ly",
		"https://go.rebrand.ly/x":           "URL shortener rebrand.ly",
		"https://cdn.nowhere.test/logo.png": "cdn.nowhere.test does not resolve",
	} {
		if c, ok := got[url]; !ok || c.Status != Fail || !strings.Contains(c.Detail, says) {
			t.Errorf("%s: %+v, want FAIL saying %q\n%s", url, c, says, dump(checks))
		}
	}
	if len(checks) != 4 {
		t.Errorf("%d link checks, want 4 (mailto, anchors, unsubscribe and resolving https links pass):\n%s", len(checks), dump(checks))
	}
	// Offline: the shortener and http still fail; nothing is resolved.
	f.cfg.Offline = true
	if n := len(find(f.run(t), "link")); n != 3 {
		t.Errorf("offline: %d link checks, want 3", n)
	}
}

// A resolver that answers nothing (SERVFAIL) makes DNS checks WARN, never
// FAIL: no answer proves a record wrong.
func TestResolverFailureWarns(t *testing.T) {
	f := newFixture(t, "", func(rs []string, _ *dkim.Key) []string { return rs[len(rs)-1:] })
	f.zone.SetMissing(2) // SERVFAIL
	checks := f.run(t)
	for _, name := range []string{"dkim-dns", "spf", "dmarc"} {
		c := want(t, checks, name, Warn, "could not check", "resolver "+f.addr)
		if c.State != StateUnchecked {
			t.Errorf("%s state %q", name, c.State)
		}
	}
	if Failed(checks) {
		t.Errorf("failed without an answer:\n%s", dump(checks))
	}
	// Offline and capture make no query at all.
	before := len(f.zone.Queries())
	f.cfg.Capture = true
	checks = f.run(t)
	want(t, checks, "spf", Warn, "capture mode")
	if after := len(f.zone.Queries()); after != before {
		t.Errorf("capture mode asked the DNS %d times", after-before)
	}
}

func TestDomain(t *testing.T) {
	f := newFixture(t, "", nil)
	c, err := New(f.cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	checks := c.Domain(context.Background(), "bounce.example.test")
	want(t, checks, "mx", OK, "mail.example.test")
	want(t, checks, "spf", OK)
	checks = c.Domain(context.Background(), "Example.TEST.")
	for _, n := range []string{"dkim-dns", "spf", "dmarc", "dmarc-dkim"} {
		want(t, checks, n, OK)
	}
	if len(c.Domain(context.Background(), "unrelated.test")) != 0 {
		t.Error("checks for an unconfigured domain")
	}
}
