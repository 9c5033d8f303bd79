package queue

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// throttleErr is the MTA's "not tried: wait" error (throttle, open circuit).
type throttleErr struct{ at time.Time }

func (e *throttleErr) Error() string             { return "throttled: example.com over its rate" }
func (e *throttleErr) Temporary() bool           { return true }
func (e *throttleErr) RetryAt() time.Time        { return e.at }
func (e *throttleErr) SMTPStatus() (int, string) { return 451, "4.7.0" }

// observed records Observer calls.
type observed struct {
	mu  sync.Mutex
	got []string
}

func (o *observed) Attempt(domain, outcome string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, domain+":"+outcome)
}

func (o *observed) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := append([]string(nil), o.got...)
	sort.Strings(out)
	return out
}

// checkCounters compares the counters behind Stats and CampaignCounts with a full scan.
// sum adds up a count per state.
func sum(m map[State]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func checkCounters(t *testing.T, s *Store) {
	t.Helper()
	byState := map[State]int{}
	byDomain := map[string]int{}
	byProvider, bySource := map[string]map[State]int{}, map[string]map[State]int{}
	byCampaign := map[string]map[State]int{}
	tally := func(by map[string]map[State]int, name string, st State) {
		if by[name] == nil {
			by[name] = map[State]int{}
		}
		by[name][st]++
	}
	if err := s.List(Filter{}, func(m Message) error {
		byState[m.State]++
		if !m.State.Finished() {
			byDomain[m.Domain]++
			tally(byProvider, m.Provider, m.State)
			tally(bySource, m.Source, m.State)
		}
		if byCampaign[m.Campaign] == nil {
			byCampaign[m.Campaign] = map[State]int{}
		}
		byCampaign[m.Campaign][m.State]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(st.ByState) != fmt.Sprint(byState) || fmt.Sprint(st.ByDomain) != fmt.Sprint(byDomain) {
		t.Fatalf("counters: by state %v by domain %v; scan: %v %v", st.ByState, st.ByDomain, byState, byDomain)
	}
	if fmt.Sprint(st.ProviderStates) != fmt.Sprint(byProvider) || fmt.Sprint(st.SourceStates) != fmt.Sprint(bySource) {
		t.Fatalf("counters: by provider %v by source %v; scan: %v %v", st.ProviderStates, st.SourceStates, byProvider, bySource)
	}
	for name, ss := range st.ProviderStates {
		if n := sum(ss); st.ByProvider[name] != n {
			t.Fatalf("ByProvider[%q] = %d, its states add up to %d", name, st.ByProvider[name], n)
		}
	}
	for name, ss := range st.SourceStates {
		if n := sum(ss); st.BySource[name] != n {
			t.Fatalf("BySource[%q] = %d, its states add up to %d", name, st.BySource[name], n)
		}
	}
	for c, want := range byCampaign {
		if err := s.view(func(tx *bbolt.Tx) error { // erased people's messages are counted, not kept
			for st, n := range s.buckets(tx).erasedCounts(c) {
				want[st] += n
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		got, err := s.CampaignCounts(c)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("CampaignCounts(%s) = %v, %v; scan %v", c, got, err, want)
		}
	}
}

// A RetryAt error is no attempt: the count is undone, the message waits until
// RetryAt, and throttling alone never expires it before MaxAge.
func TestThrottleIsNotAnAttempt(t *testing.T) {
	s := openTest(t, Config{MaxAge: time.Hour, Retry: []time.Duration{2 * time.Hour}})
	clk := newClock()
	f := newFake()
	obs := &observed{}
	var script []error
	for i := 1; i <= 5; i++ {
		script = append(script, &throttleErr{at: clk.Now().Add(time.Duration(i) * 10 * time.Minute)})
	}
	f.script["ana@example.com"] = script
	id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
	r := s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now, Observer: obs})
	for i := 1; i <= 5; i++ {
		drain(t, r)
		m := mustGet(t, s, id)
		want := script[i-1].(*throttleErr).at
		if m.State != StateDeferred || m.Attempts != 0 || !m.NextAttempt.Equal(want) {
			t.Fatalf("after throttle %d: state %s attempts %d next %v, want deferred, 0, %v", i, m.State, m.Attempts, m.NextAttempt, want)
		}
		if last := m.History[len(m.History)-1]; last.Outcome != "throttled" || last.Reply == "" {
			t.Fatalf("history = %+v", m.History)
		}
		clk.Advance(10 * time.Minute) // the retry falls due; still within MaxAge
	}
	drain(t, r) // 50 minutes in: the next backoff (2h) lies past MaxAge, but that is a real attempt
	m := mustGet(t, s, id)
	if m.State != StateDelivered || m.Attempts != 1 {
		t.Fatalf("final = %s after %d attempts, want delivered after 1", m.State, m.Attempts)
	}
	if got := obs.list(); len(got) != 6 || got[0] != "example.com:delivered" || got[1] != "example.com:throttled" {
		t.Fatalf("observer saw %v", got)
	}
	checkCounters(t, s)
}

func TestCampaignRateSpreadsMessages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	if err := s.SetCampaignRate("c", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCampaignRate("", 1); err == nil {
		t.Fatal("SetCampaignRate accepted an empty campaign")
	}
	var ids []string
	for i := range 4 {
		ids = append(ids, enqueue(t, s, msg("c", fmt.Sprintf("u%d@example.com", i))).IDs[0])
	}
	other := enqueue(t, s, msg("free", "x@example.com")).IDs[0]
	clk := newClock()
	r := s.NewRunner(newFake(), newSup(), RunnerConfig{Now: clk.Now, Workers: 10})
	msgs, _, next, err := r.claim(10)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range msgs {
		got[m.ID] = true
	}
	if len(msgs) != 2 || !got[ids[0]] || !got[other] {
		t.Fatalf("claimed %v, want the first of c (burst 1) and the unlimited campaign's", got)
	}
	for i, id := range ids[1:] {
		m := mustGet(t, s, id)
		want := clk.Now().Add(time.Duration(i+1) * time.Second)
		if m.State != StateReady || m.Attempts != 0 || !m.NextAttempt.Equal(want) || !m.RateSlot.Equal(want) {
			t.Fatalf("message %d: %s attempts %d next %v slot %v, want ready at %v", i+1, m.State, m.Attempts, m.NextAttempt, m.RateSlot, want)
		}
	}
	if !next.Equal(clk.Now().Add(time.Second)) {
		t.Fatalf("next due = %v", next)
	}
	// At its slot each message goes without taking a second token.
	for i := 1; i < 4; i++ {
		clk.Advance(time.Second)
		msgs, _, _, err := r.claim(10)
		if err != nil || len(msgs) != 1 || msgs[0].ID != ids[i] {
			t.Fatalf("claim at slot %d = %v, %v", i, msgs, err)
		}
	}
	s.Close()

	s2 := openTest(t, Config{Path: path})
	if r := s2.CampaignRate("c"); r != 1 {
		t.Fatalf("rate after reopen = %v", r)
	}
	if err := s2.SetCampaignRate("c", 0); err != nil || s2.CampaignRate("c") != 0 {
		t.Fatalf("removing the rate: %v", err)
	}
}

// Drain waits for messages a campaign rate spread out, and delivers each once.
func TestCampaignRateDrain(t *testing.T) {
	s := openTest(t, Config{})
	if err := s.SetCampaignRate("c", 50); err != nil {
		t.Fatal(err)
	}
	var batch []NewMessage
	for i := range 120 {
		batch = append(batch, msg("c", fmt.Sprintf("u%d@example.com", i)))
	}
	enqueue(t, s, batch...)
	f := newFake()
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Campaign: "c", Workers: 8}))
	if cc, _ := s.CampaignCounts("c"); cc[StateDelivered] != 120 || len(cc) != 1 {
		t.Fatalf("counts = %v", cc)
	}
	for to, n := range f.calls {
		if n != 1 {
			t.Errorf("%s called %d times", to, n)
		}
	}
	checkCounters(t, s)
}

