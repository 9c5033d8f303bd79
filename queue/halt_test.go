package queue

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// TestHaltFailsClosed: while Halt says why (a stale suppression replica),
// the runner starts no delivery and spends no attempt, even on messages due
// long ago; once Halt answers "" it resumes by itself and delivers each once.
func TestHaltFailsClosed(t *testing.T) {
	s := openTest(t, Config{})
	f := newFake()
	var stale atomic.Bool
	stale.Store(true)
	r := s.NewRunner(f, newSup(), RunnerConfig{Workers: 4, Poll: 20 * time.Millisecond,
		Halt: func() string {
			if stale.Load() {
				return "suppression replica not caught up for 31s"
			}
			return ""
		}})
	var msgs []NewMessage
	for i := range 10 {
		msgs = append(msgs, msg("c", fmt.Sprintf("r%d@example.com", i)))
	}
	res := enqueue(t, s, msgs...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	// Many poll rounds pass while halted.
	time.Sleep(300 * time.Millisecond)
	f.mu.Lock()
	calls := len(f.byID)
	f.mu.Unlock()
	if calls != 0 {
		t.Fatalf("%d deliveries started while halted", calls)
	}
	for _, id := range res.IDs {
		if m := mustGet(t, s, id); m.Attempts != 0 || m.State == StateDelivered {
			t.Fatalf("%s while halted: state %s, %d attempts", id, m.State, m.Attempts)
		}
	}
	stale.Store(false)
	deadline := time.Now().Add(30 * time.Second)
	for {
		f.mu.Lock()
		ok := f.ok
		f.mu.Unlock()
		if ok == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d delivered after the halt cleared", ok)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, id := range res.IDs {
		if m := mustGet(t, s, id); m.State != StateDelivered || f.byID[id] != 1 {
			t.Errorf("%s: %s, delivered %d times", id, m.State, f.byID[id])
		}
	}
}
