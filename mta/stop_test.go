package mta

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// A wait for the domain's rate ends when DeliverUntil's stop ends: nothing
// reaches the server, the error says not an attempt (RetryAt, stage stopped),
// and the reservation is given back.
func TestDeliverUntilStopEndsRateWait(t *testing.T) {
	sink, err := mtatest.Start(mtatest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	s := newSender(t, Config{Mode: ModeMX, Routes: map[string]string{"slow.example": sink.Addr},
		Rates: map[string]float64{"slow.example": 1}}, false)
	mustDeliver(t, s, "q1", "ana@slow.example", msg) // the burst of 1: the next waits about 1 s

	stop, stopNow := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- s.DeliverUntil(context.Background(), stop, "q2", "b@example.com", "ana@slow.example", []byte(msg))
	}()
	time.Sleep(100 * time.Millisecond) // q2 waits for its slot
	stopNow()
	de := asDeliveryError(t, <-errc)
	if de.Stage != StageStopped || !de.Temporary() || de.RetryAt().IsZero() || !errors.Is(de, errStopped) ||
		!strings.Contains(de.Message, "rate limit") {
		t.Fatalf("stopped wait: %v (stage %s, retry at %v); want temporary, stage stopped, RetryAt set", de, de.Stage, de.RetryAt())
	}
	if got := sink.Count(); got != 1 {
		t.Fatalf("the sink got %d messages; the stopped wait must send nothing", got)
	}
	// q2's slot was given back: the bucket is not a token in debt.
	if tok := s.limiter("slow.example").TokensAt(s.now()); tok < -0.5 {
		t.Fatalf("%.2f tokens after the stopped wait: it kept its reservation", tok)
	}
}

// A domain's rate holds at the receiver while it stalls and after it recovers:
// deliveries queued for a session slot meanwhile take their token only once
// they hold the slot, so they do not all arrive at once on its recovery. The
// arrivals are timed at RCPT, before the stall, so the receiver's own
// slowness is not counted.
func TestDomainRateAfterStalledReceiver(t *testing.T) {
	var stalled atomic.Bool
	var mu sync.Mutex
	var arrivals []time.Time
	sink, err := mtatest.Start(mtatest.Options{Rcpt: func(string, int) error {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		for stalled.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	const perSecond, n = 10, 60
	s := newSender(t, Config{Mode: ModeMX, Routes: map[string]string{"slow.example": sink.Addr},
		ConcurrencyPerDomain: 2, Rates: map[string]float64{"slow.example": perSecond}}, false)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for {
				err := s.Deliver(context.Background(), fmt.Sprint("q", i), "b@example.com", "ana@slow.example", []byte(msg))
				var de *DeliveryError
				if errors.As(err, &de) && !de.RetryAt().IsZero() {
					time.Sleep(time.Until(de.RetryAt())) // what the queue does: not an attempt, wait
					continue
				}
				if err != nil {
					t.Error(err)
				}
				return
			}
		})
	}
	time.Sleep(1500 * time.Millisecond)
	stalled.Store(true)
	time.Sleep(2500 * time.Millisecond)
	stalled.Store(false)
	wg.Wait()
	mu.Lock()
	at := append([]time.Time(nil), arrivals...)
	mu.Unlock()
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	most, j := 0, 0
	for i := range at {
		for at[i].Sub(at[j]) >= time.Second {
			j++
		}
		most = max(most, i-j+1)
	}
	if limit := 2*perSecond + 1; most > limit {
		t.Fatalf("the busiest second carried %d arrivals; rate %d/s plus its burst allows %d", most, perSecond, limit)
	}
	t.Logf("busiest second: %d arrivals of %d", most, len(at))
}
