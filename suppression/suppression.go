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
	"encoding/hex"
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

// Valid reports whether r is one of the accepted reasons.
func (r Reason) Valid() bool {
	switch r {
	case Unsubscribed, HardBounce, Complaint, Manual, Erased, Restricted:
		return true
	}
	return false
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

// ---- targets, keys and values ----

// NormalizeTarget turns "ADDR" into its address key and "@DOMAIN" into "@domain".
func NormalizeTarget(target string) (string, error) {
	t := strings.Trim(target, " \t")
	if strings.HasPrefix(t, "@") {
		d, err := address.NormalizeDomain(t[1:])
		if err != nil {
			return "", fmt.Errorf("target: %w", err)
		}
		return "@" + d, nil
	}
	a, err := address.Parse(t)
	if err != nil {
		return "", fmt.Errorf("target: %w", err)
	}
	return a.Key(), nil
}

// addressKey parses a person's address (not a domain) and returns its key.
func addressKey(addr string) (string, error) {
	a, err := address.Parse(strings.Trim(addr, " \t"))
	if err != nil {
		return "", err
	}
	return a.Key(), nil
}

// checkText rejects control characters and over-long values.
func checkText(what, v string, max int) error {
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s %q: contains a control character", what, v)
		}
	}
	if len(v) > max {
		return fmt.Errorf("%s %q: longer than %d bytes", what, v, max)
	}
	return nil
}

// checkList rejects list names that would break keys or logs.
func checkList(list string) error { return checkText("list", list, maxList) }

// normalize checks e and fills defaults; it returns the entry as it will be stored.
func normalize(e Entry) (Entry, error) {
	t, err := NormalizeTarget(e.Target)
	if err != nil {
		return Entry{}, err
	}
	e.Target = t
	e.List = strings.Trim(e.List, " \t")
	if err := checkList(e.List); err != nil {
		return Entry{}, err
	}
	if e.Reason == "" {
		e.Reason = Manual
	}
	if !e.Reason.Valid() {
		return Entry{}, fmt.Errorf("reason %q: unknown (want unsubscribed, hard_bounce, complaint, manual, erased or restricted)", e.Reason)
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	return e, nil
}

// key builds idx || 0x00 || list.
func key(idx []byte, list string) []byte {
	k := make([]byte, 0, len(idx)+1+len(list))
	k = append(k, idx...)
	k = append(k, 0)
	return append(k, list...)
}

// splitKey returns the index and list of a stored key.
func splitKey(k []byte) (idx []byte, list string, ok bool) {
	if len(k) < sealed.IndexSize+1 || k[sealed.IndexSize] != 0 {
		return nil, "", false
	}
	return k[:sealed.IndexSize], string(k[sealed.IndexSize+1:]), true
}

// reasonOf reads the reason that leads a value, without allocating for the
// known ones.
func reasonOf(raw []byte) (Reason, bool) {
	i := bytes.IndexByte(raw, 0)
	if i < 0 {
		return "", false
	}
	for _, r := range [...]Reason{HardBounce, Unsubscribed, Complaint, Manual, Erased, Restricted} {
		if string(raw[:i]) == string(r) { // compared in place, no copy
			return r, true
		}
	}
	return Reason(raw[:i]), true
}

// encode builds reason || 0x00 || JSON(st).
func encode(r Reason, st stored) ([]byte, error) {
	j, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(r)+1+len(j))
	out = append(out, r...)
	out = append(out, 0)
	return append(out, j...), nil
}

// decodeValue splits a value (copying out of the mmap).
func decodeValue(raw []byte) (Reason, stored, error) {
	r, ok := reasonOf(raw)
	if !ok {
		return "", stored{}, errors.New("malformed value")
	}
	var st stored
	if err := json.Unmarshal(raw[len(r)+1:], &st); err != nil {
		return "", stored{}, err
	}
	return r, st, nil
}

