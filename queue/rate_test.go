package queue

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startLog is a Deliverer that records when each delivery started.
type startLog struct {
	mu    sync.Mutex
	times []time.Time
	delay time.Duration // each delivery takes this long
}

func (d *startLog) DeliverVia(ctx, _ context.Context, id, from, to string, body []byte, _, _ string) (string, string, string, string, error) {
	d.mu.Lock()
	d.times = append(d.times, time.Now())
	d.mu.Unlock()
	if d.delay > 0 {
		time.Sleep(d.delay)
	}
	return "", "", "", "", nil
}

func (d *startLog) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.times)
}

// busiestSecond is the most starts any window of one second holds.
func (d *startLog) busiestSecond() int {
	d.mu.Lock()
	ts := append([]time.Time(nil), d.times...)
	d.mu.Unlock()
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	most, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= time.Second {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

// runFor runs r until the deliverer has seen n deliveries, then stops it.
func runFor(t *testing.T, r *Runner, d *startLog, n int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(t, fmt.Sprintf("%d deliveries", n), func() bool { return d.count() >= n })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A campaign's rate holds at the deliverer across a restart: the slots the
// first process reserved, fallen due while it was down, do not all go at once.
func TestCampaignRateAcrossRestart(t *testing.T) {
	const perSecond, n = 100, 400
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	if err := s.SetCampaignRate("c", perSecond); err != nil {
		t.Fatal(err)
	}
	var batch []NewMessage
	for i := range n {
		batch = append(batch, msg("c", fmt.Sprintf("u%d@example.com", i)))
	}
	enqueue(t, s, batch...)
	d := &startLog{}
	runFor(t, s.NewRunner(d, newSup(), RunnerConfig{Workers: 8}), d, perSecond+perSecond/2)
	s.Close()
	time.Sleep(2 * time.Second) // a down time: two seconds' worth of reserved slots fall due

	s2 := openTest(t, Config{Path: path})
	runFor(t, s2.NewRunner(d, newSup(), RunnerConfig{Workers: 8}), d, n)
	// RFC-free promise of the rate: no second carries more than the rate
	// plus its burst (one second's worth); a little slack for timer jitter.
	if got, most := d.busiestSecond(), 2*perSecond+perSecond/10; got > most {
		t.Fatalf("busiest second carried %d deliveries; the rate %d/s allows %d", got, perSecond, most)
	}
	if cc, _ := s2.CampaignCounts("c"); cc[StateDelivered] != n {
		t.Fatalf("counts = %v", cc)
	}
}

// slowDeliverer starts one delivery, announced on started, and holds it until
// its context ends; later calls succeed at once.
type slowDeliverer struct {
	started chan string
	mu      sync.Mutex
	calls   int
}

func (d *slowDeliverer) DeliverVia(ctx, _ context.Context, id, from, to string, body []byte, _, _ string) (string, string, string, string, error) {
	d.mu.Lock()
	d.calls++
	first := d.calls == 1
	d.mu.Unlock()
	if !first {
		return "", "", "", "", nil
	}
	d.started <- id
	<-ctx.Done()
	return "", "", "", "", ctx.Err()
}

// A stopped runner waits for a slow delivery only until DrainTimeout, then
// returns it to the queue, due at once: it is delivered by the next runner,
// and nothing else started after the stop.
func TestDrainTimeoutReturnsInFlight(t *testing.T) {
	s := openTest(t, Config{})
	var batch []NewMessage
	for i := range 5 {
		batch = append(batch, msg("c", fmt.Sprintf("u%d@example.com", i)))
	}
	enqueue(t, s, batch...)
	d := &slowDeliverer{started: make(chan string, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.NewRunner(d, newSup(), RunnerConfig{Workers: 1, DrainTimeout: 300 * time.Millisecond}).Run(ctx)
	}()
	id := <-d.started
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within its drain timeout")
	}
	m := mustGet(t, s, id)
	if m.State != StateReady || m.Attempts != 1 || m.NextAttempt.After(time.Now()) {
		t.Fatalf("cut-off delivery = %s, %d attempts, next %v; want ready now after 1 attempt", m.State, m.Attempts, m.NextAttempt)
	}
	if d.calls != 1 {
		t.Fatalf("%d deliveries started; want only the one in flight at the stop", d.calls)
	}
	drain(t, s.NewRunner(d, newSup(), RunnerConfig{Workers: 1}))
	if m := mustGet(t, s, id); m.State != StateDelivered {
		t.Fatalf("after restart: %s", m.State)
	}
	if cc, _ := s.CampaignCounts("c"); cc[StateDelivered] != 5 {
		t.Fatalf("counts = %v", cc)
	}
}

// deferAll is a Deliverer that fails every delivery temporarily.
type deferAll struct{}

func (deferAll) DeliverVia(ctx, _ context.Context, id, from, to string, body []byte, _, _ string) (string, string, string, string, error) {
	return "", "", "", "", &smtpErr{451, "4.3.0", "try later"}
}

// checkRate fails t if a second of d's starts carried more than perSecond
// plus its burst (one second's worth). The slack is the dispatcher's own
// lateness on a loaded machine: a slot may be claimed up to slotGrace late,
// and a claimed job may wait for a worker.
func checkRate(t *testing.T, d *startLog, perSecond int) {
	t.Helper()
	got, most := d.busiestSecond(), 2*perSecond+perSecond/5
	if got > most {
		t.Fatalf("busiest second carried %d deliveries; the rate %d/s allows %d", got, perSecond, most)
	}
	t.Logf("busiest second: %d deliveries (rate %d/s, at most %d)", got, perSecond, most)
}

// runBeside starts r and returns its stop, which waits for Run to return.
func runBeside(t *testing.T, r *Runner) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// rateBacklog opens a store with campaign "c" at perSecond and n messages of it.
func rateBacklog(t *testing.T, perSecond, n int) *Store {
	t.Helper()
	s := openTest(t, Config{})
	if err := s.SetCampaignRate("c", float64(perSecond)); err != nil {
		t.Fatal(err)
	}
	var batch []NewMessage
	for i := range n {
		batch = append(batch, msg("c", fmt.Sprintf("u%d@example.com", i)))
	}
	enqueue(t, s, batch...)
	return s
}

// allIDs is every message id of campaign "c".
func allIDs(t *testing.T, s *Store) []string {
	t.Helper()
	ids, err := s.AllIDs(Filter{Campaign: "c"})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// `queue retry ALL` on a deferred backlog makes it due at once; the campaign's
// rate still spaces it at the deliverer.
func TestCampaignRateAfterRetryAll(t *testing.T) {
	const perSecond, n = 100, 300
	s := rateBacklog(t, perSecond, n)
	drain(t, s.NewRunner(deferAll{}, newSup(), RunnerConfig{Workers: 8})) // every message deferred
	if cc, _ := s.CampaignCounts("c"); cc[StateDeferred] != n {
		t.Fatalf("counts = %v; want all deferred", cc)
	}
	time.Sleep(time.Second) // the bucket refills: a full burst is allowed, no more
	d := &startLog{}
	stop := runBeside(t, s.NewRunner(d, newSup(), RunnerConfig{Workers: 8}))
	if _, err := s.Retry(allIDs(t, s)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every delivery", func() bool { return d.count() >= n })
	stop()
	checkRate(t, d, perSecond)
}

// `queue hold` then `queue release` of a backlog the rate had spread out:
// released at once, it is spaced again.
func TestCampaignRateAfterHoldRelease(t *testing.T) {
	const perSecond, n = 100, 400
	s := rateBacklog(t, perSecond, n)
	d := &startLog{}
	stop := runBeside(t, s.NewRunner(d, newSup(), RunnerConfig{Workers: 8}))
	waitFor(t, "deliveries to start", func() bool { return d.count() >= perSecond })
	if _, err := s.Hold(allIDs(t, s)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the held messages' slots pass
	if _, err := s.Release(allIDs(t, s)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every delivery", func() bool { return d.count() >= n })
	stop()
	checkRate(t, d, perSecond)
}

// A campaign suspended mid-send and resumed: the messages the suspension held
// are due at once and spaced by the rate again.
func TestCampaignRateAfterResume(t *testing.T) {
	const perSecond, n = 100, 400
	s := rateBacklog(t, perSecond, n)
	d := &startLog{}
	stop := runBeside(t, s.NewRunner(d, newSup(), RunnerConfig{Workers: 8}))
	waitFor(t, "deliveries to start", func() bool { return d.count() >= perSecond })
	sel := Selector{Campaign: "c"}
	if err := s.Suspend(sel, time.Now().Add(time.Hour), "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the suspension to hold the rest", func() bool {
		cc, _ := s.CampaignCounts("c")
		return cc[StateDeferred]+cc[StateDelivered] == n
	})
	if _, err := s.Resume(sel); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every delivery", func() bool { return d.count() >= n })
	stop()
	checkRate(t, d, perSecond)
}

// A message the rate spread out and made due again before its slot (retry,
// release, resume: each sets only NextAttempt) keeps the slot: it takes no
// second token, so the slot is not wasted, and it goes no earlier.
func TestMadeDueAgainKeepsRateSlot(t *testing.T) {
	const perSecond, n = 10, 40
	s := rateBacklog(t, perSecond, n)
	clk := newClock()
	r := s.NewRunner(newFake(), newSup(), RunnerConfig{Now: clk.Now})
	if msgs, _, _, err := r.claim(n); err != nil || len(msgs) != perSecond {
		t.Fatalf("claim: %d messages, %v; want the burst of %d", len(msgs), err, perSecond)
	}
	slots := map[string]time.Time{}
	var ids []string
	for _, id := range allIDs(t, s) {
		if m := mustGet(t, s, id); m.State == StateReady {
			slots[id] = m.RateSlot
			ids = append(ids, id)
		}
	}
	if len(ids) != n-perSecond {
		t.Fatalf("%d messages wait for a slot, want %d", len(ids), n-perSecond)
	}
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"retry", func() error { _, err := s.Retry(ids); return err }},
		{"hold, release", func() error {
			if _, err := s.Hold(ids); err != nil {
				return err
			}
			_, err := s.Release(ids)
			return err
		}},
	} {
		if err := op.do(); err != nil {
			t.Fatal(err)
		}
		if msgs, _, _, err := r.claim(n); err != nil || len(msgs) != 0 {
			t.Fatalf("after %s: claimed %d, %v; want none before their slots", op.name, len(msgs), err)
		}
		for _, id := range ids {
			if m := mustGet(t, s, id); !m.NextAttempt.Equal(slots[id]) || !m.RateSlot.Equal(slots[id]) {
				t.Fatalf("after %s: %s waits until %v (slot %v); want its slot %v", op.name, id, m.NextAttempt, m.RateSlot, slots[id])
			}
		}
	}
}

// phased is a startLog whose deliveries take slow each while slowed is set: a
// receiving server that stalls for a while, then recovers.
type phased struct {
	startLog
	slowed atomic.Bool
	slow   time.Duration
}

func (d *phased) DeliverVia(ctx, _ context.Context, id, from, to string, body []byte, _, _ string) (string, string, string, string, error) {
	d.startLog.DeliverVia(ctx, ctx, id, from, to, body, "", "")
	if d.slowed.Load() {
		time.Sleep(d.slow)
	}
	return "", "", "", "", nil
}

// A receiving server that slows below the campaign's rate and then recovers:
// the slots that fell due while it was slow do not all go at once when it
// recovers, on top of the slots falling due then.
func TestCampaignRateAfterSlowReceiver(t *testing.T) {
	const perSecond, n = 100, 700
	s := rateBacklog(t, perSecond, n)
	d := &phased{slow: 200 * time.Millisecond} // 8 workers: 40/s while slow
	stop := runBeside(t, s.NewRunner(d, newSup(), RunnerConfig{Workers: 8}))
	waitFor(t, "deliveries to start", func() bool { return d.count() >= 2*perSecond })
	d.slowed.Store(true)
	time.Sleep(2500 * time.Millisecond) // about 150 slots fall due unclaimed
	d.slowed.Store(false)
	waitFor(t, "every delivery", func() bool { return d.count() >= n })
	stop()
	checkRate(t, &d.startLog, perSecond)
}
