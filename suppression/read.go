package suppression

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

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
	var (
		e     Entry
		found bool
	)
	err := s.walk(addr, list, func(es []Entry) bool {
		e, found = es[0], true
		return false
	})
	return e, found, err
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
	var out []Entry
	err := s.walk(addr, list, func(es []Entry) bool {
		out = append(out, es...)
		return true
	})
	return out, err
}

// walk reads the entries that apply to addr on list in Lookup's order, in
// one read transaction, handing fn those of each key found until it
// returns false.
func (s *Store) walk(addr, list string, fn func([]Entry) bool) error {
	keys, targets, err := s.candidates(addr, list)
	if err != nil {
		return fmt.Errorf("check suppression: %w", err)
	}
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
			if !fn(es) {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check suppression for %s: %w", address.Mask(addr), err)
	}
	return nil
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