func (s *Store) sealNote(note string) []byte {
	if note == "" {
		return nil
	}
	return s.box.SealString(note, ctxNote)
}

func (s *Store) openNote(b []byte) (string, error) {
	if b == nil {
		return "", nil
	}
	return s.box.OpenString(b, ctxNote)
}

// entries turns a decoded value into the entries it holds: the leading
// one, and a restriction kept beneath it. target is the clear target when
// the caller knows it; "" makes it open the sealed one (and check it
// belongs under idx).
func (s *Store) entries(idx []byte, list string, r Reason, st stored, target string) ([]Entry, error) {
	ih := hex.EncodeToString(idx)
	if st.Target == nil {
		target = ""
	} else if target == "" {
		t, err := s.box.OpenString(st.Target, ctxTarget)
		if err != nil {
			return nil, fmt.Errorf("entry %s: target: %w", ih[:12], err)
		}
		if !bytes.Equal(s.box.Index(t), idx) {
			return nil, fmt.Errorf("entry %s: target does not belong under its key", ih[:12])
		}
		target = t
	}
	note, err := s.openNote(st.Note)
	if err != nil {
		return nil, fmt.Errorf("entry %s: note: %w", ih[:12], err)
	}
	out := []Entry{{Target: target, List: list, Reason: r, Source: st.Source, Note: note, Time: st.Time, Index: ih, Consents: st.Consents}}
	if h := st.Hold; h != nil {
		note, err := s.openNote(h.Note)
		if err != nil {
			return nil, fmt.Errorf("entry %s: restriction note: %w", ih[:12], err)
		}
		out = append(out, Entry{Target: target, List: list, Reason: Restricted, Source: h.Source, Note: note, Time: h.Time, Index: ih})
	}
	return out, nil
}

// put writes a normalised entry under its index: an erased entry is never
// replaced, an erased address takes no list entry, and a restriction stays
// beneath any other reason. It reports whether it wrote.
func (s *Store) put(b *bbolt.Bucket, e Entry) (bool, error) {
	k := key(s.box.Index(e.Target), e.List)
	var (
		oldR  Reason
		oldSt stored
	)
	if raw := b.Get(k); raw != nil {
		var err error
		if oldR, oldSt, err = decodeValue(raw); err != nil {
			return false, fmt.Errorf("decode entry: %w", err)
		}
	}
	if oldR == Erased {
		return false, nil
	}
	if e.List != "" && !strings.HasPrefix(e.Target, "@") { // an erased address takes no list entry either
		if raw := b.Get(k[:sealed.IndexSize+1]); raw != nil {
			if r, ok := reasonOf(raw); ok && r == Erased {
				return false, nil
			}
		}
	}
	st := stored{Source: e.Source, Note: s.sealNote(e.Note), Time: e.Time}
	if e.Reason != Erased || strings.HasPrefix(e.Target, "@") { // an erased address keeps no target
		st.Target = s.box.SealString(e.Target, ctxTarget)
	}
	r := e.Reason
	switch {
	case e.Reason == Erased:
	case e.Reason == Restricted && oldR != "" && oldR != Restricted:
		r, st = oldR, oldSt // another reason leads; the restriction goes beneath it
		st.Hold = &hold{Source: e.Source, Note: s.sealNote(e.Note), Time: e.Time}
	case e.Reason == Restricted:
	case oldR == Restricted:
		st.Hold = &hold{Source: oldSt.Source, Note: oldSt.Note, Time: oldSt.Time}
	default:
		st.Hold = oldSt.Hold
	}
	v, err := encode(r, st)
	if err != nil {
		return false, err
	}
	return true, b.Put(k, v)
}

// ---- writes ----

