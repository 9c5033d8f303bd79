package queue

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// A hard or soft "failed" report turns a delivered message into a bounced one;
// a delayed report, a complaint and a report about a pending message only add
// a history event; unknown ids give ErrNotFound.
func TestRecordBounce(t *testing.T) {
	s := openTest(t, Config{})
	res := enqueue(t, s, msg("c1", "ana@acme.example"), msg("c1", "bob@acme.example"), msg("c1", "cy@acme.example"))
	ana, bob, cy := res.IDs[0], res.IDs[1], res.IDs[2]
	if _, err := s.Hold([]string{cy}); err != nil {
		t.Fatal(err)
	}
	drain(t, s.NewRunner(newFake(), newSup(), RunnerConfig{Workers: 2}))

	m, err := s.RecordBounce(ana, BounceRecord{Recipient: "ana@acme.example", Status: "4.4.7", Action: "delayed",
		Diagnostic: "smtp; 451 4.4.7 try later", Kind: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	if m.State != StateDelivered || m.To != "ana@acme.example" || m.Campaign != "c1" || m.List != "news" {
		t.Errorf("after delayed: %+v", m)
	}
	m, err = s.RecordBounce(ana, BounceRecord{Status: "5.1.1", Action: "failed", Diagnostic: "550 5.1.1 no such user",
		RemoteMTA: "mx.acme.example", Kind: "hard"})
	if err != nil {
		t.Fatal(err)
	}
	if m.State != StateBounced || !strings.Contains(m.Reason, "5.1.1") {
		t.Errorf("after hard failed: state %s reason %q", m.State, m.Reason)
	}
	got := mustGet(t, s, ana)
	last := got.History[len(got.History)-1]
	if got.State != StateBounced || last.Outcome != "bounce-hard" || last.Reply != "5.1.1 550 5.1.1 no such user" || last.Remote != "mx.acme.example" {
		t.Errorf("stored: state %s, last event %+v", got.State, last)
	}
	if n := len(got.History); got.History[n-2].Outcome != "bounce-soft" {
		t.Errorf("delayed report not in history: %+v", got.History)
	}

	if m, err = s.RecordBounce(bob, BounceRecord{Kind: "complaint"}); err != nil || m.State != StateDelivered {
		t.Errorf("complaint: %v, state %s", err, m.State)
	}
	if m, err = s.RecordBounce(cy, BounceRecord{Status: "5.1.1", Action: "failed", Kind: "hard"}); err != nil || m.State != StateHeld {
		t.Errorf("report on a held message: %v, state %s", err, m.State)
	}
	if _, err := s.RecordBounce("ffffffffffffffff", BounceRecord{Kind: "hard", Action: "failed"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	counts, err := s.CampaignCounts("c1")
	if err != nil || counts[StateBounced] != 1 || counts[StateDelivered] != 1 || counts[StateHeld] != 1 {
		t.Errorf("campaign counts %v, %v", counts, err)
	}
}

// A flood of reports does not grow a record without bound.
func TestRecordBounceBounded(t *testing.T) {
	s := openTest(t, Config{})
	id := enqueue(t, s, msg("c1", "ana@acme.example")).IDs[0]
	long := strings.Repeat("x", 5000)
	for i := range maxHistoryLen + 20 { // each report different: a repeat adds nothing anyway
		if _, err := s.RecordBounce(id, BounceRecord{Kind: "unknown", Diagnostic: fmt.Sprint(i, long), Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	m := mustGet(t, s, id)
	if len(m.History) != maxHistoryLen {
		t.Errorf("history has %d events, want %d", len(m.History), maxHistoryLen)
	}
	for _, a := range m.History {
		if len(a.Reply) > maxBounceReply {
			t.Fatalf("reply of %d bytes kept", len(a.Reply))
		}
	}
}

func TestCampaignEvents(t *testing.T) {
	s := openTest(t, Config{})
	if ev, err := s.CampaignEvents("c1"); err != nil || len(ev) != 0 {
		t.Fatalf("empty: %v %v", ev, err)
	}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			kind := "bounced_hard"
			if i%4 == 0 {
				kind = "complained"
			}
			if err := s.AddCampaignEvent("c1", kind); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := s.AddCampaignEvent("c10", "unsubscribed"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCampaignEvent("c1", "suppressed:hard_bounce"); err != nil {
		t.Fatal(err)
	}
	ev, err := s.CampaignEvents("c1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"bounced_hard": 30, "complained": 10, "suppressed:hard_bounce": 1}
	if len(ev) != len(want) {
		t.Errorf("events %v, want %v", ev, want)
	}
	for k, n := range want {
		if ev[k] != n {
			t.Errorf("events[%s] = %d, want %d (all %v)", k, ev[k], n, ev)
		}
	}
	for _, bad := range [][2]string{{"", "x"}, {"c1", ""}, {"c\x001", "x"}, {"c1", "a\nb"}, {"c1", strings.Repeat("k", 65)}} {
		if err := s.AddCampaignEvent(bad[0], bad[1]); err == nil {
			t.Errorf("AddCampaignEvent(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

// Backlog counts a campaign's ready and active messages only: not another
// campaign's, not held ones, not finished ones.
func TestBacklog(t *testing.T) {
	s := openTest(t, Config{})
	ids := enqueue(t, s, msg("c1", "a@example.org"), msg("c1", "b@example.org"), msg("c1", "c@example.org"),
		msg("c1", "d@example.org"), msg("c2", "e@example.org")).IDs
	if n, err := s.Backlog("c1"); err != nil || n != 4 {
		t.Fatalf("Backlog(c1) = %d, %v; want 4", n, err)
	}
	if _, err := s.Hold(ids[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ids[1:2], "test"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Backlog("c1"); err != nil || n != 2 {
		t.Fatalf("Backlog(c1) after a hold and a delete = %d, %v; want 2", n, err)
	}
	if n, err := s.Backlog("none"); err != nil || n != 0 {
		t.Fatalf("Backlog(none) = %d, %v; want 0", n, err)
	}
}

// The same report recorded twice adds one history event.
func TestRecordBounceRepeatAddsNothing(t *testing.T) {
	s := openTest(t, Config{})
	id := enqueue(t, s, msg("c1", "ana@acme.example")).IDs[0]
	r := BounceRecord{Status: "5.1.1", Action: "failed", Kind: "hard", Diagnostic: "no such user", RemoteMTA: "mx.acme.example"}
	for range 3 {
		if _, err := s.RecordBounce(id, r); err != nil {
			t.Fatal(err)
		}
	}
	if h := mustGet(t, s, id).History; len(h) != 1 || h[0].Outcome != "bounce-hard" {
		t.Errorf("history %+v, want one bounce-hard event", h)
	}
}
