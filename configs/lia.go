package configs

import (
	"fmt"
	"regexp"
	"strings"
)

// liaSections are the three parts of the ICO's legitimate-interest test that
// an assessment must hold, each as a markdown heading with text under it.
var liaSections = []struct {
	name string
	re   *regexp.Regexp
}{
	{"Purpose", regexp.MustCompile(`(?i)\bpurpose\b`)},
	{"Necessity", regexp.MustCompile(`(?i)\bnecessity\b`)},
	{"Balancing", regexp.MustCompile(`(?i)\bbalanc(ing|e)\b`)},
}

var (
	htmlComment   = regexp.MustCompile(`(?s)<!--.*?-->`)
	atxHeading    = regexp.MustCompile(`^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t#]*$`)
	setextUnderln = regexp.MustCompile(`^ {0,3}(=+|-+)[ \t]*$`)
)

// liaHeading is one heading of an assessment.
type liaHeading struct {
	line, level int
	text        string
}

// CheckLIA reports what a legitimate-interest assessment in markdown lacks:
// for each of Purpose, Necessity and Balancing, a heading naming it
// (case-insensitive, ATX "## 1. Purpose" or setext form) with some text under
// it before the next heading of the same or a higher level. HTML comments do
// not count as text, so the shipped TEMPLATE.md, whose guidance sits in
// comments, does not pass until it is filled in. An empty result means it passes.
func CheckLIA(md string) []string {
	// Blank out comments but keep their newlines, so line numbers hold.
	md = htmlComment.ReplaceAllStringFunc(md, func(c string) string {
		return strings.Repeat("\n", strings.Count(c, "\n"))
	})
	lines := strings.Split(strings.ReplaceAll(md, "\r\n", "\n"), "\n")
	heads, isHead := headingsOf(lines)
	var missing []string
	for _, sec := range liaSections {
		found, filled := false, false
		for hi, h := range heads {
			if !sec.re.MatchString(h.text) {
				continue
			}
			found = true
			end := len(lines)
			for _, next := range heads[hi+1:] {
				if next.level <= h.level {
					end = next.line
					break
				}
			}
			for i := h.line + 1; i < end; i++ {
				if !isHead[i] && strings.TrimSpace(lines[i]) != "" {
					filled = true
					break
				}
			}
			if filled {
				break
			}
		}
		switch {
		case !found:
			missing = append(missing, fmt.Sprintf("no %q section (a markdown heading such as \"## %s\")", sec.name, sec.name))
		case !filled:
			missing = append(missing, fmt.Sprintf("the %q section has no text", sec.name))
		}
	}
	return missing
}

// headingsOf finds the ATX and setext headings among lines, and which lines
// belong to one.
func headingsOf(lines []string) ([]liaHeading, []bool) {
	var heads []liaHeading
	isHead := make([]bool, len(lines))
	for i, l := range lines {
		if m := atxHeading.FindStringSubmatch(l); m != nil {
			heads = append(heads, liaHeading{i, len(m[1]), m[2]})
			isHead[i] = true
			continue
		}
		if i+1 < len(lines) && strings.TrimSpace(l) != "" && !isHead[i] && setextUnderln.MatchString(lines[i+1]) &&
			!strings.HasPrefix(strings.TrimSpace(l), "-") {
			level := 1
			if strings.Contains(lines[i+1], "-") {
				level = 2
			}
			heads = append(heads, liaHeading{i, level, strings.TrimSpace(l)})
			isHead[i], isHead[i+1] = true, true
		}
	}
	return heads, isHead
}

// LIAHeadings returns the headings of an assessment in Markdown, in order,
// each prefixed with its level's "#"s: what a campaign record keeps of the
// LIA beside its hash, so a report shows what the assessment covered.
func LIAHeadings(md string) []string {
	md = htmlComment.ReplaceAllStringFunc(md, func(c string) string {
		return strings.Repeat("\n", strings.Count(c, "\n"))
	})
	heads, _ := headingsOf(strings.Split(strings.ReplaceAll(md, "\r\n", "\n"), "\n"))
	out := make([]string, 0, len(heads))
	for _, h := range heads {
		out = append(out, strings.Repeat("#", h.level)+" "+h.text)
	}
	return out
}
