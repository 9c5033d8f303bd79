package queue

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"
)

// startLog is a Deliverer that records when each delivery started.
type startLog struct {
	mu    sync.Mutex
	times []time.Time
	delay time.Duration // each delivery takes this long
}

func (d *startLog) Deliver(ctx context.Context, id, from, to string, body []byte) error {
	d.mu.Lock()
	d.times = append(d.times, time.Now())
	d.mu.Unlock()
	if d.delay > 0 {
		time.Sleep(d.delay)
	}
	return nil
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

func (d *slowDeliverer) Deliver(ctx context.Context, id, from, to string, body []byte) error {
	d.mu.Lock()
	d.calls++
	first := d.calls == 1
	d.mu.Unlock()
	if !first {
		return nil
	}
	d.started <- id
	<-ctx.Done()
	return ctx.Err()
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
