package suppression

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// ---- mutations: the writes as data, for a replica (suppression/replica) ----

// Op names the mutating Store method a Mutation stands for.
type Op string

// The operations.
const (
	OpAdd        Op = "add"        // Add, SuppressAddress
	OpRemove     Op = "remove"     // Remove
	OpRestrict   Op = "restrict"   // Restrict
	OpUnrestrict Op = "unrestrict" // Unrestrict
	OpErase      Op = "erase"      // Erase, EraseIndex
	// OpConsent carries consent events (suppression/subscribers ops) on the
	// same log, filed under the person's index so an erasure wipes them
	// too; this store only records its sequence.
	OpConsent Op = "consent"
	// OpImport carries an import run's record (ImportFileVia through a
	// cluster's log), so that any node resumes an interrupted import.
	OpImport Op = "import"
)

// Mutation is one call of a mutating Store method as data, so that a
// replicated log can carry it and every node apply it alike. Normalise it
// once, where it is made (NormalizeMutation): the times it carries then
// make every node write the same entry.
type Mutation struct {
	Op    Op             `json:"op"`
	Time  time.Time      `json:"t"`           // when it was made; the entry's time unless Entry.Time is set
	Entry *Entry         `json:"e,omitempty"` // OpAdd
	Addr  string         `json:"a,omitempty"` // OpRemove: address key or "@domain"; OpRestrict, OpUnrestrict: address key
	List  string         `json:"l,omitempty"` // OpRemove: the list ("" = the global entry)
	Note  string         `json:"n,omitempty"` // OpRestrict: the request's reason
	Index string         `json:"i,omitempty"` // OpErase: hex index of the address key (never the address)
	Ref   string         `json:"r,omitempty"` // OpErase: the request reference
	Dates []ConsentDates `json:"c,omitempty"` // OpErase: consent dates for the tombstone
	// Consent is OpConsent's payload, opaque here (the consent store's op);
	// sealed with the rest of the change.
	Consent json.RawMessage `json:"k,omitempty"`
	// Import is OpImport's run record; filed under the keyed index of
	// the import's identity, never an address.
	Import *ImportProgress `json:"p,omitempty"`
}

// Outcome is what applying a Mutation did.
type Outcome struct {
	Skipped bool  // its sequence was applied before: nothing done
	Found   bool  // OpRemove, OpUnrestrict: there was an entry
	Entry   Entry // OpErase: the tombstone
	// Refused is the store's refusal (ErrErased, ErrRestricted, a target
	// that does not parse): nothing changed, but the sequence is recorded,
	// as it would be on every node.
	Refused error
}

// Storage of the replica's state (bucket meta and bucket pending):
//
//	meta     "applied_seq" → uint64 big-endian: the last stream sequence applied
//	meta     "erased_seq" → uint64 big-endian: the sequence of the last erasure
//	         applied (snapshots taken before it still hold the person)
//	pending  key (caller's, ordered) → caller's opaque value (sealed by it)
//	due      seq (uint64 big-endian) → caller's opaque value: work to do
//	         after the change at seq was applied (Logged.Due), until DoneDue
var (
	bucketDue     = []byte("due")
	bucketPending = []byte("pending")
	keyAppliedSeq = []byte("applied_seq")
	keyErasedSeq  = []byte("erased_seq")
)

