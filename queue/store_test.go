package queue

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestEnqueueIdempotentAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	batch := []NewMessage{msg("c1", "ana@example.com"), msg("c1", "bob@Example.COM"), msg("c1", "ana@example.com")}
	res := enqueue(t, s, batch...)
	if res.Added != 2 || res.Duplicates != 1 || res.IDs[0] == "" || res.IDs[1] == "" || res.IDs[2] != "" {
		t.Fatalf("first enqueue = %+v, want 2 added, third a duplicate", res)
	}
	m := mustGet(t, s, res.IDs[1])
	if m.To != "bob@example.com" || m.Domain != "example.com" || m.State != StateReady || m.Campaign != "c1" || m.Key != "bob@Example.COM" {
		t.Fatalf("stored message = %+v", m)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openTest(t, Config{Path: path})
	res2 := enqueue(t, s2, batch...)
	if res2.Added != 0 || res2.Duplicates != 3 {
		t.Fatalf("after reopen = %+v, want all duplicates", res2)
	}
	body, err := s2.Body(res.IDs[0])
	if err != nil || string(body) != string(batch[0].Body) {
		t.Fatalf("Body = %q, %v", body, err)
	}
	// Same key in another campaign is a different message.
	if res3 := enqueue(t, s2, msg("c2", "ana@example.com")); res3.Added != 1 {
		t.Fatalf("other campaign = %+v, want added", res3)
	}
}

func TestEnqueueDuplicateOfFinishedMessage(t *testing.T) {
	s := openTest(t, Config{})
	res := enqueue(t, s, msg("c1", "ana@example.com"))
	if _, err := s.Delete(res.IDs, "test"); err != nil {
		t.Fatal(err)
	}
	if res2 := enqueue(t, s, msg("c1", "ana@example.com")); res2.Duplicates != 1 {
		t.Fatalf("re-enqueue of cancelled = %+v, want duplicate", res2)
	}
}

func TestEnqueueInvalidWritesNothing(t *testing.T) {
	s := openTest(t, Config{})
	good := msg("c1", "ok@example.com")
	cases := []struct {
		name string
		edit func(*NewMessage)
		want string
	}{
		{"bad recipient", func(m *NewMessage) { m.To = "secret-person@@example.com" }, "invalid recipient"},
		{"display name", func(m *NewMessage) { m.To = "Secret Person <secret-person@example.com>" }, "invalid recipient"},
		{"empty campaign", func(m *NewMessage) { m.Campaign = "" }, "empty campaign"},
		{"NUL campaign", func(m *NewMessage) { m.Campaign = "a\x00b" }, "NUL"},
		{"empty key", func(m *NewMessage) { m.Key = "" }, "empty idempotency key"},
		{"long key", func(m *NewMessage) { m.Key = strings.Repeat("k", 600) }, "longer than"},
		{"empty body", func(m *NewMessage) { m.Body = nil }, "empty body"},
		{"bad sender", func(m *NewMessage) { m.From = "x\r\ny@example.com" }, "invalid sender"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := msg("c1", "secret-person@example.com")
			bad.Key = "k-" + tc.name
			tc.edit(&bad)
			_, err := s.Enqueue([]NewMessage{good, bad})
			if err == nil {
				t.Fatal("Enqueue accepted invalid input")
			}
			if !strings.Contains(err.Error(), "message 1") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q should name message 1 and say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret-person") {
				t.Fatalf("error %q leaks the address", err)
			}
		})
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Total != 0 {
		t.Fatalf("invalid batches wrote %d messages", st.Total)
	}
}

func TestIDsUniqueAndSorted(t *testing.T) {
	s := openTest(t, Config{})
	var all []string
	for b := 0; b < 4; b++ {
		var msgs []NewMessage
		for i := 0; i < 300; i++ {
			msgs = append(msgs, msg("c", fmt.Sprintf("u%d-%d@example.com", b, i)))
		}
		all = append(all, enqueue(t, s, msgs...).IDs...)
	}
	for i, id := range all {
		if len(id) != 16 {
			t.Fatalf("id %q is not 16 hex", id)
		}
		if i > 0 && id <= all[i-1] {
			t.Fatalf("ids not increasing: %s after %s", id, all[i-1])
		}
	}
}

func TestOpenLockedAndBadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	openTest(t, Config{Path: path})
	_, err := Open(Config{Box: testBox, Path: path, OpenTimeout: 50 * time.Millisecond}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second Open = %v, want locked error", err)
	}
	for _, cfg := range []Config{{Box: testBox}, {Box: testBox, Path: path + "2", Retry: []time.Duration{time.Minute, 0}},
		{Box: testBox, Path: path + "3", MaxAge: -1}, {Path: path + "4"}} {
		if _, err := Open(cfg, zerolog.Nop()); err == nil {
			t.Fatalf("Open(%+v) accepted bad config", cfg)
		}
	}
	if _, err := Open(Config{Box: testBox, Path: filepath.Join(t.TempDir(), "missing", "queue.db")}, zerolog.Nop()); err == nil {
		t.Fatal("Open in a missing folder succeeded")
	}
}

func TestHoldReleaseRetryDelete(t *testing.T) {
	s := openTest(t, Config{})
	res := enqueue(t, s, msg("c", "a@example.com"), msg("c", "b@example.com"), msg("c", "c@example.com"))
	a, b, c := res.IDs[0], res.IDs[1], res.IDs[2]

	n, err := s.Hold([]string{a, b, "00000000deadbeef"})
	if n != 2 || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "00000000deadbeef") {
		t.Fatalf("Hold = %d, %v; want 2 and a not-found error naming the id", n, err)
	}
	if n, err := s.Hold([]string{a}); n != 0 || err != nil {
		t.Fatalf("second Hold = %d, %v; want 0, nil", n, err)
	}
	held, err := s.AllIDs(Filter{State: StateHeld})
	if err != nil || strings.Join(held, ",") != a+","+b {
		t.Fatalf("held = %v, %v", held, err)
	}
	if n, err := s.Release([]string{a, c}); n != 1 || err != nil {
		t.Fatalf("Release = %d, %v; want 1", n, err)
	}
	if n, err := s.Delete([]string{b}, "operator said so"); n != 1 || err != nil {
		t.Fatalf("Delete = %d, %v", n, err)
	}
	mb := mustGet(t, s, b)
	if mb.State != StateCancelled || mb.Reason != "operator said so" {
		t.Fatalf("deleted message = %+v", mb)
	}
	if _, err := s.Body(b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Body of deleted = %v, want ErrNotFound", err)
	}
	if n, _ := s.Retry([]string{b}); n != 0 {
		t.Fatal("Retry revived a cancelled message")
	}
	if n, err := s.Retry([]string{c}); n != 1 || err != nil {
		t.Fatalf("Retry ready = %d, %v", n, err)
	}

	f := newFake()
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Workers: 2}))
	if f.count("a@example.com") != 1 || f.count("c@example.com") != 1 || f.count("b@example.com") != 0 {
		t.Fatalf("calls = %v", f.calls)
	}
	if n, _ := s.Retry([]string{a}); n != 0 {
		t.Fatal("Retry changed a delivered message")
	}
}

func TestHoldDeferredThenRetry(t *testing.T) {
	s := openTest(t, Config{})
	f := newFake()
	f.script["a@example.com"] = []error{&smtpErr{451, "4.3.0", "try later"}}
	res := enqueue(t, s, msg("c", "a@example.com"))
	clk := newClock()
	r := s.NewRunner(f, newSup(), RunnerConfig{Now: clk.Now})
	drain(t, r)
	if m := mustGet(t, s, res.IDs[0]); m.State != StateDeferred {
		t.Fatalf("state = %s, want deferred", m.State)
	}
	if n, err := s.Hold(res.IDs); n != 1 || err != nil {
		t.Fatalf("Hold deferred = %d, %v", n, err)
	}
	clk.Advance(24 * time.Hour) // past its schedule: held messages still wait
	drain(t, r)
	if f.count("a@example.com") != 1 {
		t.Fatal("held message was delivered")
	}
	if n, err := s.Retry(res.IDs); n != 1 || err != nil {
		t.Fatalf("Retry held = %d, %v", n, err)
	}
	drain(t, r)
	if m := mustGet(t, s, res.IDs[0]); m.State != StateDelivered || m.Attempts != 2 {
		t.Fatalf("after retry = %+v", m)
	}
}