func TestSuspendAndResume(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	early := enqueue(t, s, msg("c", "ana@example.org")).IDs[0]
	until := time.Now().Add(time.Hour).Truncate(time.Second)
	if err := s.Suspend(Selector{Domain: "Example.ORG."}, until, "provider asked us to slow down"); err != nil {
		t.Fatal(err)
	}
	if err := s.Suspend(Selector{}, until, "x"); err == nil {
		t.Fatal("Suspend accepted an empty selector")
	}
	if err := s.Suspend(Selector{Domain: "example.net"}, time.Now().Add(-time.Minute), "x"); err == nil {
		t.Fatal("Suspend accepted an end in the past")
	}
	late := enqueue(t, s, msg("c", "bob@example.org")).IDs[0] // arrives while suspended
	free := enqueue(t, s, msg("c", "carol@example.com")).IDs[0]
	f := newFake()
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	for _, id := range []string{early, late} {
		m := mustGet(t, s, id)
		if m.State != StateDeferred || m.Attempts != 0 || !m.NextAttempt.Equal(until) || m.History[len(m.History)-1].Outcome != "suspended" {
			t.Fatalf("suspended message %s = %+v", id, m)
		}
	}
	if m := mustGet(t, s, free); m.State != StateDelivered {
		t.Fatalf("unsuspended domain: %s", m.State)
	}
	sus, err := s.Suspensions()
	if err != nil || len(sus) != 1 || sus[0].Domain != "example.org" || !sus[0].Until.Equal(until) {
		t.Fatalf("Suspensions = %+v, %v", sus, err)
	}
	s.Close()

	s = openTest(t, Config{Path: path})
	if sus, _ := s.Suspensions(); len(sus) != 1 {
		t.Fatalf("suspension not persisted: %+v", sus)
	}
	// Extending moves the held messages along.
	later := until.Add(time.Hour)
	if err := s.Suspend(Selector{Domain: "example.org"}, later, "still slow"); err != nil {
		t.Fatal(err)
	}
	if m := mustGet(t, s, early); !m.NextAttempt.Equal(later) {
		t.Fatalf("after extending, next = %v, want %v", m.NextAttempt, later)
	}
	ok, err := s.Resume(Selector{Domain: "example.org"})
	if err != nil || !ok {
		t.Fatalf("Resume = %v, %v", ok, err)
	}
	if ok, _ := s.Resume(Selector{Domain: "example.org"}); ok {
		t.Fatal("second Resume reported an active suspension")
	}
	f = newFake()
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	for _, id := range []string{early, late} {
		if m := mustGet(t, s, id); m.State != StateDelivered || m.Attempts != 1 {
			t.Fatalf("after resume %s: %s, %d attempts", id, m.State, m.Attempts)
		}
	}
	checkCounters(t, s)
}

