// Package suppression keeps the list of people and domains that must never be
// mailed, in one bbolt file.
//
// Contract: an entry is keyed by its target (an address key from address.Key,
// or "@domain") and a list ("" means every list). Lookup matches an address
// against at most four keys in one read transaction: the address globally, the
// address on the list, the domain globally, the domain on the list. Add is an
// upsert where the newest write wins, except that an "erased" entry is never
// replaced by another reason, so an erased person stays blocked. Every Add is
// fsynced (through db.Batch) before it returns.
package suppression

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
	bberrors "go.etcd.io/bbolt/errors"

	"github.com/postwarden/postwarden/suppression/address"
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
	Restricted   Reason = "restricted"   // GDPR Art. 18 restriction of processing
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
	Target string    `json:"target"`           // address key, or "@domain"
	List   string    `json:"list,omitempty"`   // "" = every list (global)
	Reason Reason    `json:"reason"`           // why
	Source string    `json:"source,omitempty"` // "one-click", "cli", "bounce", "import:file.csv"…
	Note   string    `json:"note,omitempty"`   // free text
	Time   time.Time `json:"time"`             // when it was recorded
}

// Config says where the store lives.
type Config struct {
	Path        string        // bbolt file
	OpenTimeout time.Duration // how long to wait for another process's lock; 0 = 1s
}

// Store is the suppression list; safe for concurrent use.
type Store struct {
	db  *bbolt.DB
	log zerolog.Logger
}

// ErrLocked is returned by Open when another process holds the file.
var ErrLocked = errors.New("suppression: store is locked by another process")

var bucketEntries = []byte("entries")

// value is what is stored under a key; the key carries Target and List.
type value struct {
	Reason Reason    `json:"r"`
	Source string    `json:"s,omitempty"`
	Note   string    `json:"n,omitempty"`
	Time   time.Time `json:"t"`
}

// Open opens (creating if needed) the store at cfg.Path.
func Open(cfg Config, log zerolog.Logger) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("open suppression store: no path given")
	}
	timeout := cfg.OpenTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("open suppression store %s: %w", cfg.Path, err)
	}
	db, err := bbolt.Open(cfg.Path, 0o600, &bbolt.Options{Timeout: timeout})
	if errors.Is(err, bberrors.ErrTimeout) {
		return nil, fmt.Errorf("open suppression store %s: waited %s: %w (use the running daemon's admin socket)", cfg.Path, timeout, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open suppression store %s: %w", cfg.Path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketEntries)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open suppression store %s: create bucket: %w", cfg.Path, err)
	}
	return &Store{db: db, log: log}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

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

// checkList rejects list names that would break keys or logs.
func checkList(list string) error {
	for _, r := range list {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("list %q: contains a control character", list)
		}
	}
	if len(list) > 200 {
		return fmt.Errorf("list %q: longer than 200 bytes", list)
	}
	return nil
}

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

// key builds target \x00 list.
func key(target, list string) []byte {
	k := make([]byte, 0, len(target)+1+len(list))
	k = append(k, target...)
	k = append(k, 0)
	return append(k, list...)
}

// put writes a normalised entry unless an erased entry would be replaced by
// another reason; it reports whether it wrote.
func put(b *bbolt.Bucket, e Entry) (bool, error) {
	k := key(e.Target, e.List)
	if e.Reason != Erased {
		if old := b.Get(k); old != nil {
			var v value
			if err := json.Unmarshal(old, &v); err == nil && v.Reason == Erased {
				return false, nil
			}
		}
	}
	buf, err := json.Marshal(value{Reason: e.Reason, Source: e.Source, Note: e.Note, Time: e.Time})
	if err != nil {
		return false, err
	}
	return true, b.Put(k, buf)
}

