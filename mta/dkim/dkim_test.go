package dkim

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

var (
	keysOnce sync.Once
	rsaKey   *Key
	edKey    *Key
)

// testKeys creates one RSA and one Ed25519 key for example.com, shared by the tests.
func testKeys(t testing.TB) (*Key, *Key) {
	keysOnce.Do(func() {
		mk := func(kt, sel string) *Key {
			pemBytes, err := Generate(kt)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := ParsePrivateKey(pemBytes)
			if err != nil {
				t.Fatal(err)
			}
			return &Key{Domain: "example.com", Selector: sel, Signer: signer}
		}
		rsaKey, edKey = mk("rsa", "rsa1"), mk("ed25519", "ed1")
	})
	if rsaKey == nil || edKey == nil {
		t.Fatal("test keys not created")
	}
	return rsaKey, edKey
}

func TestLoadOrCreate(t *testing.T) {
	for _, kt := range []string{"", "rsa", "ed25519"} {
		t.Run("type="+kt, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "dkim", "example.com.s1.key")
			k, created, err := LoadOrCreate(path, "Example.COM.", "s1", kt)
			if err != nil {
				t.Fatal(err)
			}
			if !created {
				t.Fatal("created = false for a new file")
			}
			want := kt
			if want == "" {
				want = "rsa"
			}
			if k.Type() != want || k.Domain != "example.com" || k.Selector != "s1" || k.Path != path {
				t.Fatalf("key = %+v type %s", k, k.Type())
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("key mode %v, want 0600", fi.Mode().Perm())
			}
			di, err := os.Stat(filepath.Dir(path))
			if err != nil {
				t.Fatal(err)
			}
			if di.Mode().Perm() != 0o700 {
				t.Fatalf("dir mode %v, want 0700", di.Mode().Perm())
			}
			data, _ := os.ReadFile(path)
			if !bytes.HasPrefix(data, []byte("-----BEGIN PRIVATE KEY-----")) {
				t.Fatalf("file is not PKCS#8 PEM: %.40q", data)
			}
			k2, created, err := LoadOrCreate(path, "example.com", "s1", kt)
			if err != nil {
				t.Fatal(err)
			}
			if created || k2.PublicKeyBase64() != k.PublicKeyBase64() {
				t.Fatalf("second load: created=%v, same key=%v", created, k2.PublicKeyBase64() == k.PublicKeyBase64())
			}
		})
	}
}

func TestLoadOrCreateRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(small)})
	good, err := Generate("ed25519")
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name, path, domain, selector, keyType, want string
	}{
		{"group readable", write("open.key", good, 0o640), "example.com", "s", "ed25519", "chmod 600"},
		{"small rsa", write("small.key", smallPEM, 0o600), "example.com", "s", "rsa", "1024 bits"},
		{"not pem", write("junk.key", []byte("hello"), 0o600), "example.com", "s", "", "no PEM block"},
		{"type mismatch", write("ed.key", good, 0o600), "example.com", "s", "rsa", "holds a ed25519 key"},
		{"bad type", filepath.Join(dir, "x.key"), "example.com", "s", "dsa", "unknown key type"},
		{"bad selector", filepath.Join(dir, "y.key"), "example.com", "a b", "", "selector"},
		{"bad domain", filepath.Join(dir, "z.key"), "", "s", "", "domain"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := LoadOrCreate(c.path, c.domain, c.selector, c.keyType)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
	// The refusal names the file.
	_, _, err = LoadOrCreate(filepath.Join(dir, "open.key"), "example.com", "s", "")
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "open.key")) {
		t.Fatalf("err = %v, want the path in it", err)
	}
}

func TestLoadPKCS1(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "pkcs1.key")
	data := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)})
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	k, created, err := LoadOrCreate(p, "example.com", "s", "")
	if err != nil || created || k.Type() != "rsa" {
		t.Fatalf("k=%v created=%v err=%v", k, created, err)
	}
}

func TestWriteNewRefusesOverwrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k.key")
	if err := WriteNew(p, "ed25519"); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p)
	err := WriteNew(p, "ed25519")
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("err = %v, want fs.ErrExist", err)
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Fatal("existing key was overwritten")
	}
}

func TestDNSRecord(t *testing.T) {
	rk, ek := testKeys(t)
	re := regexp.MustCompile(`"([^"]*)"`)
	for _, k := range []*Key{rk, ek} {
		rec := k.DNSRecord()
		prefix := k.Selector + "._domainkey.example.com. IN TXT ( "
		if !strings.HasPrefix(rec, prefix) || !strings.HasSuffix(rec, " )") {
			t.Fatalf("record = %q", rec)
		}
		var joined strings.Builder
		for _, m := range re.FindAllStringSubmatch(rec, -1) {
			if len(m[1]) > 255 {
				t.Fatalf("string of %d bytes > 255", len(m[1]))
			}
			joined.WriteString(m[1])
		}
		if joined.String() != k.TXTValue() {
			t.Fatalf("joined strings %q != TXTValue %q", joined.String(), k.TXTValue())
		}
		if !strings.HasPrefix(k.TXTValue(), "v=DKIM1; k="+k.Type()+"; p=") {
			t.Fatalf("TXTValue = %q", k.TXTValue())
		}
	}
	if n := strings.Count(rk.DNSRecord(), `"`); n < 4 {
		t.Fatalf("RSA record not split: %q", rk.DNSRecord())
	}
	if got := len(ek.PublicKeyBase64()); got != 44 { // 32 raw bytes, RFC 8463
		t.Fatalf("ed25519 p= has %d chars, want 44", got)
	}
}

