package audit

import (
	"testing"
	"time"
)

func TestSeqProblem(t *testing.T) {
	for _, tc := range []struct {
		seq, prev, cp uint64
		bad           uint64
		problem       string
	}{
		{1, 0, 0, 0, ""},
		{8, 7, 5, 0, ""},
		{0, 0, 0, 0, "entry 0: no entry has seq 0: added outside the log"},
		{5, 5, 5, 5, "entry 5: still present although the checkpoint at entry 5 pruned it"},
		{3, 7, 5, 3, "entry 3: still present although the checkpoint at entry 5 pruned it"},
		{9, 7, 0, 8, "entry 8 missing: chain jumps from 7 to 9"},
		{12, 7, 0, 8, "entries 8 to 11 missing: chain jumps from 7 to 12"},
	} {
		bad, problem := seqProblem(tc.seq, tc.prev, tc.cp)
		if bad != tc.bad || problem != tc.problem {
			t.Errorf("seqProblem(%d, %d, %d) = %d, %q; want %d, %q", tc.seq, tc.prev, tc.cp, bad, problem, tc.bad, tc.problem)
		}
	}
}

func TestTailProblem(t *testing.T) {
	for _, tc := range []struct {
		n, last, bad uint64
		problem      string
	}{
		{0, 0, 0, ""},
		{7, 7, 0, ""},
		{5, 7, 6, "entry 6: beyond the log's sequence counter 5: added outside the log"},
		{8, 7, 8, "entry 8 missing at the end: the log has issued up to 8"},
		{10, 7, 8, "entries 8 to 10 missing at the end: the log has issued up to 10"},
	} {
		bad, problem := tailProblem(tc.n, tc.last)
		if bad != tc.bad || problem != tc.problem {
			t.Errorf("tailProblem(%d, %d) = %d, %q; want %d, %q", tc.n, tc.last, bad, problem, tc.bad, tc.problem)
		}
	}
}

func TestEntryProblem(t *testing.T) {
	seal := func(e Entry) Entry { e.Hash = Hash(e); return e }
	when := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	first := seal(Entry{Seq: 1, Time: when, Who: "cli", Action: "test"})
	second := seal(Entry{Seq: 2, Prev: first.Hash, Time: when, Who: "cli", Action: "test"})
	tampered := second
	tampered.Who = "someone else"
	afterCP := seal(Entry{Seq: 6, Prev: "cafe", Time: when, Who: "cli", Action: "test"})
	for _, tc := range []struct {
		name  string
		e     Entry
		seq   uint64
		prev  head
		cpSeq uint64
		hasCP bool
		want  string
	}{
		{"first", first, 1, head{}, 0, false, ""},
		{"second", second, 2, head{seq: 1, hash: first.Hash}, 0, false, ""},
		{"after checkpoint", afterCP, 6, head{seq: 5, hash: "cafe"}, 5, true, ""},
		{"moved", second, 3, head{seq: 2, hash: second.Hash}, 0, false, "entry 3: holds the record of entry 2: moved or reordered"},
		{"changed", tampered, 2, head{seq: 1, hash: first.Hash}, 0, false, "entry 2: hash mismatch: content changed"},
		{"first with prev", second, 2, head{}, 0, false, "entry 2: prev should be empty for the first entry"},
		{"checkpoint hash", afterCP, 6, head{seq: 5, hash: "beef"}, 5, true, "entry 6: prev does not match the hash of the checkpoint at entry 5"},
		{"prev hash", second, 2, head{seq: 1, hash: "beef"}, 0, false, "entry 2: prev does not match entry 1's hash"},
	} {
		if got := entryProblem(tc.e, tc.seq, tc.prev, tc.cpSeq, tc.hasCP); got != tc.want {
			t.Errorf("%s: entryProblem = %q, want %q", tc.name, got, tc.want)
		}
	}
}
