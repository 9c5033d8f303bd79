package queue

import (
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
)

// Group commit. Workers do not write: each hands its result to the runner's
// loop and takes its next job at once. The loop records every result it has
// and claims due messages for the slots they free in one transaction, so one
// fsync covers many outcomes and the next claims. What follows a commit (the
// log line, the Observer, suppressing hard bounces, counting campaign events,
// leaving the in-flight set) runs only after it.

// job is one claimed message on its way to a worker, with what the claim
// changed in it, so a job no worker started can be given back (release).
type job struct {
	m                Message // as claimed: state active, the attempt counted
	was              State
	wasNext, wasSlot time.Time
	wasGen           uint64
}

// result is a worker's report on one job.
type result struct {
	j       job
	o       outcome
	skipped bool // not attempted: the runner was stopping when a worker took it
	counted bool // the commit counted the outcome's campaign event (a first bounce of the person)
}

// batch is what one group commit did.
type batch struct {
	final      []State // per result: the state recorded (StateActive if failed[i] is set)
	counted    []bool  // per result: its campaign event was counted in the commit
	failed     []error // per result: why it was not recorded; the message stays active
	jobs       []job   // claimed, in the in-flight set
	progressed bool    // the claim changed something (claimed, expired or moved a message)
	next       time.Time
	expired    []Message
	claimErr   error // the claim part failed; the results were still recorded
}

// recordError is one result that could not be recorded: the group transaction
// is rolled back and tried again without it.
type recordError struct {
	i   int
	err error
}

func (e *recordError) Error() string { return e.err.Error() }

// claimError is a failure of the claim part of a group transaction.
type claimError struct{ err error }

func (e *claimError) Error() string { return e.err.Error() }

// commit records results and then claims up to free due messages, all in one
// transaction (one fsync). Messages recorded in it may be claimed again by it.
// A result that cannot be recorded is left out (the message stays active, for
// recovery) and the rest commit; if the claim part fails, the results are
// committed without it and the error is returned in claimErr.
func (r *Runner) commit(done []result, free int) batch {
	s := r.s
	now := r.cfg.Now()
	c := batch{final: make([]State, len(done)), failed: make([]error, len(done)), counted: make([]bool, len(done))}
	mine := make(map[string]bool, len(done))
	for {
		c.jobs, c.progressed, c.next, c.expired = nil, false, time.Time{}, nil
		err := s.update(func(tx *bbolt.Tx) error {
			b := s.buckets(tx)
			clear(mine)
			for i, d := range done {
				if c.failed[i] != nil {
					continue
				}
				var err error
				if d.skipped {
					c.final[i], err = release(b, d.j, now)
				} else {
					c.final[i], c.counted[i], err = s.recordOutcome(b, d.j.m, d.o, now)
				}
				if err != nil {
					return &recordError{i, err}
				}
				mine[d.j.m.ID] = true
			}
			if free > 0 {
				if err := r.claimIn(b, free, now, mine, &c); err != nil {
					return &claimError{err}
				}
			}
			return nil
		})
		if err == nil {
			break
		}
		var undo []string // claims that did not commit (the recorded ones stay in flight for now)
		for _, j := range c.jobs {
			if !mine[j.m.ID] {
				undo = append(undo, j.m.ID)
			}
		}
		s.setInflight(undo, false)
		var re *recordError
		var ce *claimError
		switch {
		case errors.As(err, &re):
			c.failed[re.i] = fmt.Errorf("record outcome of %s in %s: %w", done[re.i].j.m.ID, s.path, re.err)
			continue // without it
		case errors.As(err, &ce):
			c.claimErr = fmt.Errorf("claim due messages in %s: %w", s.path, ce.err)
			if free, c.jobs = 0, nil; len(done) > 0 {
				continue // record the results alone
			}
		default: // the transaction itself failed: nothing was written
			for i := range done {
				if c.failed[i] == nil {
					c.failed[i] = fmt.Errorf("record outcome of %s in %s: %w", done[i].j.m.ID, s.path, err)
				}
			}
			if free > 0 {
				c.claimErr = fmt.Errorf("claim due messages in %s: %w", s.path, err)
			}
		}
		c.jobs, c.progressed, c.next, c.expired = nil, false, time.Time{}, nil
		break
	}
	for i := range done {
		if c.failed[i] != nil {
			c.final[i] = StateActive
		}
	}
	for _, m := range c.expired {
		r.log.Info().Str("queue_id", m.ID).Str("rcpt", address.Mask(m.To)).Str("domain", m.Domain).
			Str("outcome", string(StateExpired)).Int("attempt", m.Attempts).Msg("delivery attempt")
		if r.cfg.Observer != nil {
			r.cfg.Observer.Attempt(m.Domain, string(StateExpired), 0)
		}
	}
	return c
}