func TestSuspendCampaignAndExpiry(t *testing.T) {
	s := openTest(t, Config{})
	until := time.Now().Add(time.Hour)
	if err := s.Suspend(Selector{Campaign: "c1", Domain: "example.com"}, until, "check content"); err != nil {
		t.Fatal(err)
	}
	res := enqueue(t, s, msg("c1", "a@example.com"), msg("c1", "b@example.net"), msg("c2", "c@example.com"))
	if m := mustGet(t, s, res.IDs[0]); m.State != StateDeferred {
		t.Fatalf("c1 to example.com = %s, want deferred", m.State)
	}
	for _, id := range res.IDs[1:] {
		if m := mustGet(t, s, id); m.State != StateReady {
			t.Fatalf("outside the selection = %s, want ready", m.State)
		}
	}
	// Once the suspension's end has passed, the dispatcher ignores it.
	if _, err := s.Retry(res.IDs[:1]); err != nil {
		t.Fatal(err)
	}
	clk := newClock()
	clk.Advance(2 * time.Hour)
	drain(t, s.NewRunner(newFake(), newSup(), RunnerConfig{Now: clk.Now}))
	if m := mustGet(t, s, res.IDs[0]); m.State != StateDelivered {
		t.Fatalf("after the suspension's end: %s", m.State)
	}
}

