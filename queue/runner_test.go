package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/address"
)

func TestTemporaryThenDelivered(t *testing.T) {
	s := openTest(t, Config{})
	f := newFake()
	f.script["ana@example.com"] = []error{&smtpErr{451, "4.3.0", "greylisted"}}
	id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
	clk := newClock()
	r := s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now})

	drain(t, r)
	m := mustGet(t, s, id)
	if m.State != StateDeferred || m.Attempts != 1 || !strings.Contains(m.LastReply, "greylisted") || len(m.History) != 1 {
		t.Fatalf("after temporary failure = %+v", m)
	}
	// First retry waits Retry[0] = 5m ±10%.
	if d := m.NextAttempt.Sub(clk.Now()); d < 270*time.Second || d > 330*time.Second {
		t.Fatalf("next attempt in %v, want 5m±10%%", d)
	}
	drain(t, r) // not due yet
	if f.count("ana@example.com") != 1 {
		t.Fatal("deferred message retried before its time")
	}
	clk.Advance(6 * time.Minute)
	drain(t, r)
	m = mustGet(t, s, id)
	if m.State != StateDelivered || m.Attempts != 2 || len(m.History) != 2 || m.History[1].Outcome != "delivered" {
		t.Fatalf("after retry = %+v", m)
	}
	if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("body kept after delivery: %v", err)
	}
}

func TestUnknownErrorIsTemporary(t *testing.T) {
	s := openTest(t, Config{})
	f := newFake()
	f.script["ana@example.com"] = []error{errors.New("dial tcp: connection refused")}
	id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	if m := mustGet(t, s, id); m.State != StateDeferred {
		t.Fatalf("state = %s, want deferred", m.State)
	}
}

func TestPermanentFailures(t *testing.T) {
	cases := []struct {
		name     string
		err      error
		suppress bool
	}{
		{"bad mailbox 5.1.1", &smtpErr{550, "5.1.1", "<ana@example.com>: no such user"}, true},
		{"bad domain 5.1.2", fmt.Errorf("deliver: %w", &smtpErr{550, "5.1.2", "no such domain"}), true},
		{"policy 5.7.1", &smtpErr{550, "5.7.1", "blocked as spam"}, false},
		{"mailbox full 5.2.2", &smtpErr{552, "5.2.2", "over quota"}, false},
		{"our sender 5.1.8", &smtpErr{553, "5.1.8", "sender domain does not resolve"}, false},
		{"our sender 5.1.7", &smtpErr{553, "5.1.7", "bad sender address syntax"}, false},
		{"5.1.1 in reply to MAIL FROM", &stagedErr{smtpErr{550, "5.1.1", "sender unknown"}, "mail"}, false},
		{"5.1.1 in reply to RCPT TO", &stagedErr{smtpErr{550, "5.1.1", "user unknown"}, "rcpt"}, true},
		// One rule with DSNs (mta/bounce.Classify): disabled is not gone, a generic code's text counts.
		{"disabled 5.2.1 at RCPT", &stagedErr{smtpErr{550, "5.2.1", "mailbox disabled"}, "rcpt"}, false},
		{"unroutable 5.4.4 at RCPT", &stagedErr{smtpErr{550, "5.4.4", "unable to route"}, "rcpt"}, false},
		{"generic 5.0.0 user unknown at RCPT", &stagedErr{smtpErr{550, "5.0.0", "User unknown"}, "rcpt"}, true},
		{"no HardBounce: never suppresses", permErr("550 5.1.1 no such user"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, Config{})
			f, sup := newFake(), newSup()
			f.script["ana@example.com"] = []error{tc.err}
			id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
			drain(t, s.NewRunner(f, sup, RunnerConfig{}))
			m := mustGet(t, s, id)
			if m.State != StateBounced || m.LastReply != tc.err.Error() {
				t.Fatalf("message = %+v, want bounced", m)
			}
			if !tc.suppress {
				if len(sup.calls) != 0 {
					t.Fatalf("suppressed on %s: %+v", tc.name, sup.calls)
				}
				return
			}
			want := suppressCall{"ana@example.com", "", "hard_bounce", "bounce", tc.err.Error()}
			if len(sup.calls) != 1 || sup.calls[0] != want {
				t.Fatalf("SuppressAddress calls = %+v, want %+v", sup.calls, want)
			}
		})
	}
}

