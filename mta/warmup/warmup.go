// Package warmup caps a new sending source's daily messages to each mailbox
// provider by the day of its warm-up schedule (issue 12): day 1 is the UTC
// day of the source's first use, and a schedule [50, 100, 500] lets 50
// messages a provider through on day 1, 100 on day 2, 500 on day 3 and no
// cap after the schedule's end. Providers judge a new IP by the volume it
// builds up with them, so the cap is per (source, provider), not per source.
//
// The Tracker counts in memory: Take reserves one message before an attempt
// and Give returns it when the attempt fails, so that concurrent deliveries
// never pass the cap. What was delivered is kept durably by the caller (the
// queue records it with each delivered message) and handed back with Restore
// after a restart; the first-use day likewise.
package warmup

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Schedule is the cap per provider per day of each source, day 1 first; a
// source without a schedule has no cap.
type Schedule map[string][]int

// Validate checks that every cap is positive, naming the source and day.
func (s Schedule) Validate() error {
	for src, caps := range s {
		if len(caps) == 0 {
			return fmt.Errorf("warmup %s: empty schedule", src)
		}
		for i, c := range caps {
			if c <= 0 {
				return fmt.Errorf("warmup %s: day %d: cap %d, want a positive number of messages", src, i+1, c)
			}
		}
	}
	return nil
}

// Sources returns the names of the scheduled sources.
func (t *Tracker) Sources() []string {
	if t == nil {
		return nil
	}
	out := make([]string, 0, len(t.sched))
	for s := range t.sched {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Pair is a source and a provider.
type Pair struct{ Source, Provider string }

// Tracker counts each (source, provider) pair's messages of the current UTC
// day against the schedule; safe for concurrent use.
type Tracker struct {
	sched Schedule
	mu    sync.Mutex
	first map[string]time.Time // source → midnight UTC of its first use
	day   time.Time            // the UTC day the counts are of
	used  map[Pair]int
}

// New returns a Tracker of sched.
func New(sched Schedule) *Tracker {
	return &Tracker{sched: sched, first: map[string]time.Time{}, used: map[Pair]int{}}
}

// Scheduled reports whether source has a warm-up schedule.
func (t *Tracker) Scheduled(source string) bool {
	if t == nil {
		return false
	}
	_, ok := t.sched[source]
	return ok
}

// Restore sets what the store kept: each source's first-use day, and the
// messages delivered on day (a UTC day) per pair. Counts of another day than
// the current one are of no use and dropped at the next Take.
func (t *Tracker) Restore(first map[string]time.Time, day time.Time, sent map[Pair]int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s, f := range first {
		t.first[s] = midnight(f)
	}
	t.day = midnight(day)
	t.used = make(map[Pair]int, len(sent))
	for p, n := range sent {
		t.used[p] = n
	}
}

// Take reserves one message from source to provider at now. It returns ok,
// or when the cap of today is spent, false and the start of the next UTC day
// (when the pair has room again). A source's first Take makes today its day 1.
func (t *Tracker) Take(source, provider string, now time.Time) (ok bool, next time.Time) {
	if t == nil {
		return true, time.Time{}
	}
	caps, scheduled := t.sched[source]
	if !scheduled {
		return true, time.Time{}
	}
	today := midnight(now)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rollLocked(today)
	limit, capped := capOf(caps, t.dayLocked(source, today))
	p := Pair{source, provider}
	if capped && t.used[p] >= limit {
		return false, today.Add(24 * time.Hour)
	}
	t.used[p]++
	return true, time.Time{}
}

// Give returns a message Take reserved at taken that was not delivered.
func (t *Tracker) Give(source, provider string, taken time.Time) {
	if t == nil || !t.Scheduled(source) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p := Pair{source, provider}
	if midnight(taken).Equal(t.day) && t.used[p] > 0 {
		t.used[p]--
	}
}

// rollLocked starts a new day's counts; the caller holds t.mu.
func (t *Tracker) rollLocked(today time.Time) {
	if !t.day.Equal(today) {
		t.day, t.used = today, map[Pair]int{}
	}
}

// dayLocked returns source's schedule day at today (1 = first use), making
// today its first use when it has none; the caller holds t.mu.
func (t *Tracker) dayLocked(source string, today time.Time) int {
	f, ok := t.first[source]
	if !ok {
		t.first[source] = today
		return 1
	}
	return DayOf(f, today)
}

// DayOf returns the schedule day at now of a source first used at first: 1
// on the UTC day of first use.
func DayOf(first, now time.Time) int {
	d := int(midnight(now).Sub(midnight(first)) / (24 * time.Hour))
	return max(d, 0) + 1
}

// capOf returns the cap of a schedule day; capped is false past its end.
func capOf(caps []int, day int) (limit int, capped bool) {
	if day < 1 || day > len(caps) {
		return 0, false
	}
	return caps[day-1], true
}

// SourceState is a source's warm-up at a time, for `providers ls`.
type SourceState struct {
	Source   string         `json:"source"`
	Day      int            `json:"day"`       // 1 = day of first use; 0 = not used yet
	Days     int            `json:"days"`      // length of the schedule
	Cap      int            `json:"cap"`       // per provider today; 0 = no cap (schedule over)
	Used     map[string]int `json:"used"`      // provider → messages today
	Finished bool           `json:"finished"`  // past the schedule's end
	First    time.Time      `json:"first_use"` // zero when not used yet
}

// Room returns how many more messages source may send to provider today (-1: no cap).
func (s SourceState) Room(provider string) int {
	if s.Cap == 0 {
		return -1
	}
	return max(s.Cap-s.Used[provider], 0)
}

// State returns every scheduled source's warm-up at now, by name.
func (t *Tracker) State(now time.Time) []SourceState {
	if t == nil {
		return nil
	}
	today := midnight(now)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rollLocked(today)
	var out []SourceState
	for src, caps := range t.sched {
		st := SourceState{Source: src, Days: len(caps), Used: map[string]int{}}
		if f, ok := t.first[src]; ok {
			st.First, st.Day = f, DayOf(f, today)
			st.Cap, _ = capOf(caps, st.Day)
			st.Finished = st.Day > len(caps)
		} else {
			st.Cap = caps[0]
		}
		for p, n := range t.used {
			if p.Source == src && n > 0 {
				st.Used[p.Provider] = n
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Source < out[j].Source })
	return out
}

// midnight returns the start of t's UTC day.
func midnight(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}