func TestBounceByOperator(t *testing.T) {
	s := openTest(t, Config{})
	res := enqueue(t, s, msg("c", "a@example.com"), msg("c", "b@example.com"))
	if _, err := s.Bounce(res.IDs, " "); err == nil {
		t.Fatal("Bounce without a reason")
	}
	n, err := s.Bounce(append(res.IDs[:1:1], "nope"), "address reported dead by the customer")
	if n != 1 || !errors.Is(err, ErrNotFound) {
		t.Fatalf("Bounce = %d, %v", n, err)
	}
	m := mustGet(t, s, res.IDs[0])
	if m.State != StateBounced || m.Reason != "admin: address reported dead by the customer" ||
		m.History[len(m.History)-1].Outcome != "bounced" {
		t.Fatalf("bounced = %+v", m)
	}
	if _, err := s.Body(res.IDs[0]); !errors.Is(err, ErrNotFound) {
		t.Fatal("body kept after an operator bounce")
	}
	checkCounters(t, s)
}

func TestAllIDsByDomainAndAge(t *testing.T) {
	s := openTest(t, Config{})
	res := enqueue(t, s, msg("c", "a@example.com"), msg("c", "b@example.org"), msg("d", "c@EXAMPLE.com"))
	ids, err := s.AllIDs(Filter{Domain: "Example.com"})
	if err != nil || len(ids) != 2 || ids[0] != res.IDs[0] || ids[1] != res.IDs[2] {
		t.Fatalf("AllIDs(domain) = %v, %v", ids, err)
	}
	if ids, _ := s.AllIDs(Filter{Domain: "example.com", Campaign: "d"}); len(ids) != 1 {
		t.Fatalf("AllIDs(domain, campaign) = %v", ids)
	}
	if ids, _ := s.AllIDs(Filter{OlderThan: time.Hour}); len(ids) != 0 {
		t.Fatalf("AllIDs(older than 1h) = %v", ids)
	}
}

// Counters survive every kind of change, and are rebuilt for a file that lacks them.
func TestCountersAndRates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	f := newFake()
	f.script["bad@example.org"] = []error{&smtpErr{550, "5.1.1", "no such user"}}
	f.script["slow@example.net"] = []error{&smtpErr{421, "4.7.0", "later"}}
	f.route = func(to, _, _ string) (string, string) { // providers and sources, counted by them too
		if to == "slow@example.net" {
			return "ip1", "microsoft"
		}
		return "", "google"
	}
	res := enqueue(t, s, msg("c1", "ok@example.com"), msg("c1", "bad@example.org"), msg("c1", "slow@example.net"),
		msg("c2", "held@example.com"), msg("c2", "gone@example.com"))
	if _, err := s.Hold(res.IDs[3:4]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(res.IDs[4:], "test"); err != nil {
		t.Fatal(err)
	}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	checkCounters(t, s)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Recent["delivered"] != 1 || st.Recent["bounced"] != 1 || st.Recent["deferred"] != 1 {
		t.Fatalf("recent = %v", st.Recent)
	}
	for _, w := range []string{"1m", "5m", "15m"} {
		if st.Rates[w] <= 0 {
			t.Fatalf("rates = %v", st.Rates)
		}
	}
	if st.DomainStates["example.com"][StateHeld] != 1 || st.DomainStates["example.net"][StateDeferred] != 1 {
		t.Fatalf("domain states = %v", st.DomainStates)
	}
	if st.ProviderStates["microsoft"][StateDeferred] != 1 || st.ProviderStates[""][StateHeld] != 1 ||
		st.BySource["ip1"] != 1 || st.BySource[""] != 1 || len(st.ByProvider) != 2 {
		t.Fatalf("by provider %v, by source %v", st.ProviderStates, st.SourceStates)
	}
	s.Close()

	// A file written before the counters existed.
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.DeleteBucket(bktCounts) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s2, err := Open(Config{Box: testBox, Path: path}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	checkCounters(t, s2)
}

func TestMinutesPruned(t *testing.T) {
	s := openTest(t, Config{})
	now := time.Now()
	err := s.update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		for _, at := range []time.Time{now.Add(-48 * time.Hour), now.Add(-25 * time.Hour), now.Add(-time.Hour)} {
			if err := b.countMinute(at, minDelivered); err != nil {
				return err
			}
		}
		if err := b.countMinute(now, minDelivered); err != nil {
			return err
		}
		n := 0
		_ = b.minutes.ForEach(func(k, v []byte) error { n++; return nil })
		if n != 2 {
			return fmt.Errorf("%d minutes kept, want 2", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
