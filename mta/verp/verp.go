// Package verp encodes a queue id into a per-message envelope sender
// (Variable Envelope Return Path), so that a bounce or a complaint names the
// message it is about whatever the report's text says.
//
// Contract: Address(id) is bounce+TOKEN@domain where TOKEN is the lower-case
// base32 (RFC 4648, no padding) of the suppression/token codec's sealing of
// id (kind VERP: 1 version byte, a 10-byte synthetic IV, then id encrypted).
// Parse accepts the token in any letter case, since some relays change the
// case of local parts, and the codec checks it in constant time: an address
// we did not mint gives ErrForged and names no message. Addresses minted
// before the codec (id || HMAC-SHA256(key, "verp" || id)[:10]) still parse.
//
// A cluster node mints with AddressFrom: the sealed plain text is then
// 0x00 || NodeTag(node) (4 bytes) || id, so that any node receiving the
// report knows which node's spool holds id (queue ids are unique per node
// only). 16-byte ids give a 59-octet local part, within RFC 5321
// §4.5.3.1.1's 64. Queue ids never start with 0x00, so tokens without a
// node (single node, or minted before) still parse, with node tag "".
package verp

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/token"
)

// Prefix starts the local part of every VERP address.
const Prefix = "bounce+"

// minKeySize is the shortest key New accepts.
const minKeySize = token.MinKeySize

// Errors returned (wrapped) by Parse.
var (
	ErrNotVERP = errors.New("verp: not a VERP address of this domain")
	ErrForged  = errors.New("verp: forged or damaged token")
)

// enc is base32 without padding; tokens are lower-cased on output and
// upper-cased before decoding.
var enc = base32.StdEncoding.WithPadding(base32.NoPadding)

// Codec mints and parses VERP addresses; safe for concurrent use.
type Codec struct {
	tokens *token.Codec
	domain string
}

// New returns a Codec for domain signing with key (at least 16 bytes; the
// caller derives it from the token key).
func New(key []byte, domain string) (*Codec, error) {
	if len(key) < minKeySize {
		return nil, fmt.Errorf("verp: key is %d bytes; want at least %d", len(key), minKeySize)
	}
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return nil, fmt.Errorf("verp: domain %q: %w", domain, err)
	}
	tk, err := token.New(key, token.VERP)
	if err != nil {
		return nil, fmt.Errorf("verp: %w", err)
	}
	return &Codec{tokens: tk, domain: d}, nil
}

// Domain is the (normalised) domain of the addresses.
func (c *Codec) Domain() string { return c.domain }

// Address returns bounce+TOKEN@domain for queueID. A 16-byte queue id gives
// a 50-octet local part; ids up to 24 bytes stay within RFC 5321
// §4.5.3.1.1's 64 octets (longer ones work with relays that allow it).
func (c *Codec) Address(queueID string) string {
	raw := c.tokens.Seal([]byte(queueID))
	return Prefix + strings.ToLower(enc.EncodeToString(raw)) + "@" + c.domain
}

// tagSize is the length of a node tag in a token.
const tagSize = 4

// nodeMark starts the plain text of a token that names its node.
const nodeMark = 0x00

// NodeTag is the tag that names node in a token, in hex (8 digits): the
// first 4 bytes of SHA-256("postwarden verp node " + node). It is sealed in
// the token, so it needs no key; a clash between two nodes of one cluster
// is a 1 in 4 billion chance per pair.
func NodeTag(node string) string { return hex.EncodeToString(nodeTag(node)) }

// nodeTag is NodeTag's bytes.
func nodeTag(node string) []byte {
	h := sha256.Sum256([]byte("postwarden verp node " + node))
	return h[:tagSize]
}

// AddressFrom is Address for a message in node's spool: its token also
// carries NodeTag(node).
func (c *Codec) AddressFrom(queueID, node string) string {
	plain := make([]byte, 0, 1+tagSize+len(queueID))
	plain = append(append(append(plain, nodeMark), nodeTag(node)...), queueID...)
	raw := c.tokens.Seal(plain)
	return Prefix + strings.ToLower(enc.EncodeToString(raw)) + "@" + c.domain
}

// Parse returns the queue id in a VERP address ("<…>" allowed). The prefix,
// token and domain are matched case-insensitively.
func (c *Codec) Parse(addr string) (string, error) {
	id, _, err := c.Route(addr)
	return id, err
}

// Route returns the queue id in a VERP address and the tag of the node
// that minted it (NodeTag), "" for a token that names no node.
func (c *Codec) Route(addr string) (queueID, node string, err error) {
	a := strings.TrimSpace(addr)
	a = strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return "", "", ErrNotVERP
	}
	local, dom := a[:at], a[at+1:]
	if d, err := address.NormalizeDomain(dom); err != nil || d != c.domain {
		return "", "", ErrNotVERP
	}
	if len(local) <= len(Prefix) || !strings.EqualFold(local[:len(Prefix)], Prefix) {
		return "", "", ErrNotVERP
	}
	return c.routeToken(local[len(Prefix):])
}

// ParseToken returns the queue id in a token (the part after "bounce+").
func (c *Codec) ParseToken(tok string) (string, error) {
	id, _, err := c.routeToken(tok)
	return id, err
}

// routeToken opens a token into its queue id and node tag.
func (c *Codec) routeToken(tok string) (queueID, node string, err error) {
	up := strings.ToUpper(tok)
	raw, err := enc.DecodeString(up)
	// Canonical only: non-zero trailing bits would let two spellings decode alike.
	if err != nil || len(raw) == 0 || enc.EncodeToString(raw) != up {
		return "", "", ErrForged
	}
	id, err := c.tokens.Open(raw)
	if err != nil || len(id) == 0 {
		return "", "", ErrForged
	}
	if id[0] == nodeMark {
		if len(id) <= 1+tagSize {
			return "", "", ErrForged
		}
		return string(id[1+tagSize:]), hex.EncodeToString(id[1 : 1+tagSize]), nil
	}
	return string(id), "", nil
}
