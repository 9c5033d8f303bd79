package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Deliverer sends one message to one recipient. An error with Temporary() returning
// false is permanent; every other error is temporary. A permanent error's
// HardBounce(), when present, says whether the recipient's mailbox or domain
// will never take mail (then the address is suppressed). DeliverVia
// must not keep body after it returns: the runner reuses its memory.
//
// pool is the message's sending pool ("" for the default one) and source the
// egress source an earlier attempt of the message used ("" for none): the
// Deliverer prefers it, so a message keeps its source across retries. It
// returns the source it used and the recipient's provider, on failure too
// when it knows them ("" when it does not): the runner records both on the
// message with the attempt's outcome, in the same commit, and counts a
// delivery through a source in the warm-up ledger (see warmup.go).
//
// stop ends when the runner stops dispatching. A Deliverer that may wait
// before a delivery starts (the destination's rate limit, a session slot)
// gives such a wait up when stop ends, returning an error whose RetryAt is
// set: not an attempt, the claim goes back and a drain is not held up. Once
// the delivery has started only ctx bounds it. A Deliverer that never waits
// may ignore stop. mta.Sender's DeliverVia is the one the binary wires.
type Deliverer interface {
	DeliverVia(ctx, stop context.Context, id, from, to string, body []byte, pool, source string) (usedSource, provider, remote, reply string, err error)
}

// Suppressions is the do-not-mail list, checked just before each delivery.
type Suppressions interface {
	Check(addr, list string) (reason string, suppressed bool, err error)
	SuppressAddress(addr, list, reason, source, note string) error
}

// temporary is implemented by delivery errors that say whether to retry.
type temporary interface{ Temporary() bool }

// hardBouncer is implemented by delivery errors that know whether a permanent
// failure means the recipient's mailbox or domain will never take mail. The
// queue keeps no rule of its own: mta answers with mta/bounce's classifier, the
// same one that reads DSNs, so an address is suppressed alike whether the
// remote refused it at RCPT or bounced it later. An error without it never
// suppresses.
type hardBouncer interface {
	HardBounce() (hard bool, reason string)
}

// retryAter is implemented by delivery errors that say the message was not
// tried at all (a throttle or an open circuit): wait until RetryAt.
type retryAter interface{ RetryAt() time.Time }

// Observer is told each attempt's outcome (delivered, deferred, bounced,
// throttled, expired, cancelled), the recipient domain and how long the
// Deliverer took (0 when it was not called). It must not block.
type Observer interface {
	Attempt(domain, outcome string, d time.Duration)
}

// RunnerConfig configures a Runner. Empty fields take the defaults noted.
type RunnerConfig struct {
	Workers  int              // concurrent deliveries; default 16
	Campaign string           // if set, only this campaign's messages are dispatched
	Poll     time.Duration    // fallback look at the due index; default 1s (Enqueue and Kick wake it at once)
	Now      func() time.Time // clock, for tests; default time.Now
	Observer Observer         // optional, for metrics
	// DrainTimeout bounds the deliveries in flight once the runner stops: then
	// their context is cancelled and each is returned to the queue, due at once.
	// Default DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Halt, when set, is asked before claiming and before each delivery: a
	// non-empty answer says why no delivery may start now (a cluster node
	// whose suppression replica is stale fails closed). Claimed messages
	// then wait HaltRetry, unattempted; the runner resumes by itself once
	// Halt answers "" again.
	Halt func() string
	// OnFinal, when set, is told each message whose outcome, just
	// committed, is final (delivered, bounced, cancelled, expired): a
	// cluster node publishes it so no other node sends it again. It must
	// not block for long: the loop waits for it.
	OnFinal func(m Message, state State)
	// Unpublished, when set, is how many of the messages told to OnFinal
	// are not yet settled where OnFinal sends them. The claimed and
	// unrecorded stay within MaxUnrecorded; with the unpublished they stay
	// within MaxUnsettled, so what a lost node can send twice (delivered,
	// but neither recorded nor published) stays within it.
	Unpublished func() int
}

// HaltRetry is how long a message claimed while the runner is halted waits.
const HaltRetry = time.Second

// DefaultWorkers is RunnerConfig.Workers' default: deliveries at once, most
// of them waiting on remote servers.
const DefaultWorkers = 64

// DefaultDrainTimeout is RunnerConfig.DrainTimeout's default: under the 60 s
// a service manager usually gives a stopping unit.
const DefaultDrainTimeout = 30 * time.Second

