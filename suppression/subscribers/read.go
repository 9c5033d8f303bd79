package subscribers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

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