// Add records e (upsert). Target may be "ADDR" or "@DOMAIN"; empty Reason
// means "manual" and zero Time means now. An erased entry is kept as it is;
// a restriction stays beneath a newer reason. Add with reason "erased"
// writes an entry without the address but leaves its other entries: Erase
// is the data-subject erasure.
func (s *Store) Add(e Entry) error {
	e, err := normalize(e)
	if err != nil {
		return fmt.Errorf("add suppression: %w", err)
	}
	var wrote bool
	err = s.batch(func(tx *bbolt.Tx) error {
		var err error
		wrote, err = s.put(tx.Bucket(bucketEntries), e)
		return err
	})
	if err != nil {
		return fmt.Errorf("add suppression for %s: %w", address.Mask(e.Target), err)
	}
	if !wrote {
		s.log.Info().Str("target", address.Mask(e.Target)).Str("list", e.List).
			Str("reason", string(e.Reason)).Msg("suppression kept as erased")
	}
	return nil
}

// Covers reports whether e is in effect already, so that adding it again
// would change nothing: its target is erased, or already suppressed for e's
// reason globally or on e's list. Two point gets in one read transaction;
// callers use it to record and audit a repeated request only once.
func (s *Store) Covers(e Entry) (bool, error) {
	e, err := normalize(e)
	if err != nil {
		return false, fmt.Errorf("check suppression: %w", err)
	}
	idx := s.box.Index(e.Target)
	var covered bool
	err = s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		keys := [][]byte{key(idx, "")}
		if e.List != "" {
			keys = append(keys, key(idx, e.List))
		}
		for i, k := range keys {
			raw := b.Get(k)
			if raw == nil {
				continue
			}
			r, ok := reasonOf(raw)
			if !ok {
				return errors.New("malformed value")
			}
			if r == e.Reason || (i == 0 && r == Erased) {
				covered = true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("check suppression for %s: %w", address.Mask(e.Target), err)
	}
	return covered, nil
}

// SuppressAddress is Add for callers that hold plain strings.
func (s *Store) SuppressAddress(addr, list, reason, source, note string) error {
	return s.Add(Entry{Target: addr, List: list, Reason: Reason(reason), Source: source, Note: note})
}

// Remove deletes the entry for target on list ("" = the global entry) and
// reports whether there was one. It refuses an erasure tombstone (ErrErased)
// and a restriction (ErrRestricted: use Unrestrict); a restriction beneath
// the removed reason stays in force.
func (s *Store) Remove(target, list string) (bool, error) {
	t, err := NormalizeTarget(target)
	if err != nil {
		return false, fmt.Errorf("remove suppression: %w", err)
	}
	list = strings.Trim(list, " \t")
	var found bool
	err = s.update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		k := key(s.box.Index(t), list)
		raw := b.Get(k)
		if found = raw != nil; !found {
			return nil
		}
		r, st, err := decodeValue(raw)
		if err != nil {
			return fmt.Errorf("decode entry: %w", err)
		}
		switch {
		case r == Erased:
			return ErrErased
		case r == Restricted:
			return ErrRestricted
		case st.Hold != nil:
			v, err := encode(Restricted, stored{Target: st.Target, Source: st.Hold.Source, Note: st.Hold.Note, Time: st.Hold.Time})
			if err != nil {
				return err
			}
			return b.Put(k, v)
		}
		return b.Delete(k)
	})
	if err != nil {
		return false, fmt.Errorf("remove suppression for %s: %w", address.Mask(t), err)
	}
	return found, nil
}

