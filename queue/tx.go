package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/sealed"
)

// bkts holds one transaction's buckets. Never keep it past the closure.
type bkts struct {
	msg, body, idem, due, state, campaign, campaigns *bbolt.Bucket
	counts, minutes, rates, susp, rcpt, meta, dict   *bbolt.Bucket
	erased, warmup                                   *bbolt.Bucket
	box                                              *sealed.Box
	tx                                               *bbolt.Tx // for buckets created on first use (events)
}

// buckets returns tx's buckets (created by Open) with the Store's sealing box.
func (s *Store) buckets(tx *bbolt.Tx) bkts {
	return bkts{
		tx:        tx,
		box:       s.box,
		rcpt:      tx.Bucket(bktRcpt),
		meta:      tx.Bucket(bktMeta),
		dict:      tx.Bucket(bktDict),
		msg:       tx.Bucket(bktMsg),
		body:      tx.Bucket(bktBody),
		idem:      tx.Bucket(bktIdem),
		due:       tx.Bucket(bktDue),
		state:     tx.Bucket(bktState),
		campaign:  tx.Bucket(bktCampaign),
		campaigns: tx.Bucket(bktCampaigns),
		counts:    tx.Bucket(bktCounts),
		minutes:   tx.Bucket(bktMinutes),
		rates:     tx.Bucket(bktRates),
		susp:      tx.Bucket(bktSusp),
		erased:    tx.Bucket(bktErased),
		warmup:    tx.Bucket(bktWarmup),
	}
}

// join returns a \x00 b as a fresh key.
func join(a, b string) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

// dueKey returns the due-index key of id at t.
func dueKey(t time.Time, id string) []byte {
	n := t.UnixNano()
	if n < 0 {
		n = 0
	}
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(n))
	return append(k, id...)
}

// get loads message id; the error wraps ErrNotFound when it is unknown.
func (b bkts) get(id string) (Message, error) {
	v := b.msg.Get([]byte(id))
	if v == nil {
		return Message{}, fmt.Errorf("message %s: %w", id, ErrNotFound)
	}
	m, err := b.decode(id, v)
	if err != nil {
		return Message{}, fmt.Errorf("decode message %s: %w", id, err)
	}
	return m, nil
}

// save writes m and moves its index entries and counters from prev's (nil for a new message).
func (b bkts) save(m *Message, prev *Message) error {
	v, err := b.encode(m)
	if err != nil {
		return fmt.Errorf("encode message %s: %w", m.ID, err)
	}
	if err := b.msg.Put([]byte(m.ID), v); err != nil {
		return fmt.Errorf("store message %s: %w", m.ID, err)
	}
	if prev != nil {
		if err := b.state.Delete(join(string(prev.State), prev.ID)); err != nil {
			return fmt.Errorf("unindex message %s: %w", m.ID, err)
		}
		if prev.State.due() {
			if err := b.due.Delete(dueKey(prev.NextAttempt, prev.ID)); err != nil {
				return fmt.Errorf("unindex message %s: %w", m.ID, err)
			}
		}
	}
	if err := b.state.Put(join(string(m.State), m.ID), nil); err != nil {
		return fmt.Errorf("index message %s: %w", m.ID, err)
	}
	if err := b.campaign.Put(join(m.Campaign, m.ID), []byte(m.State)); err != nil {
		return fmt.Errorf("index message %s: %w", m.ID, err)
	}
	if m.State.due() {
		if err := b.due.Put(dueKey(m.NextAttempt, m.ID), nil); err != nil {
			return fmt.Errorf("index message %s: %w", m.ID, err)
		}
	}
	if m.State.Finished() {
		if err := b.body.Delete([]byte(m.ID)); err != nil {
			return fmt.Errorf("delete body of %s: %w", m.ID, err)
		}
	}
	if prev == nil || prev.State != m.State || prev.Provider != m.Provider || prev.Source != m.Source {
		if err := b.countMove(m, prev); err != nil {
			return fmt.Errorf("count message %s: %w", m.ID, err)
		}
	}
	return nil
}

// idsInState returns the ids in state st, in id order.
func (b bkts) idsInState(st State) []string {
	var ids []string
	prefix := join(string(st), "")
	c := b.state.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		ids = append(ids, string(k[len(prefix):]))
	}
	return ids
}
