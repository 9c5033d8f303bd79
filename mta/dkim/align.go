package dkim

import "strings"

// Aligned reports whether a signature by signingDomain aligns with the
// From domain fromDomain under relaxed DMARC alignment (RFC 7489 §3.1.1):
// the domains are equal, or fromDomain is below signingDomain. fromDomain
// is expected normalised (lower case, no trailing dot); signingDomain is
// compared case-insensitively, a trailing dot ignored.
func Aligned(signingDomain, fromDomain string) bool {
	kd := strings.ToLower(strings.TrimSuffix(signingDomain, "."))
	return fromDomain == kd || strings.HasSuffix(fromDomain, "."+kd)
}
