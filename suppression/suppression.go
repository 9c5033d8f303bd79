// Package suppression keeps the list of people and domains that must never be
// mailed, in one bbolt file that holds no clear address.
//
// Contract:
//   - An entry is keyed by the keyed HMAC index of its target (sealed.Box.Index
//     of an address key from address.Key, or of "@domain") and a list ("" means
//     every list). Lookup and Check match an address against at most four keys
//     in one read transaction: the address globally, the address on the list,
//     the domain globally, the domain on the list. The target itself is sealed
//     (AES-256-GCM) in the value, and so is the free-text note; reason, list,
//     source and time are stored in clear.
//   - Add is an upsert where the newest write wins, except that an "erased"
//     entry is never replaced, so an erased person stays blocked, and a
//     restriction (Restrict) is kept beneath any other reason until Unrestrict.
//   - Erase (GDPR Art. 17) deletes every entry of an address on every list and
//     writes one global tombstone holding only the index, the time, the request
//     reference and the dates of the original consent; it is never removed.
//     bbolt reuses freed pages without wiping them: call Compact after Erase so
//     the deleted sealed bytes leave the file.
//   - Every write is fsynced (Add through db.Batch) before it returns.
package suppression

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/compact"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/storefile"
)

// Reason says why a target is suppressed.
type Reason string

// The accepted reasons.
const (
	Unsubscribed Reason = "unsubscribed" // the person opted out
	HardBounce   Reason = "hard_bounce"  // the mailbox or domain does not exist (RFC 3463 5.1.x)
	Complaint    Reason = "complaint"    // a spam complaint (RFC 5965 ARF)
	Manual       Reason = "manual"       // added by an operator
	Erased       Reason = "erased"       // GDPR Art. 17 erasure; never replaced by another reason
	Restricted   Reason = "restricted"   // GDPR Art. 18 restriction of processing; reversible
)

// Reasons are the accepted reasons, in the order help texts list them.
var Reasons = []Reason{Unsubscribed, HardBounce, Complaint, Manual, Erased, Restricted}

// Valid reports whether r is one of the accepted reasons.
func (r Reason) Valid() bool { return slices.Contains(Reasons, r) }

