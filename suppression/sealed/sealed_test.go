package sealed

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func testBox(t testing.TB, fill byte) *Box {
	t.Helper()
	b, err := New(bytes.Repeat([]byte{fill}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	b := testBox(t, 7)
	for _, p := range []string{"", "ana@example.com", "Jörg Müller", strings.Repeat("x", 10000), "\x00\xff"} {
		s := b.SealString(p, "subscriber:name")
		if len(s) != len(p)+Overhead || s[0] != version {
			t.Fatalf("Seal(%q): %d bytes, version %d", p, len(s), s[0])
		}
		if p != "" && bytes.Contains(s, []byte(p)) {
			t.Errorf("Seal(%q) contains the plain text", p)
		}
		got, err := b.OpenString(s, "subscriber:name")
		if err != nil || got != p {
			t.Errorf("Open(Seal(%q)) = %q, %v", p, got, err)
		}
	}
	// Random nonces: sealing twice gives different bytes.
	if bytes.Equal(b.SealString("a", "c"), b.SealString("a", "c")) {
		t.Error("Seal is deterministic; want a random nonce")
	}
}

func TestWrongContextOrKey(t *testing.T) {
	b := testBox(t, 7)
	s := b.SealString("Ana", "subscriber:name")
	for _, ctx := range []string{"subscriber:company", "", "subscriber:name ", "subscriber:nam"} {
		if _, err := b.Open(s, ctx); !errors.Is(err, ErrOpen) {
			t.Errorf("Open with context %q: err = %v, want ErrOpen", ctx, err)
		}
	}
	if _, err := testBox(t, 8).Open(s, "subscriber:name"); !errors.Is(err, ErrOpen) {
		t.Errorf("Open under another key: err = %v, want ErrOpen", err)
	}
}

func TestTampered(t *testing.T) {
	b := testBox(t, 7)
	s := b.SealString("ana@example.com", "subscriber:address")
	for i := range s {
		for bit := 0; bit < 8; bit++ {
			c := bytes.Clone(s)
			c[i] ^= 1 << bit
			if _, err := b.Open(c, "subscriber:address"); !errors.Is(err, ErrOpen) {
				t.Fatalf("flip byte %d bit %d: err = %v, want ErrOpen", i, bit, err)
			}
		}
	}
	for n := 0; n < len(s); n++ {
		if _, err := b.Open(s[:n], "subscriber:address"); !errors.Is(err, ErrOpen) {
			t.Fatalf("truncated to %d: err = %v, want ErrOpen", n, err)
		}
	}
	if _, err := b.Open(append(bytes.Clone(s), 0), "subscriber:address"); !errors.Is(err, ErrOpen) {
		t.Fatalf("extended: err = %v, want ErrOpen", err)
	}
}

func TestIndex(t *testing.T) {
	b := testBox(t, 7)
	i1 := b.Index("ana@example.com")
	if len(i1) != IndexSize {
		t.Fatalf("Index: %d bytes", len(i1))
	}
	if !bytes.Equal(i1, testBox(t, 7).Index("ana@example.com")) {
		t.Error("Index is not stable for the same key")
	}
	if bytes.Equal(i1, b.Index("bob@example.com")) {
		t.Error("two values give the same index")
	}
	if bytes.Equal(i1, testBox(t, 8).Index("ana@example.com")) {
		t.Error("Index does not depend on the key")
	}
	if h := b.IndexHex("ana@example.com"); len(h) != 2*IndexSize || strings.Contains(h, "ana") {
		t.Errorf("IndexHex = %q", h)
	}
	if got := b.AppendIndex([]byte("p:"), "ana@example.com"); !bytes.Equal(got, append([]byte("p:"), i1...)) {
		t.Errorf("AppendIndex = %x", got)
	}
	// Concurrent use of the pooled MACs gives the same answers.
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if !bytes.Equal(b.Index("ana@example.com"), i1) {
					t.Error("concurrent Index differs")
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestNewKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := New(make([]byte, n)); err == nil {
			t.Errorf("New with a %d-byte key: no error", n)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "data.key")
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
	if di, err := os.Stat(dir); err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("key dir mode %v, %v; want 0700", di.Mode(), err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("second load: %x, %v; want the same key", k2, err)
	}

	// Readable by group or others: refused, naming the path and the fix.
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreateKey(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key: err = %v", err)
	}
	if err := os.Chmod(path, 0o604); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil {
		t.Error("world-readable key: no error")
	}

	// Wrong size: refused.
	for _, n := range []int{16, 33} {
		p := filepath.Join(dir, "short.key")
		os.Remove(p)
		if err := os.WriteFile(p, make([]byte, n), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateKey(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%d-byte key: err = %v", n, err)
		}
	}

	// Not a regular file: refused.
	sub := filepath.Join(dir, "adir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(sub); err == nil {
		t.Error("directory as key: no error")
	}
}

func BenchmarkSeal(b *testing.B) {
	box := testBox(b, 7)
	p := []byte("ana.ruiz@example.com")
	b.ReportAllocs()
	for b.Loop() {
		box.Seal(p, "subscriber:address")
	}
}

func BenchmarkOpen(b *testing.B) {
	box := testBox(b, 7)
	s := box.Seal([]byte("ana.ruiz@example.com"), "subscriber:address")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := box.Open(s, "subscriber:address"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIndex(b *testing.B) {
	box := testBox(b, 7)
	b.ReportAllocs()
	for b.Loop() {
		box.Index("ana.ruiz@example.com")
	}
}
