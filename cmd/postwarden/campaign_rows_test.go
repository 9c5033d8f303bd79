package main

import (
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// Row errors show masked addresses unless --reveal; a line break in a column
// that reaches no header is body text, not an invalid row.
func TestRowErrorsMaskedAndMultilineBodyField(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mkDataDir()
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
