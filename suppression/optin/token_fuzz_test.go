package optin

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/suppression/token"
)

// FuzzParseToken: Parse never panics; a token it accepts is exactly the one
// Mint gives for its claim; a minted token parses back to its claim within
// its ttl and is refused after; and a minted token with one character changed
// is refused.
func FuzzParseToken(f *testing.F) {
	const ttl = 7 * 24 * time.Hour
	tk, err := NewTokens(bytes.Repeat([]byte{9}, 32), ttl)
	if err != nil {
		f.Fatal(err)
	}
	issued := time.Date(2026, 10, 1, 9, 30, 0, 0, time.UTC)
	good := tk.Mint(Claim{Address: "ana@acme.example", List: "news", Issued: issued})
	for _, s := range []struct {
		tok, addr, list string
		unix            int64
		pos             uint
		sub             byte
	}{
		{good, "ana@acme.example", "news", issued.Unix(), 0, 'A'},
		{good[:len(good)-2], "Zoë@Ünïcode.example", "product-news", 0, 7, 'z'},
		{"", "", "", -1, 0, '-'},
		{"AQ", "a@b", "l", 1 << 62, 40, '_'},
		{strings.Repeat("A", 60), "x\x00y@example.com", "l", -1 << 62, 3, '0'},
		{"not a token!", "bob@example.com", "news", 1700000000, 1000, 'B'},
	} {
		f.Add(s.tok, s.addr, s.list, s.unix, s.pos, s.sub)
	}
	f.Fuzz(func(t *testing.T, tok, addr, list string, unix int64, pos uint, sub byte) {
		now := time.Unix(unix, 0)
		if c, err := tk.Parse(tok, now); err == nil {
			// A current token is the one Mint gives; one of an older version
			// (still accepted, never minted) re-mints to a current token of
			// the same claim.
			again := tk.Mint(c)
			if raw, _ := base64.RawURLEncoding.DecodeString(tok); len(raw) > 0 && raw[0] == token.Version && again != tok {
				t.Fatalf("Parse(%q) = %+v, which mints %q", tok, c, again)
			}
			if c2, err := tk.Parse(again, now); err != nil || c2 != c {
				t.Fatalf("Parse(%q) = %+v, re-minted as %q, which parses as %+v, %v", tok, c, again, c2, err)
			}
			if c.Issued.After(now.Add(clockSkew)) || now.Sub(c.Issued) > ttl {
				t.Fatalf("Parse(%q) at %v accepted a token issued %v", tok, now, c.Issued)
			}
		} else if !errors.Is(err, ErrBadToken) {
			t.Fatalf("Parse(%q) = %v, not ErrBadToken", tok, err)
		}

		if list == "" || addr == "" || strings.Contains(list, "\x00") {
			return // what a confirmation is minted for: a list without NUL, an address
		}
		claim := Claim{Address: addr, List: list, Issued: now}
		minted := tk.Mint(claim)
		got, err := tk.Parse(minted, now)
		if err != nil || got.Address != addr || got.List != list || !got.Issued.Equal(now) {
			t.Fatalf("Mint(%+v) parses back as %+v, %v", claim, got, err)
		}
		if _, err := tk.Parse(minted, now.Add(ttl+time.Second)); err == nil && now.Add(ttl+time.Second).After(now) {
			t.Fatalf("token issued %v accepted after its ttl", now)
		}
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		i := int(pos % uint(len(minted)))
		b := []byte(minted)
		b[i] = alphabet[int(sub)%len(alphabet)]
		if b[i] == minted[i] {
			b[i] = alphabet[(int(sub)+1)%len(alphabet)]
		}
		if c, err := tk.Parse(string(b), now); err == nil {
			t.Fatalf("tampered token %q (from %q) accepted as %+v", b, minted, c)
		}
	})
}
