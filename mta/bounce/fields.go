package bounce

import (
	"bytes"
	"regexp"
	"strings"
)

// field is one header field, unfolded.
type field struct{ k, v string }

// fields is a header block in order.
type fields []field

// get returns the first value of key k (case-insensitive), or "".
func (fs fields) get(k string) string {
	for _, f := range fs {
		if strings.EqualFold(f.k, k) {
			return f.v
		}
	}
	return ""
}

// all returns every value of key k.
func (fs fields) all(k string) []string {
	var out []string
	for _, f := range fs {
		if strings.EqualFold(f.k, k) {
			out = append(out, f.v)
		}
	}
	return out
}

// Bounds on header parsing.
const (
	maxFields = 1000
	maxGroups = 1000
	maxKeyLen = 76
	maxValLen = 8 << 10
)

// readFields reads a header block leniently (RFC 5322 §2.2 fields, RFC 3464
// §2.1 groups): it stops at the first empty line, or before the first line
// that is neither a field nor a continuation, and returns the rest.
func readFields(b []byte) (fields, []byte) {
	var fs fields
	rest := b
	first := true
	for len(rest) > 0 {
		line, next := cutLine(rest)
		l := strings.TrimRight(string(line), "\r")
		if l == "" {
			return fs, next
		}
		if first && strings.HasPrefix(l, "From ") {
			first = false
			rest = next
			continue
		}
		first = false
		if (l[0] == ' ' || l[0] == '\t') && len(fs) > 0 { // RFC 5322 §2.2.3 folding
			if f := &fs[len(fs)-1]; len(f.v) < maxValLen {
				f.v = strings.TrimSpace(f.v + " " + strings.TrimSpace(l))
			}
			rest = next
			continue
		}
		i := strings.IndexByte(l, ':')
		if i <= 0 || i > maxKeyLen || !validKey(l[:i]) || len(fs) >= maxFields {
			return fs, rest
		}
		v := l[i+1:]
		if len(v) > maxValLen {
			v = v[:maxValLen]
		}
		fs = append(fs, field{k: l[:i], v: strings.TrimSpace(v)})
		rest = next
	}
	return fs, rest
}

// validKey reports whether k is a field name: printable ASCII, no space or colon.
func validKey(k string) bool {
	for i := 0; i < len(k); i++ {
		if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// cutLine splits b after its first "\n".
func cutLine(b []byte) (line, rest []byte) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i], b[i+1:]
	}
	return b, nil
}

// readGroups reads the groups of a delivery-status body: blocks of fields
// separated by empty lines (RFC 3464 §2.1). Lines that are not fields are skipped.
func readGroups(b []byte) []fields {
	var gs []fields
	for len(b) > 0 && len(gs) < maxGroups {
		fs, rest := readFields(b)
		if len(fs) > 0 {
			gs = append(gs, fs)
		}
		if len(rest) == len(b) { // a line that is not a field: skip it
			_, rest = cutLine(b)
		}
		b = rest
	}
	return gs
}

// addrRe finds addr-specs in free text (dot-atom local part, RFC 5322 §3.4.1).
var addrRe = regexp.MustCompile("[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")

// findAddresses returns the addresses in s, in order.
func findAddresses(s string) []string {
	ms := addrRe.FindAllString(s, 64)
	for i, m := range ms {
		ms[i] = strings.TrimLeft(m, ".")
	}
	return ms
}

// firstAddress returns the first address in s, or "".
func firstAddress(s string) string {
	if ms := findAddresses(s); len(ms) > 0 && !strings.HasPrefix(ms[0], "@") {
		return ms[0]
	}
	return ""
}

// bareAddress returns the address of "rfc822; <a@b>", "<a@b>" or "a@b"; "" for "<>".
func bareAddress(v string) string {
	return firstAddress(stripType(v))
}

// stripType removes an RFC 3464 type prefix ("rfc822;", "smtp;", "dns;").
func stripType(v string) string {
	v = strings.TrimSpace(v)
	if i := strings.IndexByte(v, ';'); i > 0 && i <= 32 && !strings.ContainsAny(v[:i], " \t@<>\"") {
		return strings.TrimSpace(v[i+1:])
	}
	return v
}

// typeOf returns the lower-cased type prefix of v, or "".
func typeOf(v string) string {
	v = strings.TrimSpace(v)
	if i := strings.IndexByte(v, ';'); i > 0 && i <= 32 && !strings.ContainsAny(v[:i], " \t@<>\"") {
		return strings.ToLower(v[:i])
	}
	return ""
}

