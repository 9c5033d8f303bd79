package main

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// A campaign whose From domain no DKIM key signs would leave unsigned: it is
// refused, naming the campaign file's from line; so is a missing recipients file.
func TestCampaignRefusedWithoutSigningKeyOrRecipients(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	file := h.campaign("nokey", "email,first_name\nana@acme.example,Ana\n")
	h.write("nokey.yaml", strings.Replace(readFile(t, file), "ana@example.com", "ana@other.example", 1))
	for _, verb := range []string{"validate", "send"} {
		r := h.run("campaign", verb, file)
		if r.code != 2 || !strings.Contains(r.stderr, "nokey.yaml:3: from: no DKIM key signs other.example") {
			t.Errorf("campaign %s: exit %d\n%s", verb, r.code, r.stderr)
		}
	}
	file = h.campaign("norcpt", "email\n")
	h.write("norcpt.yaml", strings.Replace(readFile(t, file), "recipients: norcpt.csv", "recipients: missing.csv", 1))
	r := h.run("campaign", "send", file)
	if r.code != 2 || !strings.Contains(r.stderr, "norcpt.yaml:6: recipients:") || !strings.Contains(r.stderr, "missing.csv") {
		t.Errorf("missing recipients: exit %d\n%s", r.code, r.stderr)
	}
	if n := h.sink.Count(); n != 0 {
		t.Errorf("%d messages sent", n)
	}
}

// Row errors show masked addresses unless --reveal; a line break in a column
// that reaches no header is body text, not an invalid row.
func TestRowErrorsMaskedAndMultilineBodyField(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	file := h.campaign("mask", "email,first_name,notes\n\"Jane Doe@acme.example\",Jane,x\nana@acme.example,Ana,\"line one\nline two\"\n")
	for _, verb := range []string{"validate", "send"} {
		r := h.run("campaign", verb, file)
		if strings.Contains(r.stdout+r.stderr, "Jane Doe@acme.example") {
			t.Errorf("campaign %s shows a clear address without --reveal:\n%s\n%s", verb, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout+r.stderr, "mask.csv:2: email") {
			t.Errorf("campaign %s does not name the bad row:\n%s\n%s", verb, r.stdout, r.stderr)
		}
	}
	r := h.run("--reveal", "campaign", "validate", file)
	if !strings.Contains(r.stderr, "Jane Doe@acme.example") {
		t.Errorf("--reveal hides the address:\n%s", r.stderr)
	}
	if got := h.sink.ByRecipient()["ana@acme.example"]; got != 1 {
		t.Errorf("the row with a multi-line notes column was not delivered (%d)", got)
	}
}

// An address written in upper case is one person: the one-click POST on the
// token of "ANA@Acme.Example" suppresses ana@acme.example on the list.
func TestOneClickNormalisesCase(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.serve()
	h.mustRun(0, "campaign", "send", h.campaign("case-1", "email,first_name,company\nANA@Acme.Example,Ana,Acme\n"))
	waitFor(t, "the delivery", func() bool { return h.sink.Count() == 1 })
	resp, err := http.PostForm(h.unsubscribeLink("ANA@acme.example", ""), url.Values{"List-Unsubscribe": {"One-Click"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	h.mustRun(0, "suppress", "check", "ana@acme.example", "--list", "product-news")
	r := h.mustRun(0, "campaign", "send", h.campaign("case-2", "email,first_name,company\nana@ACME.example,Ana,Acme\n"))
	if !strings.Contains(r.stdout, "unsubscribed 1") {
		t.Errorf("second campaign did not skip her:\n%s", r.stdout)
	}
}

// dkim keygen checks the domain and selector before they name a file.
func TestDKIMKeygenValidatesNames(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	for _, bad := range [][]string{
		{"--domain", "../../../tmp/evil", "--selector", "s1"},
		{"--domain", "example.com", "--selector", "../s1"},
	} {
		r := h.run(append([]string{"dkim", "keygen"}, bad...)...)
		if r.code != 2 {
			t.Errorf("keygen %v: exit %d", bad, r.code)
		}
	}
	r := h.mustRun(0, "dkim", "keygen", "--domain", "Example.ORG", "--selector", "S2", "--type", "ed25519")
	if !strings.HasPrefix(r.stdout, "s2._domainkey.example.org. IN TXT") || !strings.Contains(r.stdout, "k=ed25519") {
		t.Errorf("keygen output: %s", r.stdout)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "var", "dkim", "example.org.s2.key")); err != nil {
		t.Errorf("key file: %v", err)
	}
	h.mustRun(2, "dkim", "keygen", "--domain", "example.org", "--selector", "s2") // never overwrites
}
