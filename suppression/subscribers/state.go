package subscribers

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"iter"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/sealed"
)

// ---- the replicated state as records (a cluster node's snapshot) ----
//
// A node joining a cluster loads a snapshot instead of replaying the whole
// stream (issue 13, promise 7); the snapshot carries this store's state
// beside the suppression store's, at the same stream sequence. The state is
// exported as the records this store holds, not as ops: an erasure marker,
// a history's recorded times and a pending sign-up pruned since have no op
// that writes them again. A record is opaque outside this package:
//
//	key   tag(1 byte) || the key in its bucket
//	  'e' events  (idx || list || 0x00 || seq → kind || JSON, as stored)
//	  'p' people  (idx → JSON, its personal fields sealed)
//	  'm' members (list || 0x00 || idx → empty)
//	  'a' the applied stream sequence (key: the tag alone; 8 bytes big-endian)
//	  'n' the events bucket's next sequence (key: the tag alone; 8 bytes)
//
// Keys are keyed indexes and personal fields stay sealed under the data
// key, as at rest; the key check is not exported (every node has its own,
// under the same key).

// ErrNotEmpty: LoadState loads only into a store that holds nothing of a
// replica (or only what an earlier LoadState put there, nothing applied since).
var ErrNotEmpty = errors.New("subscribers: store is not empty; a snapshot's consent state loads only into an empty store")

// keyLoadedSeq, in bucket meta, is the applied sequence LoadState left: while
// the applied sequence is still it, nothing was applied since the load, and
// a join interrupted before the suppression store loaded may load again.
var keyLoadedSeq = []byte("loaded_seq")

const (
	tagEvents  byte = 'e'
	tagPeople  byte = 'p'
	tagMembers byte = 'm'
	tagApplied byte = 'a'
	tagNextSeq byte = 'n'
)