// ReasonList is Reasons for a message: "unsubscribed, hard_bounce, … or restricted".
func ReasonList() string {
	names := make([]string, len(Reasons))
	for i, r := range Reasons {
		names[i] = string(r)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// Entry is one suppression record.
type Entry struct {
	Target string    `json:"target"`           // address key, or "@domain"; "" on erasure tombstones
	List   string    `json:"list,omitempty"`   // "" = every list (global)
	Reason Reason    `json:"reason"`           // why
	Source string    `json:"source,omitempty"` // "one-click", "cli", "bounce", "import:file.csv", "erasure"…
	Note   string    `json:"note,omitempty"`   // free text (sealed at rest); on tombstones the request reference
	Time   time.Time `json:"time"`             // when it was recorded
	// Index is the hex HMAC index of the target (sealed.Box.IndexHex): the
	// only trace an erasure tombstone keeps of the address. Set on reads.
	Index string `json:"index,omitempty"`
	// Consents: on erasure tombstones only, the dates of the original consent.
	Consents []ConsentDates `json:"consents,omitempty"`
}

// ConsentDates documents the original consent on one list; an erasure
// tombstone keeps them (in clear: they hold no personal data).
type ConsentDates struct {
	List       string    `json:"list"`
	Subscribed time.Time `json:"subscribed,omitzero"` // earliest sign-up
	Confirmed  time.Time `json:"confirmed,omitzero"`  // earliest confirmation
	Source     string    `json:"source,omitempty"`    // source of the earliest confirmation
}

// Config says where the store lives and how it seals.
type Config struct {
	Path        string        // bbolt file
	OpenTimeout time.Duration // how long to wait for another process's lock; 0 = 1s
	Box         *sealed.Box   // data key; required
	// Expect is what the data directory knows of the file (its id, whether
	// it must exist); the zero value creates a missing file.
	Expect storefile.Expect
}

// Store is the suppression list; safe for concurrent use.
type Store struct {
	file      *compact.File // swapped by Compact while other calls wait
	path      string
	timeout   time.Duration
	box       *sealed.Box
	log       zerolog.Logger
	expect    storefile.Expect // the file's id once opened, for reopening after Compact
	importing struct {         // imports running in this process, by key (ImportFile)
		sync.Mutex
		m map[string]bool
	}
	domains struct { // domain → index, see domainIndex
		mu sync.RWMutex
		m  map[string][sealed.IndexSize]byte
	}
}

// domainCacheSize bounds the domain index cache; it starts over when full.
const domainCacheSize = 4096

// Errors; match them with errors.Is.
var (
	ErrLocked     = errors.New("suppression: store is locked by another process")
	ErrClosed     = errors.New("suppression: store is closed")
	ErrErased     = errors.New("suppression: erased; an erasure tombstone is never removed or changed")
	ErrRestricted = errors.New("suppression: restricted; lift a restriction with unrestrict")
)

// Storage layout (idx = Box.Index(target), 32 bytes):
//
//	suppressions  idx || 0x00 || list → reason || 0x00 || JSON(stored)
//	meta          "keycheck" → a value sealed under the data key, to refuse a wrong key at Open
//
// The reason leads the value so Check reads no JSON. A file written before
// sealing (bucket "entries", clear keys) is migrated at Open and compacted.
var (
	bucketEntries = []byte("suppressions")
	bucketMeta    = []byte("meta")
	bucketLegacy  = []byte("entries")
	keyCheck      = []byte("keycheck")
)

// Seal contexts.
const (
	ctxTarget   = "suppression:target"
	ctxNote     = "suppression:note"
	ctxKeyCheck = "suppression:keycheck"
)

// Field limits.
const (
	maxList = 200
	maxRef  = 200
)

// stored is the JSON part of a value; the key carries index and list.
type stored struct {
	Target   []byte         `json:"a,omitempty"` // sealed; absent on erasure tombstones of addresses
	Source   string         `json:"s,omitempty"`
	Note     []byte         `json:"n,omitempty"` // sealed
	Time     time.Time      `json:"t"`
	Consents []ConsentDates `json:"c,omitempty"` // erasure tombstones only
	Hold     *hold          `json:"x,omitempty"` // a restriction kept beneath another reason
}

// hold is a restriction recorded while another reason leads the entry.
type hold struct {
	Source string    `json:"s,omitempty"`
	Note   []byte    `json:"n,omitempty"` // sealed
	Time   time.Time `json:"t"`
}

// Open opens (creating if needed) the store at cfg.Path.
func Open(cfg Config, log zerolog.Logger) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("open suppression store: no path given")
	}
	if cfg.Box == nil {
		return nil, fmt.Errorf("open suppression store %s: no data key (Config.Box)", cfg.Path)
	}
	timeout := cfg.OpenTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	if !cfg.Expect.Exist {
		if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
			return nil, fmt.Errorf("open suppression store %s: %w", cfg.Path, err)
		}
	}
	s := &Store{path: cfg.Path, timeout: timeout, box: cfg.Box, log: log, expect: cfg.Expect}
	if s.expect.Name == "" {
		s.expect.Name = "suppression"
	}
	db, migrated, err := s.openDB()
	if err != nil {
		return nil, err
	}
	s.file = compact.NewFile(db, s.path, s.timeout, func() (*bbolt.DB, error) { db, _, err := s.openDB(); return db, err }, ErrClosed)
	if migrated > 0 { // the clear keys sit in freed pages until the file is rewritten
		s.log.Info().Int("entries", migrated).Msg("suppressions sealed")
		if err := s.Compact(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// openDB opens the file, creates the buckets, checks the data key and
// migrates entries written before sealing.
func (s *Store) openDB() (*bbolt.DB, int, error) {
	db, id, err := storefile.Open(s.path, &bbolt.Options{Timeout: s.timeout}, s.expect)
	if errors.Is(err, storefile.ErrLocked) {
		return nil, 0, fmt.Errorf("open suppression store %s: waited %s: %w (use the running daemon's admin socket)", s.path, s.timeout, ErrLocked)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open suppression store: %w", err)
	}
	s.expect.ID, s.expect.Exist = id, true
	migrated := 0
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketEntries)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyCheck); v != nil {
			if _, err := s.box.Open(v, ctxKeyCheck); err != nil {
				return errors.New("the data key does not open this file (wrong data_key_file?)")
			}
		} else if err := meta.Put(keyCheck, s.box.Seal([]byte("postwarden suppression"), ctxKeyCheck)); err != nil {
			return err
		}
		migrated, err = s.migrate(tx, b)
		return err
	})
	if err != nil {
		db.Close()
		return nil, 0, fmt.Errorf("open suppression store %s: %w", s.path, err)
	}
	return db, migrated, nil
}

// migrate moves the entries of a file written before sealing (clear
// target \x00 list → JSON) into the sealed bucket and drops the old one.
func (s *Store) migrate(tx *bbolt.Tx, b *bbolt.Bucket) (int, error) {
	old := tx.Bucket(bucketLegacy)
	if old == nil {
		return 0, nil
	}
	n := 0
	err := old.ForEach(func(k, raw []byte) error {
		i := bytes.IndexByte(k, 0)
		if i < 0 {
			return fmt.Errorf("migrate: malformed key")
		}
		var v struct {
			Reason Reason    `json:"r"`
			Source string    `json:"s"`
			Note   string    `json:"n"`
			Time   time.Time `json:"t"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("migrate: decode entry %s: %w", address.Mask(string(k[:i])), err)
		}
		e, err := normalize(Entry{Target: string(k[:i]), List: string(k[i+1:]), Reason: v.Reason, Source: v.Source, Note: v.Note, Time: v.Time})
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if _, err := s.put(b, e); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, tx.DeleteBucket(bucketLegacy)
}

// Close closes the file.
func (s *Store) Close() error { return s.file.Close() }

// ID returns the store id recorded in the file (see storefile).
func (s *Store) ID() string { return s.expect.ID }

func (s *Store) view(fn func(*bbolt.Tx) error) error   { return s.file.View(fn) }
func (s *Store) batch(fn func(*bbolt.Tx) error) error  { return s.file.Batch(fn) }
func (s *Store) update(fn func(*bbolt.Tx) error) error { return s.file.Update(fn) }

// ---- maintenance ----

// Compact rewrites the file into a fresh one (bbolt.Compact into
// <path>.compact, fsync, rename over, fsync the directory, reopen), so freed
// pages that held erased bytes are gone from it. Other calls wait while it
// runs. The old file's blocks go back to the file system unwiped; what they
// held was sealed.
func (s *Store) Compact() error {
	if err := s.file.Compact(); err != nil {
		return fmt.Errorf("suppression store: %w", err)
	}
	s.log.Info().Str("path", s.path).Msg("suppression store compacted")
	return nil
}
