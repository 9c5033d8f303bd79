package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
)

// Get returns message id's metadata; the error wraps ErrNotFound if it is unknown.
func (s *Store) Get(id string) (Message, error) {
	var m Message
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		m, err = s.buckets(tx).get(id)
		return err
	})
	if err != nil {
		return Message{}, fmt.Errorf("get from queue: %w", err)
	}
	return m, nil
}

// Body returns message id's raw bytes, opened and decompressed, exactly as
// enqueued; finished and erased messages have none (ErrNotFound).
func (s *Store) Body(id string) ([]byte, error) { return s.body(id, nil) }

// body is Body decompressing into dst's memory when it has room (the
// runner's workers reuse one buffer each, not 22 KB of garbage per attempt).
func (s *Store) body(id string, dst []byte) ([]byte, error) {
	var body []byte
	err := s.view(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		v := b.body.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("body of %s: %w", id, ErrNotFound)
		}
		var err error
		if body, err = b.openBody(id, v, dst); err != nil {
			return fmt.Errorf("body of %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read from queue: %w", err)
	}
	return body, nil
}

// Filter selects messages for List, AllIDs and the admin operations. Zero fields match all.
type Filter struct {
	Campaign  string
	State     State
	Domain    string
	Provider  string        // the provider the last attempt reported
	Source    string        // the egress source the last attempt reported
	OlderThan time.Duration // Created at least this long ago
	Limit     int           // at most this many; 0 = no limit
	Rcpt      string        // only this recipient, found through the keyed recipient index
	Pending   bool          // only messages not finished (ready, active, deferred, held), as mailq lists
}

// listPage is how many messages List reads per short read transaction.
const listPage = 256

// List calls fn for each message matching f, in id order. It uses the campaign or state
// index when f names one. fn runs outside any transaction, so it may call Store methods;
// a non-nil error from fn stops the listing and is returned.
func (s *Store) List(f Filter, fn func(Message) error) error {
	if f.State != "" && !f.State.Valid() {
		return fmt.Errorf("list queue: unknown state %q", f.State)
	}
	if f.Limit < 0 || f.OlderThan < 0 {
		return errors.New("list queue: limit and older-than must not be negative")
	}
	f.Domain = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(f.Domain), "."))
	var cutoff time.Time
	if f.OlderThan > 0 {
		cutoff = time.Now().Add(-f.OlderThan)
	}
	var rcptIdx []byte
	if f.Rcpt != "" {
		a, err := address.Parse(f.Rcpt)
		if err != nil {
			return fmt.Errorf("list queue: recipient %s: %s", address.Mask(f.Rcpt), problem(err))
		}
		rcptIdx = s.box.Index(a.Key())
	}
	match := func(m *Message) bool {
		return (f.State == "" || m.State == f.State) &&
			(!f.Pending || !m.State.Finished()) &&
			(f.Campaign == "" || m.Campaign == f.Campaign) &&
			(f.Domain == "" || m.Domain == f.Domain) &&
			(f.Provider == "" || m.Provider == f.Provider) &&
			(f.Source == "" || m.Source == f.Source) &&
			(cutoff.IsZero() || !m.Created.After(cutoff))
	}
	after, n := "", 0
	for {
		var page []Message
		done := false
		err := s.view(func(tx *bbolt.Tx) error {
			b := s.buckets(tx)
			bkt, prefix := b.msg, []byte(nil)
			switch {
			case rcptIdx != nil:
				bkt, prefix = b.rcpt, rcptIdx
			case f.Campaign != "":
				bkt, prefix = b.campaign, join(f.Campaign, "")
			case f.State != "":
				bkt, prefix = b.state, join(string(f.State), "")
			}
			c := bkt.Cursor()
			k, v := c.Seek(append(bytes.Clone(prefix), after...))
			if after != "" && k != nil && string(k[len(prefix):]) == after {
				k, v = c.Next()
			}
			for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				id := string(k[len(prefix):])
				after = id
				if bkt == b.campaign && f.State != "" && State(v) != f.State {
					continue // the campaign index carries the state
				}
				m, err := b.get(id)
				if err != nil {
					return err
				}
				if !match(&m) {
					continue
				}
				page = append(page, m)
				if len(page) == listPage {
					return nil
				}
			}
			done = true
			return nil
		})
		if err != nil {
			return fmt.Errorf("list queue: %w", err)
		}
		for i := range page {
			if f.Limit > 0 && n >= f.Limit {
				return nil
			}
			if err := fn(page[i]); err != nil {
				return err
			}
			n++
		}
		if done || (f.Limit > 0 && n >= f.Limit) {
			return nil
		}
	}
}

// AllIDs returns the ids of the messages matching f, in id order.
func (s *Store) AllIDs(f Filter) ([]string, error) {
	var ids []string
	err := s.List(f, func(m Message) error {
		ids = append(ids, m.ID)
		return nil
	})
	return ids, err
}

