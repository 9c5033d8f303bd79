package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/mta/preflight"
)

// preflightCSV is a one-row recipients file.
const preflightCSV = "email,first_name,company\nana@acme.example,Ana,Acme\n"

// publishAll creates the DKIM key and publishes on the harness's loopback
// DNS server everything a campaign from ana@example.com needs; public_url
// becomes https, and names the zone lacks get NXDOMAIN. Each edit replaces
// the records of its name and type ("NAME. IN TYPE …"), or with "NAME. -"
// removes the name.
func (h *harness) publishAll(edits ...string) {
	h.t.Helper()
	h.mustRun(0, "dkim", "keygen", "--domain", "example.com", "--selector", "pw1")
	key, _, err := dkim.LoadOrCreate(filepath.Join(h.dir, "var", "dkim", "example.com.pw1.key"), "example.com", "pw1", "rsa")
	if err != nil {
		h.t.Fatal(err)
	}
	records := []string{
		key.DNSRecord(),
		"mail.test.example. IN A 192.0.2.25",
		`example.com. IN TXT "v=spf1 a:mail.test.example ~all"`,
		`_dmarc.example.com. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@example.com"`,
		"example.com. IN A 192.0.2.80", // privacy_url's host
	}
	for _, e := range edits {
		ef := strings.Fields(e)
		records = slices.DeleteFunc(records, func(r string) bool {
			rf := strings.Fields(r)
			return rf[0] == ef[0] && (ef[1] == "-" || rf[2] == ef[2])
		})
		if ef[1] != "-" {
			records = append(records, e)
		}
	}
	if err := h.dns.Add(records...); err != nil {
		h.t.Fatal(err)
	}
	h.dns.SetMissing(0)
	h.write("postwarden.yaml", strings.Replace(readConfig(h.t, h), "public_url: http://"+h.httpAddr, "public_url: https://news.example.com", 1))
}

// validateChecks runs `--json campaign validate` and returns its exit code and checks.
func (h *harness) validateChecks(file string, args ...string) (int, []preflight.Check, result) {
	h.t.Helper()
	r := h.run(append([]string{"--json", "campaign", "validate", file}, args...)...)
	var v struct {
		Rows      int               `json:"rows"`
		Preflight []preflight.Check `json:"preflight"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Rows != 1 {
		h.t.Fatalf("validate --json: %v (%d rows)\n%s\n%s", err, v.Rows, r.stdout, r.stderr)
	}
	return r.code, v.Preflight, r
}

// checkNamed returns the one check named name with the given status.
func checkNamed(t *testing.T, checks []preflight.Check, name string, st preflight.Status) preflight.Check {
	t.Helper()
	for _, c := range checks {
		if c.Check == name && c.Status == st {
			return c
		}
	}
	t.Fatalf("no %s %s check in %+v", st, name, checks)
	return preflight.Check{}
}

func TestValidatePreflightPasses(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.publishAll()
	file := h.campaign("pf", preflightCSV)
	r := h.mustRun(0, "campaign", "validate", file)
	for _, w := range []string{"OK   dkim-dns   pw1._domainkey.example.com", "OK   spf        example.com: pass for 1 address(es)",
		"OK   dmarc      _dmarc.example.com", "OK   dmarc-dkim", "OK   public-url https://news.example.com", "OK   size", "OK   link",
		"campaign pf: 1 rows, 0 invalid, 0 problems, 0 preflight failures"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("validate lacks %q:\n%s", w, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "WARN") || strings.Contains(r.stdout, "FAIL") {
		t.Errorf("a passing setup warns or fails:\n%s", r.stdout)
	}
	code, checks, _ := h.validateChecks(file)
	if code != 0 || len(checks) < 8 {
		t.Fatalf("--json: exit %d, %d checks", code, len(checks))
	}
	for _, c := range checks {
		if c.Status != preflight.OK {
			t.Errorf("--json: %+v", c)
		}
	}
}

// Each failure makes validate exit 2 and says what to publish or change.
func TestValidatePreflightFailures(t *testing.T) {
	cases := []struct {
		name  string
		edits []string
		setup func(h *harness)
		check string
		says  []string
	}{
		{"spf -all", []string{`example.com. IN TXT "v=spf1 -all"`}, nil, "spf",
			[]string{"does not authorise 192.0.2.25 (fail)", "add a:mail.test.example to the SPF record of example.com"}},
		{"no dmarc", []string{"_dmarc.example.com. -"}, nil, "dmarc",
			[]string{"no DMARC record", `publish TXT at _dmarc.example.com: "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"`}},
		{"dkim record of another key", []string{`pw1._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong"`}, nil, "dkim-dns",
			[]string{"another key is published", "publish (replacing it): pw1._domainkey.example.com. IN TXT"}},
		{"http public_url", nil, func(h *harness) {
			h.write("postwarden.yaml", strings.Replace(readConfig(h.t, h), "public_url: https://news.example.com", "public_url: http://news.example.com", 1))
		}, "public-url", []string{"RFC 8058", "set public_url to https://news.example.com"}},
		{"oversize message", nil, func(h *harness) {
			h.write("templates/note.html", strings.Repeat("<p>x</p>", (10<<20)/8+1)+`<a href="{{.UnsubscribeURL}}">u</a><a href="{{.PrivacyURL}}">p</a>`)
		}, "size", []string{"over 10 MB"}},
		{"shortener link", nil, func(h *harness) {
			h.write("templates/note.html", `<a href="https://bit.ly/abc">offer</a><a href="{{.UnsubscribeURL}}">u</a><a href="{{.PrivacyURL}}">p</a>`)
		}, "link", []string{"URL shortener bit.ly", "link to the destination itself"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, mtatest.Options{})
			h.publishAll(tc.edits...)
			if tc.setup != nil {
				tc.setup(h)
			}
			file := h.campaign("pf", preflightCSV)
			r := h.run("campaign", "validate", file)
			if r.code != 2 || !strings.Contains(r.stdout, "FAIL "+tc.check) || !strings.Contains(r.stderr, "preflight failures") {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			code, checks, _ := h.validateChecks(file)
			c := checkNamed(t, checks, tc.check, preflight.Fail)
			for _, s := range tc.says {
				if !strings.Contains(c.Detail+" "+c.Fix, s) {
					t.Errorf("%s does not say %q: %+v", tc.check, s, c)
				}
			}
			if code != 2 {
				t.Errorf("--json exit %d", code)
			}
		})
	}
}

