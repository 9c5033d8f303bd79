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
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/compact"

	"github.com/postwarden/postwarden/suppression/address"
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
	Consents []ConsentDates `json:"l,omitempty"` // erased markers only
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

// ---- keys ----

// addrKey parses an address and returns its matching key (what is indexed)
// and its canonical form (what is sealed: the local part as given).
func addrKey(addr string) (key, canonical string, err error) {
	a, err := address.Parse(addr)
	if err != nil {
		return "", "", err
	}
	return a.Key(), a.String(), nil
}

// checkList rejects list names that would break keys or logs ("" only where allowed).
func checkList(list string, allowEmpty bool) error {
	if list == "" && !allowEmpty {
		return errors.New("no list given")
	}
	if len(list) > maxField {
		return fmt.Errorf("list %q: longer than %d bytes", list, maxField)
	}
	for _, r := range list {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("list %q: contains a control character", list)
		}
	}
	return nil
}

// groupPrefix returns idx || list || 0x00: the prefix of a (address, list) history.
func groupPrefix(idx []byte, list string) []byte {
	p := make([]byte, 0, len(idx)+len(list)+1+8)
	p = append(p, idx...)
	p = append(p, list...)
	return append(p, 0)
}

// memberKey returns list || 0x00 || idx.
func memberKey(list string, idx []byte) []byte {
	k := make([]byte, 0, len(list)+1+len(idx))
	k = append(k, list...)
	k = append(k, 0)
	return append(k, idx...)
}

// splitEventKey returns the list of an event key (after the 32-byte idx).
func splitEventKey(k []byte) (list string, ok bool) {
	if len(k) < sealed.IndexSize+1+8 || k[len(k)-9] != 0 {
		return "", false
	}
	return string(k[sealed.IndexSize : len(k)-9]), true
}

// lastEvent returns the latest event value of a history (valid only in the tx), or nil.
func lastEvent(b *bbolt.Bucket, prefix []byte) []byte {
	c := b.Cursor()
	var ub [sealed.IndexSize + maxField + 1]byte
	upper := append(append(ub[:0], prefix[:len(prefix)-1]...), 1) // just past every prefix||seq
	k, v := c.Seek(upper)
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+8 || len(v) == 0 {
		return nil
	}
	return v
}

// appendEvent writes an event under the next sequence number.
func appendEvent(b *bbolt.Bucket, prefix []byte, code byte, e storedEvent) error {
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	k := binary.BigEndian.AppendUint64(bytes.Clone(prefix), seq)
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return b.Put(k, append([]byte{code}, body...))
}

// ---- records ----

func ctx(field, id string) string { return field + "\x00" + id }

func newID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}

func getPerson(tx *bbolt.Tx, idx []byte) (person, bool, error) {
	v := tx.Bucket(bucketPeople).Get(idx)
	if v == nil {
		return person{}, false, nil
	}
	var p person
	if err := json.Unmarshal(v, &p); err != nil {
		return person{}, false, fmt.Errorf("decode subscriber %x: %w", idx[:4], err)
	}
	return p, true, nil
}

func putPerson(tx *bbolt.Tx, idx []byte, p person) error {
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketPeople).Put(idx, v)
}

// sealOpt seals s, or returns nil for "".
func (s *Store) sealOpt(v, field, id string) []byte {
	if v == "" {
		return nil
	}
	return s.box.SealString(v, ctx(field, id))
}

// openOpt opens a sealed field, "" for nil.
func (s *Store) openOpt(v []byte, field, id string) (string, error) {
	if v == nil {
		return "", nil
	}
	p, err := s.box.OpenString(v, ctx(field, id))
	if err != nil {
		return "", fmt.Errorf("%s of subscriber %s: %w", field, id, err)
	}
	return p, nil
}

