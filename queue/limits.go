package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/time/rate"

	"github.com/postwarden/postwarden/suppression/address"
)

// Campaign rates and suspensions: both hold messages back without an attempt.
//
// A campaign's rate (SetCampaignRate, bucket "rates": campaign → decimal msgs/s)
// is a token bucket (golang.org/x/time/rate) of one second's burst, applied when
// the dispatcher claims. A due message whose campaign has no token now is not
// claimed: it reserves the next token and its due entry moves to that token's
// time (Message.RateSlot), where it is claimed without taking another. Waiting
// messages thus spread out at the campaign's rate and each moves once.
//
// A slot is honoured only by the limiter that reserved it (Message.RateGen
// names it): the limiter lives in memory, so after a restart, or once the rate
// changed, slots recorded earlier are worth nothing and the message reserves
// again. Otherwise the slots that fell due while the process was down (or
// were spaced for another rate) would all go at once on top of the new
// limiter's burst. The verbs that make messages due again (Retry, Release,
// Resume) only set NextAttempt: the claim's reserve is the one place that
// decides, so a message keeps a slot still ahead of it and never goes before
// it, and the promise holds at the receiving side whatever made it due: no
// second carries more than the rate plus its burst.
//
// A suspension (Suspend, bucket "susp": key → JSON Suspension) stops delivery to
// a domain, a campaign, or a campaign's messages to a domain until a time. The
// dispatcher moves matching due messages to the suspension's end (state
// deferred, no attempt); Enqueue does the same for new messages. Resume makes
// the messages it held due at once. Expired suspensions are ignored and removed.

// SetCampaignRate sets campaign's ceiling in messages per second (persisted);
// perSecond <= 0 removes it (unlimited).
func (s *Store) SetCampaignRate(campaign string, perSecond float64) error {
	if campaign == "" || len(campaign) > maxCampaignLen {
		return fmt.Errorf("set campaign rate: campaign must be 1 to %d bytes", maxCampaignLen)
	}
	if math.IsNaN(perSecond) || math.IsInf(perSecond, 0) {
		return fmt.Errorf("set campaign rate %s: %v is not a rate", campaign, perSecond)
	}
	err := s.update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		if perSecond <= 0 {
			return b.rates.Delete([]byte(campaign))
		}
		return b.rates.Put([]byte(campaign), []byte(strconv.FormatFloat(perSecond, 'g', -1, 64)))
	})
	if err != nil {
		return fmt.Errorf("set campaign rate %s in %s: %w", campaign, s.path, err)
	}
	s.mu.Lock()
	if perSecond <= 0 {
		delete(s.rates, campaign)
		delete(s.limiters, campaign)
	} else if s.rates[campaign] != perSecond {
		// A new limiter (a new generation): slots spaced for the old rate are void.
		s.rates[campaign] = perSecond
		delete(s.limiters, campaign)
	}
	s.mu.Unlock()
	s.log.Info().Str("campaign", campaign).Float64("rate", perSecond).Msg("campaign rate set")
	s.Kick()
	return nil
}

// CampaignRate returns campaign's ceiling in messages per second; 0 is unlimited.
func (s *Store) CampaignRate(campaign string) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rates[campaign]
}

// burstOf is the token bucket size for a rate: one second's worth, at least one.
func burstOf(perSecond float64) int { return max(1, int(math.Ceil(perSecond))) }

// slotGrace is how late a reserved slot may still be used. A slot claimed
// later (the receiver was slow, every worker busy) is void and the message
// reserves again: the token bucket counted it at its slot, so the slots that
// fell due meanwhile would otherwise all go at once when the receiver
// recovers, on top of those falling due then. The grace absorbs the
// dispatcher's own lateness; it adds at most rate × slotGrace to a second.
const slotGrace = 100 * time.Millisecond

// limiter is a campaign's token bucket and the generation that names it.
type limiter struct {
	*rate.Limiter
	gen uint64
}