// Add records e (upsert). Target may be "ADDR" or "@DOMAIN"; empty Reason
// means "manual" and zero Time means now. An erased entry is kept as it is.
func (s *Store) Add(e Entry) error {
	e, err := normalize(e)
	if err != nil {
		return fmt.Errorf("add suppression: %w", err)
	}
	var wrote bool
	err = s.db.Batch(func(tx *bbolt.Tx) error {
		var err error
		wrote, err = put(tx.Bucket(bucketEntries), e)
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

// SuppressAddress is Add for callers that hold plain strings.
func (s *Store) SuppressAddress(addr, list, reason, source, note string) error {
	return s.Add(Entry{Target: addr, List: list, Reason: Reason(reason), Source: source, Note: note})
}

// Remove deletes the entry for target on list ("" = the global entry) and
// reports whether there was one.
func (s *Store) Remove(target, list string) (bool, error) {
	t, err := NormalizeTarget(target)
	if err != nil {
		return false, fmt.Errorf("remove suppression: %w", err)
	}
	list = strings.Trim(list, " \t")
	var found bool
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		k := key(t, list)
		found = b.Get(k) != nil
		if !found {
			return nil
		}
		return b.Delete(k)
	})
	if err != nil {
		return false, fmt.Errorf("remove suppression for %s: %w", address.Mask(t), err)
	}
	return found, nil
}

// Lookup finds the entry that suppresses addr for list, checking the address
// globally, the address on list, the domain globally and the domain on list,
// in that order. addr may also be "@domain" to check a domain alone.
func (s *Store) Lookup(addr, list string) (Entry, bool, error) {
	var target, dom string
	if t := strings.Trim(addr, " \t"); strings.HasPrefix(t, "@") {
		d, err := address.NormalizeDomain(t[1:])
		if err != nil {
			return Entry{}, false, fmt.Errorf("check suppression: %w", err)
		}
		dom = "@" + d
	} else {
		a, err := address.Parse(addr)
		if err != nil {
			return Entry{}, false, fmt.Errorf("check suppression: %w", err)
		}
		target, dom = a.Key(), "@"+a.Domain
	}
	list = strings.Trim(list, " \t")
	cands := make([][2]string, 0, 4)
	if target != "" {
		cands = append(cands, [2]string{target, ""})
		if list != "" {
			cands = append(cands, [2]string{target, list})
		}
	}
	cands = append(cands, [2]string{dom, ""})
	if list != "" {
		cands = append(cands, [2]string{dom, list})
	}

	var (
		e     Entry
		found bool
	)
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		var k []byte
		for _, c := range cands {
			k = append(append(append(k[:0], c[0]...), 0), c[1]...)
			raw := b.Get(k)
			if raw == nil {
				continue
			}
			var v value
			if err := json.Unmarshal(raw, &v); err != nil { // copies out of the mmap
				return fmt.Errorf("decode entry %q: %w", address.Mask(c[0]), err)
			}
			e = Entry{Target: c[0], List: c[1], Reason: v.Reason, Source: v.Source, Note: v.Note, Time: v.Time}
			found = true
			return nil
		}
		return nil
	})
	if err != nil {
		return Entry{}, false, fmt.Errorf("check suppression for %s: %w", address.Mask(addr), err)
	}
	return e, found, nil
}

// Check reports whether addr is suppressed for list, and why.
func (s *Store) Check(addr, list string) (reason string, suppressed bool, err error) {
	e, ok, err := s.Lookup(addr, list)
	if err != nil || !ok {
		return "", false, err
	}
	return string(e.Reason), true, nil
}

// List calls fn for every entry in key order (target, then list); fn's error stops it.
func (s *Store) List(fn func(Entry) error) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketEntries).ForEach(func(k, raw []byte) error {
			e, err := decode(k, raw) // copies: k and raw die with the transaction
			if err != nil {
				return err
			}
			return fn(e)
		})
	})
}

// Count returns the number of entries.
func (s *Store) Count() (int, error) {
	var n int
	err := s.db.View(func(tx *bbolt.Tx) error {
		n = tx.Bucket(bucketEntries).Stats().KeyN
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count suppressions: %w", err)
	}
	return n, nil
}

// decode turns a stored key and value into an Entry (copying both).
func decode(k, raw []byte) (Entry, error) {
	i := strings.IndexByte(string(k), 0)
	if i < 0 {
		return Entry{}, fmt.Errorf("suppression: malformed key %q", address.Mask(string(k)))
	}
	var v value
	if err := json.Unmarshal(raw, &v); err != nil {
		return Entry{}, fmt.Errorf("decode entry %q: %w", address.Mask(string(k[:i])), err)
	}
	return Entry{Target: string(k[:i]), List: string(k[i+1:]), Reason: v.Reason, Source: v.Source, Note: v.Note, Time: v.Time}, nil
}
