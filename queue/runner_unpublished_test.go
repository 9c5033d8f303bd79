package queue

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// A cluster node publishes each final outcome after its commit; a node lost
// for good has sent twice whatever was delivered and not yet published. The
// runner holds claimed and unrecorded messages within MaxUnrecorded, and
// with the unpublished within MaxUnsettled, however slow the publisher; a
// slow publisher gets the room of MaxUnpublished to batch in.
func TestUnpublishedCountsAgainstUnrecorded(t *testing.T) {
	const total, workers = 200, 4
	s := openTest(t, Config{})
	var mu sync.Mutex
	started, recorded, published, worst, worstUnrecorded := 0, 0, 0, 0, 0
	f := newFake()
	f.start = make(chan string)
	counted := make(chan struct{})
	go func() {
		defer close(counted)
		for range f.start {
			mu.Lock()
			started++
			worst = max(worst, started-published)
			worstUnrecorded = max(worstUnrecorded, started-recorded)
			mu.Unlock()
		}
	}()
	finals := make(chan Message, 4*total)
	var unpublished sync.Mutex
	pending := 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // a slow publisher
		for {
			select {
			case <-ctx.Done():
				return
			case <-finals:
			}
			time.Sleep(2 * time.Millisecond)
			mu.Lock()
			published++
			mu.Unlock()
			unpublished.Lock()
			pending--
			unpublished.Unlock()
			s.Kick()
		}
	}()
	r := s.NewRunner(f, newSup(), RunnerConfig{Workers: workers, Poll: 20 * time.Millisecond,
		OnFinal: func(m Message, _ State) {
			mu.Lock()
			recorded++
			mu.Unlock()
			unpublished.Lock()
			pending++
			unpublished.Unlock()
			finals <- m
		},
		Unpublished: func() int {
			unpublished.Lock()
			defer unpublished.Unlock()
			return pending
		}})
	var msgs []NewMessage
	for i := range total {
		msgs = append(msgs, msg("c", fmt.Sprintf("p%d@example.com", i)))
	}
	enqueue(t, s, msgs...)
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		done := published
		mu.Unlock()
		if done == total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d published", done, total)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v", err)
	}
	close(f.start)
	<-counted
	mu.Lock()
	defer mu.Unlock()
	if worst > MaxUnsettled(workers) {
		t.Fatalf("%d messages delivered or in delivery with their outcome unpublished, over MaxUnsettled(%d) = %d",
			worst, workers, MaxUnsettled(workers))
	}
	if worstUnrecorded > MaxUnrecorded(workers) {
		t.Fatalf("%d messages delivered or in delivery with their outcome unrecorded, over MaxUnrecorded(%d) = %d",
			worstUnrecorded, workers, MaxUnrecorded(workers))
	}
	if worst <= MaxUnrecorded(workers) {
		t.Fatalf("at most %d unpublished at once behind a slow publisher: the runner left it no room to batch (MaxUnpublished %d)",
			worst, MaxUnpublished)
	}
	if worst < 2 {
		t.Fatalf("at most %d at once: the runner never ran workers side by side", worst)
	}
}
