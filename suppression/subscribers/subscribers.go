// Package subscribers keeps the evidence of consent: per address and list, an
// append-only history of consent events in one bbolt file, with every personal
// field sealed at rest.
//
// Contract:
//   - Nothing is edited in place. Subscribe, Confirm, Unsubscribe and imports
//     only append events; the status of an address on a list is derived from
//     its latest event. Only two operations delete: Erase (the person asked,
//     GDPR Art. 17) and PrunePending (unconfirmed sign-ups past the opt-in TTL).
//   - No clear address is stored. Keys are sealed.Box.Index(address key), a
//     keyed HMAC, so a lookup is one b-tree descent; the address, name, company,
//     IP and user agent are sealed (AES-256-GCM) with a context naming the field
//     and the subscriber id, so a value cannot be moved to another field or
//     person. List names, sources, policy URLs and consent wording are not
//     personal and are stored in clear.
//   - Erase removes every event and sealed field of the address and appends one
//     "erased" marker holding only the index, the time, the request reference and
//     the dates of the original consent. bbolt puts freed pages on its freelist and
//     reuses them without zeroing them, so deleted bytes stay in the file until
//     the page is overwritten: call Compact after Erase so the sealed bytes leave
//     the file.
//   - An erased address comes back only through double opt-in
//     (Subscription.ViaDoubleOptIn); it gets a new SubscriberID and its first event
//     is "resubscribed". Imports never bring back an erased or unsubscribed address.
//   - Legitimate-interest candidates (imports without evidence) are never consent:
//     Confirmed reports false for them.
//   - Every write is one fsynced bbolt transaction (db.Batch) before it returns.
package subscribers

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/compact"

	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/storefile"
)

// Event kinds.
const (
	KindSubscribed         = "subscribed"                   // signed up, awaiting confirmation (pending)
	KindConfirmed          = "confirmed"                    // consent given (confirmed, or imported with evidence)
	KindUnsubscribed       = "unsubscribed"                 // opted out of the list
	KindResubscribed       = "resubscribed"                 // first sign-up after an erasure (pending, double opt-in)
	KindErased             = "erased"                       // everything about the person was erased
	KindImportedLegitimate = "imported_legitimate_interest" // imported without evidence: not consent
)

// States derived from the latest event.
const (
	StateNone               = "none"                // nothing held for this address on this list
	StatePending            = "pending"             // awaiting double opt-in confirmation
	StateConfirmed          = "confirmed"           // consent: may be mailed under legal_basis consent
	StateUnsubscribed       = "unsubscribed"        // opted out
	StateErased             = "erased"              // erased and not come back
	StateLegitimateInterest = "legitimate_interest" // a candidate for legitimate-interest mailing, never consent
)

// Errors; match them with errors.Is.
var (
	ErrLocked           = errors.New("subscribers: store is locked by another process")
	ErrClosed           = errors.New("subscribers: store is closed")
	ErrNotFound         = errors.New("subscribers: no record for this address and list")
	ErrNoPending        = errors.New("subscribers: no pending subscription to confirm")
	ErrAlreadyConfirmed = errors.New("subscribers: already confirmed")
	ErrExists           = errors.New("subscribers: already on the list; import left it as it is")
	ErrUnsubscribed     = errors.New("subscribers: unsubscribed; an import never re-subscribes")
	ErrErased           = errors.New("subscribers: erased; may come back only through double opt-in")
)

// Event is one entry of a consent history, with its sealed fields opened.
type Event struct {
	Kind        string    `json:"kind"`
	Time        time.Time `json:"time"`                   // when it happened (for imports: the consent time given)
	Recorded    time.Time `json:"recorded"`               // when this store wrote it
	Source      string    `json:"source,omitempty"`       // form id, "import:file.csv", "api", "double-opt-in"; erase: the request reference
	IP          string    `json:"ip,omitempty"`           // sealed at rest
	UserAgent   string    `json:"user_agent,omitempty"`   // sealed at rest
	PrivacyURL  string    `json:"privacy_url,omitempty"`  // privacy policy URL or version shown
	ConsentText string    `json:"consent_text,omitempty"` // consent wording or its version shown
	// SubscriberID identifies the record the event belongs to; empty on erased markers.
	SubscriberID string `json:"subscriber_id,omitempty"`
	// Consents: on erased markers only, the dates of the original consent per list.
	Consents []ConsentDates `json:"consents,omitempty"`
}

