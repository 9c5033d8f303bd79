package unsubscribe

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testTokens(t testing.TB) *Tokens {
	t.Helper()
	key := bytes.Repeat([]byte{7}, KeySize)
	tk, err := NewTokens(key, "https://mail.example.com/")
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestTokenRoundTrip(t *testing.T) {
	tk := testTokens(t)
	claims := []Claim{
		{Address: "ana@example.com", List: "product-news", Campaign: "2025-03-launch"},
		{Address: "Ana.Ruiz@Example.COM", List: "", Campaign: ""},
		{Address: "jörg@xn--mller-kva.example", List: "Neuigkeiten – März", Campaign: "kampagne/ü"},
		{Address: "李@例え.jp", List: "ニュース", Campaign: "c"},
		{Address: "a@b.c", List: strings.Repeat("l", 300), Campaign: strings.Repeat("c", 300)},
	}
	seen := map[string]bool{}
	for _, c := range claims {
		tok := tk.Mint(c)
		if seen[tok] {
			t.Errorf("two claims gave the same token %q", tok)
		}
		seen[tok] = true
		if tok != tk.Mint(c) {
			t.Errorf("Mint(%+v) is not deterministic", c)
		}
		if strings.Contains(tok, "example") || strings.ContainsAny(tok, "+/=") {
			t.Errorf("token %q leaks plain text or is not base64url without padding", tok)
		}
		got, err := tk.Parse(tok)
		if err != nil || got != c {
			t.Errorf("Parse(Mint(%+v)) = %+v, %v", c, got, err)
		}
	}
	if u := tk.UnsubscribeURL("ana@example.com", "news", "c1"); !strings.HasPrefix(u, "https://mail.example.com/u/") ||
		strings.Contains(u, "ana") {
		t.Errorf("UnsubscribeURL = %q", u)
	}
}

func TestTokenTampering(t *testing.T) {
	tk := testTokens(t)
	tok := tk.Mint(Claim{Address: "ana@example.com", List: "news", Campaign: "c1"})
	raw, _ := base64.RawURLEncoding.DecodeString(tok)

	// Every single bit flip in the decoded token is rejected.
	for i := range raw {
		for bit := 0; bit < 8; bit++ {
			b := bytes.Clone(raw)
			b[i] ^= 1 << bit
			if _, err := tk.Parse(base64.RawURLEncoding.EncodeToString(b)); !errors.Is(err, ErrBadToken) {
				t.Fatalf("flip byte %d bit %d: err = %v, want ErrBadToken", i, bit, err)
			}
		}
	}
	// Every one-character change of the text is rejected.
	for i := range tok {
		for _, c := range "AQg_-" {
			if byte(c) == tok[i] {
				continue
			}
			alt := tok[:i] + string(c) + tok[i+1:]
			if _, err := tk.Parse(alt); !errors.Is(err, ErrBadToken) {
				t.Fatalf("change char %d to %c: err = %v", i, c, err)
			}
		}
	}
	// Changing only the unused low bits of the last character is rejected too
	// (40 raw bytes: the last character carries 4 padding bits).
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(raw)%3 == 0 {
		t.Fatalf("test token has no padding bits (%d bytes)", len(raw))
	}
	last := strings.IndexByte(alphabet, tok[len(tok)-1])
	padded := tok[:len(tok)-1] + string(alphabet[last^1])
	if _, err := tk.Parse(padded); !errors.Is(err, ErrBadToken) {
		t.Errorf("token with non-zero padding bits accepted: %v", err)
	}
	other, _ := NewTokens(bytes.Repeat([]byte{8}, KeySize), "https://x.example")
	for _, bad := range []string{"", "x", "AAAA", tok + "A", tok[:len(tok)-1], other.Mint(Claim{Address: "ana@example.com"}), "%%%", tok + "=="} {
		if _, err := tk.Parse(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("Parse(%q): err = %v, want ErrBadToken", bad, err)
		}
	}
	for i := 0; i < 200; i++ {
		b := make([]byte, 20+i)
		rand.Read(b)
		if _, err := tk.Parse(base64.RawURLEncoding.EncodeToString(b)); !errors.Is(err, ErrBadToken) {
			t.Fatalf("random garbage accepted: %v", err)
		}
	}
}

func TestNewTokensErrors(t *testing.T) {
	key := bytes.Repeat([]byte{1}, KeySize)
	if _, err := NewTokens(key[:16], "https://x.example"); err == nil {
		t.Error("short key accepted")
	}
	for _, u := range []string{"", "mail.example.com", "ftp://x.example", "https://x.example/?a=b", "https://"} {
		if _, err := NewTokens(key, u); err == nil {
			t.Errorf("public URL %q accepted", u)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "token.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != KeySize {
		t.Fatalf("key is %d bytes", len(k1))
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %v; want 0700", di.Mode())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("second load: %v, same=%v", err, bytes.Equal(k1, k2))
	}

	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "readable by group or others (mode 640); chmod 600 it") {
		t.Errorf("group-readable key: err = %v", err)
	}

	short := filepath.Join(t.TempDir(), "short.key")
	if err := os.WriteFile(short, []byte("too short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(short); err == nil || !strings.Contains(err.Error(), "9 bytes") {
		t.Errorf("short key: err = %v", err)
	}
}
