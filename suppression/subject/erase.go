package subject

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/retention"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// Erasure is what an erasure did.
type Erasure struct {
	Subject      string                     `json:"subject"` // masked, or "index <first 12 hex digits>"
	Tombstone    string                     `json:"tombstone"`
	Consents     []subscribers.ConsentDates `json:"consent_dates,omitempty"`
	Cancelled    int                        `json:"messages_cancelled"`
	Scrubbed     int                        `json:"messages_scrubbed"`
	CaptureFiles int                        `json:"capture_files_removed"`
}

// Erase erases r.Address everywhere (Art. 17) and keeps only a tombstone:
// the keyed index, the request reference and the consent dates, which
// blocks re-contact and proves the erasure. In order: the audit entry
// (naming the index, never the address), the consent store, the
// suppression tombstone (on a cluster node, published to the cluster's
// stream, whose other nodes then erase the rest by index: EraseIndex), and
// then what this node holds (eraseHeld): the queue, the capture files (by
// queue id, then by content for files whose record was pruned), and last a
// compaction of every store, since bbolt reuses freed pages without wiping
// them.
func Erase(d Deps, r Request) (Erasure, error) {
	ref, err := r.check(d, "erase")
	if err != nil {
		return Erasure{}, err
	}
	ix := strings.TrimPrefix(ref, refPrefix)
	requestRef := fmt.Sprintf("erase-%s", d.now().UTC().Format("20060102T150405Z"))
	if err := d.record(r, "subject.erase", ref, map[string]string{"request": requestRef}); err != nil {
		return Erasure{}, err
	}
	tomb, err := d.Subscribers.EraseIndex(ix, requestRef)
	if err != nil {
		return Erasure{}, fmt.Errorf("subject erase: subscribers: %w", err)
	}
	consents := make([]suppression.ConsentDates, len(tomb.Consents))
	for i, c := range tomb.Consents {
		consents[i] = suppression.ConsentDates{List: c.List, Subscribed: c.Subscribed, Confirmed: c.Confirmed, Source: c.Source}
	}
	if _, err := d.Suppression.Erase(r.Address, requestRef, consents); err != nil {
		return Erasure{}, fmt.Errorf("subject erase: suppression: %w", err)
	}
	res, err := eraseHeld(d, ix, r.Reason, r.Address)
	if err != nil {
		return Erasure{}, fmt.Errorf("subject erase: %w", err)
	}
	res.Subject, res.Tombstone, res.Consents = address.Mask(r.Address), tomb.Index, tomb.Consents
	d.Log.Info().Str("who", r.Who).Str("subject", ref).Str("request", requestRef).Int("messages", res.Cancelled+res.Scrubbed).Msg("subject erased")
	return res, nil
}

// IndexRequest is the erasure of a person known only by the keyed index of
// their address: on a cluster node, an erasure another node was asked for,
// which reached this one through the suppression stream (its tombstone
// applied here already).
type IndexRequest struct {
	Who    string // who asks: "cluster:<origin node>"
	Index  string // hex keyed index of the address key (sealed.Box.IndexHex)
	Ref    string // the origin's request reference (the tombstone's)
	Reason string // why, for the audit entry and the queue's records
	// Own: this node made the erasure (Erase ran here) and its tombstone
	// has now been applied here in stream order. Erase erased the consent
	// store before publishing; a consent op earlier in the stream than the
	// tombstone, not yet applied here then, was applied after it and may
	// have brought the person back (a pending sign-up). Only the consent
	// store is erased again; the rest Erase did.
	Own bool
}