func TestListFilters(t *testing.T) {
	s := openTest(t, Config{})
	var msgs []NewMessage
	for i := 0; i < 600; i++ {
		c, d := "alpha", "example.com"
		if i%3 == 0 {
			c = "beta"
		}
		if i%2 == 0 {
			d = "example.org"
		}
		msgs = append(msgs, msg(c, fmt.Sprintf("u%d@%s", i, d)))
	}
	ids := enqueue(t, s, msgs...).IDs
	if _, err := s.Hold(ids[:10]); err != nil {
		t.Fatal(err)
	}

	count := func(f Filter) []string {
		t.Helper()
		var got []string
		if err := s.List(f, func(m Message) error {
			if len(got) > 0 && m.ID <= got[len(got)-1] {
				t.Fatalf("List out of id order")
			}
			got = append(got, m.ID)
			return nil
		}); err != nil {
			t.Fatalf("List(%+v): %v", f, err)
		}
		return got
	}
	checks := []struct {
		f    Filter
		want int
	}{
		{Filter{}, 600},
		{Filter{Campaign: "beta"}, 200},
		{Filter{State: StateHeld}, 10},
		{Filter{State: StateReady}, 590},
		{Filter{Campaign: "beta", State: StateHeld}, 4}, // i = 0,3,6,9
		{Filter{Domain: "EXAMPLE.org"}, 300},
		{Filter{Campaign: "alpha", Domain: "example.com"}, 200},
		{Filter{Limit: 7}, 7},
		{Filter{State: StateReady, Limit: 300}, 300},
		{Filter{OlderThan: time.Hour}, 0},
		{Filter{Campaign: "nope"}, 0},
	}
	for _, c := range checks {
		if got := count(c.f); len(got) != c.want {
			t.Errorf("List(%+v) = %d messages, want %d", c.f, len(got), c.want)
		}
	}
	if err := s.List(Filter{State: "bogus"}, func(Message) error { return nil }); err == nil {
		t.Error("List accepted an unknown state")
	}
	stop := errors.New("stop")
	n := 0
	if err := s.List(Filter{}, func(Message) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("List did not stop on callback error: %v after %d", err, n)
	}
	// fn may call back into the store (no transaction held).
	if err := s.List(Filter{State: StateHeld}, func(m Message) error {
		_, err := s.Release([]string{m.ID})
		return err
	}); err != nil {
		t.Fatalf("List with nested Release: %v", err)
	}
}

func TestStatsAndCampaignCounts(t *testing.T) {
	s := openTest(t, Config{})
	f := newFake()
	f.script["bad@example.org"] = []error{&smtpErr{550, "5.1.1", "no such user"}}
	f.script["slow@example.net"] = []error{&smtpErr{421, "4.7.0", "later"}}
	before := time.Now()
	res := enqueue(t, s, msg("c1", "ok@example.com"), msg("c1", "bad@example.org"), msg("c1", "slow@example.net"), msg("c2", "held@example.com"))
	if _, err := s.Hold(res.IDs[3:]); err != nil {
		t.Fatal(err)
	}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))

	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Total != 4 || st.ByState[StateDelivered] != 1 || st.ByState[StateBounced] != 1 ||
		st.ByState[StateDeferred] != 1 || st.ByState[StateHeld] != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if len(st.ByDomain) != 2 || st.ByDomain["example.net"] != 1 || st.ByDomain["example.com"] != 1 {
		t.Fatalf("by domain = %v, want pending only", st.ByDomain)
	}
	if st.Oldest.Before(before) || st.Oldest.After(time.Now()) {
		t.Fatalf("oldest = %v", st.Oldest)
	}
	cc, err := s.CampaignCounts("c1")
	if err != nil || cc[StateDelivered] != 1 || cc[StateBounced] != 1 || cc[StateDeferred] != 1 || len(cc) != 3 {
		t.Fatalf("CampaignCounts(c1) = %v, %v", cc, err)
	}
	if cc, _ := s.CampaignCounts("none"); len(cc) != 0 {
		t.Fatalf("CampaignCounts(none) = %v", cc)
	}
}

func TestCampaignRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	if _, err := s.GetCampaign("x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetCampaign(missing) = %v", err)
	}
	if err := s.PutCampaign("", []byte("{}")); err == nil {
		t.Fatal("PutCampaign accepted an empty id")
	}
	if err := s.PutCampaign("x", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2 := openTest(t, Config{Path: path})
	if rec, err := s2.GetCampaign("x"); err != nil || string(rec) != `{"a":1}` {
		t.Fatalf("GetCampaign = %s, %v", rec, err)
	}
}

func TestGetUnknown(t *testing.T) {
	s := openTest(t, Config{})
	if _, err := s.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get = %v", err)
	}
	if _, err := s.Body("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Body = %v", err)
	}
	if n, err := s.Delete([]string{"nope"}, ""); n != 0 || !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete = %d, %v", n, err)
	}
}