const testMsg = "From: News <news@mail.example.com>\r\n" +
	"To: ana@example.org\r\n" +
	"Subject: Hello\r\n" +
	"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
	"Message-ID: <1@mail.example.com>\r\n" +
	"List-Unsubscribe: <https://mail.example.com/u/abc>\r\n" +
	"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n" +
	"Hello Ana,\r\nthis is the body.\r\n"

// verify checks every signature on msg against the given keys and returns the failures.
func verify(t *testing.T, msg []byte, keys ...*Key) []error {
	t.Helper()
	lookup := func(domain string) ([]string, error) {
		for _, k := range keys {
			if domain == k.RecordName() {
				return []string{k.TXTValue()}, nil
			}
		}
		return nil, errors.New("no such record " + domain)
	}
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(msg), &msgdkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("no signatures found")
	}
	var errs []error
	for _, v := range vs {
		if v.Err != nil {
			errs = append(errs, v.Err)
		}
	}
	return errs
}

func TestSignVerifies(t *testing.T) {
	rk, ek := testKeys(t)
	s := NewSigner([]*Key{ek, rk}) // order given does not matter: RSA goes first
	signed, err := s.Sign([]byte(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(signed, []byte(testMsg)) {
		t.Fatal("signed message does not end with the original")
	}
	sigs := bytes.Count(signed, []byte("DKIM-Signature:"))
	if sigs != 2 {
		t.Fatalf("%d signatures, want 2", sigs)
	}
	if i, j := bytes.Index(signed, []byte("a=rsa-sha256")), bytes.Index(signed, []byte("a=ed25519-sha256")); i < 0 || j < 0 || i > j {
		t.Fatalf("want the RSA signature first: rsa at %d, ed25519 at %d", i, j)
	}
	hdrs := string(signed[:len(signed)-len(testMsg)])
	if regexp.MustCompile(`[;\s]l=`).MatchString(hdrs) {
		t.Fatal("signature carries an l= tag")
	}
	if !strings.Contains(strings.Join(strings.Fields(hdrs), ""), "h=From:From:To") {
		t.Fatalf("From not over-signed: %s", hdrs)
	}
	if errs := verify(t, signed, rk, ek); len(errs) != 0 {
		t.Fatalf("verification failed: %v", errs)
	}
}

// Signatures is what Sign prepends: the fields alone, which verify when
// sent before the message, and the same errors.
func TestSignatures(t *testing.T) {
	rk, ek := testKeys(t)
	s := NewSigner([]*Key{rk, ek})
	head, err := s.Signatures([]byte(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(head, []byte("DKIM-Signature:")); n != 2 || !bytes.HasPrefix(head, []byte("DKIM-Signature:")) || !bytes.HasSuffix(head, []byte("\r\n")) {
		t.Fatalf("want 2 whole DKIM-Signature fields, got %q", head)
	}
	if bytes.Contains(head, []byte("\r\nSubject:")) {
		t.Fatal("Signatures returned message fields")
	}
	if errs := verify(t, append(head, testMsg...), rk, ek); len(errs) != 0 {
		t.Fatalf("verification failed: %v", errs)
	}
	other := strings.Replace(testMsg, "news@mail.example.com", "news@example.net", 1)
	if head, err := s.Signatures([]byte(other)); !errors.Is(err, ErrNoKey) || head != nil {
		t.Fatalf("unaligned From: %q, %v; want nil, ErrNoKey", head, err)
	}
	if _, err := s.Signatures([]byte("To: a@example.org\r\n\r\nbody\r\n")); err == nil || errors.Is(err, ErrNoKey) {
		t.Fatalf("no From: err = %v", err)
	}
}

func TestSignBreaksOnTampering(t *testing.T) {
	rk, ek := testKeys(t)
	for _, k := range []*Key{rk, ek} {
		signed, err := NewSigner([]*Key{k}).Sign([]byte(testMsg))
		if err != nil {
			t.Fatal(err)
		}
		sigEnd := len(signed) - len(testMsg)
		tamper := map[string][]byte{
			"second From": insertAfter(signed, sigEnd, "From: evil@attacker.example\r\n"),
			"second List-Unsubscribe": insertAfter(signed, sigEnd,
				"List-Unsubscribe: <https://attacker.example/x>\r\n"),
			"second List-Unsubscribe-Post": insertAfter(signed, sigEnd,
				"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
			"body byte":     bytes.Replace(signed, []byte("the body"), []byte("the bodY"), 1),
			"appended body": append(bytes.Clone(signed), "Click here\r\n"...),
		}
		for name, msg := range tamper {
			t.Run(k.Type()+"/"+name, func(t *testing.T) {
				if errs := verify(t, msg, k); len(errs) == 0 {
					t.Fatal("tampered message still verifies")
				}
			})
		}
	}
}

// The body canonicalisation is relaxed/simple by default and relaxed/relaxed
// on request (RFC 6376 §3.4); a white-space change in the body breaks the
// first only, a header white-space change neither.
func TestSignBodyCanonicalization(t *testing.T) {
	rk, ek := testKeys(t)
	for _, relaxed := range []bool{false, true} {
		for _, base := range []*Key{rk, ek} {
			k := *base
			k.RelaxedBody = relaxed
			signed, err := NewSigner([]*Key{&k}).Sign([]byte(testMsg))
			if err != nil {
				t.Fatal(err)
			}
			want := "c=relaxed/simple"
			if relaxed {
				want = "c=relaxed/relaxed"
			}
			if !bytes.Contains(signed, []byte(want)) {
				t.Fatalf("%s relaxed=%v: want %s in\n%s", k.Type(), relaxed, want, signed)
			}
			if errs := verify(t, signed, &k); len(errs) != 0 {
				t.Fatalf("%s relaxed=%v: %v", k.Type(), relaxed, errs)
			}
			header := bytes.Replace(signed, []byte("Subject: Hello"), []byte("Subject:   Hello"), 1)
			if errs := verify(t, header, &k); len(errs) != 0 {
				t.Errorf("%s relaxed=%v: header white space broke the signature: %v", k.Type(), relaxed, errs)
			}
			body := bytes.Replace(signed, []byte("this is the body"), []byte("this  is the body"), 1)
			if errs := verify(t, body, &k); (len(errs) == 0) != relaxed {
				t.Errorf("%s relaxed=%v: body white-space change verified=%v", k.Type(), relaxed, len(errs) == 0)
			}
		}
	}
}

func insertAfter(b []byte, at int, s string) []byte {
	out := append([]byte{}, b[:at]...)
	out = append(out, s...)
	return append(out, b[at:]...)
}

func TestSignAlignment(t *testing.T) {
	rk, _ := testKeys(t)
	s := NewSigner([]*Key{rk})
	other := strings.Replace(testMsg, "news@mail.example.com", "news@example.net", 1)
	out, err := s.Sign([]byte(other))
	if !errors.Is(err, ErrNoKey) {
		t.Fatalf("err = %v, want ErrNoKey", err)
	}
	if string(out) != other {
		t.Fatal("message changed without a key")
	}
	// "notexample.com" is not a sub-domain of example.com.
	lookalike := strings.Replace(testMsg, "news@mail.example.com", "news@notexample.com", 1)
	if _, err := s.Sign([]byte(lookalike)); !errors.Is(err, ErrNoKey) {
		t.Fatalf("lookalike domain: err = %v, want ErrNoKey", err)
	}
}

func TestSignBadMessages(t *testing.T) {
	rk, _ := testKeys(t)
	s := NewSigner([]*Key{rk})
	cases := map[string]string{
		"no From":    "To: a@example.org\r\n\r\nbody\r\n",
		"two From":   "From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody\r\n",
		"bad From":   "From: not an address\r\n\r\nbody\r\n",
		"two in one": "From: a@example.com, b@example.com\r\n\r\nbody\r\n",
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			out, err := s.Sign([]byte(msg))
			if err == nil || errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "From") {
				t.Fatalf("err = %v, want an error about From", err)
			}
			if string(out) != msg {
				t.Fatal("message changed on error")
			}
		})
	}
}

func TestSignConcurrent(t *testing.T) {
	_, ek := testKeys(t)
	s := NewSigner([]*Key{ek})
	var wg sync.WaitGroup
	outs := make(chan []byte, 8)
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			out, err := s.Sign([]byte(testMsg))
			outs <- out
			errs <- err
		})
	}
	wg.Wait()
	close(outs)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for out := range outs {
		if errs := verify(t, out, ek); len(errs) != 0 {
			t.Fatal(errs)
		}
	}
}

// benchMessage returns a ~22 KB message, the size of a rendered campaign email.
func benchMessage() []byte {
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit sed do.\r\n", 20*1024/66)
	return []byte(testMsg + body)
}

func benchmarkSign(b *testing.B, k *Key) {
	msg := benchMessage()
	s := NewSigner([]*Key{k})
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignRSA2048(b *testing.B) {
	rk, _ := testKeys(b)
	benchmarkSign(b, rk)
}

func BenchmarkSignEd25519(b *testing.B) {
	_, ek := testKeys(b)
	benchmarkSign(b, ek)
}
