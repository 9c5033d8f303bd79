package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
)

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