func TestSuppressedAtDequeue(t *testing.T) {
	s := openTest(t, Config{})
	f, sup := newFake(), newSup()
	id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
	sup.list["ana@example.com"] = "unsubscribed" // arrives while the message waits
	drain(t, s.NewRunner(f, sup, RunnerConfig{}))
	m := mustGet(t, s, id)
	if m.State != StateCancelled || m.Reason != "suppressed: unsubscribed" {
		t.Fatalf("message = %+v", m)
	}
	if f.count("ana@example.com") != 0 {
		t.Fatal("suppressed address was mailed")
	}
	if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
		t.Fatal("body kept for a cancelled message")
	}
}

func TestMaxAge(t *testing.T) {
	t.Run("expired before an attempt", func(t *testing.T) {
		s := openTest(t, Config{MaxAge: time.Hour})
		f := newFake()
		id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
		clk := newClock()
		clk.Advance(2 * time.Hour)
		drain(t, s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now}))
		m := mustGet(t, s, id)
		if m.State != StateExpired || f.count("ana@example.com") != 0 {
			t.Fatalf("message = %+v, calls %d", m, f.count("ana@example.com"))
		}
		if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
			t.Fatal("body kept for an expired message")
		}
	})
	t.Run("next attempt past max age", func(t *testing.T) {
		s := openTest(t, Config{MaxAge: time.Hour, Retry: []time.Duration{2 * time.Hour}})
		f := newFake()
		f.script["ana@example.com"] = []error{&smtpErr{451, "4.4.1", "timeout"}}
		id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
		drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
		if m := mustGet(t, s, id); m.State != StateExpired || m.Attempts != 1 {
			t.Fatalf("message = %+v, want expired after one attempt", m)
		}
	})
}

func TestBackoffSchedule(t *testing.T) {
	s := openTest(t, Config{Retry: []time.Duration{time.Minute, 10 * time.Minute}})
	for _, c := range []struct {
		attempt int
		base    time.Duration
	}{{1, time.Minute}, {2, 10 * time.Minute}, {3, 10 * time.Minute}, {40, 10 * time.Minute}} {
		for range 50 {
			d := s.backoff(c.attempt)
			if d < c.base*9/10 || d > c.base*11/10 {
				t.Fatalf("backoff(%d) = %v, want %v ±10%%", c.attempt, d, c.base)
			}
		}
	}
}

func TestCrashRecovery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := Open(Config{Box: testBox, Path: path}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
	f := newFake()

	// Claim it as a dispatcher would, then "crash": close without recording an outcome.
	crash := func(s *Store) {
		t.Helper()
		msgs, _, _, err := s.NewRunner(f, newSup(), RunnerConfig{}).claim(1)
		if err != nil || len(msgs) != 1 || msgs[0].ID != id {
			t.Fatalf("claim = %v, %v", msgs, err)
		}
		if m := mustGet(t, s, id); m.State != StateActive {
			t.Fatalf("claimed state = %s, want active (recorded before delivery)", m.State)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	crash(s)

	s, err = Open(Config{Box: testBox, Path: path}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	m := mustGet(t, s, id)
	// Never handed to the Deliverer: no attempt is counted.
	if m.State != StateReady || m.Recoveries != 1 || m.Attempts != 0 || m.NextAttempt.After(time.Now()) {
		t.Fatalf("after first crash = %+v, want ready now", m)
	}
	crash(s)

	s, err = Open(Config{Box: testBox, Path: path}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m = mustGet(t, s, id)
	if m.State != StateDeferred || m.Recoveries != 2 || !m.NextAttempt.After(time.Now()) {
		t.Fatalf("after second crash = %+v, want deferred to its schedule", m)
	}
	clk := newClock()
	r := s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now})
	drain(t, r)
	if f.count("ana@example.com") != 0 {
		t.Fatal("message that crashed twice was retried before its schedule")
	}
	clk.Advance(time.Hour)
	drain(t, r)
	if m := mustGet(t, s, id); m.State != StateDelivered || f.count("ana@example.com") != 1 || m.Attempts != 1 {
		t.Fatalf("after schedule = %+v, want delivered after its one attempt", m)
	}
}

func TestRunStopsCleanly(t *testing.T) {
	s := openTest(t, Config{})
	f := newFake()
	f.block = make(chan struct{})
	f.start = make(chan string, 4)
	ids := enqueue(t, s, msg("c", "a@example.com"), msg("c", "b@example.com")).IDs
	r := s.NewRunner(f, newSup(), RunnerConfig{Workers: 1})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()

	first := <-f.start // one delivery in flight
	cancel()
	close(f.block)
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v", err)
	}
	// Run returned only after the in-flight outcome was committed, and started nothing new.
	if m := mustGet(t, s, first); m.State != StateDelivered {
		t.Fatalf("in-flight message = %+v, want delivered", m)
	}
	other := ids[0]
	if other == first {
		other = ids[1]
	}
	if m := mustGet(t, s, other); m.State != StateReady || m.Attempts != 0 {
		t.Fatalf("other message = %+v, want untouched", m)
	}
}

func TestDrainCampaignFilter(t *testing.T) {
	s := openTest(t, Config{})
	f := newFake()
	enqueue(t, s, msg("mine", "a@example.com"), msg("other", "b@example.com"))
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Campaign: "mine"}))
	if f.count("a@example.com") != 1 || f.count("b@example.com") != 0 {
		t.Fatalf("calls = %v", f.calls)
	}
	if cc, _ := s.CampaignCounts("other"); cc[StateReady] != 1 {
		t.Fatalf("other campaign = %v", cc)
	}
}

