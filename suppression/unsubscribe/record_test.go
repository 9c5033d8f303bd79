package unsubscribe

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/httplimit"
)

// countingAuditor counts the audited actions.
type countingAuditor struct {
	mu      sync.Mutex
	details []string
}

func (a *countingAuditor) HTTPAction(_, _, _, detail string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.details = append(a.details, detail)
	return nil
}

func (a *countingAuditor) n() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.details)
}

// 50 identical one-click POSTs on one token, concurrently, all answer 200,
// and record, audit and count the unsubscribe once; a wider request (every
// list) is audited as the change it is but counts the person no second
// time; the campaign counter (a real queue) ends at 1.
func TestRepeatedOneClickCountsOnce(t *testing.T) {
	dir := t.TempDir()
	store, err := suppression.Open(suppression.Config{Path: filepath.Join(dir, "s.db"), Box: testBox(t)}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	q, err := queue.Open(queue.Config{Path: filepath.Join(dir, "queue.db"), Box: testBox(t)}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Enqueue([]queue.NewMessage{{Campaign: "q4", List: "news", Key: "ana@example.com",
		From: "b@mail.example.com", To: "ana@example.com", Body: []byte("Subject: hi\r\n\r\nhi\r\n")}}); err != nil {
		t.Fatal(err)
	}
	tk, _ := NewTokens([]byte(strings.Repeat("k", KeySize)), "https://mail.example.com")
	audit := &countingAuditor{}
	srv := httptest.NewServer(NewHandler(Config{Tokens: tk, Suppressor: store, Events: q, Timings: q, Audit: audit,
		// The limits are tested on their own; here every repeat must reach the recorder.
		Limits: Limits{PerIP: httplimit.Per(1000, time.Minute, 1000), PerToken: httplimit.Per(1000, time.Minute, 1000)}}, zerolog.Nop()))
	defer srv.Close()
	u := srv.URL + "/u/" + tk.Mint(Claim{Address: "ana@example.com", List: "news", Campaign: "q4"})

	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if code, _ := post(t, u, "application/x-www-form-urlencoded", "List-Unsubscribe=One-Click"); code != http.StatusOK {
				t.Errorf("one-click POST: %d", code)
			}
		})
	}
	wg.Wait()
	events := func() int {
		ev, err := q.CampaignEvents("q4")
		if err != nil {
			t.Fatal(err)
		}
		return ev["unsubscribed"]
	}
	if n := events(); n != 1 || audit.n() != 1 {
		t.Fatalf("after 50 identical POSTs: %d counted, %d audited; want 1 and 1", n, audit.n())
	}
	if e, ok := check(t, store, "ana@example.com", "news"); !ok || e.Reason != suppression.Unsubscribed {
		t.Fatalf("not suppressed: %+v", e)
	}

	if code, _ := post(t, u, "application/x-www-form-urlencoded", "scope=all"); code != http.StatusOK {
		t.Fatalf("scope=all POST: %d", code)
	}
	if n := events(); n != 1 || audit.n() != 2 {
		t.Fatalf("after unsubscribing from everything: %d counted, %d audited; want 1 and 2", n, audit.n())
	}
	for _, body := range []string{"List-Unsubscribe=One-Click", "scope=all"} { // both covered now
		if code, _ := post(t, u, "application/x-www-form-urlencoded", body); code != http.StatusOK {
			t.Fatalf("repeat %q: %d", body, code)
		}
	}
	if n := events(); n != 1 || audit.n() != 2 {
		t.Fatalf("after the repeats: %d counted, %d audited; want 1 and 2", n, audit.n())
	}
	// Each change to the store is timed, a repeat is not: the list, then every list.
	timings, err := q.CampaignTimings("q4", "unsubscribe")
	if err != nil {
		t.Fatal(err)
	}
	if len(timings) != 2 {
		t.Fatalf("timings = %+v, want 2", timings)
	}
	for _, tm := range timings {
		if tm.Took <= 0 || tm.Took > 10*time.Second || time.Since(tm.At) > time.Minute {
			t.Errorf("timing %+v: want a recent request suppressed within seconds", tm)
		}
	}
}