// Runner dispatches due messages to a pool of workers that deliver them.
type Runner struct {
	s   *Store
	d   Deliverer
	sup Suppressions
	cfg RunnerConfig
	log zerolog.Logger

	haltMu  sync.Mutex
	haltWhy string // the last answer of Halt, for logging its changes
}

// halted asks RunnerConfig.Halt, logging when the answer changes.
func (r *Runner) halted() string {
	if r.cfg.Halt == nil {
		return ""
	}
	why := r.cfg.Halt()
	r.haltMu.Lock()
	defer r.haltMu.Unlock()
	if why != r.haltWhy {
		if why != "" {
			r.log.Warn().Str("why", why).Msg("deliveries halted: no delivery starts until this clears")
		} else {
			r.log.Info().Str("was", r.haltWhy).Msg("deliveries resumed")
		}
		r.haltWhy = why
	}
	return why
}

// NewRunner returns a Runner delivering s's messages through d after checking sup.
func (s *Store) NewRunner(d Deliverer, sup Suppressions, cfg RunnerConfig) *Runner {
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	l := s.log.With().Logger()
	if cfg.Campaign != "" {
		l = l.With().Str("campaign", cfg.Campaign).Logger()
	}
	return &Runner{s: s, d: d, sup: sup, cfg: cfg, log: l}
}

// Run delivers due messages until ctx is done, then starts no new delivery, waits for
// those in flight to finish and their outcomes to be committed, and returns nil.
// In-flight deliveries are not cancelled with ctx; the Deliverer's own timeouts bound them.
func (r *Runner) Run(ctx context.Context) error { return r.loop(ctx, false) }

// Drain delivers until nothing matching the runner's Campaign is due now and nothing is
// in flight; messages deferred to a later time do not count. It returns ctx's error if
// ctx ends first (after in-flight deliveries finish) or a store error.
func (r *Runner) Drain(ctx context.Context) error { return r.loop(ctx, true) }

// MaxUnrecorded is how many messages a runner of workers workers may hold
// claimed with their outcome not yet committed: one per worker and as many
// again waiting for one, so a worker finds its next message at once while the
// loop commits. Workers do not wait for their outcome's commit, so this, not
// workers, bounds what a crash can send twice.
func MaxUnrecorded(workers int) int { return 2 * workers }

// MaxUnpublished is how many final outcomes told to OnFinal may wait to be
// settled beyond MaxUnrecorded. A cluster node publishes outcomes in batches,
// one replicated stream message (a raft append on every replica) per batch:
// room for batches of tens, not of the few a delivery window holds, is what
// keeps that cost per campaign message small (docs/performance.md).
const MaxUnpublished = 64

// MaxUnsettled is what a runner with Unpublished set may hold claimed and
// unrecorded, or recorded final and unpublished, at once: the most a cluster
// node lost for good can have delivered that another node sends again.
func MaxUnsettled(workers int) int { return MaxUnrecorded(workers) + MaxUnpublished }

// commitLinger is the longest a worker's result waits for others to share its
// commit. It delays only the record of an outcome, never a delivery: workers
// take their next claimed job at once.
const commitLinger = 10 * time.Millisecond

// loop is the dispatcher and the committer: it records the workers' results and
// claims due messages for the free slots in one transaction per round (see
// committer.go), hands the claims to the workers, waits, repeats. Once it
// stops dispatching it records what is still in flight (stopAndRecord).
func (r *Runner) loop(ctx context.Context, drain bool) error {
	if r.d == nil || r.sup == nil {
		return errors.New("queue runner: Deliverer and Suppressions are required")
	}
	wake := make(chan struct{}, 1)
	r.s.addWaker(wake)
	defer r.s.removeWaker(wake)

	sctx, stop := context.WithCancel(ctx) // ends when the loop stops dispatching
	defer stop()
	// In-flight deliveries outlive ctx by up to DrainTimeout (see stopAndRecord).
	dctx, cutoff := context.WithCancel(context.WithoutCancel(ctx))
	defer cutoff()
	d := newDispatch(r.cfg.Workers)
	var wg sync.WaitGroup
	for range r.cfg.Workers {
		wg.Go(func() { r.work(dctx, sctx, d.jobs, d.results) })
	}
	follow, fwg := r.startFollowUps()
	err := r.dispatch(ctx, drain, wake, d, follow)
	r.stopAndRecord(stop, cutoff, d, follow)
	wg.Wait()
	close(follow)
	fwg.Wait()
	if err == nil && drain {
		err = ctx.Err()
	}
	return err
}

