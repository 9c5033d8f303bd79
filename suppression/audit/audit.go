// Package audit keeps postwarden's audit trail: an append-only log in its own
// bbolt file (the daemon opens <data_dir>/audit.db) in which every entry is
// chained to the previous one by SHA-256.
//
// Contract:
//   - Append assigns Seq (the bucket's NextSequence), Time (when zero), Prev
//     and Hash in one bbolt Update transaction, which fsyncs before it returns:
//     when Append returns nil the entry is on disk, so callers append before
//     they report the recorded action as done. If Append fails the caller must
//     treat the action as not audited. Append is safe for concurrent use; the
//     write lock orders entries, so seqs have no gaps.
//   - AppendOnce is Append made idempotent on a caller's key: the key is
//     indexed in the same transaction as the entry (and recorded in its
//     Details as "once"), so a caller that crashed after auditing an action
//     and before doing it can ask again on its re-run and get the entry
//     already written instead of a second one.
//   - Entries are never edited. Prune removes the oldest entries (retention)
//     and, in the same transaction, stores a checkpoint (seq and hash of the
//     last removed entry) and appends an "audit.prune" entry naming it, so the
//     remaining chain still verifies and a forged checkpoint does not.
//   - Verify recomputes every hash and link and names the first bad entry: a
//     changed entry (hash mismatch), a removed one (a gap in seq, or a seq
//     counter ahead of the last entry), a moved or reordered one (a record under
//     another entry's key), a broken link (prev mismatch).
//   - Target, Reason and Details values must not carry clear addresses:
//     callers pass masked addresses or keyed hashes, and Append masks anything
//     still shaped like an address (address.MaskText), because audit entries
//     outlive an erasure and cannot be edited.
//
// Tamper evidence: the chain has no secret, so someone who can write the file
// can rewrite every entry after the one they change and recompute all hashes.
// Head returns the latest seq and hash; an operator who copies it somewhere
// the host cannot rewrite (a ticket, a log shipper, paper) can later show that
// entry seq still has that hash (Get) and that Verify passes, which proves
// nothing up to that entry was changed, removed or reordered since.
package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/storefile"
)

// Entry is one audit record. Its JSON form is the stored record and the
// output of `audit ls --json`; see Canonical for how Hash is computed.
type Entry struct {
	Seq     uint64            `json:"seq"`     // 1, 2, 3…; assigned by Append
	Time    time.Time         `json:"time"`    // UTC; Append sets it when zero
	Who     string            `json:"who"`     // "uid:1000", "local:alice", "http:203.0.113.9"
	Action  string            `json:"action"`  // "subject.erase", "suppress.add", "campaign.send"…
	Target  string            `json:"target"`  // masked address or keyed hash, never a clear address
	Reason  string            `json:"reason"`  // the reason the operator gave
	Details map[string]string `json:"details"` // e.g. "file_sha256", "count", "request"
	Prev    string            `json:"prev"`    // the previous entry's Hash; "" for entry 1
	Hash    string            `json:"hash"`    // hex SHA-256 of Canonical(entry)
}

// Actions written by this package.
const (
	ActionPrune = "audit.prune" // Details: through_seq, through_hash, removed, before
	WhoPrune    = "system:retention"
)

// ErrLocked is returned by Open when another process holds the file.
var ErrLocked = errors.New("audit: log is locked by another process")

var (
	bucketEntries = []byte("entries") // 8-byte big-endian seq → JSON Entry
	bucketMeta    = []byte("meta")
	keyCheckpoint = []byte("checkpoint") // JSON checkpoint, present after the first prune
	bucketOnce    = []byte("once")       // AppendOnce key → 8-byte big-endian seq
)

// DetailOnce is the Details key under which AppendOnce records its key.
const DetailOnce = "once"

// checkpoint stands in for the pruned entries: the chain continues from Hash.
type checkpoint struct {
	Seq      uint64    `json:"seq"`       // last pruned entry
	Hash     string    `json:"hash"`      // its hash
	Time     time.Time `json:"time"`      // its time
	Before   time.Time `json:"before"`    // the cut-off that pruned it
	PrunedAt time.Time `json:"pruned_at"` // when
}

// Log is the audit log; safe for concurrent use.
type Log struct {
	db  *bbolt.DB
	log zerolog.Logger
	now func() time.Time
	id  string
}

// Open opens (creating if needed) the log at path, waiting up to timeout
// (0 = 1s) for another process's lock.
func Open(path string, timeout time.Duration, log zerolog.Logger) (*Log, error) {
	return OpenFile(path, timeout, storefile.Expect{}, log)
}