// NormalizeMutation checks m and returns it as every node will apply it:
// targets normalised, the time set (now if zero, UTC), and an erasure
// carrying the index alone (an address given in Addr is turned into it).
func (s *Store) NormalizeMutation(m Mutation) (Mutation, error) {
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	m.Time = m.Time.UTC()
	var err error
	switch m.Op {
	case OpAdd:
		if m.Entry == nil {
			return Mutation{}, errors.New("mutation add: no entry")
		}
		e := *m.Entry
		if e.Time.IsZero() {
			e.Time = m.Time
		}
		e.Index, e.Consents = "", nil
		if e, err = normalize(e); err != nil {
			return Mutation{}, fmt.Errorf("mutation add: %w", err)
		}
		m.Entry = &e
	case OpRemove:
		if m.Addr, err = NormalizeTarget(m.Addr); err != nil {
			return Mutation{}, fmt.Errorf("mutation remove: %w", err)
		}
		m.List = strings.Trim(m.List, " \t")
		if err := checkList(m.List); err != nil {
			return Mutation{}, fmt.Errorf("mutation remove: %w", err)
		}
	case OpRestrict, OpUnrestrict:
		if m.Addr, err = addressKey(m.Addr); err != nil {
			return Mutation{}, fmt.Errorf("mutation %s: %w", m.Op, err)
		}
		if m.Op == OpRestrict {
			if _, err := normalize(Entry{Target: m.Addr, Reason: Restricted, Note: m.Note}); err != nil {
				return Mutation{}, fmt.Errorf("mutation restrict: %w", err)
			}
		}
	case OpConsent:
		if idx, err := hex.DecodeString(m.Index); err != nil || len(idx) != sealed.IndexSize {
			return Mutation{}, fmt.Errorf("mutation consent: index %q: want %d hex bytes", m.Index, sealed.IndexSize)
		}
		m.Index = strings.ToLower(m.Index)
		if len(m.Consent) == 0 {
			return Mutation{}, errors.New("mutation consent: no payload")
		}
	case OpImport:
		if err := checkImport(m.Import); err != nil {
			return Mutation{}, fmt.Errorf("mutation import: %w", err)
		}
		p := *m.Import
		p.Key = strings.ToLower(p.Key)
		m.Import = &p
	case OpErase:
		if m.Addr != "" {
			k, err := addressKey(m.Addr)
			if err != nil {
				return Mutation{}, fmt.Errorf("mutation erase: %w", err)
			}
			m.Index, m.Addr = s.box.IndexHex(k), ""
		}
		if idx, err := hex.DecodeString(m.Index); err != nil || len(idx) != sealed.IndexSize {
			return Mutation{}, fmt.Errorf("mutation erase: index %q: want %d hex bytes", m.Index, sealed.IndexSize)
		}
		m.Index = strings.ToLower(m.Index)
		if err := checkText("reference", m.Ref, maxRef); err != nil {
			return Mutation{}, fmt.Errorf("mutation erase: %w", err)
		}
	default:
		return Mutation{}, fmt.Errorf("mutation: unknown operation %q", m.Op)
	}
	return m, nil
}

// MutationIndex returns the hex index (Box.IndexHex) of the address or
// "@domain" that a normalised m concerns: the name a replicated log may
// file it under, which the erasure of that address can find.
func (s *Store) MutationIndex(m Mutation) string {
	switch m.Op {
	case OpAdd:
		if m.Entry != nil {
			return s.box.IndexHex(m.Entry.Target)
		}
	case OpErase, OpConsent:
		return m.Index
	case OpImport:
		if m.Import != nil { // no address has the prefix: no person's subject
			return s.box.IndexHex("import:" + m.Import.Key)
		}
	}
	return s.box.IndexHex(m.Addr)
}

// Apply applies m (as NormalizeMutation returns it) and records seq as the
// last applied sequence of the replicated log, in one transaction, fsynced:
// after a crash the store holds either both or neither. A seq not above the
// recorded one is skipped (Outcome.Skipped), so a log replayed from an
// earlier point applies nothing twice; seq 0 applies without recording (a
// change applied ahead of the log). A refusal of the store (Outcome.Refused)
// changes nothing and still records seq; an error changes nothing at all.
// ahead are changes this node applied before the log has them (kept
// pending): they are applied again after m, in the same transaction, so an
// older change arriving from the log never undoes them, not even for a
// moment; their refusals are ignored.
func (s *Store) Apply(seq uint64, m Mutation, ahead ...Mutation) (Outcome, error) {
	outs, err := s.ApplyAll([]Logged{{Seq: seq, Mutation: m, Ahead: ahead}})
	if err != nil {
		return Outcome{}, err
	}
	return outs[0], nil
}

