// Package sealed protects personal fields at rest: it encrypts them with
// AES-256-GCM and derives keyed lookup indexes, so a store can find a person
// with a single b-tree get while its file holds no clear address.
//
// Contract: one 32-byte data key (data_key_file, 0600) gives two sub-keys,
// HMAC-SHA256(key, "postwarden seal") for encryption and
// HMAC-SHA256(key, "postwarden index") for indexes. Seal output is
// version(1) || nonce(12, random) || ciphertext+tag(16), with the caller's
// context string as GCM additional data: a value sealed for one field (say
// "subscriber:name") fails to Open as any other. Index is HMAC-SHA256 under
// the index sub-key: stable for a given key and input, unlinkable without the
// key. Losing the key loses every sealed value; there is no recovery.
//
// Random 96-bit nonces bound the safe use of one key to about 2^32 Seal calls
// (NIST SP 800-38D §8.3); at a few fields per subscriber event that is
// hundreds of millions of events.
package sealed

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"sync"

	"github.com/postwarden/postwarden/suppression/atomicfile"
)

// KeySize is the length of the data key in bytes.
const KeySize = 32

// IndexSize is the length of an Index in bytes.
const IndexSize = sha256.Size

// Overhead is how many bytes Seal adds to the plain text.
const Overhead = 1 + nonceSize + tagSize

const (
	version   = 1  // first byte of every sealed value
	nonceSize = 12 // GCM standard nonce
	tagSize   = 16 // GCM tag
)

// ErrOpen is returned by Open for any value that is not one we sealed under
// this key and context (tampered, truncated, wrong key, wrong context).
var ErrOpen = errors.New("sealed: cannot open value (wrong key or context, or tampered)")

// Box seals, opens and indexes; safe for concurrent use.
type Box struct {
	aead     cipher.AEAD
	indexKey []byte
	macs     sync.Pool // of hash.Hash: HMAC-SHA256 under indexKey
}

// LoadOrCreateKey reads the data key at path (see KeyFile), creating it (32 random bytes,
// mode 0600, parent directory 0700, O_EXCL, fsynced) if it does not exist. It
// refuses a key file readable by group or others, or not exactly 32 bytes.
func LoadOrCreateKey(path string) ([]byte, error) { return KeyFile(path, "data key") }

// KeyFile reads a 32-byte secret key file, creating it (random bytes, mode
// 0600, parent directory 0700, O_EXCL, fsynced) if it does not exist; it
// refuses one readable by group or others, or not exactly 32 bytes. kind
// names the key in errors ("data key", "token key").
func KeyFile(path, kind string) ([]byte, error) {
	key, err := readKey(path, kind)
	if !errors.Is(err, os.ErrNotExist) {
		return key, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create %s %s: %w", kind, path, err)
	}
	key = make([]byte, KeySize)
	rand.Read(key) // never fails (crypto/rand, Go ≥ 1.24)
	// Whole or not at all: a short key never appears under path.
	err = atomicfile.WriteNew(path, key, 0o600)
	if errors.Is(err, os.ErrExist) {
		return readKey(path, kind) // another process created it first
	}
	if err != nil {
		return nil, fmt.Errorf("create %s %s: %w", kind, path, err)
	}
	return key, nil
}

// readKey reads and checks an existing key file.
func readKey(path, kind string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("read %s %s: %w", kind, path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %s is not a regular file", kind, path)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("%s %s is readable by group or others (mode %o); chmod 600 it", kind, path, m)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", kind, path, err)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("%s %s is %d bytes; want exactly %d", kind, path, len(key), KeySize)
	}
	return key, nil
}

// New derives the sealing and index sub-keys from a 32-byte data key.
func New(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("sealed: key is %d bytes; want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(derive(key, "postwarden seal")) // AES-256
	if err != nil {
		return nil, fmt.Errorf("sealed: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("sealed: %w", err)
	}
	b := &Box{aead: aead, indexKey: derive(key, "postwarden index")}
	b.macs.New = func() any { return hmac.New(sha256.New, b.indexKey) }
	return b, nil
}

// derive returns HMAC-SHA256(key, label).
func derive(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// Seal encrypts plain for the field named by context and returns
// version || nonce || ciphertext+tag (len(plain)+Overhead bytes).
func (b *Box) Seal(plain []byte, context string) []byte {
	out := make([]byte, 1+nonceSize, len(plain)+Overhead)
	out[0] = version
	rand.Read(out[1 : 1+nonceSize]) // never fails (crypto/rand, Go ≥ 1.24)
	return b.aead.Seal(out, out[1:1+nonceSize], plain, []byte(context))
}

// Open checks and decrypts a value made by Seal with the same context; any
// mismatch gives ErrOpen.
func (b *Box) Open(sealed []byte, context string) ([]byte, error) {
	if len(sealed) < Overhead || sealed[0] != version {
		return nil, ErrOpen
	}
	plain, err := b.aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], []byte(context))
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}

// SealString is Seal for a string.
func (b *Box) SealString(s, context string) []byte { return b.Seal([]byte(s), context) }

// OpenString is Open returning a string.
func (b *Box) OpenString(sealed []byte, context string) (string, error) {
	p, err := b.Open(sealed, context)
	return string(p), err
}

// Index returns the keyed HMAC-SHA256 (IndexSize bytes) of a normalised value,
// such as an address Key(): the stored lookup key that stands in for it.
func (b *Box) Index(normalised string) []byte {
	return b.AppendIndex(make([]byte, 0, IndexSize), normalised)
}

// AppendIndex appends Index(normalised) to dst, for callers building keys.
func (b *Box) AppendIndex(dst []byte, normalised string) []byte {
	m := b.macs.Get().(hash.Hash)
	m.Reset()
	m.Write([]byte(normalised))
	dst = m.Sum(dst)
	b.macs.Put(m)
	return dst
}

// IndexHex is Index in lower-case hex.
func (b *Box) IndexHex(normalised string) string { return hex.EncodeToString(b.Index(normalised)) }