// dispatch is the state of the loop between rounds.
type dispatch struct {
	workers  int
	limit    int         // MaxUnrecorded(workers)
	jobs     chan job    // never blocks: at most limit claimed and unrecorded
	results  chan result // never blocks, for the same reason
	done     []result    // results received, not yet committed
	first    time.Time   // when the oldest of done arrived; zero if none
	inflight int         // claimed, outcome not yet committed
}

func newDispatch(workers int) *dispatch {
	limit := MaxUnrecorded(workers)
	return &dispatch{workers: workers, limit: limit, jobs: make(chan job, limit), results: make(chan result, limit)}
}

// round is what commitNow decides from, at now.
func (d *dispatch) round(now time.Time, free int) round {
	rd := round{workers: d.workers, inflight: d.inflight, done: len(d.done), queued: len(d.jobs), free: free}
	if len(d.done) > 0 {
		rd.waited = now.Sub(d.first)
	}
	return rd
}

// gather adds every result waiting in results to done, without blocking.
func (d *dispatch) gather() {
	for {
		select {
		case res := <-d.results:
			d.done = append(d.done, res)
		default:
			return
		}
	}
}

// work is one worker: it delivers the jobs it takes until jobs is closed.
func (r *Runner) work(dctx, sctx context.Context, jobs <-chan job, results chan<- result) {
	var buf []byte // this worker's body buffer: Deliver does not keep the body
	for j := range jobs {
		if sctx.Err() != nil { // stopping: give the claim back unattempted
			results <- result{j: j, skipped: true}
			continue
		}
		var o outcome
		o, buf = r.attempt(dctx, sctx, j.m, buf)
		results <- result{j: j, o: o, skipped: !o.tried && sctx.Err() != nil}
	}
}

// startFollowUps follows bounces up beside the loop, a commit's all at once:
// their writes (db.Batch in both stores) share commits as the workers' did.
// Close the channel, then wait on the group.
func (r *Runner) startFollowUps() (chan<- []result, *sync.WaitGroup) {
	follow := make(chan []result, 16)
	var fwg sync.WaitGroup
	fwg.Go(func() {
		for bounces := range follow {
			var g sync.WaitGroup
			for _, d := range bounces {
				g.Go(func() { r.followUp(d) })
			}
			g.Wait()
		}
	})
	return follow, &fwg
}

// dispatch runs rounds until ctx ends or, when draining, nothing is left to
// do; it returns a claim error that ends a drain, or a store error.
func (r *Runner) dispatch(ctx context.Context, drain bool, wake <-chan struct{}, d *dispatch, follow chan<- []result) error {
	tick := time.NewTicker(r.cfg.Poll)
	defer tick.Stop()
	// next fires when the earliest future due entry falls due, if before the tick.
	next := time.NewTimer(r.cfg.Poll)
	defer next.Stop()
	// A commit rewrites every page it touches (bbolt copies on write), so its
	// cost is shared by the results it carries: see commitNow.
	linger := time.NewTimer(commitLinger)
	linger.Stop()
	defer linger.Stop()
	for ctx.Err() == nil {
		d.gather()
		found := false
		if len(d.done) > 0 && d.first.IsZero() {
			d.first = time.Now()
			linger.Reset(commitLinger)
		}
		if commitNow(d.round(time.Now(), r.free(d))) {
			c := r.commitRound(d, follow)
			linger.Stop()
			if c.claimErr != nil {
				if drain {
					return c.claimErr
				}
				r.log.Error().Err(c.claimErr).Msg("claim due messages failed")
			}
			found = c.progressed
			next.Reset(r.untilNext(c.next))
		}
		if drain && !found && d.inflight == 0 {
			// Messages a campaign rate spread out stay ready: wait for them.
			if waiting, err := r.rateWaiting(); err != nil || !waiting {
				return err
			}
		}
		if found && d.inflight < d.limit {
			continue // there may be more due right now
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case res := <-d.results:
			d.done = append(d.done, res)
		case <-tick.C:
		case <-next.C:
		case <-linger.C:
		}
	}
	return nil
}