// decodeEvent turns a stored value into an Event, opening sealed fields.
func (s *Store) decodeEvent(v []byte) (Event, error) {
	if len(v) < 2 {
		return Event{}, errors.New("empty event value")
	}
	kind, ok := kindOfCode[v[0]]
	if !ok {
		return Event{}, fmt.Errorf("unknown event kind %d", v[0])
	}
	var se storedEvent
	if err := json.Unmarshal(v[1:], &se); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	e := Event{Kind: kind, Time: se.Time, Recorded: se.Recorded, Source: se.Source,
		PrivacyURL: se.Privacy, ConsentText: se.Consent, SubscriberID: se.ID, Consents: se.Consents}
	var err error
	if e.IP, err = s.openOpt(se.IP, ctxIP, se.ID); err != nil {
		return Event{}, err
	}
	if e.UserAgent, err = s.openOpt(se.UA, ctxUserAgent, se.ID); err != nil {
		return Event{}, err
	}
	return e, nil
}

// newEvent builds the stored and the returned form of an event.
func (s *Store) newEvent(code byte, at time.Time, id, source, ip, ua, privacy, consent string) (storedEvent, Event) {
	now := s.now().UTC()
	if at.IsZero() {
		at = now
	}
	se := storedEvent{Time: at.UTC(), Recorded: now, Source: source, ID: id,
		IP: s.sealOpt(ip, ctxIP, id), UA: s.sealOpt(ua, ctxUserAgent, id), Privacy: privacy, Consent: consent}
	e := Event{Kind: kindOfCode[code], Time: se.Time, Recorded: now, Source: source, IP: ip, UserAgent: ua,
		PrivacyURL: privacy, ConsentText: consent, SubscriberID: id}
	return se, e
}

// erasedMarker reports whether the address has an erasure marker.
func erasedMarker(tx *bbolt.Tx, idx []byte) bool {
	return lastEvent(tx.Bucket(bucketEvents), groupPrefix(idx, "")) != nil
}

// ---- validation ----

// FieldError names the field of a sign-up or import that is refused, and why.
type FieldError struct {
	Field   string // "name", "company", "source", "privacy url", "consent text", "ip"…
	Problem string // "contains a control character"
}

// Error formats as "name: contains a control character".
func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

func checkField(name, v string, max int) error {
	if len(v) > max {
		return &FieldError{name, fmt.Sprintf("longer than %d bytes", max)}
	}
	if !utf8.ValidString(v) {
		return &FieldError{name, "not valid UTF-8"}
	}
	for _, r := range v {
		if r < 0x20 && r != '\t' && !(name == "consent text" && (r == '\n' || r == '\r')) || r == 0x7f {
			return &FieldError{name, "contains a control character"}
		}
	}
	return nil
}

// normIP returns the canonical form of ip ("" stays "").
func normIP(ip string) (string, error) {
	ip = strings.TrimSpace(ip)
	if ip == "" {
		return "", nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return "", &FieldError{"ip", fmt.Sprintf("%q is not an IP address", ip)}
	}
	return a.Unmap().String(), nil
}

// cutUA shortens a user agent to maxUserAgent bytes and drops control characters.
func cutUA(ua string) string {
	ua = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, strings.ToValidUTF8(ua, ""))
	if len(ua) > maxUserAgent {
		ua = strings.ToValidUTF8(ua[:maxUserAgent], "")
	}
	return ua
}

// checkCommon validates the fields shared by sign-ups and imports.
func checkCommon(list, name, company, source, privacy, consent string) error {
	if err := checkList(list, false); err != nil {
		return err
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"name", name, maxField}, {"company", company, maxField}, {"source", source, maxField},
		{"privacy url", privacy, maxText}, {"consent text", consent, maxText}} {
		if err := checkField(f.name, f.v, f.max); err != nil {
			return err
		}
	}
	return nil
}

// trimmed returns sub with the spaces Subscribe ignores cut off.
func (sub Subscription) trimmed() Subscription {
	sub.List = strings.TrimSpace(sub.List)
	sub.Name, sub.Company = strings.TrimSpace(sub.Name), strings.TrimSpace(sub.Company)
	return sub
}

