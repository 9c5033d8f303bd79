//go:build !cgo || !linux

package dkim

import (
	"crypto"
	"crypto/rsa"
	"errors"
)

// errNoCgo explains why this build cannot use OpenSSL: libcrypto is reached
// through cgo and dlopen, on Linux.
var errNoCgo = errors.New("dkim: openssl: this binary was built without cgo on linux (CGO_ENABLED=0 or another OS)")

func loadOpenSSL() error { return errNoCgo }

func newOpenSSLRSA(*rsa.PrivateKey) (crypto.Signer, error) { return nil, errNoCgo }