// Status is the state of an address on a list, derived from its latest event.
type Status struct {
	State        string    `json:"state"`
	Since        time.Time `json:"since"`
	SubscriberID string    `json:"subscriber_id,omitempty"`
}

// Subscriber is a person's record on one list, decrypted.
type Subscriber struct {
	SubscriberID string    `json:"subscriber_id,omitempty"`
	Address      string    `json:"address,omitempty"`
	Name         string    `json:"name,omitempty"`
	Company      string    `json:"company,omitempty"`
	Created      time.Time `json:"created"` // when this SubscriberID was created
	List         string    `json:"list"`    // "" for the erasure markers
	Status       Status    `json:"status"`
}

// ListHistory is everything held about a person on one list: the record and
// every event, oldest first.
type ListHistory struct {
	Subscriber
	Events []Event `json:"events"`
}

// ConsentDates documents the original consent on one list; kept after erasure.
type ConsentDates struct {
	List       string    `json:"list"`
	Subscribed time.Time `json:"subscribed,omitzero"` // earliest sign-up (subscribed or resubscribed)
	Confirmed  time.Time `json:"confirmed,omitzero"`  // earliest confirmation
	Source     string    `json:"source,omitempty"`    // source of the earliest confirmation
}

// Tombstone is what remains after Erase, for the caller's suppression tombstone.
type Tombstone struct {
	Index    string         `json:"index"` // sealed.Box.IndexHex of the address key
	Time     time.Time      `json:"time"`
	Ref      string         `json:"ref,omitempty"`
	Consents []ConsentDates `json:"consents,omitempty"`
	// Unchanged: the person was erased under this Ref already and nothing
	// was held for them since; no second marker was written.
	Unchanged bool `json:"-"`
}

// Subscription is a sign-up.
type Subscription struct {
	Address, List           string
	Name, Company           string // optional; sealed; fill a record's empty fields only
	Source                  string // form id, "api"…
	IP, UserAgent           string // sealed
	PrivacyURL, ConsentText string // what the person was shown
	Pending                 bool   // record "subscribed" awaiting Confirm; false: "confirmed" at once
	ViaDoubleOptIn          bool   // the sign-up goes through double opt-in (implies Pending); required after an erasure
}

// Candidate is one imported contact.
type Candidate struct {
	Address, List           string
	Name, Company           string    // optional; sealed
	Source                  string    // "import:file.csv" ("import:" is added when missing)
	ConsentedAt             time.Time // zero: no evidence, a legitimate-interest candidate
	IP                      string    // where consent was given, if known; sealed
	PrivacyURL, ConsentText string
}

