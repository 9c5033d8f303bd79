package queue

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// gateDeliverer holds the deliveries to addresses in held until gate closes;
// the rest succeed at once, or fail as scripted.
type gateDeliverer struct {
	held   map[string]bool
	gate   chan struct{}
	bounce map[string]error
	mu     sync.Mutex
	calls  map[string]int // by queue id
}

func (d *gateDeliverer) DeliverVia(ctx, _ context.Context, id, from, to string, body []byte, _, _ string) (string, string, string, string, error) {
	if d.held[to] {
		<-d.gate
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls[id]++
	return "", "", "", "", d.bounce[to]
}

// waitFor polls cond until it holds, failing the test after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Outcomes of finished deliveries are committed while others are still in flight,
// and hard bounces are followed up (suppression, campaign event) before Drain returns.
func TestGroupCommitWhileOthersInFlight(t *testing.T) {
	s := openTest(t, Config{})
	d := &gateDeliverer{held: map[string]bool{}, gate: make(chan struct{}), bounce: map[string]error{}, calls: map[string]int{}}
	var msgs []NewMessage
	for i := range 300 {
		to := fmt.Sprintf("u%d@example.com", i)
		msgs = append(msgs, msg("c", to))
		switch {
		case i%100 == 7:
			d.held[to] = true
		case i%50 == 3:
			d.bounce[to] = &smtpErr{550, "5.1.1", "no such user"}
		}
	}
	ids := enqueue(t, s, msgs...).IDs
	sup := newSup()
	r := s.NewRunner(d, sup, RunnerConfig{Workers: 8, Campaign: "c"})
	errc := make(chan error, 1)
	go func() { errc <- r.Drain(context.Background()) }()

	waitFor(t, "the deliveries not held to be recorded", func() bool {
		cc, err := s.CampaignCounts("c")
		return err == nil && cc[StateDelivered]+cc[StateBounced] == len(msgs)-len(d.held)
	})
	for i, id := range ids {
		if m := mustGet(t, s, id); d.held[msgs[i].To] && (m.State != StateActive || m.Attempts != 0) {
			t.Fatalf("held message %s = %s after %d attempts, want active, its attempt counted with its outcome", id, m.State, m.Attempts)
		}
	}
	close(d.gate)
	if err := <-errc; err != nil {
		t.Fatalf("Drain = %v", err)
	}
	cc, err := s.CampaignCounts("c")
	if err != nil || cc[StateDelivered] != 294 || cc[StateBounced] != 6 || len(cc) != 2 {
		t.Fatalf("CampaignCounts = %v, %v; want 294 delivered, 6 bounced", cc, err)
	}
	for _, id := range ids {
		if d.calls[id] != 1 {
			t.Fatalf("%s delivered %d times", id, d.calls[id])
		}
	}
	if ev, err := s.CampaignEvents("c"); err != nil || ev["bounced_hard"] != 6 {
		t.Fatalf("CampaignEvents = %v, %v; want 6 bounced_hard", ev, err)
	}
	if len(sup.calls) != 6 {
		t.Fatalf("SuppressAddress called %d times, want 6", len(sup.calls))
	}
	if len(s.inflight) != 0 {
		t.Fatalf("in-flight set after Drain = %v", s.inflight)
	}
	checkCounters(t, s)
}

// When Run returns, every message is either finished with its outcome committed or
// untouched: the claims no worker started are given back, the attempt undone.
func TestRunReturnsAfterOutcomesCommitted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := Open(Config{Box: testBox, Path: path}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var msgs []NewMessage
	for i := range 400 {
		msgs = append(msgs, msg("c", fmt.Sprintf("u%d@example.com", i)))
	}
	ids := enqueue(t, s, msgs...).IDs
	f := newFake()
	ctx, cancel := context.WithCancel(context.Background())
	f.onOK = func(n int) {
		if n == 100 {
			cancel() // deliveries in flight and claims waiting for a worker
		}
	}
	if err := s.NewRunner(f, newSup(), RunnerConfig{Workers: 4}).Run(ctx); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, Config{Path: path}) // would recover any message left active
	delivered := 0
	for _, id := range ids {
		m := mustGet(t, s, id)
		f.mu.Lock()
		calls := f.byID[id]
		f.mu.Unlock()
		switch {
		case m.Recoveries != 0:
			t.Fatalf("%s was left active: %+v", id, m)
		case m.State == StateDelivered && calls == 1 && m.Attempts == 1:
			delivered++
		case m.State == StateReady && calls == 0 && m.Attempts == 0 && len(m.History) == 0:
		default:
			t.Fatalf("%s = %s after %d attempts and %d deliveries", id, m.State, m.Attempts, calls)
		}
	}
	if delivered < 100 || delivered == len(ids) {
		t.Fatalf("%d delivered, want at least 100 and not all", delivered)
	}
	checkCounters(t, s)
	// The rest go out on the next run, each once.
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Workers: 4}))
	if cc, _ := s.CampaignCounts("c"); cc[StateDelivered] != len(ids) || len(f.byID) != len(ids) {
		t.Fatalf("after the next run: counts %v, %d distinct deliveries", cc, len(f.byID))
	}
}

