package queue

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// sourceRoute is the fake MTA of these tests: it keeps a preferred source,
// else sends example.com (Microsoft-hosted here) through ip1 and the rest
// through ip2 at Google; unknown.example has no provider and no source.
func sourceRoute(to, _, prefer string) (string, string) {
	switch {
	case strings.HasSuffix(to, "@unknown.example"):
		return "", ""
	case strings.HasSuffix(to, "@example.com"):
		if prefer == "" {
			prefer = "ip1"
		}
		return prefer, "microsoft"
	default:
		if prefer == "" {
			prefer = "ip2"
		}
		return prefer, "google"
	}
}

// dayClock is a clock at 10:00 UTC of the day after today, so an hour's
// advance stays on one UTC date and every message enqueued now is due.
func dayClock() (*clock, time.Time) {
	day := time.Now().UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
	return &clock{t: day.Add(10 * time.Hour)}, day
}

func pooled(c, to, pool string) NewMessage {
	m := msg(c, to)
	m.Pool = pool
	return m
}

func ids(t *testing.T, s *Store, f Filter) []string {
	t.Helper()
	got, err := s.AllIDs(f)
	if err != nil {
		t.Fatalf("AllIDs(%+v): %v", f, err)
	}
	return got
}

// The runner hands the Deliverer the message's pool and the source of its
// last attempt, and records the source and provider it reports on the
// message and its history with each outcome, deferred ones included; List
// filters by them and Stats counts pending messages by them.
func TestSourceAndProviderRecorded(t *testing.T) {
	clk, _ := dayClock()
	s := openTest(t, Config{Retry: []time.Duration{time.Minute}})
	f := newFake()
	f.route = sourceRoute
	f.script["ana@example.com"] = []error{&smtpErr{451, "4.7.650", "rate limited"}}
	f.script["bo@example.org"] = []error{&smtpErr{550, "5.1.1", "no such user"}}
	f.script["cy@unknown.example"] = []error{&smtpErr{421, "4.3.0", "later"}}
	res := enqueue(t, s, pooled("c", "ana@example.com", "warm"), msg("c", "bo@example.org"),
		msg("c", "cy@unknown.example"), msg("c", "di@example.net"), msg("c", "held@example.com"))
	ana, bo, cy, di, held := res.IDs[0], res.IDs[1], res.IDs[2], res.IDs[3], res.IDs[4]
	if _, err := s.Hold([]string{held}); err != nil {
		t.Fatal(err)
	}
	if m := mustGet(t, s, ana); m.Pool != "warm" || m.Source != "" || m.Provider != "" {
		t.Fatalf("enqueued: pool %q source %q provider %q", m.Pool, m.Source, m.Provider)
	}
	r := s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now})
	drain(t, r)

	m := mustGet(t, s, ana)
	last := m.History[len(m.History)-1]
	if m.State != StateDeferred || m.Source != "ip1" || m.Provider != "microsoft" ||
		last.Source != "ip1" || last.Provider != "microsoft" || last.Outcome != string(StateDeferred) {
		t.Fatalf("deferred message: state %s source %q provider %q, last attempt %+v", m.State, m.Source, m.Provider, last)
	}
	if m := mustGet(t, s, bo); m.State != StateBounced || m.Source != "ip2" || m.Provider != "google" {
		t.Fatalf("bounced message: state %s source %q provider %q", m.State, m.Source, m.Provider)
	}
	if m := mustGet(t, s, cy); m.State != StateDeferred || m.Source != "" || m.Provider != "" {
		t.Fatalf("message of no provider: state %s source %q provider %q", m.State, m.Source, m.Provider)
	}
	if m := mustGet(t, s, di); m.State != StateDelivered || m.Source != "ip2" || m.Provider != "google" {
		t.Fatalf("delivered message: state %s source %q provider %q", m.State, m.Source, m.Provider)
	}

	for _, c := range []struct {
		f    Filter
		want []string
	}{
		{Filter{Provider: "microsoft"}, []string{ana}},
		{Filter{Provider: "google"}, []string{bo, di}},
		{Filter{Source: "ip2", State: StateDelivered}, []string{di}},
		{Filter{Source: "ip1", Campaign: "c"}, []string{ana}},
		{Filter{Provider: "google", Domain: "example.org"}, []string{bo}},
		{Filter{Provider: "yahoo"}, nil},
	} {
		if got := ids(t, s, c.f); !slices.Equal(got, c.want) {
			t.Errorf("List(%+v) = %v, want %v", c.f, got, c.want)
		}
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Pending: ana (microsoft, ip1, deferred), cy and held (no provider yet).
	if fmt.Sprint(st.ProviderStates) != "map[:map[deferred:1 held:1] microsoft:map[deferred:1]]" ||
		fmt.Sprint(st.ByProvider) != "map[:2 microsoft:1]" ||
		fmt.Sprint(st.SourceStates) != "map[:map[deferred:1 held:1] ip1:map[deferred:1]]" ||
		fmt.Sprint(st.BySource) != "map[:2 ip1:1]" {
		t.Fatalf("stats by provider %v %v, by source %v %v", st.ByProvider, st.ProviderStates, st.BySource, st.SourceStates)
	}
	checkCounters(t, s)

	// The retry prefers the source the first attempt used.
	clk.Advance(time.Hour)
	f.mu.Lock()
	f.asked = nil
	f.mu.Unlock()
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now}))
	f.mu.Lock()
	asked := slices.Clone(f.asked)
	f.mu.Unlock()
	if !slices.Contains(asked, via{"ana@example.com", "warm", "ip1"}) || !slices.Contains(asked, via{"cy@unknown.example", "", ""}) {
		t.Fatalf("retries were handed %+v; want ana's with pool warm and source ip1, cy's with none", asked)
	}
	if m := mustGet(t, s, ana); m.State != StateDelivered || m.Source != "ip1" || m.Attempts != 2 {
		t.Fatalf("retried message: state %s source %q attempts %d", m.State, m.Source, m.Attempts)
	}
	checkCounters(t, s)
}