// Check says what Subscribe would refuse in sub, writing nothing, so a form
// can answer before it records anything: a bad address is an
// *address.Error, a bad name, company, source, privacy URL, consent text or
// IP a *FieldError naming the field.
func (sub Subscription) Check() error {
	if _, _, err := addrKey(sub.Address); err != nil {
		return err
	}
	sub = sub.trimmed()
	if err := checkCommon(sub.List, sub.Name, sub.Company, sub.Source, sub.PrivacyURL, sub.ConsentText); err != nil {
		return err
	}
	_, err := normIP(sub.IP)
	return err
}

// ---- writes ----

// Subscribe records a sign-up: "subscribed" (pending) when s.Pending or
// s.ViaDoubleOptIn, else "confirmed" at once (lists without double opt-in).
// An erased address needs ViaDoubleOptIn (else ErrErased) and comes back with
// a new SubscriberID and a "resubscribed" event. An address already confirmed
// on the list gives ErrAlreadyConfirmed and nothing is written; a repeated
// pending sign-up appends another "subscribed" event.
func (s *Store) Subscribe(sub Subscription) (Event, error) {
	key, canon, err := addrKey(sub.Address)
	if err != nil {
		return Event{}, fmt.Errorf("subscribe: %w", err)
	}
	sub = sub.trimmed()
	if err := sub.Check(); err != nil {
		return Event{}, fmt.Errorf("subscribe %s to %q: %w", address.Mask(key), sub.List, err)
	}
	ip, _ := normIP(sub.IP) // checked above
	ua := cutUA(sub.UserAgent)
	pending := sub.Pending || sub.ViaDoubleOptIn
	idx := s.box.Index(key)
	prefix := groupPrefix(idx, sub.List)

	var ev Event
	err = s.batch(func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		p, exists, err := getPerson(tx, idx)
		if err != nil {
			return err
		}
		code := codeConfirmed
		if pending {
			code = codeSubscribed
		}
		if !exists {
			if erasedMarker(tx, idx) {
				if !sub.ViaDoubleOptIn {
					return ErrErased
				}
				code = codeResubscribed
			}
			p = person{ID: newID(), Created: s.now().UTC()}
			p.Addr = s.box.SealString(canon, ctx(ctxAddress, p.ID))
		} else if last := lastEvent(events, prefix); last != nil && last[0] == codeConfirmed {
			return ErrAlreadyConfirmed
		}
		// Fill empty fields only: an unconfirmed form must not rewrite a known person.
		changed := !exists
		if p.Name == nil && sub.Name != "" {
			p.Name, changed = s.sealOpt(sub.Name, ctxName, p.ID), true
		}
		if p.Company == nil && sub.Company != "" {
			p.Company, changed = s.sealOpt(sub.Company, ctxCompany, p.ID), true
		}
		if changed {
			if err := putPerson(tx, idx, p); err != nil {
				return err
			}
		}
		se, e := s.newEvent(code, time.Time{}, p.ID, sub.Source, ip, ua, sub.PrivacyURL, sub.ConsentText)
		if err := appendEvent(events, prefix, code, se); err != nil {
			return err
		}
		ev = e
		return tx.Bucket(bucketMembers).Put(memberKey(sub.List, idx), nil)
	})
	if err != nil {
		return Event{}, fmt.Errorf("subscribe %s to %q: %w", address.Mask(key), sub.List, err)
	}
	return ev, nil
}

