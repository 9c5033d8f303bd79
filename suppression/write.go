package suppression

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

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
		var err error
		found, err = s.removeTx(tx, t, list)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("remove suppression for %s: %w", address.Mask(t), err)
	}
	return found, nil
}

// removeTx is Remove inside tx, for a normalised target and trimmed list.
func (s *Store) removeTx(tx *bbolt.Tx, t, list string) (bool, error) {
	b := tx.Bucket(bucketEntries)
	k := key(s.box.Index(t), list)
	raw := b.Get(k)
	if raw == nil {
		return false, nil
	}
	r, st, err := decodeValue(raw)
	if err != nil {
		return true, fmt.Errorf("decode entry: %w", err)
	}
	switch {
	case r == Erased:
		return true, ErrErased
	case r == Restricted:
		return true, ErrRestricted
	case st.Hold != nil:
		v, err := encode(Restricted, stored{Target: st.Target, Source: st.Hold.Source, Note: st.Hold.Note, Time: st.Hold.Time})
		if err != nil {
			return true, err
		}
		return true, b.Put(k, v)
	}
	return true, b.Delete(k)
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
	err = s.update(func(tx *bbolt.Tx) error { return s.restrictTx(tx, e) })
	if err != nil {
		return fmt.Errorf("restrict %s: %w", address.Mask(k), err)
	}
	return nil
}

// restrictTx is Restrict inside tx, for a normalised restriction entry.
func (s *Store) restrictTx(tx *bbolt.Tx, e Entry) error {
	wrote, err := s.put(tx.Bucket(bucketEntries), e)
	if err == nil && !wrote {
		err = ErrErased
	}
	return err
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
		var err error
		found, err = s.unrestrictTx(tx, ak)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("unrestrict %s: %w", address.Mask(ak), err)
	}
	return found, nil
}

// unrestrictTx is Unrestrict inside tx, for an address key.
func (s *Store) unrestrictTx(tx *bbolt.Tx, ak string) (bool, error) {
	b := tx.Bucket(bucketEntries)
	k := key(s.box.Index(ak), "")
	raw := b.Get(k)
	if raw == nil {
		return false, nil
	}
	r, st, err := decodeValue(raw)
	if err != nil {
		return false, fmt.Errorf("decode entry: %w", err)
	}
	switch {
	case r == Restricted:
		return true, b.Delete(k)
	case r != Erased && st.Hold != nil:
		st.Hold = nil
		v, err := encode(r, st)
		if err != nil {
			return true, err
		}
		return true, b.Put(k, v)
	}
	return false, nil
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
	return s.erase(s.box.Index(k), ref, consents, time.Now())
}

// EraseIndex is Erase for callers that hold only the index (hex, as in the
// subscriber store's Tombstone.Index).
func (s *Store) EraseIndex(indexHex, ref string, consents []ConsentDates) (Entry, error) {
	idx, err := hex.DecodeString(indexHex)
	if err != nil || len(idx) != sealed.IndexSize {
		return Entry{}, fmt.Errorf("erase suppressions: index %q: want %d hex bytes", indexHex, sealed.IndexSize)
	}
	return s.erase(idx, ref, consents, time.Now())
}

func (s *Store) erase(idx []byte, ref string, consents []ConsentDates, now time.Time) (Entry, error) {
	ih := hex.EncodeToString(idx)
	if err := checkText("reference", ref, maxRef); err != nil {
		return Entry{}, fmt.Errorf("erase suppressions of %s: %w", ih[:12], err)
	}
	var (
		out     Entry
		removed int
	)
	err := s.update(func(tx *bbolt.Tx) error {
		var err error
		out, removed, err = s.eraseTx(tx, idx, ref, consents, now)
		return err
	})
	if err != nil {
		return Entry{}, fmt.Errorf("erase suppressions of %s: %w", ih[:12], err)
	}
	s.log.Info().Str("index", ih[:12]).Int("removed", removed).Str("ref", ref).Msg("suppressions erased")
	return out, nil
}

// eraseTx is erase inside tx: it returns the tombstone and how many
// entries it deleted. now is the tombstone's time when it is the first.
func (s *Store) eraseTx(tx *bbolt.Tx, idx []byte, ref string, consents []ConsentDates, now time.Time) (Entry, int, error) {
	b := tx.Bucket(bucketEntries)
	prefix := key(idx, "")
	st := stored{Source: "erasure", Note: s.sealNote(ref), Time: now.UTC()}
	var dead [][]byte
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(k) == len(prefix) {
			if r, old, err := decodeValue(v); err != nil {
				return Entry{}, 0, fmt.Errorf("decode entry: %w", err)
			} else if r == Erased && old.Target == nil {
				st = old // the first tombstone stays
				continue
			}
		}
		dead = append(dead, bytes.Clone(k))
	}
	for _, k := range dead {
		if err := b.Delete(k); err != nil {
			return Entry{}, 0, err
		}
	}
	for _, cd := range consents {
		if !slices.ContainsFunc(st.Consents, func(o ConsentDates) bool {
			return o.List == cd.List && o.Subscribed.Equal(cd.Subscribed) && o.Confirmed.Equal(cd.Confirmed) && o.Source == cd.Source
		}) {
			st.Consents = append(st.Consents, cd)
		}
	}
	v, err := encode(Erased, st)
	if err != nil {
		return Entry{}, 0, err
	}
	if err := b.Put(prefix, v); err != nil {
		return Entry{}, 0, err
	}
	es, err := s.entries(idx, "", Erased, st, "")
	if err != nil {
		return Entry{}, 0, err
	}
	return es[0], len(dead), nil
}
