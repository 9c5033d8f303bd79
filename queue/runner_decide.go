package queue

import (
	"errors"
	"time"
)

// The runner's decisions, as pure functions over plain values so that a table
// test covers every case: what one claimed message's attempt comes to
// (decide), and when the loop commits (commitNow).

// reached is how far the attempt at one claimed message got.
type reached int

const (
	delivered     reached = iota // the Deliverer was called and returned
	checkFailed                  // the suppression check failed: cannot tell
	wasSuppressed                // the address is on the do-not-mail list now
	bodyMissing                  // the body could not be read
	stoppedBefore                // the runner was stopping: the delivery did not start
)

// facts are what a worker knows of one claimed message when its attempt ends.
type facts struct {
	reached reached
	text    string // the check's error, the suppression reason, the body's error or the delivery error

	// Of a delivery (reached == delivered):
	failed    bool          // the Deliverer returned an error, text
	retryAt   time.Time     // its RetryAt: not tried at all, wait until then (zero: none)
	temporary bool          // it is temporary (true for an error that does not say)
	hard      bool          // a permanent error's HardBounce: never takes mail
	why       string        // HardBounce's reason (the classifier's name), for the record
	stopped   bool          // the runner's stop had ended when the Deliverer returned
	cutOff    bool          // the delivery's context was cut off (drain deadline) by then
	took      time.Duration // time spent in the Deliverer
}

// deliveryFacts reads what a delivery error says of itself (nil: delivered).
func deliveryFacts(derr error) facts {
	f := facts{reached: delivered, temporary: true}
	if derr == nil {
		return f
	}
	f.failed, f.text = true, derr.Error()
	var ra retryAter
	if errors.As(derr, &ra) {
		f.retryAt = ra.RetryAt()
	}
	var t temporary
	f.temporary = !errors.As(derr, &t) || t.Temporary()
	var hb hardBouncer
	if errors.As(derr, &hb) {
		f.hard, f.why = hb.HardBounce()
	}
	return f
}

// decide is the outcome of an attempt: retry (deferred), bounce (and
// suppress a hard bounce), defer without an attempt (retryAt), return to
// the queue at once (interrupted), cancel, or give the claim back (the zero
// outcome: not tried, recorded as released when the runner is stopping).
func decide(f facts) outcome {
	switch f.reached {
	case checkFailed: // cannot tell: do not mail, try later
		return outcome{state: StateDeferred, reply: "suppression check: " + f.text}
	case wasSuppressed:
		return outcome{state: StateCancelled, reply: "suppressed: " + f.text, reason: "suppressed: " + f.text}
	case bodyMissing:
		return outcome{state: StateCancelled, reply: f.text, reason: "body missing"}
	case stoppedBefore:
		return outcome{}
	}
	o := deliveryOutcome(f)
	if !o.retryAt.IsZero() && f.stopped {
		return outcome{} // a wait the stop ended: not started, the claim is given back
	}
	if f.failed && f.cutOff {
		o = outcome{state: StateReady, reply: "interrupted by shutdown: " + f.text, took: f.took, interrupted: true}
	}
	o.tried = true
	return o
}

// deliveryOutcome is the outcome of a delivery as its result says.
func deliveryOutcome(f facts) outcome {
	if !f.failed {
		return outcome{state: StateDelivered, took: f.took}
	}
	o := outcome{state: StateDeferred, reply: f.text, took: f.took}
	if !f.retryAt.IsZero() {
		o.retryAt = f.retryAt
		return o
	}
	if f.temporary {
		return o // RFC 5321 §4.2.1: 4yz and unknown failures are retried
	}
	o.state, o.reason, o.event, o.class = StateBounced, "permanent failure", "bounced_soft", f.why
	if f.hard {
		o.event, o.suppress = "bounced_hard", true // followUp suppresses after the commit
	}
	return o
}

// round is the loop's state when it decides whether to commit.
type round struct {
	workers  int
	inflight int           // claimed, outcome not yet committed
	done     int           // results waiting to be committed
	queued   int           // claimed jobs no worker has taken yet
	free     int           // slots a commit now would claim for
	waited   time.Duration // since the oldest waiting result arrived
}

// commitNow reports whether the loop commits now. A commit rewrites every
// page it touches (bbolt copies on write), so its cost is shared by the
// results it carries: results wait for company until the workers' queue of
// claimed jobs runs low, a worker's worth of them are in, or the first has
// waited commitLinger. With nothing in flight it commits (claims) at once.
func commitNow(rd round) bool {
	minClaim := max(1, rd.workers/4)
	lowWater := max(1, rd.workers/2) // queued jobs below which the loop claims more
	lingered := rd.done > 0 && rd.waited >= commitLinger
	starving := rd.queued < lowWater && (rd.done > 0 || rd.free >= minClaim)
	return rd.inflight == 0 || rd.done >= rd.workers || lingered || starving
}
