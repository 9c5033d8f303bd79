package subscribers

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

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

// stamp is what a write takes from outside its arguments: its time, the
// SubscriberID of a record it creates and, replicated, the op's id. A
// replicated op carries the origin's stamp, so every node writes alike.
type stamp struct {
	now    time.Time
	person string
	op     string // "" for a local write
}

// localStamp is the stamp of a write made here, now.
func (s *Store) localStamp() stamp { return stamp{now: s.now().UTC(), person: newID()} }

// newEvent builds the stored and the returned form of an event.
func (s *Store) newEvent(st stamp, code byte, at time.Time, id, source, ip, ua, privacy, consent string) (storedEvent, Event) {
	now := st.now.UTC()
	if at.IsZero() {
		at = now
	}
	se := storedEvent{Time: at.UTC(), Recorded: now, Source: source, ID: id,
		IP: s.sealOpt(ip, ctxIP, id), UA: s.sealOpt(ua, ctxUserAgent, id), Privacy: privacy, Consent: consent, Op: st.op}
	e := Event{Kind: kindOfCode[code], Time: se.Time, Recorded: now, Source: source, IP: ip, UserAgent: ua,
		PrivacyURL: privacy, ConsentText: consent, SubscriberID: id}
	return se, e
}

// erasedMarker reports whether the address has an erasure marker.
func erasedMarker(tx *bbolt.Tx, idx []byte) bool {
	return lastEvent(tx.Bucket(bucketEvents), groupPrefix(idx, "")) != nil
}