// commitRound records the results in done and claims jobs for the free
// slots in one commit, settles the results and hands the jobs to the workers.
func (r *Runner) commitRound(d *dispatch, follow chan<- []result) batch {
	free := r.free(d)
	if r.halted() != "" {
		free = 0 // fail closed: nothing new is claimed
	}
	if free == 0 && len(d.done) == 0 {
		return batch{} // nothing to record or claim: no empty transaction
	}
	c := r.commit(d.done, free)
	r.settle(d.done, c, follow)
	d.inflight -= len(d.done)
	d.done, d.first = d.done[:0], time.Time{}
	for _, j := range c.jobs {
		d.jobs <- j
	}
	d.inflight += len(c.jobs)
	return c
}

// free is how many messages a commit now may claim: MaxUnrecorded less
// those claimed and not yet recorded, the results in done recorded by it.
// With Unpublished set, also MaxUnsettled less those claimed (the results in
// done stay counted: the final ones become unpublished in the commit) and
// the unpublished.
func (r *Runner) free(d *dispatch) int {
	free := d.limit - d.inflight + len(d.done)
	if r.cfg.Unpublished != nil {
		free = min(free, d.limit+MaxUnpublished-d.inflight-r.cfg.Unpublished())
	}
	return max(0, free)
}

// untilNext is how long the loop waits for the next round at most: the poll,
// or less when the earliest future due time (zero if none) comes sooner.
func (r *Runner) untilNext(due time.Time) time.Duration {
	wait := r.cfg.Poll
	if !due.IsZero() {
		wait = min(wait, max(due.Sub(r.cfg.Now()), time.Millisecond))
	}
	return wait
}

// stopAndRecord stops the workers (stop), gives back the jobs no worker took
// and records every result. The deliveries still running after DrainTimeout
// are cut off (cutoff) and returned to the queue.
func (r *Runner) stopAndRecord(stop, cutoff context.CancelFunc, d *dispatch, follow chan<- []result) {
	stop()
	deadline := time.AfterFunc(r.cfg.DrainTimeout, cutoff)
	defer deadline.Stop()
	close(d.jobs)
	for d.inflight > 0 {
		if len(d.done) == 0 {
			d.done = append(d.done, <-d.results)
		}
		d.gather()
		c := r.commit(d.done, 0)
		r.settle(d.done, c, follow)
		d.inflight -= len(d.done)
		d.done = d.done[:0]
	}
}

// backoff returns the wait after attempt n (1-based) fails, RFC 5321 §4.5.4.1:
// attempt 1 waits Retry[0], attempt 2 Retry[1], …, every attempt from len(Retry) on
// waits the last step, each ±10% random jitter so restarts don't stampede; the
// message expires MaxAge after Created. Default: 5m, 15m, 30m, 1h, 2h, 4h, 4h, … for 120h.
func (s *Store) backoff(n int) time.Duration {
	d := s.retry[min(max(n, 1), len(s.retry))-1]
	if j := int64(d) / 5; j > 0 {
		d = d - d/10 + time.Duration(rand.Int64N(j+1))
	}
	return d
}

// maxClaimScan bounds the messages one claim transaction expires or moves
// (suspensions, campaign rates) without claiming them.
const maxClaimScan = 1024

// claim action for one due message.
const (
	actClaim   = iota // attempt it now
	actExpire         // past MaxAge: give up
	actSuspend        // under a suspension: wait for its end
	actRate           // its campaign has no token now: wait for the reserved one
	actErased         // its recipient was erased: forget it, counted as cancelled
)

// claim moves up to free due messages to state active in one committed transaction,
// recording the attempt and the next-attempt time before any delivery starts,
// expires those past MaxAge and moves those held back by a suspension or their
// campaign's rate (no attempt). progressed reports whether anything changed;
// next is the earliest future due time seen, zero if none. The claimed
// messages join the in-flight set.
func (r *Runner) claim(free int) (msgs []Message, progressed bool, next time.Time, err error) {
	c := r.commit(nil, free)
	if c.claimErr != nil {
		return nil, false, time.Time{}, c.claimErr
	}
	for _, j := range c.jobs {
		msgs = append(msgs, j.m)
	}
	return msgs, c.progressed, c.next, nil
}

// claimIn is claim's work inside a group transaction: it adds the claimed jobs,
// the expired messages and the earliest future due time to c. Messages in the
// in-flight set are skipped, except those in mine: their outcome was recorded
// earlier in the same transaction.
func (r *Runner) claimIn(b bkts, free int, now time.Time, mine map[string]bool, c *batch) error {
	cands, err := r.scanDue(b, free, now, mine, c)
	if err != nil {
		return err
	}
	var claimed []string
	for i := range cands {
		ok, err := r.applyClaim(b, &cands[i], now, c)
		if err != nil {
			return err
		}
		if ok {
			claimed = append(claimed, cands[i].m.ID)
		}
	}
	r.s.setInflight(claimed, true) // inside the txn: claims are serialised by bbolt's write lock
	return nil
}