// Logged is one change of the replicated log for ApplyAll: its sequence,
// the change, and the changes kept ahead of the log to apply again after it.
type Logged struct {
	Seq      uint64
	Mutation Mutation
	Ahead    []Mutation
	// Due, if not nil, is work the caller must do once this change is
	// applied (a replica's local erasure by index): kept, in the same
	// transaction, in bucket due under Seq until DoneDue, so a crash
	// after the commit cannot lose it. Ignored when the change is skipped
	// or Seq is 0.
	Due []byte
}

// ApplyAll is Apply for consecutive changes of the log, in order, in one
// transaction (one fsync for a whole backlog): the last sequence is
// recorded with them, and the store holds all of them or none.
func (s *Store) ApplyAll(cs []Logged) ([]Outcome, error) {
	outs := make([]Outcome, len(cs))
	var at int
	err := s.update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		last := appliedSeq(meta)
		for i, c := range cs {
			at = i
			if c.Seq > 0 {
				if c.Seq <= last {
					outs[i] = Outcome{Skipped: true}
					continue
				}
				last = c.Seq
				if err := putSeq(meta, keyAppliedSeq, c.Seq); err != nil {
					return err
				}
			}
			out, err := s.applyTx(tx, c.Mutation)
			if err != nil {
				return err
			}
			if c.Seq > 0 && c.Mutation.Op == OpErase && out.Refused == nil {
				if err := putSeq(meta, keyErasedSeq, c.Seq); err != nil {
					return err
				}
			}
			if c.Due != nil && c.Seq > 0 {
				if err := putDue(tx, c.Seq, c.Due); err != nil {
					return fmt.Errorf("keep due work: %w", err)
				}
			}
			for _, a := range c.Ahead {
				if _, err := s.applyTx(tx, a); err != nil {
					return fmt.Errorf("apply pending change again: %w", err)
				}
			}
			outs[i] = out
		}
		return nil
	})
	if err != nil {
		c := cs[at]
		return nil, fmt.Errorf("apply suppression change %d (%s): %w", c.Seq, c.Mutation.Op, err)
	}
	return outs, nil
}

// applyTx applies m inside tx; a refusal is in the Outcome, not the error.
func (s *Store) applyTx(tx *bbolt.Tx, m Mutation) (Outcome, error) {
	var (
		out Outcome
		err error
	)
	m, err = s.NormalizeMutation(m) // idempotent; guards against a malformed change
	if err != nil {
		out.Refused = err
		return out, nil
	}
	switch m.Op {
	case OpAdd:
		var wrote bool
		if wrote, err = s.put(tx.Bucket(bucketEntries), *m.Entry); err == nil && !wrote {
			s.log.Info().Str("target", address.Mask(m.Entry.Target)).Str("list", m.Entry.List).
				Str("reason", string(m.Entry.Reason)).Msg("suppression kept as erased")
		}
	case OpRemove:
		out.Found, err = s.removeTx(tx, m.Addr, m.List)
	case OpRestrict:
		var e Entry
		if e, err = normalize(Entry{Target: m.Addr, Reason: Restricted, Source: "restriction", Note: m.Note, Time: m.Time}); err == nil {
			err = s.restrictTx(tx, e)
		}
	case OpUnrestrict:
		out.Found, err = s.unrestrictTx(tx, m.Addr)
	case OpErase:
		idx, _ := hex.DecodeString(m.Index) // checked by NormalizeMutation
		out.Entry, _, err = s.eraseTx(tx, idx, m.Ref, m.Dates, m.Time)
	case OpConsent: // the consent store applies it (replica Config.Consent)
	case OpImport:
		err = applyImport(tx, m.Import)
	}
	if errors.Is(err, ErrErased) || errors.Is(err, ErrRestricted) {
		out.Refused, err = err, nil
	}
	return out, err
}

// appliedSeq reads the recorded sequence from the meta bucket.
func appliedSeq(meta *bbolt.Bucket) uint64 { return getSeq(meta, keyAppliedSeq) }