// An outcome not yet committed when the process dies leaves its message active;
// the next Open recovers it, while outcomes committed in the same group stay.
func TestUncommittedOutcomeRecovered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := Open(Config{Box: testBox, Path: path}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ids := enqueue(t, s, msg("c", "a@example.com"), msg("c", "b@example.com"), msg("c", "c@example.com")).IDs
	r := s.NewRunner(newFake(), newSup(), RunnerConfig{Workers: 3})
	c := r.commit(nil, 3)
	if c.claimErr != nil || len(c.jobs) != 3 {
		t.Fatalf("claim = %d jobs, %v", len(c.jobs), c.claimErr)
	}
	// Two deliveries finish and are committed; the third is still with its worker.
	done := []result{{j: c.jobs[0], o: outcome{state: StateDelivered}}, {j: c.jobs[1], o: outcome{state: StateDelivered}}}
	if g := r.commit(done, 0); g.failed[0] != nil || g.failed[1] != nil {
		t.Fatalf("commit = %v", g.failed)
	}
	if err := s.Close(); err != nil { // crash
		t.Fatal(err)
	}
	s = openTest(t, Config{Path: path})
	for i, id := range ids {
		m := mustGet(t, s, id)
		if i < 2 && (m.State != StateDelivered || m.Recoveries != 0) {
			t.Fatalf("committed outcome %d = %+v", i, m)
		}
		if i == 2 && (m.State != StateReady || m.Recoveries != 1 || m.Attempts != 0) {
			t.Fatalf("uncommitted outcome = %+v, want recovered ready", m)
		}
	}
}

// One result that cannot be recorded leaves its message active (for recovery)
// and out of the in-flight set; the others in the group commit.
func TestGroupCommitIsolatesBadRecord(t *testing.T) {
	s := openTest(t, Config{})
	ids := enqueue(t, s, msg("c", "a@example.com"), msg("c", "b@example.com"), msg("c", "c@example.com")).IDs
	r := s.NewRunner(newFake(), newSup(), RunnerConfig{Workers: 3})
	c := r.commit(nil, 3)
	if c.claimErr != nil || len(c.jobs) != 3 {
		t.Fatalf("claim = %d jobs, %v", len(c.jobs), c.claimErr)
	}
	bad := c.jobs[1].m.ID
	if err := s.update(func(tx *bbolt.Tx) error { return tx.Bucket(bktMsg).Put([]byte(bad), []byte("garbage")) }); err != nil {
		t.Fatal(err)
	}
	var done []result
	for _, j := range c.jobs {
		done = append(done, result{j: j, o: outcome{state: StateDelivered}})
	}
	g := r.commit(done, 3)
	r.settle(done, g, nil)
	if g.failed[0] != nil || g.failed[1] == nil || g.failed[2] != nil || g.final[1] != StateActive {
		t.Fatalf("failed = %v, final = %v; want only the bad record failed", g.failed, g.final)
	}
	if g.claimErr != nil {
		t.Fatalf("claim after the records = %v", g.claimErr)
	}
	for _, id := range ids {
		if id == bad {
			continue
		}
		if m := mustGet(t, s, id); m.State != StateDelivered {
			t.Fatalf("good record %s = %s, want delivered", id, m.State)
		}
	}
	if s.isInflight(bad) || len(s.inflight) != 0 {
		t.Fatalf("in-flight set after the group = %v", s.inflight)
	}
	if cc, _ := s.CampaignCounts("c"); cc[StateActive] != 1 || cc[StateDelivered] != 2 {
		t.Fatalf("CampaignCounts = %v, want the bad one still active", cc)
	}
}