// ImportResult is the outcome of one Candidate: the event written, or why not.
type ImportResult struct {
	Event Event
	Err   error // ErrExists, ErrUnsubscribed, ErrErased or a validation error
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

// Store is the consent-evidence store; safe for concurrent use.
type Store struct {
	file    *compact.File // swapped by Compact while other calls wait
	path    string
	timeout time.Duration
	box     *sealed.Box
	log     zerolog.Logger
	now     func() time.Time
	expect  storefile.Expect // the file's id once opened, for reopening after Compact
}

// Storage layout (all keys binary; idx = Box.Index(address key), 32 bytes):
//
//	events  idx || list || 0x00 || seq(8, big-endian) → kind(1) || JSON(storedEvent)
//	        list "" holds the erasure markers of the address
//	people  idx → JSON(person): SubscriberID, created, sealed address/name/company
//	members list || 0x00 || idx → empty (the people on a list, for List)
//	meta    "keycheck" → a value sealed under the data key, to refuse a wrong key at Open
var (
	bucketEvents  = []byte("events")
	bucketPeople  = []byte("people")
	bucketMembers = []byte("members")
	bucketMeta    = []byte("meta")
	keyCheck      = []byte("keycheck")
)

// Kind codes: the first byte of an event value, so Confirmed reads no JSON.
const (
	codeSubscribed byte = iota + 1
	codeConfirmed
	codeUnsubscribed
	codeResubscribed
	codeErased
	codeImportedLegitimate
)

var kindOfCode = map[byte]string{
	codeSubscribed:         KindSubscribed,
	codeConfirmed:          KindConfirmed,
	codeUnsubscribed:       KindUnsubscribed,
	codeResubscribed:       KindResubscribed,
	codeErased:             KindErased,
	codeImportedLegitimate: KindImportedLegitimate,
}

var stateOfCode = map[byte]string{
	codeSubscribed:         StatePending,
	codeConfirmed:          StateConfirmed,
	codeUnsubscribed:       StateUnsubscribed,
	codeResubscribed:       StatePending,
	codeErased:             StateErased,
	codeImportedLegitimate: StateLegitimateInterest,
}

// Seal contexts; each is followed by 0x00 and the SubscriberID.
const (
	ctxAddress   = "subscriber:address"
	ctxName      = "subscriber:name"
	ctxCompany   = "subscriber:company"
	ctxIP        = "event:ip"
	ctxUserAgent = "event:user_agent"
	ctxKeyCheck  = "meta:keycheck"
)

// Field limits.
const (
	maxField     = 200   // name, company, source, list
	maxUserAgent = 512   // longer user agents are cut
	maxText      = 10000 // consent wording, privacy URL
)

// storedEvent is the JSON part of an event value.
type storedEvent struct {
	Time     time.Time      `json:"t"`
	Recorded time.Time      `json:"r"`
	Source   string         `json:"s,omitempty"`
	IP       []byte         `json:"ip,omitempty"` // sealed
	UA       []byte         `json:"ua,omitempty"` // sealed
	Privacy  string         `json:"pp,omitempty"`
	Consent  string         `json:"ct,omitempty"`
	ID       string         `json:"id,omitempty"`
	Consents []ConsentDates `json:"l,omitempty"`  // erased markers only
	Op       string         `json:"op,omitempty"` // the replicated op that wrote it (not personal)
}

// person is the value in the people bucket.
type person struct {
	ID      string    `json:"id"`
	Created time.Time `json:"c"`
	Addr    []byte    `json:"a"`           // sealed
	Name    []byte    `json:"n,omitempty"` // sealed
	Company []byte    `json:"o,omitempty"` // sealed
}

// Open opens (creating if needed) the store at cfg.Path.
func Open(cfg Config, log zerolog.Logger) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("open subscriber store: no path given")
	}
	if cfg.Box == nil {
		return nil, fmt.Errorf("open subscriber store %s: no data key (Config.Box)", cfg.Path)
	}
	timeout := cfg.OpenTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	if !cfg.Expect.Exist {
		if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
			return nil, fmt.Errorf("open subscriber store %s: %w", cfg.Path, err)
		}
	}
	s := &Store{path: cfg.Path, timeout: timeout, box: cfg.Box, log: log, now: time.Now, expect: cfg.Expect}
	if s.expect.Name == "" {
		s.expect.Name = "subscribers"
	}
	db, err := s.openDB()
	if err != nil {
		return nil, err
	}
	s.file = compact.NewFile(db, s.path, s.timeout, s.openDB, ErrClosed)
	return s, nil
}

// openDB opens the file, creates the buckets and checks the data key.
func (s *Store) openDB() (*bbolt.DB, error) {
	db, id, err := storefile.Open(s.path, &bbolt.Options{Timeout: s.timeout}, s.expect)
	if errors.Is(err, storefile.ErrLocked) {
		return nil, fmt.Errorf("open subscriber store %s: waited %s: %w (use the running daemon's admin socket)", s.path, s.timeout, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open subscriber store: %w", err)
	}
	s.expect.ID, s.expect.Exist = id, true
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketEvents, bucketPeople, bucketMembers, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyCheck); v != nil {
			if _, err := s.box.Open(v, ctxKeyCheck); err != nil {
				return errors.New("the data key does not open this file (wrong data_key_file?)")
			}
			return nil
		}
		return meta.Put(keyCheck, s.box.Seal([]byte("postwarden subscribers"), ctxKeyCheck))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open subscriber store %s: %w", s.path, err)
	}
	return db, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.file.Close() }

// ID returns the store id recorded in the file (see storefile).
func (s *Store) ID() string { return s.expect.ID }

func (s *Store) view(fn func(*bbolt.Tx) error) error   { return s.file.View(fn) }
func (s *Store) batch(fn func(*bbolt.Tx) error) error  { return s.file.Batch(fn) }
func (s *Store) update(fn func(*bbolt.Tx) error) error { return s.file.Update(fn) }

// ---- maintenance ----

// Compact rewrites the file into a fresh one (bbolt.Compact into a temp file
// beside it, fsync, rename over, reopen), so freed pages that held erased or
// pruned bytes are gone from it. Other calls wait while it runs. The old
// file's blocks go back to the file system unwiped; what they held was sealed.
func (s *Store) Compact() error {
	if err := s.file.Compact(); err != nil {
		return fmt.Errorf("subscriber store: %w", err)
	}
	s.log.Info().Str("path", s.path).Msg("subscriber store compacted")
	return nil
}
