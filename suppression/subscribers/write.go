package subscribers

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// ---- writes ----

// Subscribe records a sign-up: "subscribed" (pending) when s.Pending or
// s.ViaDoubleOptIn, else "confirmed" at once (lists without double opt-in).
// An erased address needs ViaDoubleOptIn (else ErrErased) and comes back with
// a new SubscriberID and a "resubscribed" event. An address already confirmed
// on the list gives ErrAlreadyConfirmed and nothing is written; a repeated
// pending sign-up appends another "subscribed" event.
func (s *Store) Subscribe(sub Subscription) (Event, error) {
	c, err := checkSubscribe(sub)
	if err != nil {
		return Event{}, err
	}
	var ev Event
	err = s.batch(func(tx *bbolt.Tx) error {
		var err error
		ev, err = s.subscribeTx(tx, s.localStamp(), c)
		return err
	})
	if err != nil {
		return Event{}, fmt.Errorf("subscribe %s to %q: %w", address.Mask(c.key), c.sub.List, err)
	}
	return ev, nil
}

// checkedSub is a sign-up checked by checkSubscribe.
type checkedSub struct {
	sub            Subscription // trimmed
	key, canon, ip string
	ua             string
}

// checkSubscribe normalises and checks a sign-up.
func checkSubscribe(sub Subscription) (checkedSub, error) {
	key, canon, err := addrKey(sub.Address)
	if err != nil {
		return checkedSub{}, fmt.Errorf("subscribe: %w", err)
	}
	sub = sub.trimmed()
	if err := sub.Check(); err != nil {
		return checkedSub{}, fmt.Errorf("subscribe %s to %q: %w", address.Mask(key), sub.List, err)
	}
	ip, _ := normIP(sub.IP) // checked above
	return checkedSub{sub: sub, key: key, canon: canon, ip: ip, ua: cutUA(sub.UserAgent)}, nil
}

// subscribeTx is Subscribe in tx; a refusal is returned before any write.
func (s *Store) subscribeTx(tx *bbolt.Tx, st stamp, c checkedSub) (Event, error) {
	sub := c.sub
	pending := sub.Pending || sub.ViaDoubleOptIn
	idx := s.box.Index(c.key)
	prefix := groupPrefix(idx, sub.List)
	events := tx.Bucket(bucketEvents)
	p, exists, err := getPerson(tx, idx)
	if err != nil {
		return Event{}, err
	}
	code := codeConfirmed
	if pending {
		code = codeSubscribed
	}
	if !exists {
		if erasedMarker(tx, idx) {
			if !sub.ViaDoubleOptIn {
				return Event{}, ErrErased
			}
			code = codeResubscribed
		}
		p = person{ID: st.person, Created: st.now.UTC()}
		p.Addr = s.box.SealString(c.canon, ctx(ctxAddress, p.ID))
	} else if last := lastEvent(events, prefix); last != nil && last[0] == codeConfirmed {
		return Event{}, ErrAlreadyConfirmed
	}
	if tx.Writable() {
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
				return Event{}, err
			}
		}
	}
	se, e := s.newEvent(st, code, time.Time{}, p.ID, sub.Source, c.ip, c.ua, sub.PrivacyURL, sub.ConsentText)
	if !tx.Writable() { // CheckOp: refusals only
		return e, nil
	}
	if err := appendEvent(events, prefix, code, se); err != nil {
		return Event{}, err
	}
	return e, tx.Bucket(bucketMembers).Put(memberKey(sub.List, idx), nil)
}

// Confirm records the double opt-in confirmation of a pending sign-up, with
// the IP and user agent of the click; the policy and wording shown at sign-up
// are carried over. Anything but a pending state gives ErrNoPending.
func (s *Store) Confirm(addr, list, ip, ua string) (Event, error) {
	c, err := checkConfirm(addr, list, ip, ua)
	if err != nil {
		return Event{}, err
	}
	var ev Event
	err = s.batch(func(tx *bbolt.Tx) error {
		var err error
		ev, err = s.confirmTx(tx, s.localStamp(), c)
		return err
	})
	if err != nil {
		return Event{}, fmt.Errorf("confirm %s on %q: %w", address.Mask(c.key), c.list, err)
	}
	return ev, nil
}

