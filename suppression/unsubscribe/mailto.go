package unsubscribe

import (
	"encoding/base32"
	"strings"
)

// MailtoPrefix starts the local part of every mailto unsubscribe address.
const MailtoPrefix = "unsubscribe+"

// b32 is base32 without padding: tokens are written lower-case and read in
// any case, since some relays change the case of local parts.
var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// MailtoURI returns the RFC 2369 mailto form of the unsubscribe link:
// mailto:unsubscribe+TOKEN@bounceDomain?subject=unsubscribe, where TOKEN is
// the lower-case base32 of the same bytes as Mint's token.
//
// Note: the local part is longer than RFC 5321 §4.5.3.1.1's 64 octets for
// most claims (about 1.6 characters per byte of campaign, list and address);
// most MTAs accept it, some may not, so the https link comes first.
func (t *Tokens) MailtoURI(address, list, campaign, bounceDomain string) string {
	raw := t.codec.Seal(payload(Claim{Address: address, List: list, Campaign: campaign}))
	return "mailto:" + MailtoPrefix + strings.ToLower(b32.EncodeToString(raw)) + "@" + bounceDomain + "?subject=unsubscribe"
}

// ParseMailto checks the local part of a mailto unsubscribe address
// ("unsubscribe+TOKEN" or the bare TOKEN, any letter case); anything that is
// not a token we minted gives ErrBadToken.
func (t *Tokens) ParseMailto(localpart string) (Claim, error) {
	tok := strings.TrimSpace(localpart)
	if len(tok) >= len(MailtoPrefix) && strings.EqualFold(tok[:len(MailtoPrefix)], MailtoPrefix) {
		tok = tok[len(MailtoPrefix):]
	}
	up := strings.ToUpper(tok)
	raw, err := b32.DecodeString(up)
	// Canonical spelling only, like Parse's strict base64.
	if err != nil || len(raw) == 0 || b32.EncodeToString(raw) != up {
		return Claim{}, ErrBadToken
	}
	p, err := t.codec.Open(raw)
	if err != nil {
		return Claim{}, ErrBadToken
	}
	return claim(p)
}