// settle runs what follows a commit for each result: the log line, the
// Observer, the bounce follow-ups (sent to follow), and leaving the in-flight
// set, unless the commit claimed the message again.
func (r *Runner) settle(done []result, c batch, follow chan<- []result) {
	var bounces []result
	again := make(map[string]bool)
	for _, j := range c.jobs {
		again[j.m.ID] = true
	}
	gone := make([]string, 0, len(done))
	for i, d := range done {
		m, o, final, err := d.j.m, d.o, c.final[i], c.failed[i]
		if !again[m.ID] {
			gone = append(gone, m.ID)
		}
		if d.skipped {
			ev := r.log.Debug()
			if err != nil {
				ev = r.log.Error().Err(err)
			}
			ev.Str("queue_id", m.ID).Str("state", string(final)).Msg("claim released unattempted")
			continue
		}
		// The MTA logs the one Info line of each attempt (destination, TLS,
		// reply); this line adds the queue's view at Debug.
		ev := r.log.Debug()
		if err != nil {
			ev = r.log.Error().Err(err)
		}
		name := string(final)
		if !o.retryAt.IsZero() && final == StateDeferred {
			name = "throttled"
			ev.Time("retry_at", o.retryAt)
		}
		ev.Str("queue_id", m.ID).Str("rcpt", address.Mask(m.To)).Str("domain", m.Domain).
			Str("outcome", name).Str("reply", address.MaskText(o.reply)).Int("attempt", m.Attempts+1).
			Str("source", o.source).Str("provider", o.provider).
			Msg("attempt recorded")
		if err == nil && final == StateBounced && (o.suppress || c.counted[i]) {
			d.counted = c.counted[i]
			bounces = append(bounces, d)
		}
		if r.cfg.Observer != nil && err == nil && final != StateActive {
			r.cfg.Observer.Attempt(m.Domain, name, o.took)
		}
		if r.cfg.OnFinal != nil && err == nil && final.Finished() {
			r.cfg.OnFinal(m, final)
		}
	}
	r.s.setInflight(gone, false)
	if len(bounces) > 0 {
		follow <- bounces
	}
}

// followUp suppresses a hard-bounced address and tells the store's
// OnCampaignEvent (the brakes) of the bounce event the commit counted. The
// event is counted in the commit that records the bounce, so a campaign's
// figures never show the bounce without its event (a brake re-armed at
// resume judged late-counted bounces as new ones); the suppression writes to
// another store (one fsync), so it runs beside the loop, not in it.
func (r *Runner) followUp(d result) {
	m, o := d.j.m, d.o
	if o.suppress {
		if err := r.sup.SuppressAddress(m.To, "", "hard_bounce", "bounce", o.reply); err != nil {
			r.log.Error().Err(err).Str("queue_id", m.ID).Str("rcpt", address.Mask(m.To)).
				Msg("suppress hard-bounced address failed")
		}
	}
	if d.counted && r.s.onEvent != nil {
		r.s.onEvent(m.Campaign, o.event)
	}
}