// OpenFile is Open with what the data directory knows of the file: its id
// and whether it must exist already (see storefile.Expect).
func OpenFile(path string, timeout time.Duration, x storefile.Expect, log zerolog.Logger) (*Log, error) {
	if path == "" {
		return nil, errors.New("open audit log: no path given")
	}
	if timeout <= 0 {
		timeout = time.Second
	}
	if x.Name == "" {
		x.Name = "audit"
	}
	if !x.Exist {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("open audit log %s: %w", path, err)
		}
	}
	// bbolt's defaults fsync every commit; Append's durability relies on it.
	db, id, err := storefile.Open(path, &bbolt.Options{Timeout: timeout}, x)
	if errors.Is(err, storefile.ErrLocked) {
		return nil, fmt.Errorf("open audit log %s: waited %s: %w (use the running daemon's admin socket)", path, timeout, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	l := &Log{db: db, log: log, now: time.Now, id: id}
	err = l.update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketEntries, bucketMeta, bucketOnce} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open audit log %s: create buckets: %w", path, err)
	}
	return l, nil
}

// ID returns the store id recorded in the file (see storefile).
func (l *Log) ID() string { return l.id }

// view and update run fn in a transaction; a panic or fault on a damaged
// page is an error naming the file.
func (l *Log) view(fn func(*bbolt.Tx) error) (err error) {
	defer storefile.Guard(l.db.Path(), &err)()
	return l.db.View(fn)
}

func (l *Log) update(fn func(*bbolt.Tx) error) (err error) {
	defer storefile.Guard(l.db.Path(), &err)()
	return l.db.Update(fn)
}

// Close closes the file.
func (l *Log) Close() error { return l.db.Close() }

// Append records e and returns it as stored, with Seq, Time, Prev and Hash
// filled in (any values the caller put there are replaced, except a non-zero
// Time). Who and Action are required. It returns after the entry is fsynced.
func (l *Log) Append(e Entry) (Entry, error) {
	e, err := l.prepare(e)
	if err != nil {
		return Entry{}, fmt.Errorf("audit append %s: %w", e.Action, err)
	}
	err = l.update(func(tx *bbolt.Tx) error {
		var err error
		e, err = appendTx(tx, e)
		return err
	})
	if err != nil {
		return Entry{}, fmt.Errorf("audit append %s: %w", e.Action, err)
	}
	l.log.Debug().Uint64("seq", e.Seq).Str("action", e.Action).Str("who", e.Who).Msg("audit entry appended")
	return e, nil
}

// AppendOnce appends e unless an entry was already appended under key; then
// it returns that entry and false, and e is not recorded. The key (at most
// 200 bytes, no address) goes into the entry's Details as "once". Like
// Append, it returns after the entry is fsynced.
func (l *Log) AppendOnce(key string, e Entry) (Entry, bool, error) {
	if key == "" || len(key) > 200 {
		return Entry{}, false, fmt.Errorf("audit append %s: once key must be 1-200 bytes", e.Action)
	}
	if e.Details == nil {
		e.Details = map[string]string{}
	} else {
		e.Details = maps.Clone(e.Details)
	}
	e.Details[DetailOnce] = key
	e, err := l.prepare(e)
	if err != nil {
		return Entry{}, false, fmt.Errorf("audit append %s: %w", e.Action, err)
	}
	added := false
	err = l.update(func(tx *bbolt.Tx) error {
		ob := tx.Bucket(bucketOnce)
		if seq := ob.Get([]byte(key)); seq != nil {
			v := tx.Bucket(bucketEntries).Get(seq)
			if v == nil {
				return fmt.Errorf("once key %q names entry %d, which is missing; run audit verify", key, keySeq(seq))
			}
			return json.Unmarshal(v, &e)
		}
		var err error
		if e, err = appendTx(tx, e); err != nil {
			return err
		}
		added = true
		return ob.Put([]byte(key), seqKey(e.Seq))
	})
	if err != nil {
		return Entry{}, false, fmt.Errorf("audit append %s: %w", e.Action, err)
	}
	if added {
		l.log.Debug().Uint64("seq", e.Seq).Str("action", e.Action).Str("who", e.Who).Msg("audit entry appended")
	}
	return e, added, nil
}

