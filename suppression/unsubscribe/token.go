// Package unsubscribe mints unsubscribe tokens and serves the unsubscribe page.
//
// Contract: a token is deterministic authenticated encryption of (campaign,
// list, address) under a 32-byte secret key, so the address cannot be read
// from the URL and any altered token is rejected with ErrBadToken. The HTTP
// handler changes nothing on GET (mail scanners prefetch links); only a POST
// suppresses, and it answers 200, never a redirect (RFC 8058 §3.2).
package unsubscribe

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/postwarden/postwarden/suppression/sealed"
)

// KeySize is the length of the token key in bytes.
const KeySize = 32

// tokenVersion is the first byte of every token.
const tokenVersion = 1

// sivSize is the length of the synthetic IV (a truncated HMAC-SHA256).
const sivSize = 16

// ErrBadToken is returned by Parse for any token that is not one we minted.
var ErrBadToken = errors.New("unsubscribe: bad token")

// Claim is what a token carries.
type Claim struct{ Address, List, Campaign string }

// Tokens mints and parses tokens; safe for concurrent use.
type Tokens struct {
	macKey, encKey []byte
	block          cipher.Block
	publicURL      string
}

// LoadOrCreateKey reads the token key at path, creating it (32 random bytes,
// mode 0600, parent directory 0700) if it does not exist. It refuses a key
// file readable by group or others, or shorter than 32 bytes.
func LoadOrCreateKey(path string) ([]byte, error) { return sealed.KeyFile(path, "token key") }

// NewTokens derives the MAC and encryption keys from key; publicURL is the
// base of unsubscribe URLs (a trailing "/" is dropped).
func NewTokens(key []byte, publicURL string) (*Tokens, error) {
	if len(key) < KeySize {
		return nil, fmt.Errorf("unsubscribe tokens: key is %d bytes; want at least %d", len(key), KeySize)
	}
	publicURL = strings.TrimRight(strings.TrimSpace(publicURL), "/")
	u, err := url.Parse(publicURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("unsubscribe tokens: public URL %q: want an absolute http(s) URL without query", publicURL)
	}
	t := &Tokens{
		macKey:    derive(key, "postwarden mac"),
		encKey:    derive(key, "postwarden enc"),
		publicURL: publicURL,
	}
	t.block, err = aes.NewCipher(t.encKey) // AES-256
	if err != nil {
		return nil, fmt.Errorf("unsubscribe tokens: %w", err)
	}
	return t, nil
}

// derive returns HMAC-SHA256(key, label).
func derive(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// siv returns HMAC-SHA256(macKey, payload)[:16].
func (t *Tokens) siv(payload []byte) []byte {
	m := hmac.New(sha256.New, t.macKey)
	m.Write(payload)
	return m.Sum(nil)[:sivSize]
}

// Mint returns the token for c: base64url(1 || siv || AES-256-CTR(payload)).
// The same claim always gives the same token. Fields must not contain NUL.
func (t *Tokens) Mint(c Claim) string {
	payload := []byte(c.Campaign + "\x00" + c.List + "\x00" + c.Address)
	iv := t.siv(payload)
	out := make([]byte, 1+sivSize+len(payload))
	out[0] = tokenVersion
	copy(out[1:], iv)
	cipher.NewCTR(t.block, iv).XORKeyStream(out[1+sivSize:], payload)
	return base64.RawURLEncoding.EncodeToString(out)
}

// Parse checks and decrypts a token; anything wrong gives ErrBadToken.
func (t *Tokens) Parse(tok string) (Claim, error) {
	// Strict: non-zero padding bits would let two spellings decode alike.
	raw, err := base64.RawURLEncoding.Strict().DecodeString(tok)
	if err != nil || len(raw) < 1+sivSize+2 || raw[0] != tokenVersion {
		return Claim{}, ErrBadToken
	}
	iv := raw[1 : 1+sivSize]
	payload := make([]byte, len(raw)-1-sivSize)
	cipher.NewCTR(t.block, iv).XORKeyStream(payload, raw[1+sivSize:])
	if !hmac.Equal(iv, t.siv(payload)) {
		return Claim{}, ErrBadToken
	}
	parts := strings.SplitN(string(payload), "\x00", 3)
	if len(parts) != 3 {
		return Claim{}, ErrBadToken
	}
	return Claim{Campaign: parts[0], List: parts[1], Address: parts[2]}, nil
}

// UnsubscribeURL returns publicURL + "/u/" + the token for the claim.
func (t *Tokens) UnsubscribeURL(address, list, campaign string) string {
	return t.publicURL + "/u/" + t.Mint(Claim{Address: address, List: list, Campaign: campaign})
}
