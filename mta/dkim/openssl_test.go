package dkim

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

// needOpenSSL skips the test when libcrypto cannot be loaded, except on CI
// (CI=true), where a missing libcrypto is a failure, not a reason to skip.
func needOpenSSL(t testing.TB) {
	t.Helper()
	if err := OpenSSLError(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and OpenSSL is unavailable: %v", err)
		}
		t.Skipf("OpenSSL unavailable: %v", err)
	}
}

// opensslKey returns a copy of base whose RSA signatures OpenSSL computes.
func opensslKey(t testing.TB, base *Key) *Key {
	t.Helper()
	needOpenSSL(t)
	k := *base
	if err := k.UseEngine(EngineOpenSSL); err != nil {
		t.Fatal(err)
	}
	if k.Engine() != EngineOpenSSL {
		t.Fatalf("Engine() = %q after UseEngine(openssl)", k.Engine())
	}
	return &k
}

// testDigests are SHA-256 digests to sign, the extremes included.
func testDigests() [][]byte {
	ds := [][]byte{make([]byte, sha256.Size), bytes.Repeat([]byte{0xff}, sha256.Size)}
	for i := range 6 {
		d := sha256.Sum256(fmt.Appendf(nil, "message %d", i))
		ds = append(ds, d[:])
	}
	return ds
}

func TestOpenSSLSignsLikeGo(t *testing.T) {
	needOpenSSL(t)
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	goKey := &Key{Domain: "example.com", Selector: "s", Signer: priv}
	k := opensslKey(t, goKey)
	for i, d := range testDigests() {
		got, err := k.Signer.Sign(rand.Reader, d, crypto.SHA256)
		if err != nil {
			t.Fatalf("digest %d: %v", i, err)
		}
		want, err := rsa.SignPKCS1v15(nil, priv, crypto.SHA256, d)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("digest %d: OpenSSL and crypto/rsa signatures differ", i)
		}
		if err := rsa.VerifyPKCS1v15(&priv.PublicKey, crypto.SHA256, d, got); err != nil {
			t.Fatalf("digest %d: %v", i, err)
		}
	}

	// The key as seen from outside is unchanged.
	if pub, ok := k.Signer.Public().(*rsa.PublicKey); !ok || !pub.Equal(&priv.PublicKey) {
		t.Fatalf("Public() = %T, want the key's *rsa.PublicKey", k.Signer.Public())
	}
	if k.Type() != TypeRSA || k.TXTValue() != goKey.TXTValue() || k.DNSRecord() != goKey.DNSRecord() {
		t.Fatalf("type %s, TXT %q, want rsa and %q", k.Type(), k.TXTValue(), goKey.TXTValue())
	}
}

// Whatever OpenSSL does not do goes to crypto/rsa, with its results and errors.
func TestOpenSSLDelegates(t *testing.T) {
	rk, _ := testKeys(t)
	k := opensslKey(t, rk)
	priv := rk.Signer.(*rsa.PrivateKey)

	d512 := sha512.Sum512([]byte("x"))
	got, err := k.Signer.Sign(rand.Reader, d512[:], crypto.SHA512)
	want, _ := rsa.SignPKCS1v15(nil, priv, crypto.SHA512, d512[:])
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("SHA-512: err %v, same as crypto/rsa %v", err, bytes.Equal(got, want))
	}

	d := sha256.Sum256([]byte("x"))
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	sig, err := k.Signer.Sign(rand.Reader, d[:], pss)
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPSS(&priv.PublicKey, crypto.SHA256, d[:], sig, pss); err != nil {
		t.Fatalf("PSS: %v", err)
	}

	_, err = k.Signer.Sign(rand.Reader, d[:20], crypto.SHA256)
	_, wantErr := priv.Sign(rand.Reader, d[:20], crypto.SHA256)
	if err == nil || wantErr == nil || err.Error() != wantErr.Error() {
		t.Fatalf("short digest: err %v, want %v", err, wantErr)
	}
}

// A message signed with OpenSSL verifies, and carries the very header the Go
// engine writes. go-msgauth stamps t= with the current second and offers no
// way to set the clock, so the OpenSSL signature is taken between two Go
// signatures: when both Go ones carry the same t=, so does the OpenSSL one,
// and all the signed input is the same; otherwise the second changed, and
// the round is tried again.
func TestOpenSSLMessageSameAsGo(t *testing.T) {
	rk, _ := testKeys(t)
	ok := opensslKey(t, rk)
	msg := benchMessage()
	goSigner, osSigner := NewSigner([]*Key{rk}), NewSigner([]*Key{ok})
	sign := func(s *Signer) []byte {
		out, err := s.Sign(msg)
		if err != nil {
			t.Fatal(err)
		}
		return out[:len(out)-len(msg)]
	}
	for range 5 {
		before, got, after := sign(goSigner), sign(osSigner), sign(goSigner)
		if errs := verify(t, append(got, msg...), rk); len(errs) != 0 {
			t.Fatalf("OpenSSL signature does not verify: %v", errs)
		}
		if !bytes.Equal(before, after) {
			continue // the second turned between them
		}
		if !bytes.Equal(got, before) {
			t.Fatalf("headers differ:\nopenssl %s\ngo      %s", got, before)
		}
		return
	}
	t.Fatal("the clock changed second in every round")
}

