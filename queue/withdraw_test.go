package queue

import (
	"bytes"
	"testing"
	"time"
)

// TestWithdraw: Withdraw cancels the matching messages of one campaign that
// are ready, deferred or held, in one go; an active one (in flight), one
// of another campaign and one not matched are untouched; the counters
// agree with the records; a withdrawn row enqueued again is new, not a
// duplicate, while the active one still is.
func TestWithdraw(t *testing.T) {
	s := openTest(t, Config{})
	addrs := []string{"a0@x.example", "a1@x.example", "a2@x.example", "a3@x.example", "a4@x.example"}
	var msgs []NewMessage
	for _, a := range addrs {
		msgs = append(msgs, msg("c", a))
	}
	msgs = append(msgs, msg("d", addrs[0]))
	ids := enqueue(t, s, msgs...).IDs
	set := func(id string, st State) {
		t.Helper()
		if _, err := s.change("test", []string{id}, func(m *Message, now time.Time) bool {
			m.State = st
			if st == StateDeferred {
				m.NextAttempt = now.Add(time.Hour)
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
	}
	set(ids[1], StateDeferred)
	set(ids[2], StateActive)
	set(ids[3], StateHeld)

	want := map[string]bool{}
	for _, a := range addrs[:4] {
		want[string(testBox.Index(a))] = true
	}
	asked := 0
	n, err := s.Withdraw("c", func(ix []byte) bool { asked++; return want[string(bytes.Clone(ix))] }, "share taken over: lease lost")
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("withdrew %d, want 3 (ready, deferred, held)", n)
	}
	if asked != 4 {
		t.Errorf("match asked %d times, want 4 (the active one is not a candidate)", asked)
	}
	for i, st := range []State{StateCancelled, StateCancelled, StateActive, StateCancelled, StateReady, StateReady} {
		m := mustGet(t, s, ids[i])
		if m.State != st {
			t.Errorf("message %d (%s): %s, want %s", i, m.Campaign, m.State, st)
		}
		if st == StateCancelled && m.Reason != "share taken over: lease lost" {
			t.Errorf("message %d: reason %q", i, m.Reason)
		}
	}
	cc, err := s.CampaignCounts("c")
	if err != nil {
		t.Fatal(err)
	}
	if cc[StateCancelled] != 3 || cc[StateActive] != 1 || cc[StateReady] != 1 || cc[StateDeferred] != 0 || cc[StateHeld] != 0 {
		t.Errorf("campaign counts %v", cc)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.ByState[StateReady] != 2 || st.ByState[StateCancelled] != 3 || st.ByState[StateActive] != 1 || st.Total != 6 {
		t.Errorf("stats %v total %d", st.ByState, st.Total)
	}
	if _, err := s.Body(ids[0]); err == nil {
		t.Error("a withdrawn message keeps its body")
	}

	again := enqueue(t, s, msg("c", addrs[0]), msg("c", addrs[2]))
	if again.Added != 1 || again.IDs[0] == "" || again.IDs[1] != "" {
		t.Errorf("enqueued again: %+v, want the withdrawn one new and the active one a duplicate", again)
	}
}
