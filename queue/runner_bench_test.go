package queue

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// nopDeliverer accepts every message at once, or after wait (a remote's
// latency), reporting source and provider.
type nopDeliverer struct {
	wait             time.Duration
	source, provider string
}

func (d nopDeliverer) DeliverVia(ctx, _ context.Context, id, from, to string, body []byte, _, _ string) (string, string, string, string, error) {
	if d.wait > 0 {
		time.Sleep(d.wait)
	}
	return d.source, d.provider, "", "", nil
}

// openList suppresses nobody.
type openList struct{}

func (openList) Check(addr, list string) (string, bool, error)                 { return "", false, nil }
func (openList) SuppressAddress(addr, list, reason, source, note string) error { return nil }

// BenchmarkRunnerDrain enqueues b.N small messages and drains them: "instant"
// measures the runner's own cost per message (claims, records, commits),
// "smtp-1ms" a remote answering in 1ms, where workers must not wait on commits,
// "instant-sourced" the first with a source and provider reported.
func BenchmarkRunnerDrain(b *testing.B) {
	for _, bc := range []struct {
		name    string
		d       Deliverer
		workers int
	}{
		{"instant", nopDeliverer{}, 16},
		{"smtp-1ms", nopDeliverer{wait: time.Millisecond}, 64},
		// A source and a provider reported: their counters and the warm-up ledger.
		{"instant-sourced", nopDeliverer{source: "ip1", provider: "microsoft"}, 16},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := openTest(b, Config{})
			const group = 1000
			for i := 0; i < b.N; i += group {
				msgs := make([]NewMessage, 0, group)
				for j := i; j < min(i+group, b.N); j++ {
					msgs = append(msgs, msg("bench", fmt.Sprintf("u%d@example.com", j)))
				}
				enqueue(b, s, msgs...)
			}
			r := s.NewRunner(bc.d, openList{}, RunnerConfig{Workers: bc.workers, Campaign: "bench"})
			b.ReportAllocs()
			b.ResetTimer()
			if err := r.Drain(context.Background()); err != nil {
				b.Fatalf("Drain: %v", err)
			}
			b.StopTimer()
			if cc, err := s.CampaignCounts("bench"); err != nil || cc[StateDelivered] != b.N {
				b.Fatalf("CampaignCounts = %v, %v; want %d delivered", cc, err, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