// Confirm records the double opt-in confirmation of a pending sign-up, with
// the IP and user agent of the click; the policy and wording shown at sign-up
// are carried over. Anything but a pending state gives ErrNoPending.
func (s *Store) Confirm(addr, list, ip, ua string) (Event, error) {
	key, _, err := addrKey(addr)
	if err != nil {
		return Event{}, fmt.Errorf("confirm: %w", err)
	}
	list = strings.TrimSpace(list)
	if err := checkList(list, false); err != nil {
		return Event{}, fmt.Errorf("confirm %s on %q: %w", address.Mask(key), list, err)
	}
	if ip, err = normIP(ip); err != nil {
		return Event{}, fmt.Errorf("confirm %s on %q: %w", address.Mask(key), list, err)
	}
	ua = cutUA(ua)
	idx := s.box.Index(key)
	prefix := groupPrefix(idx, list)
	var ev Event
	err = s.batch(func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		last := lastEvent(events, prefix)
		if last == nil || (last[0] != codeSubscribed && last[0] != codeResubscribed) {
			return ErrNoPending
		}
		var pend storedEvent
		if err := json.Unmarshal(last[1:], &pend); err != nil {
			return fmt.Errorf("decode pending event: %w", err)
		}
		se, e := s.newEvent(codeConfirmed, time.Time{}, pend.ID, "double-opt-in", ip, ua, pend.Privacy, pend.Consent)
		if err := appendEvent(events, prefix, codeConfirmed, se); err != nil {
			return err
		}
		ev = e
		return nil
	})
	if err != nil {
		return Event{}, fmt.Errorf("confirm %s on %q: %w", address.Mask(key), list, err)
	}
	return ev, nil
}

