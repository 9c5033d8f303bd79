package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
)

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
