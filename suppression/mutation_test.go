package suppression

import (
	"errors"
	"testing"
	"time"
)

// TestApplySeqAndRefusals: Apply records the sequence with the change,
// skips a sequence applied before, records a refusal's sequence, and the
// recorded sequence survives reopening.
func TestApplySeqAndRefusals(t *testing.T) {
	s, path := newStore(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	add, err := s.NormalizeMutation(Mutation{Op: OpAdd, Time: at, Entry: &Entry{Target: "Ann@Example.com", Reason: Unsubscribed, Source: "one-click"}})
	if err != nil {
		t.Fatal(err)
	}
	if add.Entry.Target != "ann@example.com" || !add.Entry.Time.Equal(at) {
		t.Fatalf("normalised add = %+v", add.Entry)
	}
	if out, err := s.Apply(1, add); err != nil || out.Skipped || out.Refused != nil {
		t.Fatalf("Apply(1) = %+v, %v", out, err)
	}
	wantCheck(t, s, "ann@example.com", "", "unsubscribed", true)
	rm, _ := s.NormalizeMutation(Mutation{Op: OpRemove, Addr: "ann@example.com"})
	if out, err := s.Apply(1, rm); err != nil || !out.Skipped {
		t.Fatalf("Apply(1) again = %+v, %v; want skipped", out, err)
	}
	wantCheck(t, s, "ann@example.com", "", "unsubscribed", true)

	er, err := s.NormalizeMutation(Mutation{Op: OpErase, Addr: "ann@example.com", Ref: "REQ-1"})
	if err != nil || er.Addr != "" || er.Index != s.box.IndexHex("ann@example.com") {
		t.Fatalf("normalised erase = %+v, %v", er, err)
	}
	if out, err := s.Apply(2, er); err != nil || out.Entry.Reason != Erased {
		t.Fatalf("Apply(2) erase = %+v, %v", out, err)
	}
	if out, err := s.Apply(3, rm); err != nil || !errors.Is(out.Refused, ErrErased) {
		t.Fatalf("Apply(3) remove of erased = %+v, %v; want refused", out, err)
	}
	if seq, err := s.AppliedSeq(); err != nil || seq != 3 {
		t.Fatalf("AppliedSeq = %d, %v; want 3", seq, err)
	}
	// seq 0 applies without recording
	dom, _ := s.NormalizeMutation(Mutation{Op: OpAdd, Entry: &Entry{Target: "@corp.example"}})
	if _, err := s.Apply(0, dom); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, s, "bob@corp.example", "", "manual", true)
	s.Close()
	s = openTest(t, path)
	defer s.Close()
	if seq, err := s.AppliedSeq(); err != nil || seq != 3 {
		t.Fatalf("AppliedSeq after reopen = %d, %v; want 3", seq, err)
	}
	if _, err := s.NormalizeMutation(Mutation{Op: "drop"}); err == nil {
		t.Fatal("unknown op accepted")
	}
}

// TestPendingAppliesAtOnce: a pending change is applied in the same
// transaction, survives reopening, and goes once deleted.
func TestPendingAppliesAtOnce(t *testing.T) {
	s, path := newStore(t)
	m, _ := s.NormalizeMutation(Mutation{Op: OpRestrict, Addr: "cy@example.org", Note: "objection"})
	if _, err := s.AddPending("0001-a", []byte("sealed bytes"), m); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddPending("0001-a", []byte("x"), m); err == nil {
		t.Fatal("a pending key accepted twice")
	}
	wantCheck(t, s, "cy@example.org", "", "restricted", true)
	s.Close()
	s = openTest(t, path)
	defer s.Close()
	var keys []string
	if err := s.Pending(func(k string, v []byte) error { keys = append(keys, k+"="+string(v)); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "0001-a=sealed bytes" {
		t.Fatalf("pending = %q", keys)
	}
	if err := s.DeletePending("0001-a"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PendingCount(); err != nil || n != 0 {
		t.Fatalf("PendingCount = %d, %v", n, err)
	}
	un, _ := s.NormalizeMutation(Mutation{Op: OpUnrestrict, Addr: "cy@example.org"})
	if out, err := s.Apply(0, un); err != nil || !out.Found {
		t.Fatalf("unrestrict = %+v, %v", out, err)
	}
	wantCheck(t, s, "cy@example.org", "", "", false)
}

// TestApplyAll: consecutive changes in one transaction, those at or below
// the recorded sequence skipped, the last sequence recorded; a kept change
// applied again after each.
func TestApplyAll(t *testing.T) {
	s, _ := newStore(t)
	norm := func(m Mutation) Mutation {
		t.Helper()
		m, err := s.NormalizeMutation(m)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	add := norm(Mutation{Op: OpAdd, Entry: &Entry{Target: "gil@example.com", Reason: Manual}})
	rm := norm(Mutation{Op: OpRemove, Addr: "gil@example.com"})
	unsub := norm(Mutation{Op: OpAdd, Entry: &Entry{Target: "gil@example.com", Reason: Unsubscribed}})
	if _, err := s.Apply(5, add); err != nil {
		t.Fatal(err)
	}
	outs, err := s.ApplyAll([]Logged{{Seq: 5, Mutation: rm}, {Seq: 6, Mutation: rm, Ahead: []Mutation{unsub}}, {Seq: 7, Mutation: add}})
	if err != nil {
		t.Fatal(err)
	}
	if !outs[0].Skipped || outs[1].Skipped || !outs[1].Found || outs[2].Skipped {
		t.Fatalf("outcomes = %+v", outs)
	}
	wantCheck(t, s, "gil@example.com", "", "manual", true)
	if seq, err := s.AppliedSeq(); err != nil || seq != 7 {
		t.Fatalf("AppliedSeq = %d, %v; want 7", seq, err)
	}
	// The kept unsubscribe held through the remove at 6.
	outs, err = s.ApplyAll([]Logged{{Seq: 8, Mutation: rm, Ahead: []Mutation{unsub}}})
	if err != nil || !outs[0].Found {
		t.Fatalf("ApplyAll = %+v, %v", outs, err)
	}
	wantCheck(t, s, "gil@example.com", "", "unsubscribed", true)
}
