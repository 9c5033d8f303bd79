package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
)

// bktEvents holds campaign event counters:
//
//	events  campaign \x00 kind → 8-byte big-endian count
//
// It is created on first use (Open's bucket list belongs to store.go).
var bktEvents = []byte("events")

// maxEventKindLen bounds an event kind ("unsubscribed", "suppressed:complaint"…).
const maxEventKindLen = 64

// AddCampaignEvent adds one to campaign's counter of kind (a short string
// without control characters) on every call. It uses db.Batch (many
// goroutines count at once) and returns after the commit is fsynced. What a
// person did (unsubscribed, complained, bounced) is counted with
// CountCampaignEvent instead, once per person.
func (s *Store) AddCampaignEvent(campaign, kind string) error {
	if err := checkEvent(campaign, kind); err != nil {
		return fmt.Errorf("count campaign event: %w", err)
	}
	k := join(campaign, kind)
	err := s.batch(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bktEvents)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", bktEvents, err)
		}
		return incr(b, k)
	})
	if err != nil {
		return fmt.Errorf("count %s event of campaign %s in %s: %w", kind, campaign, s.path, err)
	}
	return nil
}

// CountCampaignEvent counts kind ("unsubscribed", "complained",
// "bounced_hard", "bounced_soft", "delayed") once per person per campaign:
// the first time for addr's message in campaign it adds one to campaign's
// counter and marks the message (Message.Counted), in the same transaction,
// and reports true (then Config.OnCampaignEvent is told); a repeat, or an address with no message in campaign
// (never sent, erased, pruned), changes nothing and reports false. A repeat
// costs one read transaction.
func (s *Store) CountCampaignEvent(campaign, addr, kind string) (bool, error) {
	if err := checkEvent(campaign, kind); err != nil {
		return false, fmt.Errorf("count campaign event: %w", err)
	}
	a, err := address.Parse(addr)
	if err != nil {
		return false, fmt.Errorf("count %s event of campaign %s: recipient %s", kind, campaign, problem(err))
	}
	idx := s.box.Index(a.Key())
	var todo bool
	if err := s.view(func(tx *bbolt.Tx) error {
		m, err := eventCarrier(s.buckets(tx), campaign, idx, kind)
		todo = m != nil
		return err
	}); err != nil || !todo {
		if err != nil {
			return false, fmt.Errorf("count %s event of campaign %s in %s: %w", kind, campaign, s.path, err)
		}
		return false, nil
	}
	var added bool
	err = s.batch(func(tx *bbolt.Tx) error {
		var err error
		added, err = countEventIn(s.buckets(tx), campaign, idx, kind) // again: another request may have counted it since the read
		return err
	})
	if err != nil {
		return false, fmt.Errorf("count %s event of campaign %s in %s: %w", kind, campaign, s.path, err)
	}
	if added && s.onEvent != nil {
		s.onEvent(campaign, kind)
	}
	return added, nil
}

// eventCarrier returns the person's (recipient index idx) message in
// campaign that should carry the mark of kind, or nil when there is none or
// the event is counted already.
func eventCarrier(b bkts, campaign string, idx []byte, kind string) (*Message, error) {
	var first *Message
	c := b.rcpt.Cursor()
	for k, _ := c.Seek(idx); k != nil && bytes.HasPrefix(k, idx); k, _ = c.Next() {
		m, err := b.get(string(k[len(idx):]))
		if err != nil {
			return nil, err
		}
		if m.Campaign != campaign || m.Erased {
			continue
		}
		if slices.Contains(m.Counted, kind) {
			return nil, nil
		}
		if first == nil {
			first = &m
		}
	}
	return first, nil
}

// countEventIn counts kind once for the person of recipient index idx in
// campaign, in b's transaction: it marks their message and adds one to the
// campaign's counter, and reports whether it did (false for a repeat).
func countEventIn(b bkts, campaign string, idx []byte, kind string) (bool, error) {
	m, err := eventCarrier(b, campaign, idx, kind)
	if err != nil || m == nil {
		return false, err
	}
	ev, err := b.tx.CreateBucketIfNotExists(bktEvents)
	if err != nil {
		return false, fmt.Errorf("create bucket %s: %w", bktEvents, err)
	}
	prev := *m
	m.Counted = append(slices.Clone(m.Counted), kind)
	if err := b.save(m, &prev); err != nil {
		return false, err
	}
	return true, incr(ev, join(campaign, kind))
}

// incr adds one to the 8-byte big-endian counter k of b.
func incr(b *bbolt.Bucket, k []byte) error {
	var n uint64
	if v := b.Get(k); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], n+1)
	return b.Put(k, buf[:])
}

// CampaignEvents returns campaign's event counters by kind (empty if none).
func (s *Store) CampaignEvents(campaign string) (map[string]int, error) {
	out := map[string]int{}
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bktEvents)
		if b == nil {
			return nil
		}
		prefix := join(campaign, "")
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(v) == 8 {
				out[string(k[len(prefix):])] = int(binary.BigEndian.Uint64(v))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read events of campaign %s: %w", campaign, err)
	}
	return out, nil
}

// checkEvent rejects campaign ids and kinds that would break keys or logs.
func checkEvent(campaign, kind string) error {
	switch {
	case campaign == "":
		return errors.New("empty campaign")
	case len(campaign) > maxCampaignLen:
		return fmt.Errorf("campaign longer than %d bytes", maxCampaignLen)
	case strings.IndexByte(campaign, 0) >= 0:
		return errors.New("campaign contains NUL")
	case kind == "":
		return errors.New("empty event kind")
	case len(kind) > maxEventKindLen:
		return fmt.Errorf("event kind longer than %d bytes", maxEventKindLen)
	}
	for _, r := range kind {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("event kind %q contains a control character", kind)
		}
	}
	return nil
}
