package mta

import (
	"context"
	"errors"
	"strings"
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