// checkedConfirm is a confirmation checked by checkConfirm.
type checkedConfirm struct{ key, list, ip, ua string }

// checkConfirm normalises and checks a confirmation.
func checkConfirm(addr, list, ip, ua string) (checkedConfirm, error) {
	key, _, err := addrKey(addr)
	if err != nil {
		return checkedConfirm{}, fmt.Errorf("confirm: %w", err)
	}
	list = strings.TrimSpace(list)
	if err := checkList(list, false); err != nil {
		return checkedConfirm{}, fmt.Errorf("confirm %s on %q: %w", address.Mask(key), list, err)
	}
	if ip, err = normIP(ip); err != nil {
		return checkedConfirm{}, fmt.Errorf("confirm %s on %q: %w", address.Mask(key), list, err)
	}
	return checkedConfirm{key: key, list: list, ip: ip, ua: cutUA(ua)}, nil
}

// confirmTx is Confirm in tx; a refusal is returned before any write.
func (s *Store) confirmTx(tx *bbolt.Tx, st stamp, c checkedConfirm) (Event, error) {
	events := tx.Bucket(bucketEvents)
	prefix := groupPrefix(s.box.Index(c.key), c.list)
	last := lastEvent(events, prefix)
	if last == nil || (last[0] != codeSubscribed && last[0] != codeResubscribed) {
		return Event{}, ErrNoPending
	}
	var pend storedEvent
	if err := json.Unmarshal(last[1:], &pend); err != nil {
		return Event{}, fmt.Errorf("decode pending event: %w", err)
	}
	se, e := s.newEvent(st, codeConfirmed, time.Time{}, pend.ID, "double-opt-in", c.ip, c.ua, pend.Privacy, pend.Consent)
	if !tx.Writable() {
		return e, nil
	}
	return e, appendEvent(events, prefix, codeConfirmed, se)
}

// Unsubscribe appends an "unsubscribed" event for addr on list, or on every
// list it is on when list is "". Already unsubscribed: nothing is written.
// No record at all (or erased): ErrNotFound, which callers that also
// suppress the address may ignore.
func (s *Store) Unsubscribe(addr, list, source string) error {
	c, err := checkUnsubscribe(addr, list, source)
	if err != nil {
		return err
	}
	err = s.batch(func(tx *bbolt.Tx) error { return s.unsubscribeTx(tx, s.localStamp(), c) })
	if err != nil {
		return fmt.Errorf("unsubscribe %s from %q: %w", address.Mask(c.key), c.list, err)
	}
	return nil
}

// checkedUnsub is an unsubscribe checked by checkUnsubscribe.
type checkedUnsub struct{ key, list, source string }

// checkUnsubscribe normalises and checks an unsubscribe.
func checkUnsubscribe(addr, list, source string) (checkedUnsub, error) {
	key, _, err := addrKey(addr)
	if err != nil {
		return checkedUnsub{}, fmt.Errorf("unsubscribe: %w", err)
	}
	list = strings.TrimSpace(list)
	if err := checkList(list, true); err != nil {
		return checkedUnsub{}, fmt.Errorf("unsubscribe %s from %q: %w", address.Mask(key), list, err)
	}
	if err := checkField("source", source, maxField); err != nil {
		return checkedUnsub{}, fmt.Errorf("unsubscribe %s from %q: %w", address.Mask(key), list, err)
	}
	return checkedUnsub{key: key, list: list, source: source}, nil
}

