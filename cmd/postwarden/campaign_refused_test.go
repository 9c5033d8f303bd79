package main

import (
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// A campaign whose From domain no DKIM key signs would leave unsigned: it is
// refused, naming the campaign file's from line; so is a missing recipients file.
func TestCampaignRefusedWithoutSigningKeyOrRecipients(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mkDataDir()
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
