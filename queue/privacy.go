package queue

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/compact"

	"github.com/postwarden/postwarden/suppression/address"
)

// ErrErased is returned (wrapped) for a message whose recipient was erased; it
// wraps ErrNotFound, since nothing about that person is held any more.
var ErrErased = fmt.Errorf("%w: recipient erased", ErrNotFound)

// EraseResult reports what EraseRecipient did. IDs lists every message of the
// address (so the caller can delete capture files named after them).
// Cancelled counts the pending messages cancelled, those in flight included
// (they are cancelled when their outcome comes back); Scrubbed counts the
// finished records scrubbed.
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
// one fsynced transaction. Its pending messages are cancelled with Reason
// "erased: "+reason; every record of the address, in any state, loses its
// recipient, idempotency key, replies and body, and keeps campaign, list,
// domain, state and times so reports still add up. A message in flight is
// scrubbed now and cancelled when its outcome comes back. The recipient-index
// and idempotency entries go too: a later enqueue of the address is stopped by
// the suppression tombstone (checked at enqueue and before delivery), not here.
// The erased bytes stay in freed pages until Compact.
func (s *Store) EraseRecipient(addr, reason string) (EraseResult, error) {
	a, err := address.Parse(addr)
	if err != nil {
		return EraseResult{}, fmt.Errorf("erase recipient %s: %s", address.Mask(addr), problem(err))
	}
	if reason = strings.TrimSpace(reason); reason == "" {
		return EraseResult{}, errors.New("erase recipient: a reason is required")
	}
	reason = "erased: " + reason
	idx := s.box.Index(a.Key())
	var res EraseResult
	err = s.update(func(tx *bbolt.Tx) error {
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
			prev := m
			switch {
			case m.State == StateActive:
				res.Cancelled++ // the runner cancels it when the outcome comes back
			case m.State.Finished():
				res.Scrubbed++
			default:
				m.State = StateCancelled
				res.Cancelled++
			}
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
			res.IDs = append(res.IDs, id)
		}
		return nil
	})
	if err != nil {
		return EraseResult{}, fmt.Errorf("erase recipient %s in %s: %w", address.Mask(a.Key()), s.path, err)
	}
	s.log.Info().Str("rcpt", address.Mask(a.Key())).Int("cancelled", res.Cancelled).
		Int("scrubbed", res.Scrubbed).Msg("recipient erased from queue")
	return res, nil
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
		s.log.Info().Int("pruned", n).Dur("older_than", olderThan).Msg("finished messages pruned")
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
	if m.State.pending() {
		return b.add(domainKey(m.Domain, m.State), -1)
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
	db, err := openDB(s.path, s.timeout)
	if err != nil {
		return fmt.Errorf("compact queue %s: reopen: %w", s.path, err)
	}
	s.db = db
	s.log.Info().Str("path", s.path).Msg("queue compacted")
	return nil
}
