package queue

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	took := 3 * time.Second
	// del is a delivery's facts: failed with text unless text is "".
	del := func(text string, mod func(*facts)) facts {
		f := facts{reached: delivered, temporary: true, took: took, text: text, failed: text != ""}
		if mod != nil {
			mod(&f)
		}
		return f
	}
	tests := []struct {
		name string
		f    facts
		want outcome
	}{
		{"check failed: retry, no attempt", facts{reached: checkFailed, text: "db closed"},
			outcome{state: StateDeferred, reply: "suppression check: db closed"}},
		{"suppressed: cancel", facts{reached: wasSuppressed, text: "complaint"},
			outcome{state: StateCancelled, reply: "suppressed: complaint", reason: "suppressed: complaint"}},
		{"body missing: cancel", facts{reached: bodyMissing, text: "no body"},
			outcome{state: StateCancelled, reply: "no body", reason: "body missing"}},
		{"stopping before the delivery: give back", facts{reached: stoppedBefore}, outcome{}},
		{"delivered", del("", nil), outcome{state: StateDelivered, took: took, tried: true}},
		{"delivered after the stop: still delivered", del("", func(f *facts) { f.stopped = true }),
			outcome{state: StateDelivered, took: took, tried: true}},
		{"temporary: retry", del("451 4.3.0 busy", nil),
			outcome{state: StateDeferred, reply: "451 4.3.0 busy", took: took, tried: true}},
		{"permanent, not hard: bounce, no suppression", del("550 5.7.1 policy", func(f *facts) { f.temporary = false }),
			outcome{state: StateBounced, reply: "550 5.7.1 policy", reason: "permanent failure", event: "bounced_soft", took: took, tried: true}},
		{"permanent and hard: bounce and suppress", del("550 5.1.1 no such user", func(f *facts) { f.temporary, f.hard, f.why = false, true, "userunknown" }),
			outcome{state: StateBounced, reply: "550 5.1.1 no such user", reason: "permanent failure", event: "bounced_hard", suppress: true, took: took, tried: true, class: "userunknown"}},
		{"hard but temporary: retry", del("452 4.2.2 full", func(f *facts) { f.hard = true }),
			outcome{state: StateDeferred, reply: "452 4.2.2 full", took: took, tried: true}},
		{"retryAt: defer without an attempt", del("throttled", func(f *facts) { f.retryAt = at }),
			outcome{state: StateDeferred, reply: "throttled", retryAt: at, took: took, tried: true}},
		{"retryAt wins over permanent", del("circuit open", func(f *facts) { f.retryAt, f.temporary, f.hard = at, false, true }),
			outcome{state: StateDeferred, reply: "circuit open", retryAt: at, took: took, tried: true}},
		{"retryAt after the stop: give back", del("stopped", func(f *facts) { f.retryAt, f.stopped = at, true }), outcome{}},
		{"failed after the cutoff: back to the queue at once", del("broken pipe", func(f *facts) { f.cutOff, f.stopped = true, true }),
			outcome{state: StateReady, reply: "interrupted by shutdown: broken pipe", took: took, interrupted: true, tried: true}},
		{"permanent after the cutoff: interrupted, not bounced", del("550 5.1.1", func(f *facts) { f.temporary, f.hard, f.cutOff = false, true, true }),
			outcome{state: StateReady, reply: "interrupted by shutdown: 550 5.1.1", took: took, interrupted: true, tried: true}},
		{"delivered after the cutoff: delivered", del("", func(f *facts) { f.cutOff = true }),
			outcome{state: StateDelivered, took: took, tried: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decide(tt.f); got != tt.want {
				t.Errorf("decide(%+v)\n got %+v\nwant %+v", tt.f, got, tt.want)
			}
		})
	}
}

// retryErr is an error that was no attempt, like mta's throttle.
type retryErr time.Time

func (e retryErr) Error() string      { return "throttled" }
func (e retryErr) RetryAt() time.Time { return time.Time(e) }

func TestDeliveryFacts(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		err  error
		want facts
	}{
		{"nil", nil, facts{temporary: true}},
		{"unknown error: temporary", errors.New("reset"), facts{failed: true, text: "reset", temporary: true}},
		{"4yz", &smtpErr{451, "4.3.0", "busy"}, facts{failed: true, text: "451 4.3.0 busy", temporary: true, why: "systemerror"}},
		{"permanent without HardBounce", permErr("no"), facts{failed: true, text: "no"}},
		{"hard bounce at RCPT", &stagedErr{smtpErr{550, "5.1.1", "no such user"}, "rcpt"},
			facts{failed: true, text: "550 5.1.1 no such user", hard: true, why: "userunknown"}},
		{"wrapped retryAt", fmt.Errorf("wait: %w", retryErr(at)), facts{failed: true, text: "wait: throttled", temporary: true, retryAt: at}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := deliveryFacts(tt.err); got != tt.want {
				t.Errorf("deliveryFacts(%v)\n got %+v\nwant %+v", tt.err, got, tt.want)
			}
		})
	}
}

func TestCommitNow(t *testing.T) {
	tests := []struct {
		name string
		rd   round
		want bool
	}{
		{"nothing in flight: claim", round{workers: 16, inflight: 0, free: 32}, true},
		{"a worker's worth of results", round{workers: 16, inflight: 32, done: 16, queued: 16}, true},
		{"first result lingered", round{workers: 16, inflight: 32, done: 1, queued: 16, waited: commitLinger}, true},
		{"first result still young", round{workers: 16, inflight: 32, done: 1, queued: 16, waited: commitLinger / 2}, false},
		{"workers' queue low, a result in", round{workers: 16, inflight: 20, done: 1, queued: 7}, true},
		{"workers' queue low, slots to claim", round{workers: 16, inflight: 20, queued: 7, free: 4}, true},
		{"workers' queue low, too few slots", round{workers: 16, inflight: 30, queued: 7, free: 3}, false},
		{"workers' queue at low water", round{workers: 16, inflight: 30, done: 1, queued: 8, free: 3}, false},
		{"one worker: queue empty, one result", round{workers: 1, inflight: 2, done: 1}, true},
		{"one worker: queue full, nothing done", round{workers: 1, inflight: 2, queued: 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := commitNow(tt.rd); got != tt.want {
				t.Errorf("commitNow(%+v) = %v, want %v", tt.rd, got, tt.want)
			}
		})
	}
}
