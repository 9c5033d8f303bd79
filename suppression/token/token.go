// Package token is the one codec of the tokens postwarden puts in mail:
// unsubscribe links and mailto addresses, opt-in confirmation links and VERP
// envelope senders.
//
// Contract: a token is version(1) || siv || AES-256-CTR(payload) with
// siv = HMAC-SHA256(macKey, version || payload)[:tagSize], deterministic
// authenticated encryption (SIV): the same payload always gives the same
// token, the payload cannot be read from it, and any change to any byte,
// the version included, is refused. The keys of each Kind derive from the
// root key through HMAC(root, "postwarden token "+kind), so a token of one
// kind never opens as another. Tokens minted before this codec (each kind
// had its own) still open; they are never minted again.
package token

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ErrBad is returned for any token that is not one this codec minted.
var ErrBad = errors.New("token: bad token")

// Kind says what a token is for; each kind has its own keys.
type Kind string

// The kinds of token.
const (
	Unsubscribe Kind = "unsubscribe"
	OptIn       Kind = "optin"
	VERP        Kind = "verp"
)

// Version is the first byte of every token minted now.
const Version = 2

// MinKeySize is the shortest root key New accepts.
const MinKeySize = 16

// tagSize is the synthetic IV's length per kind. VERP's is 10 bytes so that
// a 24-byte queue id still fits a 64-octet local part (RFC 5321 §4.5.3.1.1).
func tagSize(k Kind) int {
	if k == VERP {
		return 10
	}
	return 16
}

// scheme is one version of the construction under one pair of keys.
type scheme struct {
	version    byte
	tag        int
	macVersion bool // false only for unsubscribe version 1
	mac        []byte
	block      cipher.Block
}

// Codec seals and opens the tokens of one kind; safe for concurrent use.
type Codec struct {
	kind   Kind
	cur    scheme
	legacy *scheme // the kind's version 1, if it had one
	verp1  []byte  // key of VERP's unversioned id || MAC tokens
}

// New derives the keys of kind from root (at least MinKeySize bytes).
func New(root []byte, kind Kind) (*Codec, error) {
	if len(root) < MinKeySize {
		return nil, fmt.Errorf("token: %s key is %d bytes; want at least %d", kind, len(root), MinKeySize)
	}
	base := derive(root, "postwarden token "+string(kind))
	cur, err := newScheme(Version, tagSize(kind), true, derive(base, "mac"), derive(base, "enc"))
	if err != nil {
		return nil, fmt.Errorf("token: %s: %w", kind, err)
	}
	c := &Codec{kind: kind, cur: cur}
	// The formats of before this codec, with their own key derivations.
	switch kind {
	case Unsubscribe:
		// Its MAC did not cover the version byte; Open still demands 1 there.
		s, err := newScheme(1, 16, false, derive(root, "postwarden mac"), derive(root, "postwarden enc"))
		if err != nil {
			return nil, fmt.Errorf("token: %s: %w", kind, err)
		}
		c.legacy = &s
	case OptIn:
		b := derive(root, "postwarden optin")
		s, err := newScheme(1, 16, true, derive(b, "mac"), derive(b, "enc"))
		if err != nil {
			return nil, fmt.Errorf("token: %s: %w", kind, err)
		}
		c.legacy = &s
	case VERP:
		c.verp1 = append([]byte(nil), root...)
	default:
		return nil, fmt.Errorf("token: unknown kind %q", kind)
	}
	return c, nil
}

func newScheme(version byte, tag int, macVersion bool, macKey, encKey []byte) (scheme, error) {
	block, err := aes.NewCipher(encKey) // AES-256
	if err != nil {
		return scheme{}, err
	}
	return scheme{version: version, tag: tag, macVersion: macVersion, mac: macKey, block: block}, nil
}

// derive returns HMAC-SHA256(key, label).
func derive(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

func (s *scheme) siv(payload []byte) []byte {
	m := hmac.New(sha256.New, s.mac)
	if s.macVersion {
		m.Write([]byte{s.version})
	}
	m.Write(payload)
	return m.Sum(nil)[:s.tag]
}

// xor runs AES-CTR with the siv, zero-padded to a block, as its IV.
func (s *scheme) xor(dst, src, siv []byte) {
	iv := make([]byte, aes.BlockSize)
	copy(iv, siv)
	cipher.NewCTR(s.block, iv).XORKeyStream(dst, src)
}

func (s *scheme) seal(payload []byte) []byte {
	iv := s.siv(payload)
	out := make([]byte, 1+s.tag+len(payload))
	out[0] = s.version
	copy(out[1:], iv)
	s.xor(out[1+s.tag:], payload, iv)
	return out
}

func (s *scheme) open(raw []byte) ([]byte, bool) {
	if len(raw) < 1+s.tag || raw[0] != s.version {
		return nil, false
	}
	iv := raw[1 : 1+s.tag]
	payload := make([]byte, len(raw)-1-s.tag)
	s.xor(payload, raw[1+s.tag:], iv)
	return payload, hmac.Equal(iv, s.siv(payload))
}

// Kind is the codec's kind.
func (c *Codec) Kind() Kind { return c.kind }

// Seal returns the token bytes of payload in the current version.
func (c *Codec) Seal(payload []byte) []byte { return c.cur.seal(payload) }

// Open checks raw and returns its payload; anything wrong gives ErrBad.
func (c *Codec) Open(raw []byte) ([]byte, error) {
	if p, ok := c.cur.open(raw); ok {
		return p, nil
	}
	if c.legacy != nil {
		if p, ok := c.legacy.open(raw); ok {
			return p, nil
		}
	}
	if c.verp1 != nil {
		if p, ok := c.openVERP1(raw); ok {
			return p, nil
		}
	}
	return nil, ErrBad
}

// verp1Tag is the MAC length of VERP's first tokens.
const verp1Tag = 10

// openVERP1 checks VERP's first format, id || HMAC(key, "verp" || id)[:10]
// in the clear.
func (c *Codec) openVERP1(raw []byte) ([]byte, bool) {
	if len(raw) <= verp1Tag {
		return nil, false
	}
	id, sum := raw[:len(raw)-verp1Tag], raw[len(raw)-verp1Tag:]
	return append([]byte(nil), id...), hmac.Equal(sum, macVERP1(c.verp1, id))
}

// macVERP1 returns HMAC-SHA256(key, "verp" || id)[:10].
func macVERP1(key, id []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("verp"))
	m.Write(id)
	return m.Sum(nil)[:verp1Tag]
}

// b64 is unpadded base64url; Strict, since non-zero padding bits would let
// two spellings decode alike.
var b64 = base64.RawURLEncoding.Strict()

// Mint returns Seal(payload) in unpadded base64url, for URLs.
func (c *Codec) Mint(payload []byte) string { return b64.EncodeToString(c.Seal(payload)) }

// Parse is Open of a token written by Mint. A token with a line break is
// refused: the base64 decoder skips CR and LF even when Strict, so it would
// be a second spelling of the token Mint gives.
func (c *Codec) Parse(tok string) ([]byte, error) {
	if strings.ContainsAny(tok, "\r\n") {
		return nil, ErrBad
	}
	raw, err := b64.DecodeString(tok)
	if err != nil {
		return nil, ErrBad
	}
	return c.Open(raw)
}