// EraseIndex erases from this node's stores the person whose address has
// the keyed index r.Index, leaving the suppression tombstone as it is: the
// audit entry first (Who, naming the index), then the consent store (its
// erasure marker keeps the consent dates held here), then what this node
// holds (eraseHeld) — the queue, the capture files of the person's
// messages (by queue id, then any whose To, Cc or Bcc header has the
// index), and a compaction of every store. It never sees the address, so
// a capture file whose record was pruned and whose header does not name
// the person (a Bcc left out, a broken header) is not found here. Erasing again is harmless: each store
// erases what is left, and the audit log records the request again.
func EraseIndex(d Deps, r IndexRequest) (Erasure, error) {
	ix := strings.ToLower(strings.TrimSpace(r.Index))
	if b, err := hex.DecodeString(ix); err != nil || len(b) != sealed.IndexSize {
		return Erasure{}, fmt.Errorf("subject erase by index: index %q: want %d hex bytes", r.Index, sealed.IndexSize)
	}
	if strings.TrimSpace(r.Reason) == "" {
		return Erasure{}, fmt.Errorf("subject erase by index: a reason is required")
	}
	if strings.TrimSpace(r.Ref) == "" {
		return Erasure{}, fmt.Errorf("subject erase by index: the request reference is required")
	}
	ref := refPrefix + ix
	if r.Own {
		return eraseReturned(d, r, ix)
	}
	if err := d.record(Request{Who: r.Who, Reason: r.Reason}, "subject.erase", ref, map[string]string{"request": r.Ref, "scope": "this node, by index"}); err != nil {
		return Erasure{}, err
	}
	tomb, err := d.Subscribers.EraseIndex(ix, r.Ref)
	if err != nil {
		return Erasure{}, fmt.Errorf("subject erase by index: subscribers: %w", err)
	}
	res, err := eraseHeld(d, ix, r.Reason, "")
	if err != nil {
		return Erasure{}, fmt.Errorf("subject erase by index: %w", err)
	}
	res.Subject, res.Tombstone, res.Consents = "index "+ix[:12], ix, tomb.Consents
	d.Log.Info().Str("who", r.Who).Str("subject", ref[:len(refPrefix)+12]).Str("request", r.Ref).Int("messages", res.Cancelled+res.Scrubbed).Msg("subject erased on this node")
	return res, nil
}

// eraseReturned is EraseIndex for an erasure this node made (r.Own): the
// consent store erased again under the same reference, which writes
// nothing when nothing came back. When something did, the store is
// compacted (the deleted records leave the file) and the audit log records
// it after the fact: until the erase, this node did not know it held them.
func eraseReturned(d Deps, r IndexRequest, ix string) (Erasure, error) {
	tomb, err := d.Subscribers.EraseIndex(ix, r.Ref)
	if err != nil {
		return Erasure{}, fmt.Errorf("subject erase by index: subscribers: %w", err)
	}
	res := Erasure{Subject: "index " + ix[:12], Tombstone: ix, Consents: tomb.Consents}
	if tomb.Unchanged {
		return res, nil
	}
	ref := refPrefix + ix
	if err := d.record(Request{Who: r.Who, Reason: r.Reason}, "subject.erase", ref, map[string]string{"request": r.Ref, "scope": "consent records applied here after the erasure"}); err != nil {
		return Erasure{}, err
	}
	if err := retention.CompactAll(d.Stores); err != nil {
		return Erasure{}, err
	}
	d.Log.Warn().Str("subject", ref[:len(refPrefix)+12]).Str("request", r.Ref).Msg("consent records applied after the erasure erased again")
	return res, nil
}

// eraseHeld erases what this node holds of the person with keyed index ix
// beyond the consent and suppression stores: their messages in the queue
// (reason kept in the records in flight), the capture files of those
// messages and any other capture file of the person (removeCaptures);
// then it compacts every store. Erase and EraseIndex both
// end with it.
func eraseHeld(d Deps, ix, reason, addr string) (Erasure, error) {
	er, err := d.Queue.EraseRecipientIndex(ix, reason)
	if err != nil {
		return Erasure{}, fmt.Errorf("queue: %w", err)
	}
	res := Erasure{Cancelled: er.Cancelled, Scrubbed: er.Scrubbed}
	if res.CaptureFiles, err = removeCaptures(d.Outbox, d.Index, er.IDs, ix, addr); err != nil {
		return Erasure{}, fmt.Errorf("capture files: %w", err)
	}
	if err := retention.CompactAll(d.Stores); err != nil {
		return Erasure{}, err
	}
	return res, nil
}

// removeCaptures removes the capture files of the messages ids and then
// any other of the person (its queue record pruned, the file still holding
// the address in clear): by content when the address is known (addr not
// ""), else by the addresses its header names, whose index is want. It
// counts them.
func removeCaptures(o Outbox, ix Indexer, ids []string, want, addr string) (int, error) {
	total := 0
	for _, id := range ids {
		n, err := o.Remove(id)
		if err != nil {
			return total, err
		}
		total += n
	}
	var (
		n   int
		err error
	)
	if addr != "" {
		n, err = o.RemoveMentioning(addr)
	} else {
		n, err = o.RemoveAddressed(func(a string) bool { return isIndexed(ix, want, a) })
	}
	return total + n, err
}

// isIndexed reports whether address a has the keyed index ix.
func isIndexed(ix Indexer, want, a string) bool {
	p, err := address.Parse(a)
	return err == nil && ix.IndexHex(p.Key()) == want
}