// getSeq reads a sequence kept under key in meta (0: none).
func getSeq(meta *bbolt.Bucket, key []byte) uint64 {
	if v := meta.Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// putSeq keeps seq under key in meta.
func putSeq(meta *bbolt.Bucket, key []byte, seq uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return meta.Put(key, b[:])
}

// ErasedSeq returns the sequence of the last erasure applied from the log
// (0: none): a snapshot of the store taken below it may hold the person.
func (s *Store) ErasedSeq() (uint64, error) {
	var seq uint64
	err := s.view(func(tx *bbolt.Tx) error {
		seq = getSeq(tx.Bucket(bucketMeta), keyErasedSeq)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read erased sequence: %w", err)
	}
	return seq, nil
}

// AppliedSeq returns the last sequence recorded by Apply (0: none).
func (s *Store) AppliedSeq() (uint64, error) {
	var seq uint64
	err := s.view(func(tx *bbolt.Tx) error {
		seq = appliedSeq(tx.Bucket(bucketMeta))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read applied sequence: %w", err)
	}
	return seq, nil
}

// AddPending keeps value under key in the pending bucket (a change the log
// has not accepted yet, sealed by the caller) and applies m at once, in one
// transaction, fsynced: the store never holds the one without the other.
// It refuses a key that is pending already.
func (s *Store) AddPending(key string, value []byte, m Mutation) (Outcome, error) {
	if key == "" {
		return Outcome{}, errors.New("add pending suppression change: empty key")
	}
	var out Outcome
	err := s.update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPending)
		if err != nil {
			return err
		}
		if b.Get([]byte(key)) != nil {
			return fmt.Errorf("key %s is pending already", key)
		}
		if err := b.Put([]byte(key), value); err != nil {
			return err
		}
		out, err = s.applyTx(tx, m)
		return err
	})
	if err != nil {
		return Outcome{}, fmt.Errorf("add pending suppression change (%s): %w", m.Op, err)
	}
	return out, nil
}

// Pending calls fn with each pending change in key order (copies: they
// outlive the transaction); fn's error stops the walk. fn must not call
// back into the store.
func (s *Store) Pending(fn func(key string, value []byte) error) error {
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketPending)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error { return fn(string(k), bytes.Clone(v)) })
	})
	if err != nil {
		return fmt.Errorf("read pending suppression changes: %w", err)
	}
	return nil
}

// PendingCount returns how many changes are pending.
func (s *Store) PendingCount() (int, error) {
	var n int
	err := s.view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketPending); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count pending suppression changes: %w", err)
	}
	return n, nil
}

// DeletePending drops a pending change once the log has accepted it.
func (s *Store) DeletePending(key string) error {
	err := s.update(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketPending); b != nil {
			return b.Delete([]byte(key))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete pending suppression change %s: %w", key, err)
	}
	return nil
}

// putDue keeps v under seq in bucket due.
func putDue(tx *bbolt.Tx, seq uint64, v []byte) error {
	b, err := tx.CreateBucketIfNotExists(bucketDue)
	if err != nil {
		return err
	}
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return b.Put(k[:], v)
}

// Due calls fn with each piece of due work (Logged.Due) in sequence order
// (copies); fn's error stops the walk. fn must not call back into the store.
func (s *Store) Due(fn func(seq uint64, value []byte) error) error {
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketDue)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return fmt.Errorf("malformed due key %x", k)
			}
			return fn(binary.BigEndian.Uint64(k), bytes.Clone(v))
		})
	})
	if err != nil {
		return fmt.Errorf("read due suppression work: %w", err)
	}
	return nil
}

// DoneDue drops the due work kept under seq once it is done.
func (s *Store) DoneDue(seq uint64) error {
	err := s.update(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketDue); b != nil {
			var k [8]byte
			binary.BigEndian.PutUint64(k[:], seq)
			return b.Delete(k[:])
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("drop due suppression work %d: %w", seq, err)
	}
	return nil
}