// recordOutcome writes an attempt's outcome in b and returns the final state.
// A temporary failure leaves the message deferred until the NextAttempt set at claim,
// or expires it if that falls past MaxAge. A throttled one (retryAt set) was no
// attempt: its count is undone and it waits until retryAt, never expired for it.
// Delivered, bounced and deferred attempts are counted in the per-minute stats.
// The source and provider the Deliverer reported are recorded on the message
// and its history; a delivery through a source is counted in the warm-up
// ledger (warmup.go), all in b's transaction.
func (s *Store) recordOutcome(b bkts, claimed Message, o outcome, now time.Time) (State, bool, error) {
	final, err := s.recordAttempt(b, claimed, o, now)
	if err != nil || final != StateBounced || o.event == "" {
		return final, false, err
	}
	// The bounce event (once per person) in the same commit as the bounce.
	a, err := address.Parse(claimed.To)
	if err != nil {
		return StateActive, false, fmt.Errorf("count %s event: recipient %s", o.event, problem(err))
	}
	counted, err := countEventIn(b, claimed.Campaign, s.box.Index(a.Key()), o.event)
	if err != nil {
		return StateActive, false, fmt.Errorf("count %s event: %w", o.event, err)
	}
	return final, counted, nil
}

// recordAttempt is recordOutcome without the campaign event.
func (s *Store) recordAttempt(b bkts, claimed Message, o outcome, now time.Time) (State, error) {
	m, err := b.get(claimed.ID)
	if err != nil {
		return StateActive, err
	}
	if m.State != StateActive || m.Attempts != claimed.Attempts {
		return m.State, nil // changed under us; leave it
	}
	prev := m
	if m.Erased { // EraseRecipient met it in flight: only a count stays
		if o.retryAt.IsZero() {
			if err := b.countMinute(now, minuteSlot(o.state)); err != nil {
				return StateActive, fmt.Errorf("count outcome: %w", err)
			}
		}
		return StateCancelled, b.forget(&m, StateCancelled)
	}
	m.State, m.Updated, m.LastReply = o.state, now, o.reply
	// What the Deliverer reported: the next attempt prefers this source.
	// An empty one (not known) keeps what an earlier attempt reported.
	if o.source != "" {
		m.Source = o.source
	}
	if o.provider != "" {
		m.Provider = o.provider
	}
	if !o.retryAt.IsZero() {
		m.NextAttempt = o.retryAt
		m.History = append(m.History, Attempt{Time: now, Outcome: "throttled", Reply: o.reply, Source: o.source, Provider: o.provider})
		return m.State, b.save(&m, &prev)
	}
	if o.tried {
		m.Attempts++ // counted here, not at the claim: only a started delivery is an attempt
	}
	if o.interrupted {
		m.NextAttempt = now // the process is stopping: the next one tries at once
		m.History = append(m.History, Attempt{Time: now, Outcome: "interrupted", Reply: o.reply, Remote: o.remote, Source: o.source, Provider: o.provider})
		return m.State, b.save(&m, &prev)
	}
	if o.reason != "" {
		m.Reason = o.reason
	}
	if m.State == StateDeferred && m.NextAttempt.After(m.Created.Add(s.maxAge)) {
		m.State, m.Reason = StateExpired, "expired: undelivered after "+s.maxAge.String()
	}
	m.History = append(m.History, Attempt{Time: now, Outcome: string(o.state), Reply: o.reply, Remote: o.remote, Source: o.source, Provider: o.provider, Reason: o.class})
	if m.State == StateDelivered && o.source != "" {
		// The warm-up ledger counts the delivery in the commit that records it.
		if err := b.countWarmup(now, o.source, m.Provider); err != nil {
			return StateActive, err
		}
	}
	if m.State == StateExpired {
		m.History = append(m.History, Attempt{Time: now, Outcome: string(StateExpired)})
	}
	if err := b.countMinute(now, minuteSlot(o.state)); err != nil {
		return StateActive, fmt.Errorf("count outcome: %w", err)
	}
	return m.State, b.save(&m, &prev)
}

// release gives back a claim no worker attempted (the runner stopped first):
// the attempt is undone and the message returns to its state before the
// claim, its rate slot kept. One erased meanwhile is forgotten (counted as cancelled).
func release(b bkts, j job, now time.Time) (State, error) {
	m, err := b.get(j.m.ID)
	if err != nil {
		return StateActive, err
	}
	if m.State != StateActive || m.Attempts != j.m.Attempts {
		return m.State, nil // changed under us; leave it
	}
	if m.Erased {
		return StateCancelled, b.forget(&m, StateCancelled)
	}
	prev := m
	m.Updated = now
	m.State, m.NextAttempt, m.RateSlot, m.RateGen = j.was, j.wasNext, j.wasSlot, j.wasGen
	return m.State, b.save(&m, &prev)
}