// claimCand is a due message and what claimIn does with it.
type claimCand struct {
	m    Message
	act  int
	sp   Suspension // actSuspend: the suspension that holds it
	slot time.Time  // actRate: the reserved rate slot
	gen  uint64     // actRate: the limiter generation of slot
}

// scanDue reads the due index up to now, in time order, and decides what to
// do with each message it may take: up to free claims and maxClaimScan other
// actions. It only reads (a cursor is invalid once its bucket changes); it
// sets c.next to the first due time past now where it stops there.
func (r *Runner) scanDue(b bkts, free int, now time.Time, mine map[string]bool, c *batch) ([]claimCand, error) {
	s := r.s
	limit := dueKey(now, "")
	var cands []claimCand
	nClaim, nOther := 0, 0
	cur := b.due.Cursor()
	for k, _ := cur.First(); k != nil && nClaim < free && nOther < maxClaimScan; k, _ = cur.Next() {
		if len(k) < 8 {
			continue
		}
		if bytes.Compare(k[:8], limit) > 0 {
			c.next = time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
			break // sorted by time: nothing further is due
		}
		id := string(k[8:])
		if !mine[id] && s.isInflight(id) {
			continue
		}
		m, err := b.get(id)
		if err != nil {
			return nil, err
		}
		if r.cfg.Campaign != "" && m.Campaign != r.cfg.Campaign {
			continue
		}
		cd := claimAction(m, now, s.maxAge,
			func() (Suspension, bool) { return s.suspendedFor(m.Domain, m.Campaign, now) },
			func() (time.Time, uint64) { return s.reserve(&m, now) })
		if cd.act == actClaim {
			nClaim++
		} else {
			nOther++
		}
		cands = append(cands, cd)
	}
	return cands, nil
}

// claimAction decides what to do with the due message m, first match wins:
// forget it when its recipient was erased, expire it past maxAge, hold it
// under a suspension, wait for its campaign's rate slot, else claim it.
// reserve takes a rate token, so it is asked last and only when nothing else
// applies.
func claimAction(m Message, now time.Time, maxAge time.Duration,
	suspended func() (Suspension, bool), reserve func() (time.Time, uint64)) claimCand {
	cd := claimCand{m: m, act: actClaim}
	if m.Erased {
		cd.act = actErased
	} else if now.After(m.Created.Add(maxAge)) {
		cd.act = actExpire
	} else if sp, ok := suspended(); ok {
		cd.act, cd.sp = actSuspend, sp
	} else if slot, gen := reserve(); !slot.IsZero() {
		cd.act, cd.slot, cd.gen = actRate, slot, gen
	}
	return cd
}

// applyClaim writes what scanDue decided for cd and adds its outcome to c:
// the job when claimed (claimed is then true), the expired message, the
// earliest rate slot as c.next.
func (r *Runner) applyClaim(b bkts, cd *claimCand, now time.Time, c *batch) (claimed bool, err error) {
	s := r.s
	m := &cd.m
	prev := *m
	m.Updated = now
	switch cd.act {
	case actExpire: // RFC 5321 §4.5.4.1: give up eventually
		m.State, m.Reason = StateExpired, "expired: undelivered after "+s.maxAge.String()
		m.History = append(m.History, Attempt{Time: now, Outcome: string(StateExpired), Reply: m.LastReply})
	case actErased: // only a count stays (EraseRecipient leaves none of these behind; an older file might)
		if err := b.forget(&prev, StateCancelled); err != nil {
			return false, err
		}
		c.progressed = true
		return false, nil
	case actSuspend:
		holdFor(m, cd.sp, now)
	case actRate:
		m.NextAttempt, m.RateSlot, m.RateGen = cd.slot, cd.slot, cd.gen
		if c.next.IsZero() || cd.slot.Before(c.next) {
			c.next = cd.slot
		}
	default:
		// The attempt is counted when its outcome is recorded, not here: a
		// claim a crash or a stop cut off before Deliver was no attempt.
		m.State = StateActive
		m.NextAttempt = now.Add(s.backoff(m.Attempts + 1))
		m.RateSlot, m.RateGen = time.Time{}, 0
	}
	if err := b.save(m, &prev); err != nil {
		return false, err
	}
	c.progressed = true
	switch cd.act {
	case actClaim:
		c.jobs = append(c.jobs, job{m: *m, was: prev.State, wasNext: prev.NextAttempt, wasSlot: prev.RateSlot, wasGen: prev.RateGen})
		return true, nil
	case actExpire:
		c.expired = append(c.expired, *m)
	case actSuspend:
		r.log.Debug().Str("queue_id", m.ID).Str("domain", m.Domain).Time("until", cd.sp.Until).Msg("held by suspension")
	}
	return false, nil
}

