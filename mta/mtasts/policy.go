// Package mtasts finds, fetches, caches and parses MTA-STS policies
// (RFC 8461): the TXT record _mta-sts.<domain> announces a policy, served at
// https://mta-sts.<domain>/.well-known/mta-sts.txt, that names the MX hosts
// allowed to receive the domain's mail and whether TLS to them must verify.
//
// Failure semantics (RFC 8461 §5): a domain without a usable TXT record, or
// whose policy cannot be fetched, has no policy unless an unexpired one is
// cached; a cached policy is used until max_age and refetched when the TXT id
// changes. Enforcing a policy is the caller's job (Policy.Match, Policy.Mode).
package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Policy modes (RFC 8461 §3.2).
const (
	ModeEnforce = "enforce" // deliver only to matching MX hosts over verified TLS
	ModeTesting = "testing" // report violations, deliver anyway
	ModeNone    = "none"    // the domain has withdrawn its policy
)

// MaxAgeLimit is the largest max_age a policy may give (RFC 8461 §3.2: about a year).
const MaxAgeLimit = 31557600 * time.Second

// ErrNoRecord means the domain publishes no usable _mta-sts TXT record.
var ErrNoRecord = errors.New("mtasts: no MTA-STS TXT record")

// Policy is a parsed policy file; treat it as read-only once returned.
type Policy struct {
	Version string        // always "STSv1"
	Mode    string        // one of the Mode constants
	MX      []string      // host names or "*.domain" patterns, lower-case, no trailing dot
	MaxAge  time.Duration // how long the policy may be cached
	ID      string        // the TXT record's id the policy was fetched under ("" when parsed alone)
}

// Parse parses a policy file (RFC 8461 §3.2): "key: value" lines ended by
// LF or CRLF; unknown keys are ignored, the first of a repeated key (other
// than mx) wins. version, mode and max_age are required, and mx unless the
// mode is none.
func Parse(text []byte) (*Policy, error) {
	p := &Policy{}
	seen := map[string]bool{}
	maxAge := ""
	for n, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok || key == "" || strings.ContainsAny(key, " \t") {
			return nil, fmt.Errorf("mtasts: policy line %d: want \"key: value\"", n+1)
		}
		val = strings.Trim(val, " \t")
		if key == "mx" {
			p.MX = append(p.MX, strings.ToLower(strings.TrimSuffix(val, ".")))
			continue
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		switch key {
		case "version":
			p.Version = val
		case "mode":
			p.Mode = val
		case "max_age":
			maxAge = val
		}
	}
	if p.Version != "STSv1" {
		return nil, fmt.Errorf("mtasts: policy version %q, want STSv1", p.Version)
	}
	switch p.Mode {
	case ModeEnforce, ModeTesting, ModeNone:
	default:
		return nil, fmt.Errorf("mtasts: policy mode %q, want enforce, testing or none", p.Mode)
	}
	// max_age: 1*10DIGIT, at most 31557600 (RFC 8461 §3.2); larger values are capped.
	if maxAge == "" || len(maxAge) > 10 || strings.Trim(maxAge, "0123456789") != "" {
		return nil, fmt.Errorf("mtasts: policy max_age %q, want seconds", maxAge)
	}
	secs, _ := strconv.ParseInt(maxAge, 10, 64)
	p.MaxAge = min(time.Duration(secs)*time.Second, MaxAgeLimit)
	for _, mx := range p.MX {
		if !validPattern(mx) {
			return nil, fmt.Errorf("mtasts: policy mx %q is not a host name or *.domain", mx)
		}
	}
	if len(p.MX) == 0 && p.Mode != ModeNone {
		return nil, errors.New("mtasts: policy has no mx")
	}
	return p, nil
}

// validPattern reports whether s is a host name, optionally behind "*.".
func validPattern(s string) bool {
	s = strings.TrimPrefix(s, "*.")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Match reports whether the MX host is allowed by one of the policy's mx patterns.
func (p *Policy) Match(host string) bool {
	for _, pat := range p.MX {
		if MatchHost(pat, host) {
			return true
		}
	}
	return false
}

// MatchHost reports whether host matches an mx pattern (RFC 8461 §4.1): equal
// ignoring case and a trailing dot, or "*.example.com", which matches exactly
// one more label on the left ("mx.example.com", not "a.mx.example.com" nor
// "example.com").
func MatchHost(pattern, host string) bool {
	pattern = strings.ToLower(strings.TrimSuffix(pattern, "."))
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if pattern == "" || host == "" {
		return false
	}
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		label, parent, ok := strings.Cut(host, ".")
		return ok && label != "" && parent == rest
	}
	return pattern == host
}

// ParseRecords picks the MTA-STS record out of the TXT records of
// _mta-sts.<domain> and returns its id (RFC 8461 §3.1). Records not starting
// with "v=STSv1" are ignored; none, several, or a malformed one give ErrNoRecord.
func ParseRecords(txts []string) (string, error) {
	var recs []string
	for _, t := range txts {
		first, _, _ := strings.Cut(t, ";")
		if strings.TrimRight(first, " \t") == "v=STSv1" {
			recs = append(recs, t)
		}
	}
	if len(recs) != 1 {
		return "", fmt.Errorf("%w (%d records start with v=STSv1)", ErrNoRecord, len(recs))
	}
	return ParseRecord(recs[0])
}

// ParseRecord returns the id of one "v=STSv1; id=…;" TXT record (RFC 8461 §3.1).
func ParseRecord(txt string) (string, error) {
	fields := strings.Split(txt, ";")
	if strings.Trim(fields[0], " \t") != "v=STSv1" {
		return "", fmt.Errorf("%w: %q does not start with v=STSv1", ErrNoRecord, txt)
	}
	id := ""
	for i, f := range fields[1:] {
		f = strings.Trim(f, " \t")
		if f == "" {
			if i == len(fields)-2 {
				continue // a trailing delimiter
			}
			return "", fmt.Errorf("%w: %q has an empty field", ErrNoRecord, txt)
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return "", fmt.Errorf("%w: %q: field %q is not key=value", ErrNoRecord, txt, f)
		}
		if k == "id" && id == "" {
			id = v
		}
	}
	// sts-id = 1*32(ALPHA / DIGIT)
	if id == "" || len(id) > 32 || strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) >= 0 {
		return "", fmt.Errorf("%w: %q: id must be 1 to 32 letters or digits", ErrNoRecord, txt)
	}
	return id, nil
}