// prepare checks e and brings it into the form that is stored and hashed.
func (l *Log) prepare(e Entry) (Entry, error) {
	e.Who = strings.ToValidUTF8(e.Who, "\uFFFD")
	e.Action = strings.ToValidUTF8(e.Action, "\uFFFD")
	if e.Who == "" {
		return e, errors.New("no who")
	}
	if e.Action == "" {
		return e, errors.New("no action")
	}
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	e.Time = e.Time.UTC() // also drops the monotonic reading
	if y := e.Time.Year(); y < 1 || y > 9999 {
		return e, fmt.Errorf("time %s out of range", e.Time)
	}
	e.Target = clean(e.Target)
	e.Reason = clean(e.Reason)
	details := make(map[string]string, len(e.Details))
	for k, v := range e.Details {
		details[strings.ToValidUTF8(k, "\uFFFD")] = clean(v)
	}
	e.Details = details
	e.Seq, e.Prev, e.Hash = 0, "", ""
	return e, nil
}

// clean makes s valid UTF-8 and masks anything shaped like an address.
func clean(s string) string {
	return address.MaskText(strings.ToValidUTF8(s, "\uFFFD"))
}

// appendTx chains e (already prepared) to the head and stores it.
func appendTx(tx *bbolt.Tx, e Entry) (Entry, error) {
	prev, err := headTx(tx)
	if err != nil {
		return e, err
	}
	b := tx.Bucket(bucketEntries)
	if prev.seq > b.Sequence() {
		// Someone wrote past the counter; appending would overwrite that
		// record and destroy the evidence.
		return e, fmt.Errorf("entry %d exists beyond the log's sequence counter %d: the file was changed outside postwarden; run audit verify", prev.seq, b.Sequence())
	}
	seq, err := b.NextSequence()
	if err != nil {
		return e, err
	}
	e.Seq, e.Prev, e.Hash = seq, prev.hash, ""
	e.Hash = Hash(e)
	v, err := json.Marshal(e)
	if err != nil {
		return e, err
	}
	return e, b.Put(seqKey(seq), v)
}

type head struct {
	seq  uint64
	hash string
}

// headTx returns the last entry's seq and hash, else the checkpoint's, else
// zero. A damaged last record does not stop appends (the action must still be
// recordable): the chain continues from the SHA-256 of its raw bytes, and
// Verify names the damaged entry.
func headTx(tx *bbolt.Tx) (head, error) {
	k, v := tx.Bucket(bucketEntries).Cursor().Last()
	if k != nil {
		var rec struct {
			Hash string `json:"hash"`
		}
		if err := json.Unmarshal(v, &rec); err != nil || rec.Hash == "" {
			sum := sha256.Sum256(v)
			return head{seq: keySeq(k), hash: hex.EncodeToString(sum[:])}, nil
		}
		return head{seq: keySeq(k), hash: rec.Hash}, nil
	}
	cp, ok, err := checkpointTx(tx)
	if err != nil || !ok {
		return head{}, err
	}
	return head{seq: cp.Seq, hash: cp.Hash}, nil
}

// Head returns the seq and hash of the latest entry ("" when the log is
// empty). Write them down outside this host to make later tampering
// evident; see the package comment.
func (l *Log) Head() (seq uint64, hash string) {
	var h head
	err := l.view(func(tx *bbolt.Tx) error {
		var err error
		h, err = headTx(tx)
		return err
	})
	if err != nil {
		l.log.Error().Err(err).Msg("audit head unreadable")
		return 0, ""
	}
	return h.seq, h.hash
}

// Get returns entry seq as stored; false if there is none.
func (l *Log) Get(seq uint64) (Entry, bool, error) {
	var e Entry
	var found bool
	err := l.view(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketEntries).Get(seqKey(seq))
		if v == nil {
			return nil
		}
		found = true
		return json.Unmarshal(v, &e)
	})
	if err != nil {
		return Entry{}, false, fmt.Errorf("audit get entry %d: %w", seq, err)
	}
	return e, found, nil
}

// listChunk is how many entries List reads per (short) read transaction.
const listChunk = 256

// List calls fn for every entry with Time at or after since (zero: all), in
// seq order. fn runs outside any transaction, so it may be slow or append;
// an error from fn stops List and is returned.
func (l *Log) List(since time.Time, fn func(Entry) error) error {
	var from uint64
	for {
		batch := make([]Entry, 0, listChunk)
		var more bool
		err := l.view(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucketEntries).Cursor()
			for k, v := c.Seek(seqKey(from)); k != nil; k, v = c.Next() {
				if len(batch) == listChunk {
					more = true
					from = keySeq(k)
					return nil
				}
				var e Entry
				if err := json.Unmarshal(v, &e); err != nil {
					return fmt.Errorf("entry %d: %w", keySeq(k), err)
				}
				if !e.Time.Before(since) {
					batch = append(batch, e)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("list audit log: %w", err)
		}
		for _, e := range batch {
			if err := fn(e); err != nil {
				return err
			}
		}
		if !more {
			return nil
		}
	}
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func keySeq(k []byte) uint64 {
	if len(k) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(k)
}