// unsubscribeTx is Unsubscribe in tx; ErrNotFound is returned before any write.
func (s *Store) unsubscribeTx(tx *bbolt.Tx, st stamp, c checkedUnsub) error {
	idx := s.box.Index(c.key)
	events := tx.Bucket(bucketEvents)
	lists := []string{c.list}
	if c.list == "" {
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
		if last[0] == codeUnsubscribed || !tx.Writable() {
			continue
		}
		var prev storedEvent
		if err := json.Unmarshal(last[1:], &prev); err != nil {
			return fmt.Errorf("decode event: %w", err)
		}
		se, _ := s.newEvent(st, codeUnsubscribed, time.Time{}, prev.ID, c.source, "", "", "", "")
		if err := appendEvent(events, prefix, codeUnsubscribed, se); err != nil {
			return err
		}
	}
	if !found {
		return ErrNotFound
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
	res := make([]ImportResult, len(cands))
	rows := make([]importRow, len(cands))
	now := s.now()
	for i, c := range cands {
		r, err := s.checkCandidate(c, now)
		if err != nil {
			res[i].Err = err
			continue
		}
		rows[i] = r
	}
	err := s.update(func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		for i, r := range rows {
			if r.idx == nil { // invalid, error already set
				continue
			}
			e, refused, err := s.importOne(tx, events, r, s.localStamp())
			if err != nil {
				return err
			}
			if refused != nil {
				res[i].Err = fmt.Errorf("import %s to %q: %w", address.Mask(r.key), r.List, refused)
				continue
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

// importRow is a checked Candidate of Import.
type importRow struct {
	Candidate      // normalised copy
	key, canon, ip string
	idx            []byte // nil: invalid, Err set
}

// checkCandidate normalises c and checks it against the consent store's rules.
func (s *Store) checkCandidate(c Candidate, now time.Time) (importRow, error) {
	key, canon, err := addrKey(c.Address)
	if err != nil {
		return importRow{}, fmt.Errorf("import: %w", err)
	}
	c.List = strings.TrimSpace(c.List)
	c.Name, c.Company = strings.TrimSpace(c.Name), strings.TrimSpace(c.Company)
	c.Source = importSource(c.Source)
	err = checkCommon(c.List, c.Name, c.Company, c.Source, c.PrivacyURL, c.ConsentText)
	if err == nil && c.ConsentedAt.After(now.Add(24*time.Hour)) {
		err = fmt.Errorf("consented_at %s is in the future", c.ConsentedAt.Format(time.RFC3339))
	}
	var ip string
	if err == nil {
		ip, err = normIP(c.IP)
	}
	if err != nil {
		return importRow{}, fmt.Errorf("import %s to %q: %w", address.Mask(key), c.List, err)
	}
	return importRow{Candidate: c, key: key, canon: canon, ip: ip, idx: s.box.Index(key)}, nil
}

// importSource is the evidence's source of an imported contact: "import", or
// the given source marked as an import ("import:…").
func importSource(source string) string {
	switch source = strings.TrimSpace(source); {
	case source == "":
		return "import"
	case !strings.HasPrefix(source, "import:") && source != "import":
		return "import:" + source
	}
	return source
}

// importRefusal is why a contact whose last event on the list is last (nil:
// none) is not imported: an unsubscribe stands, and a confirmed subscription,
// or any history at all for an import without consent, is not overwritten.
func importRefusal(last []byte, consentedAt time.Time) error {
	switch {
	case last == nil:
		return nil
	case last[0] == codeUnsubscribed:
		return ErrUnsubscribed
	case last[0] == codeConfirmed, consentedAt.IsZero():
		return ErrExists
	}
	return nil
}

// importOne writes one checked row in tx: the person when new (or its
// missing name and company), the event and the list membership. refused is
// why the row is not imported; err stops the whole import.
func (s *Store) importOne(tx *bbolt.Tx, events *bbolt.Bucket, r importRow, st stamp) (e Event, refused, err error) {
	c := r.Candidate
	prefix := groupPrefix(r.idx, c.List)
	p, exists, err := getPerson(tx, r.idx)
	if err != nil {
		return Event{}, nil, err
	}
	if !exists && erasedMarker(tx, r.idx) {
		return Event{}, ErrErased, nil
	}
	if refused := importRefusal(lastEvent(events, prefix), c.ConsentedAt); refused != nil {
		return Event{}, refused, nil
	}
	if !tx.Writable() { // CheckOp: refusals only
		return Event{}, nil, nil
	}
	changed := !exists
	if !exists {
		p = person{ID: st.person, Created: st.now.UTC()}
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
			return Event{}, nil, err
		}
	}
	code := codeConfirmed
	if c.ConsentedAt.IsZero() {
		code = codeImportedLegitimate
	}
	se, e := s.newEvent(st, code, c.ConsentedAt, p.ID, c.Source, r.ip, "", c.PrivacyURL, c.ConsentText)
	if err := appendEvent(events, prefix, code, se); err != nil {
		return Event{}, nil, err
	}
	if err := tx.Bucket(bucketMembers).Put(memberKey(c.List, r.idx), nil); err != nil {
		return Event{}, nil, err
	}
	return e, nil, nil
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
	return s.erase(s.box.Index(key), address.Mask(key), ref)
}

// EraseIndex is Erase for a caller that holds only the keyed index of the
// address (hex, as Tombstone.Index and a suppression tombstone keep it): a
// cluster node erasing a person another node was asked to erase.
func (s *Store) EraseIndex(indexHex, ref string) (Tombstone, error) {
	idx, err := hex.DecodeString(indexHex)
	if err != nil || len(idx) != sealed.IndexSize {
		return Tombstone{}, fmt.Errorf("erase: index %q: want %d hex bytes", indexHex, sealed.IndexSize)
	}
	return s.erase(idx, "index "+indexHex[:12], ref)
}

// erase is Erase for the index idx; who names the person in errors.
func (s *Store) erase(idx []byte, who, ref string) (Tombstone, error) {
	if err := checkField("reference", ref, maxField); err != nil {
		return Tombstone{}, fmt.Errorf("erase %s: %w", who, err)
	}
	var ts Tombstone
	err := s.batch(func(tx *bbolt.Tx) error {
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
		if len(dead) == 0 {
			// Erased already under this reference and nothing came back
			// since: a retried erasure writes no second marker.
			if prev, ok := markerOf(events, idx, ref); ok {
				ts.Time, ts.Consents, ts.Unchanged = prev.Recorded, prev.Consents, true
				return nil
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
		se, e := s.newEvent(s.localStamp(), codeErased, time.Time{}, "", ref, "", "", "", "")
		se.Consents = ts.Consents
		ts.Time = e.Time
		return appendEvent(events, groupPrefix(idx, ""), codeErased, se)
	})
	if err != nil {
		return Tombstone{}, fmt.Errorf("erase %s: %w", who, err)
	}
	if ts.Unchanged {
		s.log.Debug().Str("index", ts.Index[:12]).Str("ref", ref).Msg("subscriber erased already; nothing held since")
		return ts, nil
	}
	s.log.Info().Str("index", ts.Index[:12]).Int("lists", len(ts.Consents)).Str("ref", ref).Msg("subscriber erased")
	return ts, nil
}

// markerOf returns idx's latest erasure marker if it was written for ref.
func markerOf(events *bbolt.Bucket, idx []byte, ref string) (storedEvent, bool) {
	last := lastEvent(events, groupPrefix(idx, ""))
	if last == nil || last[0] != codeErased {
		return storedEvent{}, false
	}
	var se storedEvent
	if json.Unmarshal(last[1:], &se) != nil || se.Source != ref {
		return storedEvent{}, false
	}
	return se, true
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
		s.log.Info().Int("pruned", n).Dur("older_than_ms", olderThan).Msg("pending sign-ups pruned")
	}
	return n, nil
}
