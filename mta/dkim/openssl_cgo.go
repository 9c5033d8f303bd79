//go:build cgo && linux

package dkim

/*
#cgo LDFLAGS: -ldl

// The OpenSSL 3 functions used here are declared by hand and looked up with
// dlsym, so building needs no OpenSSL headers and running does not need
// libcrypto: without it the Go signer is used.

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef struct pw_pkey pw_pkey; // EVP_PKEY
typedef struct pw_ctx pw_ctx;   // EVP_PKEY_CTX
typedef struct pw_md pw_md;     // EVP_MD

struct pw_funcs {
	unsigned long (*version_num)(void);
	pw_pkey *(*d2i_auto_private_key)(pw_pkey **, const unsigned char **, long);
	int (*pkey_get_base_id)(const pw_pkey *);
	int (*pkey_get_size)(const pw_pkey *);
	void (*pkey_free)(pw_pkey *);
	pw_ctx *(*ctx_new)(pw_pkey *, void *);
	void (*ctx_free)(pw_ctx *);
	int (*sign_init)(pw_ctx *);
	int (*set_rsa_padding)(pw_ctx *, int);
	int (*set_signature_md)(pw_ctx *, const pw_md *);
	const pw_md *(*sha256)(void);
	int (*sign)(pw_ctx *, unsigned char *, size_t *, const unsigned char *, size_t);
	unsigned long (*err_get)(void);
	void (*err_string_n)(unsigned long, char *, size_t);
	void (*err_clear)(void);
};

static struct pw_funcs pw; // filled once by pw_load, read-only after

#define PW_EVP_PKEY_RSA 6      // NID_rsaEncryption
#define PW_RSA_PKCS1_PADDING 1

static void pw_set_msg(char *msg, size_t len, const char *s) {
	strncpy(msg, s ? s : "unknown error", len - 1);
	msg[len - 1] = 0;
}

// pw_load opens the library name and fills pw. It returns 0 on success,
// 1 when dlopen fails (dlerror's text in msg), 2 when the library is older
// than OpenSSL 3 (its version in *version), 3 when a function is missing
// (its name in msg). pw is only written on success, so a failed attempt
// leaves it as it was.
static int pw_load(const char *name, unsigned long *version, char *msg, size_t len) {
	void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		pw_set_msg(msg, len, dlerror());
		return 1;
	}
	struct pw_funcs f;
	void *sym;
	// POSIX guarantees a function pointer and void * have the same
	// representation; memcpy avoids the cast ISO C does not define.
#define PW_SYM(field, sname) \
	if (!(sym = dlsym(h, sname))) { \
		pw_set_msg(msg, len, sname); \
		dlclose(h); \
		return 3; \
	} \
	memcpy(&f.field, &sym, sizeof sym);
	PW_SYM(version_num, "OpenSSL_version_num")
	*version = f.version_num();
	if (*version < 0x30000000UL) {
		dlclose(h);
		return 2;
	}
	PW_SYM(d2i_auto_private_key, "d2i_AutoPrivateKey")
	PW_SYM(pkey_get_base_id, "EVP_PKEY_get_base_id")
	PW_SYM(pkey_get_size, "EVP_PKEY_get_size")
	PW_SYM(pkey_free, "EVP_PKEY_free")
	PW_SYM(ctx_new, "EVP_PKEY_CTX_new")
	PW_SYM(ctx_free, "EVP_PKEY_CTX_free")
	PW_SYM(sign_init, "EVP_PKEY_sign_init")
	PW_SYM(set_rsa_padding, "EVP_PKEY_CTX_set_rsa_padding")
	PW_SYM(set_signature_md, "EVP_PKEY_CTX_set_signature_md")
	PW_SYM(sha256, "EVP_sha256")
	PW_SYM(sign, "EVP_PKEY_sign")
	PW_SYM(err_get, "ERR_get_error")
	PW_SYM(err_string_n, "ERR_error_string_n")
	PW_SYM(err_clear, "ERR_clear_error")
#undef PW_SYM
	pw = f;
	return 0; // h stays open for the life of the process
}

// Steps that can fail, reported in pw_result.step.
enum { PW_OK, PW_D2I, PW_NOT_RSA, PW_CTX_NEW, PW_SIGN_INIT, PW_PADDING, PW_MD, PW_SIGN };

// pw_result is returned by value so that Go passes C no pointer for it.
// err is OpenSSL's first error code: the error queue is per thread, so it
// is read in the same C call as the failure, before the goroutine can move.
typedef struct {
	int step;
	unsigned long err;
	void *ptr;     // the EVP_PKEY or EVP_PKEY_CTX made
	size_t n;      // signature length
} pw_result;

static pw_result pw_fail(int step) {
	pw_result r = {step, pw.err_get(), NULL, 0};
	pw.err_clear();
	return r;
}

// pw_key_new decodes a DER private key (PKCS#8 or PKCS#1) and checks it is RSA.
static pw_result pw_key_new(const unsigned char *der, long len) {
	pw.err_clear();
	const unsigned char *p = der;
	pw_pkey *k = pw.d2i_auto_private_key(NULL, &p, len);
	if (!k) return pw_fail(PW_D2I);
	if (pw.pkey_get_base_id(k) != PW_EVP_PKEY_RSA) {
		pw.pkey_free(k);
		return pw_fail(PW_NOT_RSA);
	}
	pw_result r = {PW_OK, 0, k, (size_t)pw.pkey_get_size(k)};
	return r;
}

static void pw_key_free(pw_pkey *k) { pw.pkey_free(k); }

// pw_ctx_new returns a context ready to sign SHA-256 digests with k,
// RSASSA-PKCS1-v1_5.
static pw_result pw_ctx_new(pw_pkey *k) {
	pw.err_clear();
	pw_ctx *c = pw.ctx_new(k, NULL);
	if (!c) return pw_fail(PW_CTX_NEW);
	int step = PW_OK;
	if (pw.sign_init(c) <= 0) step = PW_SIGN_INIT;
	else if (pw.set_rsa_padding(c, PW_RSA_PKCS1_PADDING) <= 0) step = PW_PADDING;
	else if (pw.set_signature_md(c, pw.sha256()) <= 0) step = PW_MD;
	if (step != PW_OK) {
		pw_result r = pw_fail(step);
		pw.ctx_free(c);
		return r;
	}
	pw_result r = {PW_OK, 0, c, 0};
	return r;
}

static void pw_ctx_free(pw_ctx *c) { pw.ctx_free(c); }

// pw_sign signs the digest tbs into sig, which has room for cap bytes.
static pw_result pw_sign(pw_ctx *c, const unsigned char *tbs, size_t tbslen, unsigned char *sig, size_t cap) {
	pw.err_clear();
	size_t n = cap;
	if (pw.sign(c, sig, &n, tbs, tbslen) <= 0) return pw_fail(PW_SIGN);
	pw_result r = {PW_OK, 0, NULL, n};
	return r;
}

static void pw_err_string(unsigned long e, char *buf, size_t len) { pw.err_string_n(e, buf, len); }
*/
import "C"

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

