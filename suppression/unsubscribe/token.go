// Package unsubscribe mints unsubscribe tokens and serves the unsubscribe page.
//
// Contract: a token is deterministic authenticated encryption of (campaign,
// list, address, and the language of the message when it has one) under a 32-byte secret key, so the address cannot be read
// from the URL and any altered token is rejected with ErrBadToken. The HTTP
// handler changes nothing on GET (mail scanners prefetch links); only a POST
// suppresses, and it answers 200, never a redirect (RFC 8058 §3.2).
package unsubscribe

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/token"
)

// KeySize is the length of the token key in bytes.
const KeySize = 32

// ErrBadToken is returned by Parse for any token that is not one we minted.
var ErrBadToken = errors.New("unsubscribe: bad token")

// Claim is what a token carries. Language is the language a campaign's
// message was written in ("" when the campaign names none): the pages the
// link opens speak it, whatever the browser asks for.
type Claim struct{ Address, List, Campaign, Language string }

// Tokens mints and parses tokens (suppression/token, kind Unsubscribe); safe
// for concurrent use.
type Tokens struct {
	codec     *token.Codec
	publicURL string
}

// LoadOrCreateKey reads the token key at path, creating it (32 random bytes,
// mode 0600, parent directory 0700) if it does not exist. It refuses a key
// file readable by group or others, or shorter than 32 bytes.
func LoadOrCreateKey(path string) ([]byte, error) { return sealed.KeyFile(path, "token key") }

// NewTokens derives the unsubscribe keys from key; publicURL is the base of
// unsubscribe URLs (a trailing "/" is dropped).
func NewTokens(key []byte, publicURL string) (*Tokens, error) {
	if len(key) < KeySize {
		return nil, fmt.Errorf("unsubscribe tokens: key is %d bytes; want at least %d", len(key), KeySize)
	}
	publicURL = strings.TrimRight(strings.TrimSpace(publicURL), "/")
	u, err := url.Parse(publicURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("unsubscribe tokens: public URL %q: want an absolute http(s) URL without query", publicURL)
	}
	c, err := token.New(key, token.Unsubscribe)
	if err != nil {
		return nil, fmt.Errorf("unsubscribe tokens: %w", err)
	}
	return &Tokens{codec: c, publicURL: publicURL}, nil
}

// payload is campaign NUL list NUL address, then NUL language when there is
// one: a claim without a language gives the same token as before languages.
func payload(c Claim) []byte {
	p := c.Campaign + "\x00" + c.List + "\x00" + c.Address
	if c.Language != "" {
		p += "\x00" + c.Language
	}
	return []byte(p)
}

// Mint returns the token for c, unpadded base64url. The same claim always
// gives the same token. Fields must not contain NUL.
func (t *Tokens) Mint(c Claim) string { return t.codec.Mint(payload(c)) }

// Parse checks and decrypts a token; anything wrong gives ErrBadToken.
func (t *Tokens) Parse(tok string) (Claim, error) {
	p, err := t.codec.Parse(tok)
	if err != nil {
		return Claim{}, ErrBadToken
	}
	return claim(p)
}

// claim splits an opened payload.
func claim(p []byte) (Claim, error) {
	parts := strings.SplitN(string(p), "\x00", 4) // an address holds no NUL
	if len(parts) < 3 {
		return Claim{}, ErrBadToken
	}
	c := Claim{Campaign: parts[0], List: parts[1], Address: parts[2]}
	if len(parts) == 4 {
		c.Language = parts[3]
	}
	return c, nil
}

// UnsubscribeURL returns publicURL + "/u/" + the token for the claim.
func (t *Tokens) UnsubscribeURL(address, list, campaign string) string {
	return t.URL(Claim{Address: address, List: list, Campaign: campaign})
}

// URL returns publicURL + "/u/" + the token for c.
func (t *Tokens) URL(c Claim) string { return t.publicURL + "/u/" + t.Mint(c) }
