package optin

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/postwarden/postwarden/suppression/token"
)

// ErrBadToken is returned for a confirmation token that is forged, altered,
// expired or issued in the future.
var ErrBadToken = errors.New("optin: bad token")

// clockSkew is how far in the future an issue time may lie.
const clockSkew = 5 * time.Minute

// Claim is what a confirmation token carries.
type Claim struct {
	Address, List string
	Issued        time.Time
}

// Tokens mints and parses confirmation tokens; safe for concurrent use.
//
// A token is the suppression/token codec (kind OptIn) of
// issued(8) || list || 0 || address: deterministic authenticated encryption,
// so the address cannot be read from the URL and any change is refused; its
// keys are apart from the unsubscribe tokens' keys.
type Tokens struct {
	codec *token.Codec
	ttl   time.Duration
}

// NewTokens derives the opt-in keys from the token key; tokens expire after ttl.
func NewTokens(tokenKey []byte, ttl time.Duration) (*Tokens, error) {
	if len(tokenKey) < 32 {
		return nil, fmt.Errorf("optin tokens: key is %d bytes; want at least 32", len(tokenKey))
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("optin tokens: ttl %v must be positive", ttl)
	}
	c, err := token.New(tokenKey, token.OptIn)
	if err != nil {
		return nil, fmt.Errorf("optin tokens: %w", err)
	}
	return &Tokens{codec: c, ttl: ttl}, nil
}

// Mint returns the token for c (Issued is kept to the second).
func (t *Tokens) Mint(c Claim) string {
	plain := make([]byte, 8, 8+len(c.List)+1+len(c.Address))
	binary.BigEndian.PutUint64(plain, uint64(c.Issued.Unix()))
	plain = append(append(append(plain, c.List...), 0), c.Address...)
	return t.codec.Mint(plain)
}

// Parse checks a token and its age at now.
func (t *Tokens) Parse(tok string, now time.Time) (Claim, error) {
	plain, err := t.codec.Parse(tok)
	if err != nil || len(plain) < 8+3 {
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