func TestRunnerNeedsParts(t *testing.T) {
	s := openTest(t, Config{})
	if err := s.NewRunner(nil, newSup(), RunnerConfig{}).Drain(context.Background()); err == nil {
		t.Fatal("Drain without a Deliverer succeeded")
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func TestLogsMaskAddresses(t *testing.T) {
	var buf syncBuffer
	s, err := Open(Config{Box: testBox, Path: filepath.Join(t.TempDir(), "queue.db")}, zerolog.New(&buf))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := newFake()
	f.script["Secret.Person@example.com"] = []error{&smtpErr{550, "5.1.1", "<secret.person@EXAMPLE.com>: unknown"}}
	enqueue(t, s, msg("c", "Secret.Person@example.com"))
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	out := buf.b.String()
	if !strings.Contains(out, `"outcome":"bounced"`) || !strings.Contains(out, "S***@example.com") {
		t.Fatalf("log lacks the attempt line: %s", out)
	}
	if strings.Contains(strings.ToLower(out), "secret.person") {
		t.Fatalf("log leaks the address: %s", out)
	}
}

func TestConcurrentDeliveryExactlyOnce(t *testing.T) {
	const total = 2000
	s := openTest(t, Config{Retry: []time.Duration{time.Nanosecond}})
	f := newFake()
	all := make(chan struct{})
	f.onOK = func(n int) {
		if n == total {
			close(all)
		}
	}
	for i := 0; i < total; i += 7 { // some recipients fail once, temporarily
		f.script[fmt.Sprintf("u%d@example.com", i)] = []error{&smtpErr{421, "4.7.0", "slow down"}}
	}
	r := s.NewRunner(f, newSup(), RunnerConfig{Workers: 8, Poll: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()

	var wg sync.WaitGroup
	for g := 0; g < total; g += 250 { // concurrent producers, each kicking the runner
		wg.Go(func() {
			var msgs []NewMessage
			for i := g; i < g+250; i++ {
				msgs = append(msgs, msg("c", fmt.Sprintf("u%d@example.com", i)))
			}
			if _, err := s.Enqueue(msgs); err != nil {
				t.Errorf("Enqueue: %v", err)
			}
		})
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(120 * time.Second):
		t.Fatal("not every message was delivered")
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v", err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.byID) != total {
		t.Fatalf("%d distinct ids delivered, want %d", len(f.byID), total)
	}
	for i := 0; i < total; i++ {
		to := fmt.Sprintf("u%d@example.com", i)
		want := 1
		if i%7 == 0 {
			want = 2
		}
		if f.calls[to] != want {
			t.Fatalf("%s called %d times, want %d", to, f.calls[to], want)
		}
	}
	cc, err := s.CampaignCounts("c")
	if err != nil || cc[StateDelivered] != total || len(cc) != 1 {
		t.Fatalf("CampaignCounts = %v, %v", cc, err)
	}
}

func TestDrainManyWorkers(t *testing.T) {
	s := openTest(t, Config{})
	f := newFake()
	var msgs []NewMessage
	for i := range 2000 {
		msgs = append(msgs, msg("c", fmt.Sprintf("d%d@example.com", i)))
	}
	for i := 0; i < len(msgs); i += 256 {
		enqueue(t, s, msgs[i:min(i+256, len(msgs))]...)
	}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Workers: 8}))
	for id, n := range f.byID {
		if n != 1 {
			t.Fatalf("%s delivered %d times", id, n)
		}
	}
	if st, _ := s.Stats(); st.ByState[StateDelivered] != 2000 || len(f.byID) != 2000 {
		t.Fatalf("stats = %+v, distinct = %d", st, len(f.byID))
	}
}

func TestScrub(t *testing.T) {
	got := address.MaskText("550 5.1.1 <ANA@Example.com>: unknown; ana@example.com")
	if strings.Contains(strings.ToLower(got), "ana@") || !strings.Contains(got, "a***@example.com") {
		t.Fatalf("scrub = %q", got)
	}
}