// reserve decides whether m, a due message, may go at now. It returns the
// zero time when it may: m holds a slot of campaign's current limiter, fallen
// due no more than slotGrace ago, or a token is free now. Otherwise it returns the later time of the
// slot m holds or of the token it reserved, and the generation of the limiter
// that gave it. Every message due again (retry, release, resume, a restart)
// comes here at its claim: the verbs only set NextAttempt.
func (s *Store) reserve(m *Message, now time.Time) (slot time.Time, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rates[m.Campaign]
	if r <= 0 {
		return time.Time{}, 0
	}
	l := s.limiters[m.Campaign]
	if l == nil {
		s.gen++
		l = &limiter{Limiter: rate.NewLimiter(rate.Limit(r), burstOf(r)), gen: s.gen}
		s.limiters[m.Campaign] = l
	}
	if !m.RateSlot.IsZero() && m.RateGen == l.gen {
		switch {
		case m.RateSlot.After(now):
			// Made due before its slot (retry, release, resume): it waits for
			// the slot it holds rather than wasting it for a later one.
			return m.RateSlot, l.gen
		case m.RateSlot.Equal(m.NextAttempt) && now.Sub(m.RateSlot) <= slotGrace:
			return time.Time{}, 0 // its token was taken when the slot was reserved
		}
	}
	res := l.ReserveN(now, 1) // burst ≥ 1: always OK
	if d := res.DelayFrom(now); d > 0 {
		return now.Add(d), l.gen
	}
	return time.Time{}, 0
}

