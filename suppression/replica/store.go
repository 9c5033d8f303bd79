package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
)

// Store is a cluster node's suppression store as the packages that change
// who may be mailed see it: it reads the local replica (the embedded
// *suppression.Store: Check, Lookup, Covers, EntriesFor, List…) and makes
// every change through the stream (Replica.Publish), returning only once the
// stream holds it and the replica applied it, or once it is kept pending
// and applied here when NATS is out of reach. It satisfies the same small
// interfaces *suppression.Store does for unsubscribe, inbound, subject and
// the queue.
type Store struct {
	*suppression.Store
	r *Replica
}

// Writer returns r's store for the packages that change suppressions.
func (r *Replica) Writer() *Store { return &Store{Store: r.store, r: r} }

// publish publishes c; a publish is bounded by the replica's own timeouts.
func (s *Store) publish(c Change) error { return s.r.Publish(context.Background(), c) }

// Add records e cluster-wide.
func (s *Store) Add(e suppression.Entry) error { return s.publish(Add(e)) }

// SuppressAddress is Add for callers that hold plain strings, as the store's.
func (s *Store) SuppressAddress(addr, list, reason, source, note string) error {
	return s.Add(suppression.Entry{Target: addr, List: list, Reason: suppression.Reason(reason), Source: source, Note: note})
}

// Remove removes target's entry on list cluster-wide and reports whether
// there was one here; the store's refusals (erased, restricted) come back
// before anything is published.
func (s *Store) Remove(target, list string) (bool, error) {
	e, found, err := s.Store.Lookup(target, list)
	if err != nil {
		return false, err
	}
	if found {
		switch {
		case e.Reason == suppression.Erased:
			return true, suppression.ErrErased
		case e.Reason == suppression.Restricted:
			return true, suppression.ErrRestricted
		}
	}
	if err := s.publish(Remove(target, list)); err != nil {
		return found, err
	}
	return found, nil
}

// Restrict restricts addr cluster-wide.
func (s *Store) Restrict(addr, reason string) error { return s.publish(Restrict(addr, reason)) }

// Unrestrict lifts addr's restriction cluster-wide; found says whether one was held here.
func (s *Store) Unrestrict(addr string) (bool, error) {
	before, err := s.Store.EntriesFor(addr)
	if err != nil {
		return false, err
	}
	found := false
	for _, e := range before {
		found = found || e.Reason == suppression.Restricted
	}
	if err := s.publish(Unrestrict(addr)); err != nil {
		return found, err
	}
	return found, nil
}

// Erase erases addr cluster-wide (the stream's earlier events of the
// person wiped, the tombstone kept) and returns the tombstone as applied here.
func (s *Store) Erase(addr, ref string, consents []suppression.ConsentDates) (suppression.Entry, error) {
	if err := s.publish(Erase(addr, ref, consents)); err != nil {
		return suppression.Entry{}, err
	}
	entries, err := s.Store.EntriesFor(addr)
	if err != nil {
		return suppression.Entry{}, err
	}
	for _, e := range entries {
		if e.Reason == suppression.Erased {
			return e, nil
		}
	}
	return suppression.Entry{}, fmt.Errorf("erase %s: %w", address.Mask(addr), errNoTombstone)
}

// PublishImport publishes an import's batch (suppression.ImportPublisher)
// with PublishAll: the change ids are key and the entry's place in it, so
// a batch published again after a crash is dropped by the stream as a
// duplicate. added counts the entries the store did not refuse.
func (s *Store) PublishImport(key string, entries []suppression.Entry) (int, error) {
	cs := make([]Change, len(entries))
	for i, e := range entries {
		cs[i] = Add(e)
		cs[i].ID = fmt.Sprintf("import/%s/%d", key, i)
	}
	refused, err := s.r.PublishAll(context.Background(), cs)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, err := range refused {
		if err == nil {
			n++
		}
	}
	return n, nil
}

// PublishImportRun publishes an import run's record (suppression.OpImport,
// suppression.ImportPublisher) with PublishAll, on its own and so after
// the batches it counts are in the stream; the change id is key's, so a
// record published again by a resumed run is dropped as a duplicate.
func (s *Store) PublishImportRun(key string, m suppression.Mutation) error {
	if m.Op != suppression.OpImport {
		return fmt.Errorf("publish import run %s: not an import record (%s)", key, m.Op)
	}
	refused, err := s.r.PublishAll(context.Background(), []Change{{ID: "import/" + key + "/run", Mutation: m}})
	if err != nil {
		return err
	}
	return refused[0]
}

// CatchUp waits until the local replica has applied the stream as it
// stands now (suppression.ImportPublisher): an import reads its run's
// record after it.
func (s *Store) CatchUp() error { return s.r.CatchUp(context.Background()) }

var _ suppression.ImportPublisher = (*Store)(nil)

// errNoTombstone: the erasure was published but its tombstone is not here.
var errNoTombstone = errors.New("the erasure was published but its tombstone is not in the local replica yet")
