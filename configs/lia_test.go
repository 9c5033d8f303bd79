package configs

import (
	"strings"
	"testing"
)

// LIAHeadings keeps ATX and setext headings in order, with their level, and
// ignores headings inside HTML comments.
func TestLIAHeadings(t *testing.T) {
	md := "# Assessment\n<!-- ## Hidden guidance -->\n\nPurpose\n-------\nWhy.\n\n### Necessity\nOnly work addresses.\n"
	got := LIAHeadings(md)
	want := []string{"# Assessment", "## Purpose", "### Necessity"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("LIAHeadings = %q, want %q", got, want)
	}
}
