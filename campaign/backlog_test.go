package campaign

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// backlogQueue is a fakeQueue whose "runner" sends drain messages each time
// Send looks at the backlog, and which records the backlog at every Enqueue.
type backlogQueue struct {
	*fakeQueue
	mu        sync.Mutex
	drain     int
	sent      int
	looks     int
	campaigns map[string]bool
	atEnqueue []int // backlog just before each Enqueue
	full      bool  // report a backlog that never drains
}

func (q *backlogQueue) Backlog(campaign string) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.looks++
	q.campaigns[campaign] = true
	if q.full {
		return 1 << 30, nil
	}
	q.sent = min(q.sent+q.drain, q.fakeQueue.len())
	return q.fakeQueue.len() - q.sent, nil
}

func (q *backlogQueue) Enqueue(msgs []Message) (int, int, error) {
	q.mu.Lock()
	q.atEnqueue = append(q.atEnqueue, q.fakeQueue.len()-q.sent)
	q.mu.Unlock()
	return q.fakeQueue.Enqueue(msgs)
}

func rowsCSV(n int) string {
	var b strings.Builder
	b.WriteString("email,first_name,company\n")
	for i := range n {
		fmt.Fprintf(&b, "r%05d@example.com,R%d,Co%d\n", i, i, i)
	}
	return b.String()
}

// Send never lets the campaign's backlog reach MaxAhead before it enqueues a
// group, and still enqueues every row once the queue drains.
func TestSendHoldsToTheEnqueueWindow(t *testing.T) {
	spec := testSpec(t, rowsCSV(3000))
	spec.MaxAhead = 600
	q := &backlogQueue{fakeQueue: newFakeQueue(), drain: 50, campaigns: map[string]bool{}}
	deps := testDeps(q.fakeQueue, &fakeSuppressions{})
	deps.Queue, deps.Backlog = q, q
	sum, err := Send(context.Background(), spec, deps, nil)
	if err != nil || sum.Enqueued != 3000 {
		t.Fatalf("Send = %+v, %v", sum, err)
	}
	for i, n := range q.atEnqueue {
		if n >= spec.MaxAhead {
			t.Fatalf("Enqueue %d ran with a backlog of %d, window %d", i, n, spec.MaxAhead)
		}
	}
	if len(q.campaigns) != 1 || !q.campaigns[spec.ID] {
		t.Errorf("backlog asked for %v, want only %s", q.campaigns, spec.ID)
	}
	if q.looks <= len(q.atEnqueue) {
		t.Errorf("%d looks for %d enqueues: Send never waited", q.looks, len(q.atEnqueue))
	}
}

// A backlog that never drains holds Send until its context ends; nothing more
// is enqueued and the error says why.
func TestSendBacklogWaitEndsWithContext(t *testing.T) {
	spec := testSpec(t, rowsCSV(10))
	q := &backlogQueue{fakeQueue: newFakeQueue(), full: true, campaigns: map[string]bool{}}
	deps := testDeps(q.fakeQueue, &fakeSuppressions{})
	deps.Queue, deps.Backlog = q, q
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			q.mu.Lock()
			looked := q.looks > 2
			q.mu.Unlock()
			if looked {
				cancel()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	sum, err := Send(ctx, spec, deps, nil)
	if !errors.Is(err, context.Canceled) || sum.Enqueued != 0 || q.fakeQueue.len() != 0 {
		t.Fatalf("Send = %+v, %v; queue holds %d", sum, err, q.fakeQueue.len())
	}
}

func TestMaxAhead(t *testing.T) {
	for _, tc := range []struct{ in, want int }{
		{0, DefaultMaxAhead},
		{-5, DefaultMaxAhead},
		{1, 1},
		{300, 300},
	} {
		if got := maxAhead(tc.in); got != tc.want {
			t.Errorf("maxAhead(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
