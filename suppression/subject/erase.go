package subject

import (
	"fmt"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/retention"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// Erasure is what an erasure did.
type Erasure struct {
	Subject      string                     `json:"subject"` // masked
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
// suppression tombstone, the queue, the capture files (by queue id, then by
// content for files whose record was pruned), and last a compaction of
// every store, since bbolt reuses freed pages without wiping them.
func Erase(d Deps, r Request) (Erasure, error) {
	ref, err := r.check(d, "erase")
	if err != nil {
		return Erasure{}, err
	}
	requestRef := fmt.Sprintf("erase-%s", d.now().UTC().Format("20060102T150405Z"))
	if err := d.record(r, "subject.erase", ref, map[string]string{"request": requestRef}); err != nil {
		return Erasure{}, err
	}
	tomb, err := d.Subscribers.Erase(r.Address, requestRef)
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
	er, err := d.Queue.EraseRecipient(r.Address, r.Reason)
	if err != nil {
		return Erasure{}, fmt.Errorf("subject erase: queue: %w", err)
	}
	res := Erasure{Subject: address.Mask(r.Address), Tombstone: tomb.Index, Consents: tomb.Consents, Cancelled: er.Cancelled, Scrubbed: er.Scrubbed}
	if res.CaptureFiles, err = removeCaptures(d.Outbox, er.IDs, r.Address); err != nil {
		return Erasure{}, fmt.Errorf("subject erase: capture files: %w", err)
	}
	if err := retention.CompactAll(d.Stores); err != nil {
		return Erasure{}, fmt.Errorf("subject erase: %w", err)
	}
	d.Log.Info().Str("who", r.Who).Str("subject", ref).Str("request", requestRef).Int("messages", len(er.IDs)).Msg("subject erased")
	return res, nil
}

// removeCaptures removes the capture files of the messages ids and then
// any other that names addr (its queue record pruned, the file still
// holding the address in clear), and counts them.
func removeCaptures(o Outbox, ids []string, addr string) (int, error) {
	total := 0
	for _, id := range ids {
		n, err := o.Remove(id)
		if err != nil {
			return total, err
		}
		total += n
	}
	n, err := o.RemoveMentioning(addr)
	return total + n, err
}