// ExportState calls put for every record of the store's replicated state
// (see above), from one read transaction, and returns the applied stream
// sequence it reflects. The transaction stays open while put runs.
func (s *Store) ExportState(put func(k, v []byte) error) (uint64, error) {
	var seq uint64
	err := s.view(func(tx *bbolt.Tx) error {
		seq = appliedSeqTx(tx)
		if err := put([]byte{tagApplied}, binary.BigEndian.AppendUint64(nil, seq)); err != nil {
			return err
		}
		events := tx.Bucket(bucketEvents)
		if err := put([]byte{tagNextSeq}, binary.BigEndian.AppendUint64(nil, events.Sequence())); err != nil {
			return err
		}
		var kb []byte
		for _, b := range []struct {
			tag    byte
			bucket *bbolt.Bucket
		}{{tagPeople, tx.Bucket(bucketPeople)}, {tagMembers, tx.Bucket(bucketMembers)}, {tagEvents, events}} {
			err := b.bucket.ForEach(func(k, v []byte) error {
				kb = append(append(kb[:0], b.tag), k...)
				return put(kb, v)
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("export consent state: %w", err)
	}
	return seq, nil
}

// StateEmpty reports whether LoadState may load into the store: it holds
// no record and no applied sequence, or only what an earlier LoadState put
// there (nothing applied since).
func (s *Store) StateEmpty() (bool, error) {
	var err error
	verr := s.view(func(tx *bbolt.Tx) error { err = loadableTx(tx); return nil })
	if verr != nil {
		return false, fmt.Errorf("check consent store empty: %w", verr)
	}
	return err == nil, nil
}

// LoadState loads records written by ExportState into this store, in one
// transaction that commits only if every record is well formed, and returns
// the applied sequence they reflect. The store must be empty (StateEmpty;
// else ErrNotEmpty): what an earlier load left, nothing applied since, is
// replaced.
func (s *Store) LoadState(recs iter.Seq2[[]byte, []byte]) (uint64, error) {
	var seq uint64
	err := s.update(func(tx *bbolt.Tx) error {
		if err := loadableTx(tx); err != nil {
			return err
		}
		for _, name := range [][]byte{bucketEvents, bucketPeople, bucketMembers} {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		var (
			haveSeq, haveNext bool
			next, maxSeq      uint64
			n                 int
		)
		events, people, members := tx.Bucket(bucketEvents), tx.Bucket(bucketPeople), tx.Bucket(bucketMembers)
		for k, v := range recs {
			if len(k) == 0 {
				return fmt.Errorf("consent record %d: empty key", n)
			}
			tag, key := k[0], k[1:]
			var err error
			switch tag {
			case tagApplied, tagNextSeq:
				if len(key) != 0 || len(v) != 8 {
					return fmt.Errorf("consent record %d: malformed sequence", n)
				}
				if tag == tagApplied {
					seq, haveSeq = binary.BigEndian.Uint64(v), true
				} else {
					next, haveNext = binary.BigEndian.Uint64(v), true
				}
			case tagEvents:
				if err := checkEventRecord(key, v); err != nil {
					return fmt.Errorf("consent record %d: %w", n, err)
				}
				maxSeq = max(maxSeq, binary.BigEndian.Uint64(key[len(key)-8:]))
				err = events.Put(bytes.Clone(key), bytes.Clone(v))
			case tagPeople:
				var p person
				if len(key) != sealed.IndexSize || json.Unmarshal(v, &p) != nil || p.ID == "" || p.Addr == nil {
					return fmt.Errorf("consent record %d: malformed subscriber", n)
				}
				err = people.Put(bytes.Clone(key), bytes.Clone(v))
			case tagMembers:
				if i := bytes.IndexByte(key, 0); i < 0 || len(key)-i-1 != sealed.IndexSize || len(v) != 0 {
					return fmt.Errorf("consent record %d: malformed list member", n)
				}
				err = members.Put(bytes.Clone(key), nil)
			default:
				return fmt.Errorf("consent record %d: unknown kind %q", n, tag)
			}
			if err != nil {
				return err
			}
			n++
		}
		if !haveSeq || !haveNext {
			return errors.New("consent state without its applied or next sequence")
		}
		// New events sort after every loaded one of their history.
		if err := events.SetSequence(max(next, maxSeq)); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyAppliedSeq, binary.BigEndian.AppendUint64(nil, seq)); err != nil {
			return err
		}
		return meta.Put(keyLoadedSeq, binary.BigEndian.AppendUint64(nil, seq))
	})
	if err != nil {
		return 0, fmt.Errorf("load consent state: %w", err)
	}
	s.log.Info().Uint64("seq", seq).Msg("consent state loaded from a snapshot")
	return seq, nil
}

// loadableTx returns ErrNotEmpty unless LoadState may load into tx's store.
func loadableTx(tx *bbolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	applied := appliedSeqTx(tx)
	if v := meta.Get(keyLoadedSeq); len(v) == 8 && binary.BigEndian.Uint64(v) == applied {
		return nil // an earlier load, nothing applied since
	}
	if applied != 0 {
		return fmt.Errorf("%w (it applied the stream up to %d)", ErrNotEmpty, applied)
	}
	for _, name := range [][]byte{bucketEvents, bucketPeople, bucketMembers} {
		if k, _ := tx.Bucket(name).Cursor().First(); k != nil {
			return fmt.Errorf("%w (bucket %s holds records)", ErrNotEmpty, name)
		}
	}
	return nil
}

// appliedSeqTx is the applied sequence ApplyOps recorded in tx's store.
func appliedSeqTx(tx *bbolt.Tx) uint64 {
	if v := tx.Bucket(bucketMeta).Get(keyAppliedSeq); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// checkEventRecord checks an event's key and value as stored.
func checkEventRecord(k, v []byte) error {
	if _, ok := splitEventKey(k); !ok {
		return errors.New("malformed event key")
	}
	if len(v) < 2 {
		return errors.New("empty event value")
	}
	if _, ok := kindOfCode[v[0]]; !ok {
		return fmt.Errorf("unknown event kind %d", v[0])
	}
	var se storedEvent
	if err := json.Unmarshal(v[1:], &se); err != nil {
		return fmt.Errorf("malformed event: %w", err)
	}
	return nil
}