// change applies fn to each id in one transaction; fn reports whether it changed the message.
// Unknown ids are skipped and reported after the rest is done, in an error wrapping ErrNotFound.
func (s *Store) change(op string, ids []string, fn func(m *Message, now time.Time) bool) (int, error) {
	var changed int
	var missing []string
	err := s.update(func(tx *bbolt.Tx) error {
		changed, missing = 0, nil
		b := s.buckets(tx)
		now := time.Now()
		for _, id := range ids {
			m, err := b.get(id)
			if errors.Is(err, ErrNotFound) {
				missing = append(missing, id)
				continue
			}
			if err != nil {
				return err
			}
			prev := m
			if !fn(&m, now) {
				continue
			}
			m.Updated = now
			if err := b.save(&m, &prev); err != nil {
				return err
			}
			changed++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s in queue %s: %w", op, s.path, err)
	}
	s.log.Info().Str("op", op).Int("requested", len(ids)).Int("changed", changed).Msg("queue operation")
	if changed > 0 {
		s.Kick()
	}
	if len(missing) > 0 {
		return changed, fmt.Errorf("%s: %w: %s", op, ErrNotFound, strings.Join(missing, ", "))
	}
	return changed, nil
}

// Retry makes held, deferred and ready messages ready now (clearing a hold).
func (s *Store) Retry(ids []string) (int, error) {
	return s.change("retry", ids, func(m *Message, now time.Time) bool {
		switch m.State {
		case StateHeld, StateDeferred, StateReady:
			m.State, m.NextAttempt = StateReady, now
			return true
		}
		return false
	})
}

// Hold stops ready and deferred messages from being dispatched until Release or Retry.
func (s *Store) Hold(ids []string) (int, error) {
	return s.change("hold", ids, func(m *Message, now time.Time) bool {
		switch m.State {
		case StateReady, StateDeferred:
			m.State = StateHeld
			return true
		}
		return false
	})
}

// Release makes held messages ready now.
func (s *Store) Release(ids []string) (int, error) {
	return s.change("release", ids, func(m *Message, now time.Time) bool {
		if m.State != StateHeld {
			return false
		}
		m.State, m.NextAttempt = StateReady, now
		return true
	})
}

// Delete cancels pending messages that are not in flight: the body is removed and the
// record kept in state cancelled with reason, for reports.
func (s *Store) Delete(ids []string, reason string) (int, error) {
	if reason = strings.TrimSpace(reason); reason == "" {
		reason = "deleted by operator"
	}
	return s.change("delete", ids, func(m *Message, now time.Time) bool {
		switch m.State {
		case StateReady, StateDeferred, StateHeld:
			m.State, m.Reason = StateCancelled, reason
			m.History = append(m.History, Attempt{Time: now, Outcome: string(StateCancelled), Reply: reason})
			return true
		}
		return false
	})
}

// Bounce fails pending messages that are not in flight on purpose: state
// bounced with Reason "admin: "+reason, recorded in the history, body deleted.
func (s *Store) Bounce(ids []string, reason string) (int, error) {
	if reason = strings.TrimSpace(reason); reason == "" {
		return 0, errors.New("bounce: a reason is required")
	}
	reason = "admin: " + reason
	return s.change("bounce", ids, func(m *Message, now time.Time) bool {
		switch m.State {
		case StateReady, StateDeferred, StateHeld:
			m.State, m.Reason = StateBounced, reason
			m.History = append(m.History, Attempt{Time: now, Outcome: string(StateBounced), Reply: reason})
			return true
		}
		return false
	})
}

// Stats summarises the queue.
type Stats struct {
	ByState      map[State]int
	ByDomain     map[string]int           // pending messages only
	DomainStates map[string]map[State]int // pending messages by domain and state
	// ByProvider and ProviderStates count pending messages by the provider
	// their last attempt reported, as ByDomain and DomainStates do by
	// domain; those with none yet count under "". BySource and SourceStates
	// likewise by egress source.
	ByProvider     map[string]int
	ProviderStates map[string]map[State]int
	BySource       map[string]int
	SourceStates   map[string]map[State]int
	Oldest         time.Time // oldest pending message's Created; zero if none
	Total          int
	// Rates is messages delivered per minute over the last "1m", "5m" and "15m"
	// (each window also covers the current, partial minute).
	Rates map[string]float64
	// Recent counts attempt outcomes ("delivered", "bounced", "deferred") over the last 15 minutes.
	Recent map[string]int
}

// Stats counts messages by state, pending ones by domain, finds the oldest pending
// one and the recent delivery rates. It reads counters, not messages: its cost
// grows with the number of domains, not with the queue.
func (s *Store) Stats() (Stats, error) {
	st := Stats{ByState: map[State]int{}, ByDomain: map[string]int{}, DomainStates: map[string]map[State]int{},
		ByProvider: map[string]int{}, ProviderStates: map[string]map[State]int{},
		BySource: map[string]int{}, SourceStates: map[string]map[State]int{},
		Rates: map[string]float64{}, Recent: map[string]int{}}
	now := time.Now()
	err := s.view(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		for _, state := range States {
			if n := b.counter(stateKey(state)); n > 0 {
				st.ByState[state] = n
				st.Total += n
			}
		}
		b.pendingBy("d", st.ByDomain, st.DomainStates)
		b.pendingBy("p", st.ByProvider, st.ProviderStates)
		b.pendingBy("o", st.BySource, st.SourceStates)
		// Only known providers and sources are counted: the rest of each
		// pending state is under "".
		for _, state := range []State{StateReady, StateDeferred, StateHeld, StateActive} {
			unknown(st.ByState[state], state, st.ByProvider, st.ProviderStates)
			unknown(st.ByState[state], state, st.BySource, st.SourceStates)
		}
		// Ids grow with creation time: the first id of each pending state is its oldest.
		for _, state := range []State{StateReady, StateDeferred, StateHeld, StateActive} {
			p := join(string(state), "")
			k, _ := b.state.Cursor().Seek(p)
			if k == nil || !bytes.HasPrefix(k, p) {
				continue
			}
			m, err := b.get(string(k[len(p):]))
			if err != nil {
				return err
			}
			if st.Oldest.IsZero() || m.Created.Before(st.Oldest) {
				st.Oldest = m.Created
			}
		}
		return b.fillRates(&st, now)
	})
	if err != nil {
		return Stats{}, fmt.Errorf("queue stats %s: %w", s.path, err)
	}
	return st, nil
}

// pendingBy adds the pending counters under kind ("d" domain, "p" provider,
// "o" source) to by (name → pending) and states (name → state → count).
func (b bkts) pendingBy(kind string, by map[string]int, states map[string]map[State]int) {
	prefix := join(kind, "")
	c := b.counts.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		rest := k[len(prefix):]
		i := bytes.LastIndexByte(rest, 0)
		if i < 0 || len(v) != 8 {
			continue
		}
		name, state := string(rest[:i]), State(rest[i+1:])
		n := int(binary.BigEndian.Uint64(v))
		by[name] += n
		if states[name] == nil {
			states[name] = map[State]int{}
		}
		states[name][state] += n
	}
}

