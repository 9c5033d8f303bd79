package queue

import (
	"path/filepath"
	"testing"
)

// A paused campaign holds its messages, those enqueued after the pause too,
// with no attempt spent, across a reopening; a resume delivers them; a
// domain suspension is not a pause.
func TestPauseCampaign(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	before := enqueue(t, s, msg("c1", "ana@example.org")).IDs[0]
	if err := s.PauseCampaign("c1", "brake: hard_bounce_rate 10% > 5% after 500 attempted"); err != nil {
		t.Fatal(err)
	}
	after := enqueue(t, s, msg("c1", "bob@example.org")).IDs[0]
	other := enqueue(t, s, msg("c2", "carol@example.org")).IDs[0]
	if !s.CampaignPaused("c1") || s.CampaignPaused("c2") {
		t.Fatal("paused: want c1 only")
	}
	if err := s.Suspend(Selector{Campaign: "c2"}, PausedUntil.AddDate(-100, 0, 0), "an hour's suspension is no pause"); err != nil {
		t.Fatal(err)
	}
	if s.CampaignPaused("c2") {
		t.Fatal("a shorter campaign suspension counts as a pause")
	}
	s.Resume(Selector{Campaign: "c2"})
	f := newFake()
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	for _, id := range []string{before, after} {
		if m := mustGet(t, s, id); m.State != StateDeferred || m.Attempts != 0 {
			t.Fatalf("paused message %s: %s, %d attempts", id, m.State, m.Attempts)
		}
	}
	if m := mustGet(t, s, other); m.State != StateDelivered {
		t.Fatalf("other campaign: %s", m.State)
	}
	s.Close()
	s = openTest(t, Config{Path: path})
	if !s.CampaignPaused("c1") {
		t.Fatal("the pause did not survive a reopening")
	}
	if ok, err := s.ResumeCampaign("c1"); !ok || err != nil {
		t.Fatalf("ResumeCampaign = %v, %v", ok, err)
	}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	for _, id := range []string{before, after} {
		if m := mustGet(t, s, id); m.State != StateDelivered {
			t.Fatalf("resumed message %s: %s", id, m.State)
		}
	}
}