// libcryptoName is the soname of OpenSSL 3's libcrypto.
const libcryptoName = "libcrypto.so.3"

var libcrypto struct {
	once sync.Once
	err  error
}

// loadOpenSSL loads libcrypto once and reports why it cannot be used.
func loadOpenSSL() error {
	libcrypto.once.Do(func() { libcrypto.err = openLibcrypto(libcryptoName) })
	return libcrypto.err
}

// openLibcrypto makes the functions of the library name callable.
func openLibcrypto(name string) error {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var version C.ulong
	var msg [256]C.char
	switch C.pw_load(cname, &version, &msg[0], C.size_t(len(msg))) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("dkim: openssl: load %s: %s", name, C.GoString(&msg[0]))
	case 2:
		return fmt.Errorf("dkim: openssl: %s is version %#x, OpenSSL 3 required", name, uint64(version))
	default:
		return fmt.Errorf("dkim: openssl: %s lacks %s", name, C.GoString(&msg[0]))
	}
}

// opensslSteps says what failed, by pw_result.step.
var opensslSteps = map[C.int]string{
	C.PW_D2I:       "cannot decode the private key",
	C.PW_NOT_RSA:   "the decoded key is not RSA",
	C.PW_CTX_NEW:   "EVP_PKEY_CTX_new failed",
	C.PW_SIGN_INIT: "EVP_PKEY_sign_init failed",
	C.PW_PADDING:   "cannot set PKCS#1 v1.5 padding",
	C.PW_MD:        "cannot set SHA-256",
	C.PW_SIGN:      "EVP_PKEY_sign failed",
}

// opensslError turns a failed step into an error. OpenSSL's reason strings
// name a library and a reason, never key material.
func opensslError(r C.pw_result) error {
	if r.err == 0 {
		return fmt.Errorf("dkim: openssl: %s", opensslSteps[r.step])
	}
	var buf [256]C.char
	C.pw_err_string(r.err, &buf[0], C.size_t(len(buf)))
	return fmt.Errorf("dkim: openssl: %s: %s", opensslSteps[r.step], C.GoString(&buf[0]))
}

// evpKey is the C side of an opensslRSA: the key and the idle signing
// contexts. It is freed by a cleanup of the opensslRSA, so it must not point
// back to it.
type evpKey struct {
	pkey *C.pw_pkey
	size int // signature length, the modulus in bytes
	// idle holds initialised contexts for reuse: EVP_PKEY_sign can be called
	// again and again on one. Making a context fetches the RSA signature and
	// SHA-256 implementations from OpenSSL 3.0's provider store, behind a lock
	// all threads share: ~3 µs on one thread, ~6 µs each when two contend
	// (BenchmarkOpenSSLContext), 1-3 % of a signature, and more with more
	// cores contending. A channel and not a sync.Pool, whose dropped items
	// would leak their C memory.
	idle chan *C.pw_ctx
	// live counts the C objects of this key not yet freed, the EVP_PKEY and
	// its contexts, so that tests can see that nothing leaks.
	live atomic.Int64
}

