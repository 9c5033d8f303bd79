package dkim

import (
	"bufio"
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"net/mail"
	"net/textproto"
	"strings"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/postwarden/postwarden/suppression/address"
)

// ErrNoKey is returned (wrapped) by Sign when no key is aligned with the From domain.
var ErrNoKey = errors.New("dkim: no key for the From domain")

// headerKeys lists the header fields named in h=, in order. From,
// List-Unsubscribe and List-Unsubscribe-Post appear twice (over-signing,
// RFC 6376 §5.4.2) so that a copy added in transit breaks the signature;
// RFC 8058 §4 requires both List-Unsubscribe fields to be signed; Gmail's
// feedback loop counts a Feedback-ID only when it is signed.
var headerKeys = []string{
	"From", "From",
	"To", "Subject", "Date", "Message-ID", "List-Id", "Feedback-ID",
	"List-Unsubscribe", "List-Unsubscribe",
	"List-Unsubscribe-Post", "List-Unsubscribe-Post",
	"Reply-To", "MIME-Version", "Content-Type",
}

// Signer signs messages with the keys aligned with their From domain; safe for concurrent use.
type Signer struct {
	keys []*Key // RSA keys first, then Ed25519
}

// NewSigner returns a Signer over keys; nil entries are ignored.
func NewSigner(keys []*Key) *Signer {
	s := &Signer{}
	for _, t := range []string{TypeRSA, TypeEd25519} {
		for _, k := range keys {
			if k != nil && k.Signer != nil && k.Type() == t {
				s.keys = append(s.keys, k)
			}
		}
	}
	return s
}

// Sign returns msg (CRLF line endings) with one DKIM-Signature header per
// aligned key prepended. With no aligned key it returns msg unchanged and an
// error wrapping ErrNoKey.
func (s *Signer) Sign(msg []byte) ([]byte, error) {
	sigs, err := s.signatures(msg, len(msg))
	if err != nil {
		return msg, err
	}
	return append(sigs, msg...), nil
}

// Signatures returns the DKIM-Signature header fields (each with its final
// CRLF) of msg, one per aligned key, to be sent before msg: what Sign
// prepends, without copying msg. With no aligned key it returns an error
// wrapping ErrNoKey.
func (s *Signer) Signatures(msg []byte) ([]byte, error) { return s.signatures(msg, 0) }

// signatures is Signatures with room for spare more bytes after the fields.
func (s *Signer) signatures(msg []byte, spare int) ([]byte, error) {
	domain, err := FromDomain(msg)
	if err != nil {
		return nil, err
	}
	var sigs []string
	for _, k := range s.keys {
		if !aligned(domain, k.Domain) {
			continue
		}
		sig, err := signOne(k, msg)
		if err != nil {
			return nil, fmt.Errorf("dkim: sign for %s with selector %s: %w", k.Domain, k.Selector, err)
		}
		sigs = append(sigs, sig)
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("%w %s", ErrNoKey, domain)
	}
	n := spare
	for _, sig := range sigs {
		n += len(sig)
	}
	out := make([]byte, 0, n)
	for _, sig := range sigs {
		out = append(out, sig...)
	}
	return out, nil
}

// signOne computes the DKIM-Signature header field (with its final CRLF) of msg with k.
func signOne(k *Key, msg []byte) (string, error) {
	opts := &msgdkim.SignOptions{
		Domain:                 k.Domain,
		Selector:               k.Selector,
		Signer:                 k.Signer,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
		BodyCanonicalization:   bodyCanonicalization(k),
		HeaderKeys:             headerKeys,
		// No l= tag (go-msgauth never emits one): a body length lets anyone append
		// unsigned text below the signed part, RFC 6376 §8.2.
	}
	w, err := msgdkim.NewSigner(opts)
	if err != nil {
		return "", err
	}
	if _, err := w.Write(msg); err != nil {
		w.Close()
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return w.Signature(), nil
}

// bodyCanonicalization is k's c= body algorithm. Simple (RFC 6376 §3.4.3) is
// the default: the bodies postwarden renders are quoted-printable with lines
// under 78 octets and no trailing white space, which relaxed (§3.4.4) would
// only rewrite if a relay changed white space, and relaxed canonicalisation
// is a per-byte pass that cost ~15 % of a campaign's CPU (docs/performance.md).
func bodyCanonicalization(k *Key) msgdkim.Canonicalization {
	if k.RelaxedBody {
		return msgdkim.CanonicalizationRelaxed
	}
	return msgdkim.CanonicalizationSimple
}

// aligned reports whether keyDomain equals fromDomain or is a parent of it (DMARC relaxed alignment).
func aligned(fromDomain, keyDomain string) bool {
	return fromDomain == keyDomain || strings.HasSuffix(fromDomain, "."+keyDomain)
}

// FromDomain returns the normalised domain of the single From address in msg's header.
func FromDomain(msg []byte) (string, error) {
	hdr := msg
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		hdr = msg[:i+4]
	} else {
		hdr = append(bytes.Clone(msg), "\r\n"...) // header only, no body (RFC 5322 §3.5)
	}
	// The reader needs no more than the header: not bufio's 4 KB default per message.
	r := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(hdr), min(len(hdr), 4096)))
	h, err := r.ReadMIMEHeader()
	if err != nil {
		return "", fmt.Errorf("dkim: read message header: %w", err)
	}
	froms := h.Values("From")
	if len(froms) != 1 {
		return "", fmt.Errorf("dkim: message has %d From fields, want exactly 1 (RFC 5322 §3.6)", len(froms))
	}
	list, err := mail.ParseAddressList(froms[0])
	if err != nil {
		return "", fmt.Errorf("dkim: From field: %w", err)
	}
	if len(list) != 1 {
		return "", fmt.Errorf("dkim: From field has %d addresses, want 1", len(list))
	}
	a, err := address.Parse(list[0].Address)
	if err != nil {
		return "", fmt.Errorf("dkim: From field: %w", err)
	}
	return a.Domain, nil
}
