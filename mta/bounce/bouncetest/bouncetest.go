// Package bouncetest holds realistic bounce and complaint reports (RFC 3464
// DSNs, RFC 5965 ARF reports, plain-text bounces from common MTAs) for the
// tests of the packages that parse or receive them: mta/bounce, mta/inbound and
// cmd/postwarden. The files live in this package's testdata/ and are embedded,
// so no test reads them through a path into another package. Tests only.
//
// Each file was written for this project from its MTA's documented format
// (Postfix, Exim, Sendmail old and new, qmail, OpenSMTPD, Courier, Oracle/Sun
// Messaging Server, Exchange 2010 and Office 365, Gmail, Yahoo, Microsoft
// JMRP), never copied from another project's corpus; the file name says the
// MTA and the code or reason. Every one is addressed to VERP or quotes it.
package bouncetest

import (
	"embed"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

//go:embed testdata/*.eml
var files embed.FS

// VERP is the (fake) VERP address every report is addressed to or quotes;
// tests replace it with one their own codec minted.
const VERP = "bounce+gaydsmbrgm2tembrgizdsmbsgaydanbrmfqwc3dpnfxa@bounce.example.com"

// Names returns the file name of every report, sorted.
func Names() []string {
	entries, err := files.ReadDir("testdata")
	if err != nil {
		panic("bouncetest: " + err.Error()) // embedded at build time: cannot fail
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// Read returns the report named name (for example "postfix-5.1.1.eml"); an
// unknown name fails the test.
func Read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := files.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatalf("bouncetest: %v", err)
	}
	return b
}

// WriteDir writes every report into dir under its own name, for tests that
// hand files to the CLI, and returns their paths in Names order.
func WriteDir(t testing.TB, dir string) []string {
	t.Helper()
	var paths []string
	for _, name := range Names() {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, Read(t, name), 0o600); err != nil {
			t.Fatalf("bouncetest: %v", err)
		}
		paths = append(paths, p)
	}
	return paths
}
