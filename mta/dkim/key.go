// Package dkim loads, creates and uses DKIM signing keys (RFC 6376, RFC 8463).
//
// Contract: a key file is a PEM private key (PKCS#8 "PRIVATE KEY", or PKCS#1
// "RSA PRIVATE KEY") readable by its owner only (mode 0600); a file that group
// or others may read is refused, as is an RSA key shorter than 2048 bits.
// New key files are created with O_EXCL, so an existing key is never
// overwritten. Key material is never logged or put into an error message.
//
// Signer signs a CRLF message with every key aligned with its From domain
// (the same domain or a parent, DMARC relaxed alignment): RSA first, then
// Ed25519; relaxed/relaxed, SHA-256, no l= tag, and From, List-Unsubscribe and
// List-Unsubscribe-Post over-signed so that an added copy breaks the signature.
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/atomicfile"
)

// Key types accepted by LoadOrCreate, Generate and WriteNew.
const (
	TypeRSA     = "rsa"
	TypeEd25519 = "ed25519"
)

// rsaBits is the size of generated RSA keys and the smallest size accepted.
const rsaBits = 2048

// Key is a DKIM private key bound to the domain (d=) and selector (s=) it signs for.
type Key struct {
	Domain   string        // signing domain, lower-case ASCII, no trailing dot
	Selector string        // DNS selector
	Path     string        // file the key was loaded from ("" if built in memory)
	Signer   crypto.Signer // *rsa.PrivateKey or ed25519.PrivateKey, or an RSA key's OpenSSL signer (UseEngine)
	// RelaxedBody selects c=relaxed/relaxed; the default is relaxed/simple
	// (RFC 6376 §3.4.3): the header relaxed, the body as it is.
	RelaxedBody bool
	// EngineFallback says why UseEngine("auto") left an RSA key's signatures
	// to Go; nil when it did not, so that the caller can tell the operator.
	EngineFallback error
}

// LoadOrCreate loads the key at path, or generates and writes one of keyType
// ("rsa", the default when empty, or "ed25519") when the file does not exist.
func LoadOrCreate(path, domain, selector, keyType string) (*Key, bool, error) {
	d, err := checkName(domain, selector)
	if err != nil {
		return nil, false, err
	}
	kt, err := normType(keyType)
	if err != nil {
		return nil, false, err
	}
	created := false
	if err := WriteNew(path, kt); err == nil {
		created = true
	} else if !errors.Is(err, fs.ErrExist) {
		return nil, false, err
	}
	signer, err := readKeyFile(path)
	if err != nil {
		return nil, false, err
	}
	k := &Key{Domain: d, Selector: selector, Path: path, Signer: signer}
	if keyType != "" && k.Type() != kt {
		return nil, false, fmt.Errorf("dkim key %s: file holds a %s key, configuration asks for %s", path, k.Type(), kt)
	}
	return k, created, nil
}

// Generate returns a new private key of keyType as PKCS#8 PEM ("PRIVATE KEY").
func Generate(keyType string) ([]byte, error) {
	kt, err := normType(keyType)
	if err != nil {
		return nil, err
	}
	var priv any
	switch kt {
	case TypeRSA:
		priv, err = rsa.GenerateKey(rand.Reader, rsaBits)
	default:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: generate %s key: %w", kt, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("dkim: encode %s key: %w", kt, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteNew generates a key of keyType and writes it to path (mode 0600,
// parent created 0700); it refuses to overwrite an existing file (fs.ErrExist).
func WriteNew(path, keyType string) error {
	if path == "" {
		return errors.New("dkim: key path is empty")
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("dkim key %s: %w", path, fs.ErrExist)
	}
	pemBytes, err := Generate(keyType)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dkim key %s: create directory: %w", path, err)
	}
	if err := atomicfile.WriteNew(path, pemBytes, 0o600); err != nil {
		return fmt.Errorf("dkim key %s: create: %w", path, err)
	}
	return nil
}

// readKeyFile checks the mode of path and parses the PEM private key in it.
func readKeyFile(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("dkim key %s: mode %04o lets group or others read it; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s: %w", path, err)
	}
	s, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s: %w", path, err)
	}
	return s, nil
}

// ParsePrivateKey parses a PEM PKCS#8 or PKCS#1 key, RSA (≥ 2048 bits) or Ed25519.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var priv any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		priv, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		priv, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q (want PRIVATE KEY or RSA PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if n := k.N.BitLen(); n < rsaBits {
			return nil, fmt.Errorf("RSA key has %d bits, at least %d required (RFC 8301 §3.2)", n, rsaBits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported key algorithm %T (want RSA or Ed25519)", priv)
	}
}

// Type returns "rsa" or "ed25519".
func (k *Key) Type() string {
	if _, ok := k.Signer.Public().(ed25519.PublicKey); ok {
		return TypeEd25519
	}
	return TypeRSA
}

// PublicKeyBase64 returns the p= value: PKIX SubjectPublicKeyInfo for RSA,
// the raw 32-byte key for Ed25519 (RFC 8463 §4.2).
func (k *Key) PublicKeyBase64() string {
	switch pub := k.Signer.Public().(type) {
	case ed25519.PublicKey:
		return base64.StdEncoding.EncodeToString(pub)
	default:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil { // only for key types ParsePrivateKey never returns
			return ""
		}
		return base64.StdEncoding.EncodeToString(der)
	}
}

// TXTValue returns the DNS TXT record value, unsplit: "v=DKIM1; k=…; p=…".
func (k *Key) TXTValue() string {
	return "v=DKIM1; k=" + k.Type() + "; p=" + k.PublicKeyBase64() // RFC 6376 §3.6.1
}

// RecordName returns the DNS name of the key record: "selector._domainkey.domain".
func (k *Key) RecordName() string {
	return k.Selector + "._domainkey." + k.Domain // RFC 6376 §3.6.2.1
}

// DNSRecord returns the record as a zone-file line, its value split into
// quoted strings of at most 255 bytes.
func (k *Key) DNSRecord() string {
	v := k.TXTValue()
	var parts []string
	for len(v) > 255 { // RFC 6376 §3.6.2.2: one TXT record, several strings
		parts = append(parts, `"`+v[:255]+`"`)
		v = v[255:]
	}
	parts = append(parts, `"`+v+`"`)
	return k.RecordName() + ". IN TXT ( " + strings.Join(parts, " ") + " )"
}

// normType maps "" to "rsa" and rejects unknown key types.
func normType(t string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(t)) {
	case "", TypeRSA:
		return TypeRSA, nil
	case TypeEd25519:
		return TypeEd25519, nil
	}
	return "", fmt.Errorf("dkim: unknown key type %q (want rsa or ed25519)", t)
}

// checkName normalises domain and validates selector (RFC 6376 §3.1).
func checkName(domain, selector string) (string, error) {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return "", fmt.Errorf("dkim: signing domain: %w", err)
	}
	if selector == "" {
		return "", errors.New("dkim: selector is empty")
	}
	for _, label := range strings.Split(selector, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("dkim: selector %q: bad label %q", selector, label)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return "", fmt.Errorf("dkim: selector %q: character %q not allowed", selector, c)
			}
		}
	}
	return d, nil
}