// loadLimits reads the campaign rates and the active suspensions, removing expired ones.
func (s *Store) loadLimits(tx *bbolt.Tx, now time.Time) error {
	b := s.buckets(tx)
	err := b.rates.ForEach(func(k, v []byte) error {
		r, err := strconv.ParseFloat(string(v), 64)
		if err == nil && r > 0 {
			s.rates[string(k)] = r
		}
		return nil
	})
	if err != nil {
		return err
	}
	var stale [][]byte
	err = b.susp.ForEach(func(k, v []byte) error {
		var sp Suspension
		if json.Unmarshal(v, &sp) != nil || !now.Before(sp.Until) {
			stale = append(stale, append([]byte(nil), k...))
			return nil
		}
		s.susp[string(k)] = sp
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range stale {
		if err := b.susp.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Selector names what a suspension covers: a domain, a campaign, or both (a
// campaign's messages to one domain). At least one is set.
type Selector struct {
	Domain   string `json:"domain,omitempty"`
	Campaign string `json:"campaign,omitempty"`
}

// String is "domain D", "campaign C" or "campaign C domain D".
func (sel Selector) String() string {
	var parts []string
	if sel.Campaign != "" {
		parts = append(parts, "campaign "+sel.Campaign)
	}
	if sel.Domain != "" {
		parts = append(parts, "domain "+sel.Domain)
	}
	return strings.Join(parts, " ")
}

// Normalize returns sel as the queue keeps it (domain lower-cased, IDNA),
// or why it is no valid selector.
func (sel Selector) Normalize() (Selector, error) { return sel.normalize() }

// normalize lower-cases the domain (IDNA) and checks the selector.
func (sel Selector) normalize() (Selector, error) {
	sel.Campaign = strings.TrimSpace(sel.Campaign)
	if d := strings.TrimSpace(sel.Domain); d != "" {
		nd, err := address.NormalizeDomain(d)
		if err != nil {
			return sel, fmt.Errorf("domain %q: %w", d, err)
		}
		sel.Domain = nd
	}
	if sel.Domain == "" && sel.Campaign == "" {
		return sel, errors.New("a domain or a campaign is required")
	}
	if len(sel.Campaign) > maxCampaignLen || strings.IndexByte(sel.Campaign, 0) >= 0 {
		return sel, errors.New("bad campaign")
	}
	return sel, nil
}

// key is the selector's key in bucket susp.
func (sel Selector) key() string { return string(join(sel.Domain, sel.Campaign)) }

// matches reports whether a message of campaign to domain falls under sel.
func (sel Selector) matches(domain, campaign string) bool {
	return (sel.Domain == "" || sel.Domain == domain) && (sel.Campaign == "" || sel.Campaign == campaign)
}

// Suspension stops delivery to Selector until Until.
type Suspension struct {
	Selector
	Until   time.Time `json:"until"`
	Reason  string    `json:"reason"`
	Created time.Time `json:"created"`
}

// Suspend stops dispatching messages that match sel until until, recording reason.
// Suspending a selection again replaces its end; messages it already held move too.
func (s *Store) Suspend(sel Selector, until time.Time, reason string) error {
	sel, err := sel.normalize()
	if err != nil {
		return fmt.Errorf("suspend: %w", err)
	}
	now := time.Now()
	if !until.After(now) {
		return fmt.Errorf("suspend %s: end %s is not in the future", sel, until.Format(time.RFC3339))
	}
	reason = strings.TrimSpace(reason)
	sp := Suspension{Selector: sel, Until: until, Reason: reason, Created: now}
	// The map changes before the transaction: a dispatcher's claim (a write
	// transaction too) that reads the old entry then commits before this one,
	// so moveHeld below finds what it held. Changed after the commit, a claim
	// in between would hold messages where nothing moves them again.
	s.mu.Lock()
	old, had := s.susp[sel.key()]
	s.susp[sel.key()] = sp
	s.mu.Unlock()
	moved := 0
	err = s.update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		v, err := json.Marshal(sp)
		if err != nil {
			return err
		}
		if err := b.susp.Put([]byte(sel.key()), v); err != nil {
			return err
		}
		moved = 0
		if had && old.Until.After(now) {
			moved, err = b.moveHeld(sel, old.Until, until, now, "suspended: "+reason)
		}
		return err
	})
	if err != nil {
		s.restoreSusp(sel, old, had)
		return fmt.Errorf("suspend %s in %s: %w", sel, s.path, err)
	}
	s.log.Info().Str("selector", sel.String()).Time("until", until).Str("reason", reason).Int("moved", moved).Msg("delivery suspended")
	return nil
}

// Resume ends sel's suspension and makes the messages it held due now. It
// reports whether a suspension was active.
func (s *Store) Resume(sel Selector) (bool, error) {
	sel, err := sel.normalize()
	if err != nil {
		return false, fmt.Errorf("resume: %w", err)
	}
	now := time.Now()
	// Removed before the transaction, for the reason Suspend gives: a claim
	// holding a message after this commit would hold it until old.Until.
	s.mu.Lock()
	old, had := s.susp[sel.key()]
	delete(s.susp, sel.key())
	s.mu.Unlock()
	moved := 0
	err = s.update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		if err := b.susp.Delete([]byte(sel.key())); err != nil {
			return err
		}
		moved = 0
		if had {
			moved, err = b.moveHeld(sel, old.Until, now, now, "")
		}
		return err
	})
	if err != nil {
		s.restoreSusp(sel, old, had)
		return false, fmt.Errorf("resume %s in %s: %w", sel, s.path, err)
	}
	active := had && old.Until.After(now)
	s.log.Info().Str("selector", sel.String()).Bool("was_active", active).Int("released", moved).Msg("delivery resumed")
	if moved > 0 {
		s.Kick()
	}
	return active, nil
}

// restoreSusp puts back sel's entry as it was before a failed Suspend or Resume.
func (s *Store) restoreSusp(sel Selector, old Suspension, had bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if had {
		s.susp[sel.key()] = old
	} else {
		delete(s.susp, sel.key())
	}
}

// Suspensions returns the active suspensions, soonest end first.
func (s *Store) Suspensions() ([]Suspension, error) {
	now := time.Now()
	s.mu.Lock()
	out := make([]Suspension, 0, len(s.susp))
	for k, sp := range s.susp {
		if now.Before(sp.Until) {
			out = append(out, sp)
		} else {
			delete(s.susp, k)
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Until.Equal(out[j].Until) {
			return out[i].Until.Before(out[j].Until)
		}
		return out[i].key() < out[j].key()
	})
	return out, nil
}

// suspendedFor returns the active suspension covering a message of campaign to
// domain that ends last, if any.
func (s *Store) suspendedFor(domain, campaign string, now time.Time) (Suspension, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best Suspension
	found := false
	for _, sp := range s.susp {
		if now.Before(sp.Until) && sp.matches(domain, campaign) && (!found || sp.Until.After(best.Until)) {
			best, found = sp, true
		}
	}
	return best, found
}

// holdFor marks m (ready or deferred, not yet saved) as waiting for suspension sp.
func holdFor(m *Message, sp Suspension, now time.Time) {
	m.State, m.NextAttempt = StateDeferred, sp.Until
	m.LastReply = "suspended: " + sp.Reason
	m.History = append(m.History, Attempt{Time: now, Outcome: "suspended", Reply: sp.Selector.String() + " until " +
		sp.Until.UTC().Format(time.RFC3339) + ": " + sp.Reason})
}

// moveHeld moves the deferred messages matching sel that wait exactly at from
// (where a suspension put them) to to. A non-empty note replaces LastReply.
func (b bkts) moveHeld(sel Selector, from, to, now time.Time, note string) (int, error) {
	prefix := dueKey(from, "")[:8]
	var ids []string
	c := b.due.Cursor()
	for k, _ := c.Seek(prefix); k != nil && len(k) >= 8 && string(k[:8]) == string(prefix); k, _ = c.Next() {
		ids = append(ids, string(k[8:]))
	}
	n := 0
	for _, id := range ids {
		m, err := b.get(id)
		if err != nil {
			return n, err
		}
		if m.State != StateDeferred || !sel.matches(m.Domain, m.Campaign) {
			continue
		}
		prev := m
		m.NextAttempt, m.Updated = to, now
		if note != "" {
			m.LastReply = note
		}
		if err := b.save(&m, &prev); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