// rateWaiting reports whether messages of the runner's campaign (any, if none is
// set) wait in state ready for a later time: a campaign rate spread them out.
func (r *Runner) rateWaiting() (bool, error) {
	if r.cfg.Campaign != "" {
		counts, err := r.s.CampaignCounts(r.cfg.Campaign)
		return counts[StateReady] > 0, err
	}
	st, err := r.s.Stats()
	return st.ByState[StateReady] > 0, err
}

// isInflight reports whether id is with a worker of this process.
func (s *Store) isInflight(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.inflight[id]
	return ok
}

// setInflight adds or removes ids from the in-flight set.
func (s *Store) setInflight(ids []string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if on {
			s.inflight[id] = struct{}{}
		} else {
			delete(s.inflight, id)
		}
	}
}

// outcome is what one attempt came to.
type outcome struct {
	state    State
	reply    string
	reason   string
	retryAt  time.Time     // set: throttled, not an attempt; wait until then
	took     time.Duration // time spent in the Deliverer
	event    string        // campaign event to count once recorded (bounced_hard, bounced_soft)
	suppress bool          // hard bounce: suppress the address once recorded (not if erased meanwhile)
	tried    bool          // the Deliverer was called: an attempt to count
	// interrupted: cut off by the drain deadline; back to the queue, due at once
	interrupted bool
	// source and provider are what the Deliverer reported ("" when it did
	// not know), remote the server it talked to last: recorded on the
	// message with the outcome.
	source, provider, remote string
	// class is a bounce's reason as the Deliverer classified it, kept in
	// the attempt so a report can count bounces by reason.
	class string
}

// attempt checks suppression and calls the Deliverer, gathering the facts
// decide turns into the outcome. The body is read into buf's memory; attempt
// returns the buffer to reuse. stop ends when the runner stops: a delivery
// not yet started then is not started (the outcome is not tried), and the
// Deliverer gives up a wait before the delivery with it. An error after ctx
// was cut off by the drain deadline returns the message to the queue
// (interrupted).
func (r *Runner) attempt(ctx, stop context.Context, m Message, buf []byte) (outcome, []byte) {
	if why := r.halted(); why != "" { // claimed before the halt: wait, unattempted
		return decide(facts{reached: delivered, failed: true, temporary: true, text: "held: " + why,
			retryAt: r.cfg.Now().Add(HaltRetry)}), buf
	}
	// Suppression first: a message suppressed while it waited needs no body.
	reason, suppressed, err := r.sup.Check(m.To, m.List)
	if err != nil { // cannot tell: do not mail, try later
		return decide(facts{reached: checkFailed, text: err.Error()}), buf
	}
	if suppressed {
		return decide(facts{reached: wasSuppressed, text: reason}), buf
	}
	body, err := r.s.body(m.ID, buf)
	if err != nil {
		return decide(facts{reached: bodyMissing, text: err.Error()}), buf
	}
	if stop.Err() != nil { // stopping: no new delivery starts
		return decide(facts{reached: stoppedBefore}), buf
	}
	start := time.Now()
	src, prov, remote, reply, derr := r.d.DeliverVia(ctx, stop, m.ID, m.From, m.To, body, m.Pool, m.Source)
	f := deliveryFacts(derr)
	f.took = time.Since(start)
	if cap(body) > cap(buf) {
		buf = body[:0] // grown (or a raw body's own memory): keep the larger
	}
	f.stopped, f.cutOff = stop.Err() != nil, ctx.Err() != nil
	o := decide(f)
	if o.tried { // the zero outcome (claim given back) records nothing
		o.source, o.provider, o.remote = src, prov, remote
		if derr == nil {
			o.reply = reply // the 250 reply to the dot, with the remote's queue id
		}
	}
	return o, buf
}