// --offline makes no DNS query and keeps the local checks.
func TestValidateOffline(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.publishAll(`example.com. IN TXT "v=spf1 -all"`)
	file := h.campaign("pf", preflightCSV)
	before := len(h.dns.Queries())
	code, checks, _ := h.validateChecks(file, "--offline")
	if code != 0 {
		t.Fatalf("offline validate exit %d: %+v", code, checks)
	}
	checkNamed(t, checks, "spf", preflight.Warn)
	checkNamed(t, checks, "public-url", preflight.OK)
	if n := len(h.dns.Queries()) - before; n != 0 {
		t.Errorf("--offline asked the DNS %d times: %v", n, h.dns.Queries()[before:])
	}
}

// send refuses on a preflight failure (exit 2, nothing enqueued or sent)
// and sends with --force.
func TestSendRefusesOnPreflightFailure(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.publishAll(`example.com. IN TXT "v=spf1 -all"`)
	file := h.campaign("pf", preflightCSV)
	r := h.run("campaign", "send", file)
	if r.code != 2 || !strings.Contains(r.stderr, "FAIL spf") || !strings.Contains(r.stderr, "refused: 1 preflight check(s) failed") ||
		!strings.Contains(r.stderr, "--force") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if n := len(h.sink.Messages()); n != 0 {
		t.Fatalf("%d messages sent by a refused send", n)
	}
	if out := h.mustRun(0, "queue", "ls", "--all").stdout; strings.Contains(out, "pf") {
		t.Fatalf("a refused send enqueued:\n%s", out)
	}
	r = h.mustRun(0, "campaign", "send", "--force", file)
	if !strings.Contains(r.stderr, "sending despite 1 preflight failure(s) (--force)") {
		t.Errorf("--force does not say it overrode the preflight:\n%s", r.stderr)
	}
	if got := h.sink.ByRecipient()["ana@acme.example"]; got != 1 {
		t.Fatalf("--force: %d messages to the recipient, want 1", got)
	}
}

// With the harness's resolver answering nothing (SERVFAIL), the DNS checks
// warn and the send goes ahead: a preflight that cannot ask is no failure.
func TestSendWithoutDNSAnswersWarns(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	file := h.campaign("pf", preflightCSV)
	r := h.mustRun(0, "campaign", "send", file)
	for _, w := range []string{"WARN spf", "could not check", "via resolver " + h.dnsAddr} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("send stderr lacks %q:\n%s", w, r.stderr)
		}
	}
	if got := h.sink.ByRecipient()["ana@acme.example"]; got != 1 {
		t.Fatalf("%d messages to the recipient, want 1", got)
	}
}