// unknown adds to by and states under "" the messages in state (total of
// them) that no name counts.
func unknown(total int, state State, by map[string]int, states map[string]map[State]int) {
	for name, ss := range states {
		if name != "" {
			total -= ss[state]
		}
	}
	if total <= 0 {
		return
	}
	by[""] += total
	if states[""] == nil {
		states[""] = map[State]int{}
	}
	states[""][state] += total
}

// CampaignCounts counts campaign id's messages by state (from counters),
// those of erased people included (EraseRecipient keeps only their count).
func (s *Store) CampaignCounts(id string) (map[State]int, error) {
	counts := map[State]int{}
	err := s.view(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		counts = b.erasedCounts(id)
		for _, state := range States {
			if n := b.counter(campaignKey(id, state)); n > 0 {
				counts[state] += n
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count campaign %s: %w", id, err)
	}
	return counts, nil
}

// Backlog counts campaign id's messages waiting to go out now: ready (due,
// or holding a campaign-rate slot) or with a worker. Deferred and held ones
// wait on a schedule or an operator and do not count. Read from counters, so
// it costs one read transaction whatever the queue's size.
func (s *Store) Backlog(id string) (int, error) {
	c, err := s.CampaignCounts(id)
	return c[StateReady] + c[StateActive], err
}

// PutCampaign stores the caller's opaque record for campaign id (fsynced).
func (s *Store) PutCampaign(id string, rec []byte) error {
	if id == "" || len(id) > maxCampaignLen {
		return fmt.Errorf("put campaign: id must be 1 to %d bytes", maxCampaignLen)
	}
	err := s.update(func(tx *bbolt.Tx) error {
		return s.buckets(tx).campaigns.Put([]byte(id), bytes.Clone(rec))
	})
	if err != nil {
		return fmt.Errorf("put campaign %s: %w", id, err)
	}
	return nil
}

// GetCampaign returns campaign id's record; the error wraps ErrNotFound if there is none.
func (s *Store) GetCampaign(id string) ([]byte, error) {
	var rec []byte
	err := s.view(func(tx *bbolt.Tx) error {
		v := s.buckets(tx).campaigns.Get([]byte(id))
		if v == nil {
			return ErrNotFound
		}
		rec = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("get campaign %s: %w", id, err)
	}
	return rec, nil
}

// Campaigns returns the ids of the campaigns with a record (PutCampaign), sorted.
func (s *Store) Campaigns() ([]string, error) {
	var ids []string
	err := s.view(func(tx *bbolt.Tx) error {
		return s.buckets(tx).campaigns.ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list campaigns in %s: %w", s.path, err)
	}
	return ids, nil
}

// ByKey returns the message enqueued for (campaign, key), the idempotency
// pair of Enqueue; found is false when there is none (or it is gone).
func (s *Store) ByKey(campaign, key string) (m Message, found bool, err error) {
	err = s.view(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		id := b.idem.Get(b.idemKey(campaign, key))
		if id == nil {
			return nil
		}
		m, err = b.get(string(id))
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		return Message{}, false, fmt.Errorf("look up %s in queue: %w", campaign, err)
	}
	return m, found, nil
}
