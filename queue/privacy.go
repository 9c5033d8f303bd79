package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/compact"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// ErrErased is returned (wrapped) for a message whose recipient was erased; it
// wraps ErrNotFound, since nothing about that person is held any more.
var ErrErased = fmt.Errorf("%w: recipient erased", ErrNotFound)

// EraseResult reports what EraseRecipient did. IDs lists every message of the
// address (so the caller can delete capture files named after them).
// Cancelled counts the pending messages cancelled, those in flight included
// (they are cancelled when their outcome comes back); Scrubbed counts the
// finished records removed.
type EraseResult struct {
	IDs                 []string
	Cancelled, Scrubbed int
}

// MessagesFor returns every message held for addr, in every state, decrypted
// and with its history, in id order: for a data subject's export (GDPR Art. 15).
func (s *Store) MessagesFor(addr string) ([]Message, error) {
	a, err := address.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("messages for %s: %s", address.Mask(addr), problem(err))
	}
	idx := s.box.Index(a.Key())
	out := []Message{}
	err = s.view(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		c := b.rcpt.Cursor()
		for k, _ := c.Seek(idx); k != nil && bytes.HasPrefix(k, idx); k, _ = c.Next() {
			m, err := b.get(string(k[len(idx):]))
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("messages for %s in %s: %w", address.Mask(a.Key()), s.path, err)
	}
	return out, nil
}

// EraseRecipient removes addr's personal data from the queue (GDPR Art. 17), in
// one fsynced transaction. Each message of the address is deleted with every
// index entry naming it (its id carries its creation time; the record its
// domain and times: together they could single the person out) and is counted
// instead under its campaign in bucket erased, in its final state (pending
// ones as cancelled), so CampaignCounts still add up. A message in flight
// keeps a scrubbed record (no recipient, key, replies or body; Reason
// "erased: "+reason) until its outcome comes back, then goes the same way.
// A later enqueue of the address is stopped by the suppression tombstone
// (checked at enqueue and before delivery), not here. The erased bytes stay
// in freed pages until Compact.
func (s *Store) EraseRecipient(addr, reason string) (EraseResult, error) {
	a, err := address.Parse(addr)
	if err != nil {
		return EraseResult{}, fmt.Errorf("erase recipient %s: %s", address.Mask(addr), problem(err))
	}
	return s.eraseRecipient(s.box.Index(a.Key()), address.Mask(a.Key()), reason)
}

// EraseRecipientIndex is EraseRecipient for a caller that holds only the
// recipient's keyed index (hex, sealed.Box.IndexHex of the address key, as
// a suppression tombstone keeps it): a cluster node erasing a person
// another node was asked to erase.
func (s *Store) EraseRecipientIndex(indexHex, reason string) (EraseResult, error) {
	idx, err := hex.DecodeString(indexHex)
	if err != nil || len(idx) != sealed.IndexSize {
		return EraseResult{}, fmt.Errorf("erase recipient: index %q: want %d hex bytes", indexHex, sealed.IndexSize)
	}
	return s.eraseRecipient(idx, "index "+indexHex[:12], reason)
}