// pickRecipient prefers an rfc822 Final-Recipient, then an rfc822
// Original-Recipient, then whatever text there is (RFC 3464 §2.3.1–2.3.2).
func pickRecipient(final, orig string) string {
	for _, v := range []string{final, orig} {
		if t := typeOf(v); t != "" && t != "rfc822" && t != "utf-8" {
			continue
		}
		if a := firstAddress(stripType(v)); a != "" {
			return a
		}
	}
	for _, v := range []string{final, orig} {
		if s := strings.Trim(stripType(v), "<> \t"); s != "" {
			return clean(s)
		}
	}
	return ""
}

// hostOf returns the host name in a Remote-MTA value ("mx.example.org. (…)").
func hostOf(v string) string {
	f := strings.Fields(v)
	if len(f) == 0 {
		return ""
	}
	return strings.TrimSuffix(strings.Trim(f[0], "[]<>"), ".")
}

// firstWord returns the lower-cased first word of v ("failed (bad mailbox)" → "failed").
func firstWord(v string) string {
	f := strings.Fields(v)
	if len(f) == 0 {
		return ""
	}
	return strings.ToLower(strings.Trim(f[0], "();,."))
}

// maxDiag bounds Diagnostic.
const maxDiag = 1000

// clean collapses white space and bounds the length.
func clean(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxDiag {
		s = strings.ToValidUTF8(s[:maxDiag], "")
	}
	return s
}

// hasPrefixFold is strings.HasPrefix ignoring ASCII case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// enhRe matches an RFC 3463 enhanced status code of a failure or delay;
// isolated() checks its neighbours (Go regexps have no look-around), so
// IP addresses and version numbers do not match.
var enhRe = regexp.MustCompile(`[245]\.[0-7]\.[0-9]{1,3}`) // RFC 3463 §4: subjects 0 to 7

// basicRe matches an RFC 5321 §4.2 reply code of a failure.
var basicRe = regexp.MustCompile(`[45][0-5][0-9]`)

// isolated reports whether s[i:j] is not part of a longer number or dotted string.
func isolated(s string, i, j int) bool {
	if i > 0 {
		if c := s[i-1]; c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') {
			return false
		}
	}
	if j < len(s) {
		c := s[j]
		if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			return false
		}
		if c == '.' && j+1 < len(s) && s[j+1] >= '0' && s[j+1] <= '9' {
			return false
		}
	}
	return true
}

// enhancedIn returns the first isolated 4.x.x or 5.x.x code in s and its offset.
// With success true, 2.x.x codes count too (a Status field).
func enhancedIn(s string, success bool) (string, int) {
	for _, m := range enhRe.FindAllStringIndex(s, 256) {
		if c := s[m[0]]; (c == '2' && !success) || !isolated(s, m[0], m[1]) {
			continue
		}
		return s[m[0]:m[1]], m[0]
	}
	return "", -1
}

// basicIn returns the first reply code in s that starts a reply: at a line
// start or after a separator, followed by a space, "-" or end of line.
func basicIn(s string) (string, int) {
	for _, m := range basicRe.FindAllStringIndex(s, 256) {
		if m[0] > 0 && !strings.ContainsRune(" \t\n:;#(<>\"'", rune(s[m[0]-1])) {
			continue
		}
		if m[1] < len(s) && !strings.ContainsRune(" \t\n-:;", rune(s[m[1]])) {
			continue
		}
		return s[m[0]:m[1]], m[0]
	}
	return "", -1
}

// enhancedCode returns the code of a Status field ("5.1.1 (bad mailbox)" → "5.1.1").
func enhancedCode(status string) string {
	c, _ := enhancedIn(status, true)
	return c
}

// diagCode returns the failure code in a diagnostic text: its enhanced
// code, else its basic reply code as x.0.0.
func diagCode(diag string) string {
	if c, _ := enhancedIn(diag, false); c != "" {
		return c
	}
	if c, _ := basicIn(diag); c != "" {
		return c[:1] + ".0.0"
	}
	return ""
}

// tagRe matches HTML tags and comments.
var tagRe = regexp.MustCompile(`(?s)<!--.*?-->|<[^>]{0,1000}>`)

// stripTags turns HTML into rough text for the address and code search.
func stripTags(s string) string {
	s = tagRe.ReplaceAllString(s, " ")
	return strings.NewReplacer("&lt;", "<", "&gt;", ">", "&amp;", "&", "&nbsp;", " ", "&#64;", "@", "&quot;", `"`).Replace(s)
}