func (k *evpKey) getCtx() (*C.pw_ctx, error) {
	select {
	case c := <-k.idle:
		return c, nil
	default:
	}
	r := C.pw_ctx_new(k.pkey)
	if r.step != C.PW_OK {
		return nil, opensslError(r)
	}
	k.live.Add(1)
	return (*C.pw_ctx)(r.ptr), nil
}

func (k *evpKey) putCtx(c *C.pw_ctx) {
	select {
	case k.idle <- c:
	default: // more signatures ran at once than the pool keeps
		k.freeCtx(c)
	}
}

func (k *evpKey) freeCtx(c *C.pw_ctx) {
	C.pw_ctx_free(c)
	k.live.Add(-1)
}

// sign signs a SHA-256 digest; digest and sig are passed to C for the call
// only, and hold no Go pointers, as cgo requires.
func (k *evpKey) sign(digest []byte) ([]byte, error) {
	c, err := k.getCtx()
	if err != nil {
		return nil, err
	}
	sig := make([]byte, k.size)
	r := C.pw_sign(c, (*C.uchar)(unsafe.Pointer(&digest[0])), C.size_t(len(digest)),
		(*C.uchar)(unsafe.Pointer(&sig[0])), C.size_t(len(sig)))
	if r.step != C.PW_OK {
		k.freeCtx(c) // its state after a failure is not worth trusting
		return nil, opensslError(r)
	}
	k.putCtx(c)
	if int(r.n) != len(sig) { // PKCS#1 v1.5 signatures are exactly the modulus size
		return nil, fmt.Errorf("dkim: openssl: signature of %d bytes, want %d", r.n, len(sig))
	}
	return sig, nil
}

// free releases the contexts and the key. Nothing may sign with k any more.
func (k *evpKey) free() {
	for {
		select {
		case c := <-k.idle:
			k.freeCtx(c)
		default:
			if k.pkey != nil {
				C.pw_key_free(k.pkey)
				k.live.Add(-1)
				k.pkey = nil
			}
			return
		}
	}
}

// opensslRSA is a crypto.Signer that computes RSASSA-PKCS1-v1_5 SHA-256
// signatures of priv with libcrypto and leaves anything else to priv.
// It is safe for concurrent use: OpenSSL 3 lets threads sign with one
// EVP_PKEY at once, each with its own context.
type opensslRSA struct {
	priv    *rsa.PrivateKey
	key     *evpKey
	cleanup runtime.Cleanup
}

// newOpenSSLRSA hands priv to libcrypto and checks that it signs as crypto/rsa does.
func newOpenSSLRSA(priv *rsa.PrivateKey) (crypto.Signer, error) {
	if err := loadOpenSSL(); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("dkim: openssl: encode key: %w", err)
	}
	r := C.pw_key_new((*C.uchar)(unsafe.Pointer(&der[0])), C.long(len(der)))
	clear(der) // OpenSSL has its own copy now
	if r.step != C.PW_OK {
		return nil, opensslError(r)
	}
	k := &evpKey{
		pkey: (*C.pw_pkey)(r.ptr),
		size: priv.Size(),
		idle: make(chan *C.pw_ctx, 2*runtime.GOMAXPROCS(0)), // at most a few idle per core
	}
	k.live.Add(1)
	if int(r.n) != k.size {
		k.free()
		return nil, fmt.Errorf("dkim: openssl: key signs %d-byte signatures, want %d", r.n, k.size)
	}
	s := &opensslRSA{priv: priv, key: k}
	s.cleanup = runtime.AddCleanup(s, (*evpKey).free, k)
	if err := s.selfTest(); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// selfTest signs one digest with both libraries: the OpenSSL signer is only
// used when it gives the very bytes crypto/rsa gives.
func (s *opensslRSA) selfTest() error {
	digest := sha256.Sum256([]byte("postwarden dkim openssl self-test"))
	want, err := rsa.SignPKCS1v15(nil, s.priv, crypto.SHA256, digest[:])
	if err != nil {
		return fmt.Errorf("dkim: openssl self-test: crypto/rsa: %w", err)
	}
	got, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		return err
	}
	if string(got) != string(want) {
		return errors.New("dkim: openssl self-test: signature differs from crypto/rsa's")
	}
	return nil
}

// Public returns the *rsa.PublicKey: go-msgauth chooses a=rsa-sha256 by its type.
func (s *opensslRSA) Public() crypto.PublicKey { return s.priv.Public() }

// Sign signs digest as (*rsa.PrivateKey).Sign would: PKCS#1 v1.5 SHA-256
// through OpenSSL, every other case (PSS, another hash, a digest of the wrong
// length) by crypto/rsa itself, so that only the speed differs.
func (s *opensslRSA) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, pss := opts.(*rsa.PSSOptions); pss || opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != sha256.Size {
		return s.priv.Sign(rand, digest, opts)
	}
	sig, err := s.key.sign(digest)
	runtime.KeepAlive(s) // the cleanup must not free the key during the call
	return sig, err
}

func (s *opensslRSA) rsaPrivateKey() *rsa.PrivateKey { return s.priv }

// close frees the C memory now rather than when s is collected; for tests.
// s must not be used afterwards.
func (s *opensslRSA) close() {
	s.cleanup.Stop()
	s.key.free()
}
