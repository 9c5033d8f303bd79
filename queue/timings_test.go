package queue

import (
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Timings come back oldest first, per campaign and kind, after a reopen;
// two at the same instant both stay.
func TestCampaignTimings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for i, d := range []time.Duration{30 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			at := base.Add(time.Duration(i%2) * time.Minute) // the last two share an instant
			if i == 0 {
				at = base.Add(2 * time.Minute)
			}
			if err := s.AddCampaignTiming("c1", "unsubscribe", at, d); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := s.AddCampaignTiming("c2", "unsubscribe", base, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCampaignTiming("", "unsubscribe", base, time.Second); err == nil {
		t.Error("a timing of no campaign was kept")
	}
	s.Close()
	s = openTest(t, Config{Path: path})
	got, err := s.CampaignTimings("c1", "unsubscribe")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("c1 timings = %+v, want 3", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i].At.Before(got[i-1].At) {
			t.Errorf("timings out of order: %+v", got)
		}
	}
	if !got[2].At.Equal(base.Add(2*time.Minute)) || got[2].Took != 30*time.Millisecond {
		t.Errorf("last timing = %+v", got[2])
	}
	if other, _ := s.CampaignTimings("c2", "unsubscribe"); len(other) != 1 || other[0].Took != time.Second {
		t.Errorf("c2 timings = %+v", other)
	}
	if none, _ := s.CampaignTimings("c1", "other"); len(none) != 0 {
		t.Errorf("c1 timings of another kind = %+v", none)
	}
}