// Restrict suppresses addr on every list with reason "restricted" (GDPR
// Art. 18: keep the data, process nothing); reason is the request's reason,
// sealed as the note. An existing global reason keeps leading and the
// restriction is kept beneath it; an erased address gives ErrErased.
func (s *Store) Restrict(addr, reason string) error {
	k, err := addressKey(addr)
	if err != nil {
		return fmt.Errorf("restrict: %w", err)
	}
	e, err := normalize(Entry{Target: k, Reason: Restricted, Source: "restriction", Note: reason})
	if err != nil {
		return fmt.Errorf("restrict: %w", err)
	}
	err = s.update(func(tx *bbolt.Tx) error {
		wrote, err := s.put(tx.Bucket(bucketEntries), e)
		if err == nil && !wrote {
			err = ErrErased
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("restrict %s: %w", address.Mask(k), err)
	}
	return nil
}

// Unrestrict lifts the restriction of addr and reports whether there was
// one. It removes only the restriction: an erased, unsubscribed or other
// entry stays.
func (s *Store) Unrestrict(addr string) (bool, error) {
	ak, err := addressKey(addr)
	if err != nil {
		return false, fmt.Errorf("unrestrict: %w", err)
	}
	var found bool
	err = s.update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		k := key(s.box.Index(ak), "")
		raw := b.Get(k)
		if raw == nil {
			return nil
		}
		r, st, err := decodeValue(raw)
		if err != nil {
			return fmt.Errorf("decode entry: %w", err)
		}
		switch {
		case r == Restricted:
			found = true
			return b.Delete(k)
		case r != Erased && st.Hold != nil:
			found, st.Hold = true, nil
			v, err := encode(r, st)
			if err != nil {
				return err
			}
			return b.Put(k, v)
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("unrestrict %s: %w", address.Mask(ak), err)
	}
	return found, nil
}

// Erase deletes every entry of addr (every list; its domain's entries stay)
// and writes one global tombstone: reason "erased", source "erasure", the
// request reference ref as note (never put the address in it), the consent
// dates, and no address, only its index (the same as the subscriber store's,
// Box.Index of address.Key). The address stays suppressed forever. Erasing
// again keeps the first tombstone and adds consent dates it lacks. Call
// Compact afterwards so the freed pages leave the file.
func (s *Store) Erase(addr, ref string, consents []ConsentDates) (Entry, error) {
	k, err := addressKey(addr)
	if err != nil {
		return Entry{}, fmt.Errorf("erase suppressions: %w", err)
	}
	return s.erase(s.box.Index(k), ref, consents)
}

// EraseIndex is Erase for callers that hold only the index (hex, as in the
// subscriber store's Tombstone.Index).
func (s *Store) EraseIndex(indexHex, ref string, consents []ConsentDates) (Entry, error) {
	idx, err := hex.DecodeString(indexHex)
	if err != nil || len(idx) != sealed.IndexSize {
		return Entry{}, fmt.Errorf("erase suppressions: index %q: want %d hex bytes", indexHex, sealed.IndexSize)
	}
	return s.erase(idx, ref, consents)
}

func (s *Store) erase(idx []byte, ref string, consents []ConsentDates) (Entry, error) {
	ih := hex.EncodeToString(idx)
	if err := checkText("reference", ref, maxRef); err != nil {
		return Entry{}, fmt.Errorf("erase suppressions of %s: %w", ih[:12], err)
	}
	var (
		out     Entry
		removed int
	)
	err := s.update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		prefix := key(idx, "")
		st := stored{Source: "erasure", Note: s.sealNote(ref), Time: time.Now().UTC()}
		var dead [][]byte
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(k) == len(prefix) {
				if r, old, err := decodeValue(v); err != nil {
					return fmt.Errorf("decode entry: %w", err)
				} else if r == Erased && old.Target == nil {
					st = old // the first tombstone stays
					continue
				}
			}
			dead = append(dead, bytes.Clone(k))
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		removed = len(dead)
		for _, cd := range consents {
			if !slices.ContainsFunc(st.Consents, func(o ConsentDates) bool {
				return o.List == cd.List && o.Subscribed.Equal(cd.Subscribed) && o.Confirmed.Equal(cd.Confirmed) && o.Source == cd.Source
			}) {
				st.Consents = append(st.Consents, cd)
			}
		}
		v, err := encode(Erased, st)
		if err != nil {
			return err
		}
		if err := b.Put(prefix, v); err != nil {
			return err
		}
		es, err := s.entries(idx, "", Erased, st, "")
		if err != nil {
			return err
		}
		out = es[0]
		return nil
	})
	if err != nil {
		return Entry{}, fmt.Errorf("erase suppressions of %s: %w", ih[:12], err)
	}
	s.log.Info().Str("index", ih[:12]).Int("removed", removed).Str("ref", ref).Msg("suppressions erased")
	return out, nil
}

