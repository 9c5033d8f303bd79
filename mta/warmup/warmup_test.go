package warmup

import (
	"testing"
	"time"
)

// TestRestoreAfterRestart: what the store kept (first use two days ago, 40
// sent today) is honoured: day 3's cap of 50 leaves 10, for that provider only.
func TestRestoreAfterRestart(t *testing.T) {
	now := time.Date(2026, 12, 6, 15, 0, 0, 0, time.UTC)
	tr := New(Schedule{"ip2": {10, 20, 50}})
	tr.Restore(map[string]time.Time{"ip2": now.Add(-48 * time.Hour)}, now, map[Pair]int{{"ip2", "google"}: 40})
	n := 0
	for {
		ok, next := tr.Take("ip2", "google", now)
		if !ok {
			if want := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC); !next.Equal(want) {
				t.Fatalf("next %v, want %v", next, want)
			}
			break
		}
		n++
	}
	if n != 10 {
		t.Fatalf("took %d more on day 3, want 10", n)
	}
	if ok, _ := tr.Take("ip2", "microsoft", now); !ok {
		t.Fatal("another provider's room was spent")
	}
	// Past the schedule: no cap.
	later := now.Add(24 * time.Hour)
	for i := range 1000 {
		if ok, _ := tr.Take("ip2", "google", later); !ok {
			t.Fatalf("day 4 (past the schedule) refused message %d", i)
		}
	}
	st := tr.State(later)
	if len(st) != 1 || !st[0].Finished || st[0].Day != 4 || st[0].Room("google") != -1 {
		t.Fatalf("state %+v", st)
	}
}

// TestGiveReturnsRoom: a failed attempt's reservation comes back, but not
// into another day's count.
func TestGiveReturnsRoom(t *testing.T) {
	now := time.Date(2026, 12, 6, 23, 59, 0, 0, time.UTC)
	tr := New(Schedule{"ip2": {1, 1}})
	if ok, _ := tr.Take("ip2", "google", now); !ok {
		t.Fatal("first take refused")
	}
	if ok, _ := tr.Take("ip2", "google", now); ok {
		t.Fatal("cap of 1 let two through")
	}
	tr.Give("ip2", "google", now)
	if ok, _ := tr.Take("ip2", "google", now); !ok {
		t.Fatal("room given back was not there")
	}
	tomorrow := now.Add(2 * time.Minute)
	if ok, _ := tr.Take("ip2", "google", tomorrow); !ok {
		t.Fatal("day 2 refused")
	}
	tr.Give("ip2", "google", now) // yesterday's reservation: no effect on today
	if ok, _ := tr.Take("ip2", "google", tomorrow); ok {
		t.Fatal("yesterday's give made room today")
	}
	if ok, _ := tr.Take("ip9", "google", now); !ok {
		t.Fatal("an unscheduled source was capped")
	}
}

// TestScheduleValidate names the source and day of a bad cap.
func TestScheduleValidate(t *testing.T) {
	if err := (Schedule{"ip2": {50, 0}}).Validate(); err == nil || err.Error() != "warmup ip2: day 2: cap 0, want a positive number of messages" {
		t.Fatalf("got %v", err)
	}
	if err := (Schedule{"ip2": {50, 100}}).Validate(); err != nil {
		t.Fatal(err)
	}
}