// Unsubscribe appends an "unsubscribed" event for addr on list, or on every
// list it is on when list is "". Already unsubscribed: nothing is written.
// No record at all (or erased): ErrNotFound, which callers that also
// suppress the address may ignore.
func (s *Store) Unsubscribe(addr, list, source string) error {
	key, _, err := addrKey(addr)
	if err != nil {
		return fmt.Errorf("unsubscribe: %w", err)
	}
	list = strings.TrimSpace(list)
	if err := checkList(list, true); err != nil {
		return fmt.Errorf("unsubscribe %s from %q: %w", address.Mask(key), list, err)
	}
	if err := checkField("source", source, maxField); err != nil {
		return fmt.Errorf("unsubscribe %s from %q: %w", address.Mask(key), list, err)
	}
	idx := s.box.Index(key)
	err = s.batch(func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		lists := []string{list}
		if list == "" {
			var err error
			if lists, err = listsOf(events, idx); err != nil {
				return err
			}
		}
		found := false
		for _, l := range lists {
			prefix := groupPrefix(idx, l)
			last := lastEvent(events, prefix)
			if last == nil {
				continue
			}
			found = true
			if last[0] == codeUnsubscribed {
				continue
			}
			var prev storedEvent
			if err := json.Unmarshal(last[1:], &prev); err != nil {
				return fmt.Errorf("decode event: %w", err)
			}
			se, _ := s.newEvent(codeUnsubscribed, time.Time{}, prev.ID, source, "", "", "", "")
			if err := appendEvent(events, prefix, codeUnsubscribed, se); err != nil {
				return err
			}
		}
		if !found {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("unsubscribe %s from %q: %w", address.Mask(key), list, err)
	}
	return nil
}

// listsOf returns the lists (not "") that idx has events on, in key order.
func listsOf(events *bbolt.Bucket, idx []byte) ([]string, error) {
	var lists []string
	c := events.Cursor()
	for k, _ := c.Seek(idx); k != nil && bytes.HasPrefix(k, idx); k, _ = c.Next() {
		l, ok := splitEventKey(k)
		if !ok {
			return nil, fmt.Errorf("malformed event key %x", k[:min(len(k), 8)])
		}
		if l != "" && (len(lists) == 0 || lists[len(lists)-1] != l) {
			lists = append(lists, l)
		}
	}
	return lists, nil
}

// ImportCandidate imports one contact: consentedAt zero records an
// "imported_legitimate_interest" event (never consent); otherwise a
// "confirmed" event dated consentedAt carrying the imported evidence.
// See Import for the rules.
func (s *Store) ImportCandidate(addr, list, source string, consentedAt time.Time, ip string) (Event, error) {
	res, err := s.Import([]Candidate{{Address: addr, List: list, Source: source, ConsentedAt: consentedAt, IP: ip}})
	if err != nil {
		return Event{}, err
	}
	return res[0].Event, res[0].Err
}

// Import imports contacts in one fsynced transaction; res[i] is the outcome
// of cands[i]. Per contact, by its state on the list:
//
//	none                  → legitimate-interest candidate, or confirmed with the evidence
//	legitimate_interest   → ErrExists, or confirmed with the evidence
//	pending               → ErrExists, or confirmed with the evidence
//	confirmed             → ErrExists
//	unsubscribed          → ErrUnsubscribed (an import never re-subscribes)
//	erased                → ErrErased
//
// The caller also screens against the suppression store, which wins.
func (s *Store) Import(cands []Candidate) ([]ImportResult, error) {
	type row struct {
		Candidate      // normalised copy
		key, canon, ip string
		idx            []byte // nil: invalid, Err set
	}
	res := make([]ImportResult, len(cands))
	rows := make([]row, len(cands))
	now := s.now()
	for i, c := range cands {
		key, canon, err := addrKey(c.Address)
		if err != nil {
			res[i].Err = fmt.Errorf("import: %w", err)
			continue
		}
		c.List = strings.TrimSpace(c.List)
		c.Name, c.Company = strings.TrimSpace(c.Name), strings.TrimSpace(c.Company)
		switch c.Source = strings.TrimSpace(c.Source); {
		case c.Source == "":
			c.Source = "import"
		case !strings.HasPrefix(c.Source, "import:") && c.Source != "import":
			c.Source = "import:" + c.Source
		}
		err = checkCommon(c.List, c.Name, c.Company, c.Source, c.PrivacyURL, c.ConsentText)
		if err == nil && c.ConsentedAt.After(now.Add(24*time.Hour)) {
			err = fmt.Errorf("consented_at %s is in the future", c.ConsentedAt.Format(time.RFC3339))
		}
		var ip string
		if err == nil {
			ip, err = normIP(c.IP)
		}
		if err != nil {
			res[i].Err = fmt.Errorf("import %s to %q: %w", address.Mask(key), c.List, err)
			continue
		}
		rows[i] = row{Candidate: c, key: key, canon: canon, ip: ip, idx: s.box.Index(key)}
	}

	err := s.update(func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		for i, r := range rows {
			if r.idx == nil { // invalid, error already set
				continue
			}
			c := r.Candidate
			prefix := groupPrefix(r.idx, c.List)
			p, exists, err := getPerson(tx, r.idx)
			if err != nil {
				return err
			}
			if !exists && erasedMarker(tx, r.idx) {
				res[i].Err = fmt.Errorf("import %s to %q: %w", address.Mask(r.key), c.List, ErrErased)
				continue
			}
			if last := lastEvent(events, prefix); last != nil {
				switch {
				case last[0] == codeUnsubscribed:
					res[i].Err = fmt.Errorf("import %s to %q: %w", address.Mask(r.key), c.List, ErrUnsubscribed)
					continue
				case last[0] == codeConfirmed, c.ConsentedAt.IsZero():
					res[i].Err = fmt.Errorf("import %s to %q: %w", address.Mask(r.key), c.List, ErrExists)
					continue
				}
			}
			changed := !exists
			if !exists {
				p = person{ID: newID(), Created: s.now().UTC()}
				p.Addr = s.box.SealString(r.canon, ctx(ctxAddress, p.ID))
			}
			if p.Name == nil && c.Name != "" {
				p.Name, changed = s.sealOpt(c.Name, ctxName, p.ID), true
			}
			if p.Company == nil && c.Company != "" {
				p.Company, changed = s.sealOpt(c.Company, ctxCompany, p.ID), true
			}
			if changed {
				if err := putPerson(tx, r.idx, p); err != nil {
					return err
				}
			}
			code := codeConfirmed
			if c.ConsentedAt.IsZero() {
				code = codeImportedLegitimate
			}
			se, e := s.newEvent(code, c.ConsentedAt, p.ID, c.Source, r.ip, "", c.PrivacyURL, c.ConsentText)
			if err := appendEvent(events, prefix, code, se); err != nil {
				return err
			}
			if err := tx.Bucket(bucketMembers).Put(memberKey(c.List, r.idx), nil); err != nil {
				return err
			}
			res[i].Event = e
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("import %d contacts: %w", len(cands), err)
	}
	return res, nil
}

// Erase removes every event and sealed field held for addr on every list and
// appends an "erased" marker (index, time, ref, consent dates). It returns
// the dates of the original consent per list so the caller can keep them in
// the suppression tombstone. ref is a request reference: never put the
// address in it. Call Compact afterwards so freed pages leave the file.
func (s *Store) Erase(addr, ref string) (Tombstone, error) {
	key, _, err := addrKey(addr)
	if err != nil {
		return Tombstone{}, fmt.Errorf("erase: %w", err)
	}
	if err := checkField("reference", ref, maxField); err != nil {
		return Tombstone{}, fmt.Errorf("erase %s: %w", address.Mask(key), err)
	}
	idx := s.box.Index(key)
	var ts Tombstone
	err = s.batch(func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		ts = Tombstone{Index: hex.EncodeToString(idx), Ref: ref}
		var dead [][]byte
		byList := map[string]*ConsentDates{}
		c := events.Cursor()
		for k, v := c.Seek(idx); k != nil && bytes.HasPrefix(k, idx); k, v = c.Next() {
			l, ok := splitEventKey(k)
			if !ok {
				return fmt.Errorf("malformed event key %x", k[:min(len(k), 8)])
			}
			if l == "" { // earlier erasure markers stay
				continue
			}
			dead = append(dead, bytes.Clone(k))
			cd := byList[l]
			if cd == nil {
				cd = &ConsentDates{List: l}
				byList[l] = cd
			}
			if len(v) < 2 {
				continue
			}
			var se storedEvent
			if err := json.Unmarshal(v[1:], &se); err != nil {
				return fmt.Errorf("decode event: %w", err)
			}
			switch v[0] {
			case codeSubscribed, codeResubscribed:
				if cd.Subscribed.IsZero() || se.Time.Before(cd.Subscribed) {
					cd.Subscribed = se.Time
				}
			case codeConfirmed:
				if cd.Confirmed.IsZero() || se.Time.Before(cd.Confirmed) {
					cd.Confirmed, cd.Source = se.Time, se.Source
				}
			}
		}
		for _, l := range slices.Sorted(maps.Keys(byList)) {
			ts.Consents = append(ts.Consents, *byList[l])
			if err := tx.Bucket(bucketMembers).Delete(memberKey(l, idx)); err != nil {
				return err
			}
		}
		for _, k := range dead {
			if err := events.Delete(k); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketPeople).Delete(idx); err != nil {
			return err
		}
		se, e := s.newEvent(codeErased, time.Time{}, "", ref, "", "", "", "")
		se.Consents = ts.Consents
		ts.Time = e.Time
		return appendEvent(events, groupPrefix(idx, ""), codeErased, se)
	})
	if err != nil {
		return Tombstone{}, fmt.Errorf("erase %s: %w", address.Mask(key), err)
	}
	s.log.Info().Str("index", ts.Index[:12]).Int("lists", len(ts.Consents)).Str("ref", ref).Msg("subscriber erased")
	return ts, nil
}

// PrunePending deletes sign-ups still pending more than olderThan after
// their last "subscribed"/"resubscribed" event (the opt-in TTL): the trailing
// pending events of each history, its list membership when nothing else is
// left, and the person when no list is left. It returns how many
// (address, list) histories were pruned.
func (s *Store) PrunePending(olderThan time.Duration) (int, error) {
	cutoff := s.now().Add(-olderThan)
	n := 0
	err := s.update(func(tx *bbolt.Tx) error {
		n = 0
		events := tx.Bucket(bucketEvents)
		var (
			dead    [][]byte // keys to delete
			run     [][]byte // trailing pending keys of the current history
			runLast time.Time
			group   []byte
			size    int      // events in the current history
			emptied [][]byte // histories left with no event
		)
		flush := func() {
			if group == nil || len(run) == 0 || !runLast.Before(cutoff) {
				return
			}
			dead = append(dead, run...)
			n++
			if len(run) == size {
				emptied = append(emptied, group)
			}
		}
		c := events.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) < sealed.IndexSize+9 {
				return fmt.Errorf("malformed event key %x", k[:min(len(k), 8)])
			}
			g := k[:len(k)-8]
			if !bytes.Equal(g, group) {
				flush()
				group, run, size = bytes.Clone(g), nil, 0
			}
			size++
			if l, _ := splitEventKey(k); l == "" || len(v) < 2 || (v[0] != codeSubscribed && v[0] != codeResubscribed) {
				run = nil
				continue
			}
			var se storedEvent
			if err := json.Unmarshal(v[1:], &se); err != nil {
				return fmt.Errorf("decode event: %w", err)
			}
			run, runLast = append(run, bytes.Clone(k)), se.Time
		}
		flush()
		for _, k := range dead {
			if err := events.Delete(k); err != nil {
				return err
			}
		}
		for _, g := range emptied {
			idx, list := g[:sealed.IndexSize], string(g[sealed.IndexSize:len(g)-1])
			if err := tx.Bucket(bucketMembers).Delete(memberKey(list, idx)); err != nil {
				return err
			}
			lists, err := listsOf(events, idx)
			if err != nil {
				return err
			}
			if len(lists) == 0 {
				if err := tx.Bucket(bucketPeople).Delete(idx); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune pending sign-ups: %w", err)
	}
	if n > 0 {
		s.log.Info().Int("pruned", n).Dur("older_than", olderThan).Msg("pending sign-ups pruned")
	}
	return n, nil
}

// ---- reads ----

// Confirmed reports whether addr has confirmed consent on list: its latest
// event there is "confirmed". One b-tree descent; satisfies campaign's Consents.
func (s *Store) Confirmed(addr, list string) (bool, error) {
	key, _, err := addrKey(addr)
	if err != nil {
		return false, fmt.Errorf("check consent: %w", err)
	}
	list = strings.TrimSpace(list)
	var ok bool
	var buf [sealed.IndexSize + maxField + 1]byte
	prefix := append(append(s.box.AppendIndex(buf[:0], key), list...), 0)
	err = s.view(func(tx *bbolt.Tx) error {
		last := lastEvent(tx.Bucket(bucketEvents), prefix)
		ok = last != nil && last[0] == codeConfirmed
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("check consent of %s on %q: %w", address.Mask(key), list, err)
	}
	return ok, nil
}

// Status returns the state of addr on list, derived from its latest event;
// an address erased and not come back is "erased" on every list.
func (s *Store) Status(addr, list string) (Status, error) {
	key, _, err := addrKey(addr)
	if err != nil {
		return Status{}, fmt.Errorf("subscriber status: %w", err)
	}
	list = strings.TrimSpace(list)
	idx := s.box.Index(key)
	var st Status
	err = s.view(func(tx *bbolt.Tx) error {
		var err error
		st, err = statusTx(tx, idx, list)
		return err
	})
	if err != nil {
		return Status{}, fmt.Errorf("subscriber status of %s on %q: %w", address.Mask(key), list, err)
	}
	return st, nil
}

func statusTx(tx *bbolt.Tx, idx []byte, list string) (Status, error) {
	events := tx.Bucket(bucketEvents)
	v := lastEvent(events, groupPrefix(idx, list))
	if v == nil && list != "" {
		if tx.Bucket(bucketPeople).Get(idx) == nil {
			v = lastEvent(events, groupPrefix(idx, "")) // erased and not come back
		}
	}
	if v == nil {
		return Status{State: StateNone}, nil
	}
	var se storedEvent
	if err := json.Unmarshal(v[1:], &se); err != nil {
		return Status{}, fmt.Errorf("decode event: %w", err)
	}
	return Status{State: stateOfCode[v[0]], Since: se.Time, SubscriberID: se.ID}, nil
}

// openPerson decrypts a person record and checks it belongs under idx.
func (s *Store) openPerson(idx []byte, p person) (Subscriber, error) {
	sub := Subscriber{SubscriberID: p.ID, Created: p.Created}
	var err error
	if sub.Address, err = s.openOpt(p.Addr, ctxAddress, p.ID); err != nil {
		return Subscriber{}, err
	}
	if !bytes.Equal(s.box.Index(strings.ToLower(sub.Address)), idx) {
		return Subscriber{}, fmt.Errorf("subscriber %s: record does not belong under its key", p.ID)
	}
	if sub.Name, err = s.openOpt(p.Name, ctxName, p.ID); err != nil {
		return Subscriber{}, err
	}
	if sub.Company, err = s.openOpt(p.Company, ctxCompany, p.ID); err != nil {
		return Subscriber{}, err
	}
	return sub, nil
}

// History returns everything held about addr, decrypted, one entry per list
// (erasure markers under list ""), events oldest first: for subject export.
// Nothing held gives an empty slice.
func (s *Store) History(addr string) ([]ListHistory, error) {
	key, _, err := addrKey(addr)
	if err != nil {
		return nil, fmt.Errorf("subscriber history: %w", err)
	}
	idx := s.box.Index(key)
	var out []ListHistory
	err = s.view(func(tx *bbolt.Tx) error {
		out = nil
		var who Subscriber
		if p, ok, err := getPerson(tx, idx); err != nil {
			return err
		} else if ok {
			if who, err = s.openPerson(idx, p); err != nil {
				return err
			}
		}
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(idx); k != nil && bytes.HasPrefix(k, idx); k, v = c.Next() {
			l, ok := splitEventKey(k)
			if !ok {
				return fmt.Errorf("malformed event key %x", k[:min(len(k), 8)])
			}
			if len(out) == 0 || out[len(out)-1].List != l {
				h := ListHistory{Subscriber: who}
				if l == "" {
					h.Subscriber = Subscriber{}
				}
				h.List = l
				out = append(out, h)
			}
			e, err := s.decodeEvent(v)
			if err != nil {
				return err
			}
			h := &out[len(out)-1]
			h.Events = append(h.Events, e)
		}
		for i := range out {
			last := out[i].Events[len(out[i].Events)-1]
			out[i].Status = Status{State: stateOf(last.Kind), Since: last.Time, SubscriberID: last.SubscriberID}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("subscriber history of %s: %w", address.Mask(key), err)
	}
	if out == nil {
		out = []ListHistory{}
	}
	return out, nil
}

func stateOf(kind string) string {
	for c, k := range kindOfCode {
		if k == kind {
			return stateOfCode[c]
		}
	}
	return StateNone
}

// List calls fn for every subscriber of list (every list when list is ""),
// decrypted, in index order (which reveals nothing about the addresses).
// fn runs inside a read transaction: it must not call back into the store;
// its error stops the walk.
func (s *Store) List(list string, fn func(Subscriber) error) error {
	list = strings.TrimSpace(list)
	var prefix []byte
	if list != "" {
		prefix = append([]byte(list), 0)
	}
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketMembers).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(k) < sealed.IndexSize+1 || k[len(k)-sealed.IndexSize-1] != 0 {
				return fmt.Errorf("malformed member key")
			}
			idx, l := k[len(k)-sealed.IndexSize:], string(k[:len(k)-sealed.IndexSize-1])
			p, ok, err := getPerson(tx, idx)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			sub, err := s.openPerson(idx, p)
			if err != nil {
				return err
			}
			sub.List = l
			if sub.Status, err = statusTx(tx, idx, l); err != nil {
				return err
			}
			if err := fn(sub); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list subscribers of %q: %w", list, err)
	}
	return nil
}

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
