package dkim

import (
	"crypto"
	"crypto/rsa"
	"fmt"
)

// RSA signer engines for Key.UseEngine.
const (
	EngineAuto    = "auto"
	EngineGo      = "go"
	EngineOpenSSL = "openssl"
)

// OpenSSLError reports nil when the system's libcrypto (OpenSSL 3) can be
// loaded, else why not. The library is loaded once, on first use.
func OpenSSLError() error { return loadOpenSSL() }

// rsaWrapper is a crypto.Signer that computes the signatures of an RSA key
// it keeps; the *rsa.PrivateKey stays reachable for whatever needs the key
// itself rather than a signature.
type rsaWrapper interface {
	crypto.Signer
	rsaPrivateKey() *rsa.PrivateKey
}

// UseEngine chooses the implementation that computes k's RSA signatures:
// "go" (crypto/rsa), "openssl" (libcrypto through cgo; an error if it cannot
// be loaded), or "auto"/"" (OpenSSL when it loads, else Go). Ed25519 keys are
// left as they are. Signatures are identical either way: RSASSA-PKCS1-v1_5 is
// deterministic. Call it before k signs: it replaces k.Signer.
func (k *Key) UseEngine(engine string) error {
	switch engine {
	case EngineAuto, "", EngineGo, EngineOpenSSL:
	default:
		return fmt.Errorf("dkim: unknown RSA signer %q (want auto, go or openssl)", engine)
	}
	priv := k.rsaPrivateKey()
	if priv == nil { // Ed25519: nothing to choose
		return nil
	}
	k.EngineFallback = nil
	if engine == EngineGo {
		k.Signer = priv
		return nil
	}
	if k.Engine() == EngineOpenSSL {
		return nil
	}
	s, err := newOpenSSLRSA(priv)
	switch {
	case err == nil:
		k.Signer = s
	case engine == EngineOpenSSL:
		return err
	default: // auto: OpenSSL is only ever a speed-up, Go signs the same bytes
		k.Signer, k.EngineFallback = priv, err
	}
	return nil
}

// Engine names the implementation in use: "go" or "openssl" ("go" for Ed25519).
func (k *Key) Engine() string {
	if _, ok := k.Signer.(rsaWrapper); ok {
		return EngineOpenSSL
	}
	return EngineGo
}

// rsaPrivateKey returns k's RSA key, wrapped or not, or nil for another key type.
func (k *Key) rsaPrivateKey() *rsa.PrivateKey {
	switch s := k.Signer.(type) {
	case *rsa.PrivateKey:
		return s
	case rsaWrapper:
		return s.rsaPrivateKey()
	}
	return nil
}