// A claim no worker started is given back as it was: state, next attempt and
// the reserved campaign-rate slot, the attempt undone.
func TestReleaseRestoresClaim(t *testing.T) {
	s := openTest(t, Config{})
	id := enqueue(t, s, msg("c", "a@example.com")).IDs[0]
	before := mustGet(t, s, id)
	slot := before.NextAttempt
	if err := s.update(func(tx *bbolt.Tx) error { // as if a campaign rate had reserved its slot
		b := s.buckets(tx)
		m, err := b.get(id)
		if err != nil {
			return err
		}
		prev := m
		m.RateSlot = slot
		return b.save(&m, &prev)
	}); err != nil {
		t.Fatal(err)
	}
	r := s.NewRunner(newFake(), newSup(), RunnerConfig{})
	c := r.commit(nil, 1)
	if len(c.jobs) != 1 || c.jobs[0].m.State != StateActive || c.jobs[0].m.Attempts != 0 {
		t.Fatalf("claim = %+v, %v", c.jobs, c.claimErr)
	}
	g := r.commit([]result{{j: c.jobs[0], skipped: true}}, 0)
	r.settle([]result{{j: c.jobs[0], skipped: true}}, g, nil)
	m := mustGet(t, s, id)
	if g.failed[0] != nil || m.State != StateReady || m.Attempts != 0 || !m.NextAttempt.Equal(slot) ||
		!m.RateSlot.Equal(slot) || len(m.History) != 0 {
		t.Fatalf("released = %+v (%v), want ready at %v with its slot, no attempt", m, g.failed[0], slot)
	}
	if s.isInflight(id) {
		t.Fatal("released message still in flight")
	}
	checkCounters(t, s)
}

// A result that finds no company is still recorded: while the workers have
// claimed jobs queued, a lone outcome waits for others only commitLinger, not
// until the next poll (an hour here) or until the other deliveries end.
func TestLoneOutcomeRecordedAfterLinger(t *testing.T) {
	s := openTest(t, Config{})
	d := &gateDeliverer{held: map[string]bool{}, gate: make(chan struct{}), bounce: map[string]error{}, calls: map[string]int{}}
	msgs := []NewMessage{msg("c", "free@example.com")} // enqueued first, so claimed first
	for i := range 40 {
		to := fmt.Sprintf("held%d@example.com", i)
		d.held[to] = true
		msgs = append(msgs, msg("c", to))
	}
	res := enqueue(t, s, msgs...)
	r := s.NewRunner(d, newSup(), RunnerConfig{Workers: 8, Poll: time.Hour})
	done := make(chan error, 1)
	go func() { done <- r.Drain(context.Background()) }()
	waitFor(t, "the lone outcome to be recorded", func() bool { return mustGet(t, s, res.IDs[0]).State == StateDelivered })
	for _, id := range res.IDs[1:] {
		if st := mustGet(t, s, id).State; st == StateDelivered {
			t.Fatalf("held message %s is %s before its delivery was let go", id, st)
		}
	}
	close(d.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, id := range res.IDs {
		if st := mustGet(t, s, id).State; st != StateDelivered {
			t.Fatalf("message %s is %s after the drain, want delivered", id, st)
		}
	}
}
