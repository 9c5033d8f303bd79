package optin

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrBadToken is returned for a confirmation token that is forged, altered,
// expired or issued in the future.
var ErrBadToken = errors.New("optin: bad token")

const (
	tokenVersion = 1
	sivSize      = 16
	// clockSkew is how far in the future an issue time may lie.
	clockSkew = 5 * time.Minute
)

// Claim is what a confirmation token carries.
type Claim struct {
	Address, List string
	Issued        time.Time
}

// Tokens mints and parses confirmation tokens; safe for concurrent use.
//
// A token is base64url(1 || siv || AES-256-CTR(issued(8) || list || 0 || address))
// with siv = HMAC-SHA256(macKey, version || plaintext)[:16]: deterministic
// authenticated encryption, so the address cannot be read from the URL and any
// change is refused. Its keys derive from the token key through
// HMAC(tokenKey, "postwarden optin"), apart from the unsubscribe tokens' keys.
type Tokens struct {
	macKey []byte
	block  cipher.Block
	ttl    time.Duration
}

// NewTokens derives the opt-in keys from the token key; tokens expire after ttl.
func NewTokens(tokenKey []byte, ttl time.Duration) (*Tokens, error) {
	if len(tokenKey) < 32 {
		return nil, fmt.Errorf("optin tokens: key is %d bytes; want at least 32", len(tokenKey))
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("optin tokens: ttl %v must be positive", ttl)
	}
	base := derive(tokenKey, "postwarden optin")
	block, err := aes.NewCipher(derive(base, "enc"))
	if err != nil {
		return nil, fmt.Errorf("optin tokens: %w", err)
	}
	return &Tokens{macKey: derive(base, "mac"), block: block, ttl: ttl}, nil
}

func derive(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

func (t *Tokens) siv(plain []byte) []byte {
	m := hmac.New(sha256.New, t.macKey)
	m.Write([]byte{tokenVersion})
	m.Write(plain)
	return m.Sum(nil)[:sivSize]
}

// Mint returns the token for c (Issued is kept to the second).
func (t *Tokens) Mint(c Claim) string {
	plain := make([]byte, 8, 8+len(c.List)+1+len(c.Address))
	binary.BigEndian.PutUint64(plain, uint64(c.Issued.Unix()))
	plain = append(append(append(plain, c.List...), 0), c.Address...)
	iv := t.siv(plain)
	out := make([]byte, 1+sivSize+len(plain))
	out[0] = tokenVersion
	copy(out[1:], iv)
	cipher.NewCTR(t.block, iv).XORKeyStream(out[1+sivSize:], plain)
	return base64.RawURLEncoding.EncodeToString(out)
}

// Parse checks a token and its age at now.
func (t *Tokens) Parse(tok string, now time.Time) (Claim, error) {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(tok)
	if err != nil || len(raw) < 1+sivSize+8+3 || raw[0] != tokenVersion {
		return Claim{}, ErrBadToken
	}
	iv := raw[1 : 1+sivSize]
	plain := make([]byte, len(raw)-1-sivSize)
	cipher.NewCTR(t.block, iv).XORKeyStream(plain, raw[1+sivSize:])
	if !hmac.Equal(iv, t.siv(plain)) {
		return Claim{}, ErrBadToken
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(plain[:8])), 0)
	list, addr, ok := strings.Cut(string(plain[8:]), "\x00")
	if !ok || list == "" || addr == "" {
		return Claim{}, ErrBadToken
	}
	if now.Sub(issued) > t.ttl || issued.Sub(now) > clockSkew {
		return Claim{}, ErrBadToken
	}
	return Claim{Address: addr, List: list, Issued: issued}, nil
}
