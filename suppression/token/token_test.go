package token

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

var (
	root  = []byte("0123456789abcdef0123456789abcdef")
	kinds = []Kind{Unsubscribe, OptIn, VERP}
)

func codec(t testing.TB, k Kind) *Codec {
	t.Helper()
	c, err := New(root, k)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	payloads := [][]byte{{}, []byte("x"), []byte("c1\x00news\x00ana@example.com"), []byte(strings.Repeat("long ", 100))}
	for _, k := range kinds {
		c := codec(t, k)
		seen := map[string]bool{}
		for _, p := range payloads {
			tok := c.Mint(p)
			if tok != c.Mint(p) {
				t.Errorf("%s: Mint(%q) is not deterministic", k, p)
			}
			if seen[tok] {
				t.Errorf("%s: two payloads gave %q", k, tok)
			}
			seen[tok] = true
			raw := c.Seal(p)
			if raw[0] != Version || len(raw) != 1+tagSize(k)+len(p) {
				t.Errorf("%s: Seal(%q) = version %d, %d bytes", k, p, raw[0], len(raw))
			}
			if len(p) > 4 && bytes.Contains(raw, p) {
				t.Errorf("%s: payload %q readable in its token", k, p)
			}
			if got, err := c.Parse(tok); err != nil || !bytes.Equal(got, p) {
				t.Errorf("%s: Parse(Mint(%q)) = %q, %v", k, p, got, err)
			}
		}
	}
}

func TestEveryBitIsCovered(t *testing.T) {
	for _, k := range kinds {
		c := codec(t, k)
		raw := c.Seal([]byte("c1\x00news\x00ana@example.com"))
		// The version byte included: flipping it never reaches another format.
		for i := range raw {
			for bit := 0; bit < 8; bit++ {
				b := bytes.Clone(raw)
				b[i] ^= 1 << bit
				if p, err := c.Open(b); !errors.Is(err, ErrBad) {
					t.Fatalf("%s: flip byte %d bit %d: Open = %q, %v", k, i, bit, p, err)
				}
			}
		}
		for _, b := range [][]byte{nil, {Version}, raw[:1+tagSize(k)-1], append(bytes.Clone(raw), 0), raw[:len(raw)-1]} {
			if _, err := c.Open(b); !errors.Is(err, ErrBad) {
				t.Errorf("%s: Open(%x) = %v, want ErrBad", k, b, err)
			}
		}
		for i := 0; i < 200; i++ {
			b := make([]byte, 12+i)
			rand.Read(b)
			if _, err := c.Open(b); !errors.Is(err, ErrBad) {
				t.Fatalf("%s: random bytes accepted", k)
			}
		}
		for _, s := range []string{"", "%%%", c.Mint([]byte("x")) + "=="} {
			if _, err := c.Parse(s); !errors.Is(err, ErrBad) {
				t.Errorf("%s: Parse(%q) = %v, want ErrBad", k, s, err)
			}
		}
	}
}

// TestKindsAreSeparate: under one root key, no kind's token, current or of
// the format before this codec, opens as another kind.
func TestKindsAreSeparate(t *testing.T) {
	p := []byte("c1\x00news\x00ana@example.com")
	for _, from := range kinds {
		c := codec(t, from)
		minted := map[string][]byte{"current": c.Seal(p)}
		if c.legacy != nil {
			minted["version 1"] = c.legacy.seal(p)
		}
		if c.verp1 != nil {
			minted["verp 1"] = verp1(c.verp1, p)
		}
		for what, raw := range minted {
			if got, err := c.Open(raw); err != nil || !bytes.Equal(got, p) {
				t.Errorf("%s %s: Open = %q, %v", from, what, got, err)
			}
			for _, to := range kinds {
				if to == from {
					continue
				}
				if got, err := codec(t, to).Open(raw); !errors.Is(err, ErrBad) {
					t.Errorf("%s %s token opened as %s: %q, %v", from, what, to, got, err)
				}
			}
		}
	}
}

// verp1 mints VERP's first format, as mta/verp did before this codec.
func verp1(key, id []byte) []byte { return append(bytes.Clone(id), macVERP1(key, id)...) }

func TestNewErrors(t *testing.T) {
	if _, err := New(make([]byte, MinKeySize-1), Unsubscribe); err == nil {
		t.Error("short key accepted")
	}
	if _, err := New(root, Kind("other")); err == nil {
		t.Error("unknown kind accepted")
	}
}

// A token with a line break in it is refused: base64 decoding skips CR and
// LF, so it would open as a second spelling of a minted token (the optin
// fuzz test found one).
func TestLineBreakRefused(t *testing.T) {
	for _, k := range kinds {
		c := codec(t, k)
		tok := c.Mint([]byte("c1\x00news\x00ana@example.com"))
		for _, bad := range []string{tok[:5] + "\n" + tok[5:], tok[:9] + "\r\n" + tok[9:], tok + "\n"} {
			if _, err := c.Parse(bad); !errors.Is(err, ErrBad) {
				t.Errorf("%s: Parse(%q) = %v; want ErrBad", k, bad, err)
			}
		}
	}
}