// ---- reads ----

// candidates returns the keys Lookup tries, in order, with their targets:
// the address globally, the address on list, the domain globally, the
// domain on list. addr may be "@domain" to check a domain alone.
func (s *Store) candidates(addr, list string) (keys [][]byte, targets []string, err error) {
	var target, dom string
	if t := strings.Trim(addr, " \t"); strings.HasPrefix(t, "@") {
		d, err := address.NormalizeDomain(t[1:])
		if err != nil {
			return nil, nil, err
		}
		dom = "@" + d
	} else {
		a, err := address.Parse(t)
		if err != nil {
			return nil, nil, err
		}
		target, dom = a.Key(), "@"+a.Domain
	}
	list = strings.Trim(list, " \t")
	keys, targets = make([][]byte, 0, 4), make([]string, 0, 4)
	buf := make([]byte, 0, 4*(sealed.IndexSize+1+len(list)))
	add := func(idx []byte, t, l string) {
		start := len(buf)
		buf = append(append(append(buf, idx...), 0), l...)
		keys, targets = append(keys, buf[start:len(buf):len(buf)]), append(targets, t)
	}
	if target != "" {
		var ib [sealed.IndexSize]byte
		ti := s.box.AppendIndex(ib[:0], target)
		add(ti, target, "")
		if list != "" {
			add(ti, target, list)
		}
	}
	di := s.domainIndex(dom)
	add(di[:], dom, "")
	if list != "" {
		add(di[:], dom, list)
	}
	return keys, targets, nil
}

// domainIndex returns Box.Index("@domain"), from a small cache: a campaign
// meets the same few domains again and again, so a check costs one HMAC.
func (s *Store) domainIndex(dom string) [sealed.IndexSize]byte {
	c := &s.domains
	c.mu.RLock()
	idx, ok := c.m[dom]
	c.mu.RUnlock()
	if ok {
		return idx
	}
	s.box.AppendIndex(idx[:0], dom)
	c.mu.Lock()
	if len(c.m) >= domainCacheSize || c.m == nil {
		c.m = make(map[string][sealed.IndexSize]byte, domainCacheSize)
	}
	c.m[dom] = idx
	c.mu.Unlock()
	return idx
}

// Lookup finds the entry that suppresses addr for list, checking the address
// globally, the address on list, the domain globally and the domain on list,
// in that order, in one read transaction. addr may also be "@domain" to check
// a domain alone. Target is "" on an erasure tombstone.
func (s *Store) Lookup(addr, list string) (Entry, bool, error) {
	keys, targets, err := s.candidates(addr, list)
	if err != nil {
		return Entry{}, false, fmt.Errorf("check suppression: %w", err)
	}
	var (
		e     Entry
		found bool
	)
	err = s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		for i, k := range keys {
			raw := b.Get(k)
			if raw == nil {
				continue
			}
			r, st, err := decodeValue(raw) // copies out of the mmap
			if err != nil {
				return fmt.Errorf("decode entry: %w", err)
			}
			idx, l, _ := splitKey(k)
			es, err := s.entries(idx, l, r, st, targets[i])
			if err != nil {
				return err
			}
			e, found = es[0], true
			return nil
		}
		return nil
	})
	if err != nil {
		return Entry{}, false, fmt.Errorf("check suppression for %s: %w", address.Mask(addr), err)
	}
	return e, found, nil
}

