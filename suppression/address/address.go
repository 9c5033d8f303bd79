// Package address parses, normalises and masks email addresses.
//
// Contract: Parse accepts a bare addr-spec ("local@domain") only: no display
// names, no angle brackets, no quoted local parts, no whitespace or control
// characters. The domain is returned lower-case ASCII (IDN converted with the
// IDNA Lookup profile, trailing dot dropped); the local part is kept exactly as
// given, and Key lower-cases everything for matching. Errors quote the input
// with %q so they never carry raw CR or LF. Mask is the only form in which an
// address may appear in logs.
package address

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Limits from RFC 5321 §4.5.3.1.
const (
	MaxLocal  = 64  // RFC 5321 §4.5.3.1.1: local part, in octets
	MaxDomain = 253 // RFC 1035 §2.3.4 (255 wire octets = 253 in dotted form)
	MaxTotal  = 254 // RFC 5321 §4.5.3.1.3: 256-octet path minus the angle brackets
	maxLabel  = 63  // RFC 1035 §2.3.4
)

// Address is a parsed addr-spec: Domain is lower-case ASCII (IDNA), Local is as given.
type Address struct{ Local, Domain string }

// Error describes why an input is not an acceptable address or domain.
type Error struct {
	Kind    string // "address" or "domain"
	Input   string // the input as given (quoted with %q when printed)
	Problem string // what is wrong with it
}

// Error formats as: address "ana@@x": more than one @.
func (e *Error) Error() string {
	in := e.Input
	if len(in) > 300 {
		in = in[:300] + "..."
	}
	return fmt.Sprintf("%s %q: %s", e.Kind, in, e.Problem)
}

// Parse trims surrounding spaces and tabs and parses a bare address "local@domain".
func Parse(s string) (Address, error) {
	raw := s
	s = strings.Trim(s, " \t")
	bad := func(format string, args ...any) (Address, error) {
		return Address{}, &Error{Kind: "address", Input: raw, Problem: fmt.Sprintf(format, args...)}
	}
	if s == "" {
		return bad("empty")
	}
	if strings.ContainsAny(s, "<>") {
		return bad("display names and angle brackets are not accepted; give the bare address")
	}
	for _, r := range s {
		switch {
		case r == '\r' || r == '\n':
			return bad("contains CR or LF")
		case r == 0:
			return bad("contains NUL")
		case unicode.IsSpace(r):
			return bad("contains whitespace")
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			return bad("contains a control or format character")
		case r == utf8.RuneError:
			return bad("is not valid UTF-8")
		}
	}
	if len(s) > MaxTotal {
		return bad("longer than %d bytes", MaxTotal) // RFC 5321 §4.5.3.1.3
	}
	at := strings.IndexByte(s, '@')
	switch {
	case at < 0:
		return bad("missing @")
	case strings.Count(s, "@") > 1:
		return bad("more than one @")
	}
	local, domain := s[:at], s[at+1:]
	if local == "" {
		return bad("empty local part")
	}
	if domain == "" {
		return bad("empty domain")
	}
	if len(local) > MaxLocal {
		return bad("local part longer than %d bytes", MaxLocal) // RFC 5321 §4.5.3.1.1
	}
	if p := checkLocal(local); p != "" {
		return bad("local part %s", p)
	}
	d, p := normalizeDomain(domain)
	if p != "" {
		return bad("domain %s", p)
	}
	if len(local)+1+len(d) > MaxTotal {
		return bad("longer than %d bytes once the domain is in ASCII form", MaxTotal)
	}
	return Address{Local: local, Domain: d}, nil
}

// checkLocal returns what is wrong with a dot-atom local part, or "".
// RFC 5322 §3.2.3 (dot-atom of atext); RFC 6531 §3.3 allows UTF-8 as well.
func checkLocal(l string) string {
	if l[0] == '.' || l[len(l)-1] == '.' {
		return "starts or ends with a dot"
	}
	if strings.Contains(l, "..") {
		return "has two dots in a row"
	}
	for _, r := range l {
		if r >= 0x80 {
			continue // RFC 6531 §3.3: UTF-8 local parts
		}
		if !isAtext(byte(r)) && r != '.' {
			if r == '"' || r == '\\' {
				return "is quoted or escaped; only plain addresses are accepted"
			}
			return fmt.Sprintf("contains %q", r)
		}
	}
	return ""
}