// eraseRecipient is EraseRecipient for the recipient index idx; who names
// the person in errors and logs (masked, or a short index).
func (s *Store) eraseRecipient(idx []byte, who, reason string) (EraseResult, error) {
	if reason = strings.TrimSpace(reason); reason == "" {
		return EraseResult{}, errors.New("erase recipient: a reason is required")
	}
	reason = "erased: " + reason
	var res EraseResult
	err := s.update(func(tx *bbolt.Tx) error {
		res = EraseResult{}
		b := s.buckets(tx)
		var keys [][]byte
		c := b.rcpt.Cursor()
		for k, _ := c.Seek(idx); k != nil && bytes.HasPrefix(k, idx); k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		now := time.Now()
		for _, k := range keys {
			id := string(k[len(idx):])
			m, err := b.get(id)
			if err != nil {
				return err
			}
			res.IDs = append(res.IDs, id)
			switch {
			case m.State == StateActive:
				res.Cancelled++ // the runner forgets it when the outcome comes back
			case m.State.Finished():
				res.Scrubbed++
				if err := b.forget(&m, m.State); err != nil {
					return err
				}
				continue
			default:
				res.Cancelled++
				if err := b.forget(&m, StateCancelled); err != nil {
					return err
				}
				continue
			}
			prev := m
			if m.Key != "" {
				ik := b.idemKey(m.Campaign, m.Key)
				if v := b.idem.Get(ik); string(v) == id {
					if err := b.idem.Delete(ik); err != nil {
						return err
					}
				}
			}
			m.To, m.Key, m.LastReply, m.Reason = "", "", "", reason
			for i := range m.History {
				m.History[i].Reply = ""
			}
			m.History = append(m.History, Attempt{Time: now, Outcome: "erased"})
			m.Erased, m.Updated = true, now
			if err := b.save(&m, &prev); err != nil {
				return err
			}
			if err := b.body.Delete([]byte(id)); err != nil {
				return fmt.Errorf("delete body of %s: %w", id, err)
			}
			if err := b.rcpt.Delete(k); err != nil {
				return fmt.Errorf("unindex recipient of %s: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return EraseResult{}, fmt.Errorf("erase recipient %s in %s: %w", who, s.path, err)
	}
	s.log.Info().Str("rcpt", who).Int("cancelled", res.Cancelled).
		Int("scrubbed", res.Scrubbed).Msg("recipient erased from queue")
	return res, nil
}

// forget deletes an erased person's message m (as stored) with its index
// entries and counts, and counts it in bucket erased under its campaign in
// state final: a count is all that is left of it.
func (b bkts) forget(m *Message, final State) error {
	if err := b.remove(m); err != nil {
		return err
	}
	if err := incr(b.erased, join(m.Campaign, string(final))); err != nil {
		return fmt.Errorf("count erased message %s: %w", m.ID, err)
	}
	return nil
}

// erasedCounts returns campaign's erased messages by final state.
func (b bkts) erasedCounts(campaign string) map[State]int {
	out := map[State]int{}
	prefix := join(campaign, "")
	c := b.erased.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(v) == 8 {
			out[State(k[len(prefix):])] += int(binary.BigEndian.Uint64(v))
		}
	}
	return out
}

// erasedFolded marks (in bucket meta) a file whose erased records, as
// versions before bucket erased kept them, were folded into counts.
var erasedFolded = []byte("erased-folded")

// foldErased forgets the scrubbed records an older version kept of erased
// people (all but those in flight), once per file.
func (b bkts) foldErased() error {
	if b.meta.Get(erasedFolded) != nil {
		return nil
	}
	var olds []Message
	c := b.msg.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if !bytes.Contains(v, []byte(`"erased":true`)) { // skip the sealed ones unopened
			continue
		}
		m, err := b.decode(string(k), v)
		if err != nil {
			return fmt.Errorf("decode message %s: %w", k, err)
		}
		if m.Erased && m.State != StateActive {
			olds = append(olds, m)
		}
	}
	for i := range olds {
		final := olds[i].State
		if !final.Finished() {
			final = StateCancelled
		}
		if err := b.forget(&olds[i], final); err != nil {
			return err
		}
	}
	return b.meta.Put(erasedFolded, []byte{1})
}

// pruneChunk bounds the records one PruneFinished transaction deletes.
const pruneChunk = 1000

// PruneFinished deletes the records of finished messages (delivered, bounced,
// expired, cancelled) last updated more than olderThan ago (retention
// finished_messages), with their index entries and idempotency keys, keeping
// the counters consistent. A campaign re-run after that may enqueue the
// address again; suppression still applies. It returns how many it deleted.
// The deleted bytes stay in freed pages until Compact.
func (s *Store) PruneFinished(olderThan time.Duration) (int, error) {
	if olderThan <= 0 {
		return 0, errors.New("prune finished messages: age must be positive")
	}
	cutoff := time.Now().Add(-olderThan)
	var ids []string
	err := s.view(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		for _, st := range States {
			if !st.Finished() {
				continue
			}
			for _, id := range b.idsInState(st) {
				m, err := b.get(id)
				if err != nil {
					return err
				}
				if m.Updated.Before(cutoff) {
					ids = append(ids, id)
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune finished messages in %s: %w", s.path, err)
	}
	slices.Sort(ids)
	n := 0
	for chunk := range slices.Chunk(ids, pruneChunk) {
		err := s.update(func(tx *bbolt.Tx) error {
			b := s.buckets(tx)
			for _, id := range chunk {
				m, err := b.get(id)
				if errors.Is(err, ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				if !m.State.Finished() || !m.Updated.Before(cutoff) {
					continue // changed since the scan
				}
				if err := b.remove(&m); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("prune finished messages in %s: %w", s.path, err)
		}
	}
	if n > 0 {
		s.log.Info().Int("pruned", n).Dur("older_than_ms", olderThan).Msg("finished messages pruned")
	}
	return n, nil
}

// remove deletes finished message m with its index entries and counts.
func (b bkts) remove(m *Message) error {
	id := []byte(m.ID)
	for _, del := range []struct {
		bkt *bbolt.Bucket
		k   []byte
	}{
		{b.msg, id}, {b.body, id},
		{b.state, join(string(m.State), m.ID)},
		{b.campaign, join(m.Campaign, m.ID)},
	} {
		if err := del.bkt.Delete(del.k); err != nil {
			return fmt.Errorf("delete message %s: %w", m.ID, err)
		}
	}
	if m.State.due() {
		if err := b.due.Delete(dueKey(m.NextAttempt, m.ID)); err != nil {
			return fmt.Errorf("delete message %s: %w", m.ID, err)
		}
	}
	if m.Key != "" {
		ik := b.idemKey(m.Campaign, m.Key)
		if v := b.idem.Get(ik); string(v) == m.ID {
			if err := b.idem.Delete(ik); err != nil {
				return fmt.Errorf("delete message %s: %w", m.ID, err)
			}
		}
	}
	if rk := b.rcptKey(m.To, m.ID); rk != nil {
		if err := b.rcpt.Delete(rk); err != nil {
			return fmt.Errorf("delete message %s: %w", m.ID, err)
		}
	}
	if err := b.add(stateKey(m.State), -1); err != nil {
		return err
	}
	if err := b.add(campaignKey(m.Campaign, m.State), -1); err != nil {
		return err
	}
	pk := pendingKeys(m)
	for _, k := range pk.all() {
		if err := b.add(k, -1); err != nil {
			return err
		}
	}
	return nil
}

// Compact rewrites the queue file into a fresh one (bbolt.Compact into
// <path>.compact, fsync, rename over it, fsync the folder, reopen), so freed
// pages that held erased or pruned bytes are gone from it. Every other call
// waits while it runs; deliveries in flight keep their claim. The old file's
// blocks go back to the file system unwiped; what they held was sealed.
func (s *Store) Compact() error {
	s.dbmu.Lock()
	defer s.dbmu.Unlock()
	if err := compact.Rewrite(s.db, s.path, s.timeout); err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	if err := s.db.Close(); err != nil {
		s.log.Warn().Err(err).Msg("close queue file replaced by compaction")
	}
	db, _, err := openDB(s.path, s.timeout, s.expect)
	if err != nil {
		return fmt.Errorf("compact queue %s: reopen: %w", s.path, err)
	}
	s.db = db
	s.log.Info().Str("path", s.path).Msg("queue compacted")
	return nil
}