// Check reports whether addr is suppressed for list, and why: Lookup's four
// point gets, reading only the reason.
func (s *Store) Check(addr, list string) (reason string, suppressed bool, err error) {
	keys, _, err := s.candidates(addr, list)
	if err != nil {
		return "", false, fmt.Errorf("check suppression: %w", err)
	}
	err = s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		for _, k := range keys {
			if raw := b.Get(k); raw != nil {
				r, ok := reasonOf(raw)
				if !ok {
					return errors.New("malformed value")
				}
				reason, suppressed = string(r), true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("check suppression for %s: %w", address.Mask(addr), err)
	}
	return reason, suppressed, nil
}

// Matches returns every entry that applies to addr on list, in Lookup's
// order (the address globally, on list, the domain globally, on list), a
// restriction kept beneath another reason as an entry of its own right
// after it; Target is "" on an erasure tombstone. Most addresses have no
// entry, so this costs what Check does; suppression/gate decides on the
// result, where Check and Lookup see only the first entry.
func (s *Store) Matches(addr, list string) ([]Entry, error) {
	keys, targets, err := s.candidates(addr, list)
	if err != nil {
		return nil, fmt.Errorf("check suppression: %w", err)
	}
	var out []Entry
	err = s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		for i, k := range keys {
			raw := b.Get(k)
			if raw == nil {
				continue
			}
			r, st, err := decodeValue(raw) // copies out of the mmap
			if err != nil {
				return fmt.Errorf("decode entry: %w", err)
			}
			idx, l, _ := splitKey(k)
			es, err := s.entries(idx, l, r, st, targets[i])
			if err != nil {
				return err
			}
			out = append(out, es...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check suppression for %s: %w", address.Mask(addr), err)
	}
	return out, nil
}

// EntriesFor returns everything held for addr, for a subject export: its
// entries on every list (an erasure tombstone included) and its domain's
// entries. A restriction kept beneath another reason is an entry of its own.
func (s *Store) EntriesFor(addr string) ([]Entry, error) {
	a, err := address.Parse(strings.Trim(addr, " \t"))
	if err != nil {
		return nil, fmt.Errorf("suppressions for address: %w", err)
	}
	out := []Entry{}
	err = s.view(func(tx *bbolt.Tx) error {
		out = out[:0]
		c := tx.Bucket(bucketEntries).Cursor()
		for _, t := range []string{a.Key(), "@" + a.Domain} {
			prefix := key(s.box.Index(t), "")
			for k, raw := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, raw = c.Next() {
				idx, l, ok := splitKey(k)
				if !ok {
					return errors.New("malformed key")
				}
				r, st, err := decodeValue(raw)
				if err != nil {
					return fmt.Errorf("decode entry: %w", err)
				}
				es, err := s.entries(idx, l, r, st, t)
				if err != nil {
					return err
				}
				out = append(out, es...)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("suppressions for %s: %w", address.Mask(addr), err)
	}
	return out, nil
}

// List calls fn for every entry, decrypted, in index order (which reveals
// nothing about the targets); erasure tombstones have Target "" and Index
// set, and a restriction kept beneath another reason is an entry of its own.
// fn runs inside a read transaction: it must not call back into the store
// (a waiting Compact would deadlock it); its error stops the walk.
func (s *Store) List(fn func(Entry) error) error {
	return s.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketEntries).ForEach(func(k, raw []byte) error {
			idx, l, ok := splitKey(k)
			if !ok {
				return errors.New("suppression: malformed key")
			}
			r, st, err := decodeValue(raw) // copies: k and raw die with the transaction
			if err != nil {
				return fmt.Errorf("decode entry %x: %w", idx[:6], err)
			}
			es, err := s.entries(bytes.Clone(idx), l, r, st, "")
			if err != nil {
				return err
			}
			for _, e := range es {
				if err := fn(e); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// Count returns the number of stored keys (a restriction beneath another
// reason shares its key).
func (s *Store) Count() (int, error) {
	var n int
	err := s.view(func(tx *bbolt.Tx) error {
		n = tx.Bucket(bucketEntries).Stats().KeyN
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count suppressions: %w", err)
	}
	return n, nil
}

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