// isAtext reports whether c is atext (RFC 5322 §3.2.3).
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// String returns local@domain.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// Key returns the lower-cased local@domain, the key used for matching.
func (a Address) Key() string { return strings.ToLower(a.Local + "@" + a.Domain) }

// MailboxKey returns the key of the mailbox behind the address: Key without
// a "+tag" (RFC 5233 subaddress) on the local part, so "Ana+1@x" and
// "ana+2@x" are one inbox for rate limits. It is never used to match
// suppressions: "ana+news@x" may be unsubscribed while "ana@x" is not.
func (a Address) MailboxKey() string {
	local := a.Local
	if i := strings.IndexByte(local, '+'); i > 0 {
		local = local[:i]
	}
	return strings.ToLower(local + "@" + a.Domain)
}

// NormalizeDomain converts d to lower-case ASCII (IDNA Lookup profile) without a trailing dot.
func NormalizeDomain(d string) (string, error) {
	out, p := normalizeDomain(strings.Trim(d, " \t"))
	if p != "" {
		return "", &Error{Kind: "domain", Input: d, Problem: p}
	}
	return out, nil
}

// normalizeDomain returns the ASCII form of d, or a problem description.
func normalizeDomain(d string) (string, string) {
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return "", "is empty"
	}
	if strings.HasPrefix(d, "[") {
		return "", "is an address literal; only domain names are accepted"
	}
	for _, r := range d {
		if r < 0x20 || r == 0x7f || r == ' ' {
			return "", "contains whitespace or a control character"
		}
	}
	a := strings.ToLower(d)
	if !plainLDH(a) {
		var err error
		a, err = idna.Lookup.ToASCII(d) // UTS #46 mapping: lower-cases and converts IDN to xn--
		if err != nil {
			return "", "is not a valid domain name: " + err.Error()
		}
		a = strings.ToLower(a)
	}
	if len(a) > MaxDomain {
		return "", fmt.Sprintf("longer than %d bytes", MaxDomain)
	}
	labels := strings.Split(a, ".")
	for _, l := range labels {
		// RFC 1035 §2.3.1 (LDH), RFC 1123 §2.1 (may start with a digit).
		switch {
		case l == "":
			return "", "has an empty label"
		case len(l) > maxLabel:
			return "", fmt.Sprintf("has a label longer than %d bytes", maxLabel)
		case l[0] == '-' || l[len(l)-1] == '-':
			return "", fmt.Sprintf("label %q starts or ends with a hyphen", l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return "", fmt.Sprintf("label %q contains %q", l, c)
			}
		}
	}
	if tld := labels[len(labels)-1]; strings.Trim(tld, "0123456789") == "" {
		return "", "ends in an all-numeric label (IP addresses are not accepted)"
	}
	return a, ""
}

// plainLDH reports whether d is lower-case ASCII letters, digits, hyphens and
// dots without "--" (so no punycode), which IDNA would return unchanged.
func plainLDH(d string) bool {
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return !strings.Contains(d, "--") // "xn--" and other reserved R-LDH labels go to IDNA
}

// Mask hides an address for logs: "ana@example.com" → "a***@example.com";
// "@example.com" stays as is; anything unparsable becomes "***".
func Mask(s string) string {
	if t := strings.Trim(s, " \t"); strings.HasPrefix(t, "@") {
		if d, err := NormalizeDomain(t[1:]); err == nil {
			return "@" + d
		}
		return "***"
	}
	a, err := Parse(s)
	if err != nil {
		return "***"
	}
	r, _ := utf8.DecodeRuneInString(a.Local)
	return string(r) + "***@" + a.Domain
}

// addrInText finds address-like tokens in free text (SMTP replies, errors).
var addrInText = regexp.MustCompile(`[^\s<>"'(),;:\[\]]+@[^\s<>"'(),;:\[\]]+`)

// MaskError returns err with every address in its text masked, for logs; err
// itself (its chain intact) when there is nothing to mask.
func MaskError(err error) error {
	if err == nil {
		return nil
	}
	text := err.Error()
	if m := MaskText(text); m != text {
		return errors.New(m)
	}
	return err
}

// MaskText masks every address-like token in free text, whatever its case,
// so replies that echo an address ("550 5.1.1 <ANA@EXAMPLE.COM>") can be
// shown and logged.
func MaskText(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	return addrInText.ReplaceAllStringFunc(s, Mask)
}
