//go:build cgo && linux

package dkim

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func opensslSigner(t testing.TB) (*opensslRSA, *rsa.PrivateKey) {
	t.Helper()
	rk, _ := testKeys(t)
	needOpenSSL(t)
	priv := rk.Signer.(*rsa.PrivateKey)
	s, err := newOpenSSLRSA(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s.(*opensslRSA), priv
}

// A library that cannot be opened, or that is not libcrypto, is reported as
// such; a failed attempt leaves the loaded functions alone.
func TestOpenLibcryptoErrors(t *testing.T) {
	loaded := OpenSSLError() == nil
	for name, want := range map[string]string{
		"libcrypto.so.0.missing": "load libcrypto.so.0.missing: ",
		"libc.so.6":              "libc.so.6 lacks OpenSSL_version_num",
	} {
		if err := openLibcrypto(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("openLibcrypto(%q) = %v, want it to contain %q", name, err, want)
		}
	}
	if loaded {
		rk, _ := testKeys(t)
		opensslKey(t, rk) // still signs, and like Go: newOpenSSLRSA checks that
	}
}

// One context signs again and again, and the pool keeps what it holds.
func TestOpenSSLContextReuse(t *testing.T) {
	s, priv := opensslSigner(t)
	defer s.close()
	for i, d := range testDigests() {
		got, err := s.Sign(nil, d, crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := rsa.SignPKCS1v15(nil, priv, crypto.SHA256, d)
		if !bytes.Equal(got, want) {
			t.Fatalf("digest %d: signature differs from crypto/rsa's", i)
		}
	}
	if n := s.key.live.Load(); n != 2 { // the key and one context, signing in turn
		t.Fatalf("%d C objects after signing one at a time, want 2", n)
	}
}

// Signing at once makes contexts; the pool keeps at most its capacity and
// close frees every one, and the key.
func TestOpenSSLNoLeak(t *testing.T) {
	s, _ := opensslSigner(t)
	d := sha256.Sum256([]byte("x"))
	var wg sync.WaitGroup
	for range 4 * cap(s.key.idle) {
		wg.Go(func() {
			for range 4 {
				if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if n, idle := s.key.live.Load(), len(s.key.idle); n != int64(1+idle) || idle > cap(s.key.idle) {
		t.Fatalf("%d C objects, %d idle contexts (pool of %d): contexts leaked", n, idle, cap(s.key.idle))
	}
	s.close()
	if n := s.key.live.Load(); n != 0 {
		t.Fatalf("%d C objects after close", n)
	}
}

// The key is freed once its signer is garbage.
func TestOpenSSLCleanup(t *testing.T) {
	k := func() *evpKey { s, _ := opensslSigner(t); return s.key }()
	for start := time.Now(); k.live.Load() != 0; {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d C objects still alive", k.live.Load())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkOpenSSLContext compares reusing initialised contexts with making
// one per signature; it is the measurement behind evpKey.idle.
func BenchmarkOpenSSLContext(b *testing.B) {
	s, _ := opensslSigner(b)
	defer s.close()
	d := sha256.Sum256([]byte("x"))
	perSign := &evpKey{pkey: s.key.pkey, size: s.key.size} // nil idle: nothing is kept
	for _, c := range []struct {
		name string
		k    *evpKey
	}{{"pooled", s.key}, {"per-sign", perSign}} {
		k := c.k
		b.Run(c.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := k.sign(d[:]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
		})
	}
	b.Run("new-context-only", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c, err := perSign.getCtx()
				if err != nil {
					b.Error(err)
					return
				}
				perSign.freeCtx(c)
			}
		})
	})
}