// An empty source or provider (the Deliverer did not know it) keeps what an
// earlier attempt recorded.
func TestUnknownSourceKeepsEarlier(t *testing.T) {
	clk, _ := dayClock()
	s := openTest(t, Config{Retry: []time.Duration{time.Minute}})
	f := newFake()
	f.script["ana@example.com"] = []error{&smtpErr{451, "4.3.0", "later"}, &smtpErr{451, "4.3.0", "later"}}
	calls := 0
	f.route = func(to, pool, prefer string) (string, string) {
		if calls++; calls == 1 {
			return "ip1", "microsoft"
		}
		return "", ""
	}
	id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now}))
	clk.Advance(time.Hour)
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now}))
	m := mustGet(t, s, id)
	if m.Attempts != 2 || m.Source != "ip1" || m.Provider != "microsoft" {
		t.Fatalf("attempts %d source %q provider %q", m.Attempts, m.Source, m.Provider)
	}
	if last := m.History[len(m.History)-1]; last.Source != "" || last.Provider != "" {
		t.Fatalf("the second attempt's history says %+v; it reported nothing", last)
	}
}

// The warm-up ledger counts deliveries per UTC day, source and provider in
// the file (it survives a reopen), with each source's first day; deferred
// and bounced attempts and deliveries through no source do not count; day
// counters older than three days go.
func TestWarmupLedger(t *testing.T) {
	clk, day := dayClock()
	path := filepath.Join(t.TempDir(), "queue.db")
	cfg := Config{Path: path, Retry: []time.Duration{time.Minute}, MaxAge: 30 * 24 * time.Hour}
	s := openTest(t, cfg)
	f := newFake()
	f.route = sourceRoute
	f.script["ana@example.com"] = []error{&smtpErr{451, "4.7.650", "rate limited"}}
	f.script["bo@example.org"] = []error{&smtpErr{550, "5.1.1", "no such user"}}
	enqueue(t, s, msg("c", "ana@example.com"), msg("c", "bo@example.org"), msg("c", "cy@example.com"),
		msg("c", "di@example.net"), msg("c", "ed@example.net"), msg("c", "fay@unknown.example"))
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now}))
	// Day 1: cy through ip1 at Microsoft; di and ed through ip2 at Google.
	// ana was deferred, bo bounced, fay went through no source.
	clk.Advance(24 * time.Hour)
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now})) // day 2: ana through ip1
	s.Close()

	s = openTest(t, cfg)
	first, sent, err := s.WarmupLedger(day)
	if err != nil {
		t.Fatal(err)
	}
	want := map[[2]string]int{{"ip1", "microsoft"}: 1, {"ip2", "google"}: 2}
	if fmt.Sprint(sent) != fmt.Sprint(want) {
		t.Errorf("day 1 sent %v, want %v", sent, want)
	}
	if len(first) != 2 || !first["ip1"].Equal(day) || !first["ip2"].Equal(day) || first["ip1"].Location() != time.UTC {
		t.Errorf("first use %v, want ip1 and ip2 on %v", first, day)
	}
	// Any time of the day reads that day.
	_, sent, err = s.WarmupLedger(day.Add(24*time.Hour + 23*time.Hour).In(time.FixedZone("east", 5*3600)))
	if err != nil || fmt.Sprint(sent) != fmt.Sprint(map[[2]string]int{{"ip1", "microsoft"}: 1}) {
		t.Errorf("day 2 sent %v, %v; want ana's one through ip1", sent, err)
	}

	// Five days on, a delivery drops the counters of days 1 and 2 (older
	// than three days); first use stays.
	clk.Advance(4 * 24 * time.Hour)
	enqueue(t, s, msg("c", "gil@example.org"))
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now}))
	for d, n := range map[int]int{0: 0, 1: 0, 5: 1} {
		_, sent, err := s.WarmupLedger(day.Add(time.Duration(d) * 24 * time.Hour))
		if err != nil || len(sent) != n {
			t.Errorf("day %d: sent %v, %v; want %d counters", d+1, sent, err, n)
		}
	}
	if first, _, _ := s.WarmupLedger(day); !first["ip1"].Equal(day) || !first["ip2"].Equal(day) {
		t.Errorf("first use after pruning %v", first)
	}
	var n int
	if err := s.view(func(tx *bbolt.Tx) error { n = s.buckets(tx).warmup.Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 3 { // ip1 and ip2 first use, day 6 ip2/google
		t.Errorf("%d keys in the warm-up bucket, want 3", n)
	}
}

// A pool is checked like the other names that reach the store.
func TestPoolValidated(t *testing.T) {
	s := openTest(t, Config{})
	if _, err := s.Enqueue([]NewMessage{pooled("c", "ana@example.com", "a\x00b")}); err == nil {
		t.Fatal("a pool with NUL was enqueued")
	}
	if _, err := s.Enqueue([]NewMessage{pooled("c", "ana@example.com", strings.Repeat("p", maxCampaignLen+1))}); err == nil {
		t.Fatal("an overlong pool was enqueued")
	}
}