// Many goroutines sign with one key at once; every signature is checked.
func TestOpenSSLConcurrent(t *testing.T) {
	rk, _ := testKeys(t)
	k := opensslKey(t, rk)
	priv := rk.Signer.(*rsa.PrivateKey)
	digests := testDigests()
	want := make([][]byte, len(digests))
	for i, d := range digests {
		want[i], _ = rsa.SignPKCS1v15(nil, priv, crypto.SHA256, d)
	}
	s := NewSigner([]*Key{k})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	outs := make(chan []byte, 16)
	for g := range 16 {
		wg.Go(func() {
			for j := range 8 {
				i := (g + j) % len(digests)
				sig, err := k.Signer.Sign(nil, digests[i], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(sig, want[i]) {
					errs <- fmt.Errorf("goroutine %d: digest %d: wrong signature", g, i)
					return
				}
			}
			out, err := s.Sign([]byte(testMsg))
			if err != nil {
				errs <- err
				return
			}
			outs <- out
		})
	}
	wg.Wait()
	close(errs)
	close(outs)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	for out := range outs { // verify calls t.Fatal: only from this goroutine
		if ve := verify(t, out, rk); len(ve) != 0 {
			t.Fatal(ve)
		}
		n++
	}
	if n != 16 && !t.Failed() {
		t.Fatalf("%d messages signed, want 16", n)
	}
}

func TestUseEngine(t *testing.T) {
	rk, ek := testKeys(t)
	priv := rk.Signer.(*rsa.PrivateKey)
	osErr := OpenSSLError()

	k := *rk
	for _, bad := range []string{"fips", "OpenSSL", "boring"} {
		if err := k.UseEngine(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("UseEngine(%q) = %v, want an error naming it", bad, err)
		}
	}
	if k.Signer != crypto.Signer(priv) {
		t.Fatal("a refused engine changed the signer")
	}

	err := k.UseEngine(EngineOpenSSL)
	if (err != nil) != (osErr != nil) {
		t.Fatalf("UseEngine(openssl) = %v while OpenSSLError() = %v", err, osErr)
	}
	if osErr != nil && (k.Signer != crypto.Signer(priv) || k.Engine() != EngineGo) {
		t.Fatal("a failed UseEngine(openssl) changed the signer")
	}
	for _, e := range []string{EngineAuto, ""} {
		if err := k.UseEngine(e); err != nil {
			t.Fatalf("UseEngine(%q): %v", e, err)
		}
		if want := map[bool]string{true: EngineOpenSSL, false: EngineGo}[osErr == nil]; k.Engine() != want {
			t.Fatalf("UseEngine(%q): Engine() = %q, want %q (OpenSSLError: %v)", e, k.Engine(), want, osErr)
		}
		if k.rsaPrivateKey() != priv || k.Type() != TypeRSA {
			t.Fatal("the RSA key is no longer reachable")
		}
		if (k.EngineFallback == nil) != (osErr == nil) {
			t.Fatalf("UseEngine(%q): EngineFallback = %v while OpenSSLError() = %v", e, k.EngineFallback, osErr)
		}
	}
	if err := k.UseEngine(EngineGo); err != nil || k.Engine() != EngineGo || k.Signer != crypto.Signer(priv) {
		t.Fatalf("UseEngine(go): err %v, engine %s, signer %T", err, k.Engine(), k.Signer)
	}

	e := *ek
	for _, name := range []string{EngineAuto, EngineGo, EngineOpenSSL, ""} {
		if err := e.UseEngine(name); err != nil {
			t.Fatalf("Ed25519 UseEngine(%q): %v", name, err)
		}
		if e.Engine() != EngineGo || e.Type() != TypeEd25519 || e.PublicKeyBase64() != ek.PublicKeyBase64() {
			t.Fatalf("Ed25519 UseEngine(%q): engine %s, type %s", name, e.Engine(), e.Type())
		}
	}
}

// benchEngines returns the RSA test key for each engine available.
func benchEngines(b *testing.B) map[string]*Key {
	rk, _ := testKeys(b)
	keys := map[string]*Key{EngineGo: rk}
	if OpenSSLError() == nil {
		keys[EngineOpenSSL] = opensslKey(b, rk)
	} else if os.Getenv("CI") == "true" {
		b.Fatal(OpenSSLError())
	}
	return keys
}

// BenchmarkRSASign signs SHA-256 digests on every core, per engine.
func BenchmarkRSASign(b *testing.B) {
	keys := benchEngines(b)
	for _, name := range []string{EngineGo, EngineOpenSSL} {
		k := keys[name]
		if k == nil {
			continue
		}
		b.Run(name, func(b *testing.B) {
			d := sha256.Sum256([]byte(testMsg))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := k.Signer.Sign(nil, d[:], crypto.SHA256); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
		})
	}
}

// BenchmarkSignRSA2048Parallel signs the ~22 KB benchmark message through
// Signer (go-msgauth) on every core, per engine.
func BenchmarkSignRSA2048Parallel(b *testing.B) {
	keys := benchEngines(b)
	msg := benchMessage()
	for _, name := range []string{EngineGo, EngineOpenSSL} {
		k := keys[name]
		if k == nil {
			continue
		}
		b.Run(name, func(b *testing.B) {
			s := NewSigner([]*Key{k})
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Sign(msg); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
		})
	}
}
