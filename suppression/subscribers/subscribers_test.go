package subscribers

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/sealed"
)

func testBox(t testing.TB, fill byte) *sealed.Box {
	t.Helper()
	b, err := sealed.New(bytes.Repeat([]byte{fill}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openAt(t testing.TB, path string, box *sealed.Box) *Store {
	t.Helper()
	s, err := Open(Config{Path: path, Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func newStore(t testing.TB) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s := openAt(t, filepath.Join(dir, "subscribers.db"), testBox(t, 7))
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func mustSubscribe(t *testing.T, s *Store, sub Subscription) Event {
	t.Helper()
	e, err := s.Subscribe(sub)
	if err != nil {
		t.Fatalf("Subscribe(%s, %s): %v", sub.Address, sub.List, err)
	}
	return e
}

func wantState(t *testing.T, s *Store, addr, list, state string) Status {
	t.Helper()
	st, err := s.Status(addr, list)
	if err != nil {
		t.Fatalf("Status(%s, %s): %v", addr, list, err)
	}
	if st.State != state {
		t.Errorf("Status(%s, %s) = %s; want %s", addr, list, st.State, state)
	}
	return st
}

func wantConfirmed(t *testing.T, s *Store, addr, list string, want bool) {
	t.Helper()
	got, err := s.Confirmed(addr, list)
	if err != nil {
		t.Fatalf("Confirmed(%s, %s): %v", addr, list, err)
	}
	if got != want {
		t.Errorf("Confirmed(%s, %s) = %v; want %v", addr, list, got, want)
	}
}

func TestDoubleOptIn(t *testing.T) {
	s, _ := newStore(t)
	const a = "Ana.Ruiz@Example.com"
	wantState(t, s, a, "news", StateNone)
	if _, err := s.Confirm(a, "news", "", ""); !errors.Is(err, ErrNoPending) {
		t.Errorf("Confirm with nothing pending: err = %v, want ErrNoPending", err)
	}

	e := mustSubscribe(t, s, Subscription{Address: a, List: "news", Name: "Ana Ruiz", Source: "form-news",
		IP: "203.0.113.7", UserAgent: "Mozilla/5.0", PrivacyURL: "https://example.com/privacy#v3",
		ConsentText: "consent-v2", Pending: true})
	if e.Kind != KindSubscribed || len(e.SubscriberID) != 32 || e.IP != "203.0.113.7" {
		t.Errorf("Subscribe event = %+v", e)
	}
	st := wantState(t, s, a, "news", StatePending)
	if st.SubscriberID != e.SubscriberID || !st.Since.Equal(e.Time) {
		t.Errorf("Status = %+v; want id %s since %s", st, e.SubscriberID, e.Time)
	}
	wantConfirmed(t, s, a, "news", false)
	wantConfirmed(t, s, a, "other", false)

	c, err := s.Confirm("ana.ruiz@EXAMPLE.COM", "news", "198.51.100.9", "Firefox")
	if err != nil {
		t.Fatalf("Confirm: %v", err)
	}
	if c.Kind != KindConfirmed || c.SubscriberID != e.SubscriberID || c.IP != "198.51.100.9" ||
		c.UserAgent != "Firefox" || c.PrivacyURL != e.PrivacyURL || c.ConsentText != "consent-v2" {
		t.Errorf("Confirm event = %+v", c)
	}
	wantState(t, s, a, "news", StateConfirmed)
	wantConfirmed(t, s, a, "news", true)
	if _, err := s.Confirm(a, "news", "", ""); !errors.Is(err, ErrNoPending) {
		t.Errorf("second Confirm: err = %v, want ErrNoPending", err)
	}
	if _, err := s.Subscribe(Subscription{Address: a, List: "news", Pending: true}); !errors.Is(err, ErrAlreadyConfirmed) {
		t.Errorf("Subscribe when confirmed: err = %v, want ErrAlreadyConfirmed", err)
	}

	// Unsubscribe; again is a no-op; unknown is ErrNotFound.
	if err := s.Unsubscribe(a, "news", "one-click"); err != nil {
		t.Fatal(err)
	}
	wantState(t, s, a, "news", StateUnsubscribed)
	wantConfirmed(t, s, a, "news", false)
	if _, err := s.Confirm(a, "news", "", ""); !errors.Is(err, ErrNoPending) {
		t.Errorf("Confirm after unsubscribe: err = %v, want ErrNoPending", err)
	}
	if err := s.Unsubscribe(a, "news", "one-click"); err != nil {
		t.Errorf("second Unsubscribe: %v", err)
	}
	if err := s.Unsubscribe("nobody@example.com", "news", "one-click"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Unsubscribe unknown: err = %v, want ErrNotFound", err)
	}
	h, err := s.History(a)
	if err != nil || len(h) != 1 || len(h[0].Events) != 3 {
		t.Fatalf("History = %+v, %v; want 3 events on one list", h, err)
	}

	// Signing up again by one's own action starts a new pending sign-up.
	mustSubscribe(t, s, Subscription{Address: a, List: "news", Pending: true})
	wantState(t, s, a, "news", StatePending)

	// A list without double opt-in: confirmed at once.
	e2 := mustSubscribe(t, s, Subscription{Address: "bob@example.org", List: "events", Source: "api"})
	if e2.Kind != KindConfirmed {
		t.Errorf("Subscribe without Pending: kind %s", e2.Kind)
	}
	wantConfirmed(t, s, "bob@example.org", "events", true)

	// Global unsubscribe reaches every list.
	mustSubscribe(t, s, Subscription{Address: "bob@example.org", List: "news"})
	if err := s.Unsubscribe("bob@example.org", "", "preferences"); err != nil {
		t.Fatal(err)
	}
	wantState(t, s, "bob@example.org", "events", StateUnsubscribed)
	wantState(t, s, "bob@example.org", "news", StateUnsubscribed)
}

func TestListBoundaries(t *testing.T) {
	s, _ := newStore(t)
	mustSubscribe(t, s, Subscription{Address: "a@example.com", List: "news2"})
	mustSubscribe(t, s, Subscription{Address: "a@example.com", List: "new", Pending: true})
	mustSubscribe(t, s, Subscription{Address: "b@example.com", List: "news"}) // the last key in the bucket
	wantConfirmed(t, s, "a@example.com", "news", false)
	wantConfirmed(t, s, "a@example.com", "news2", true)
	wantConfirmed(t, s, "a@example.com", "new", false)
	wantConfirmed(t, s, "b@example.com", "news", true)
	wantConfirmed(t, s, "b@example.com", "news2", false)
	wantConfirmed(t, s, "zz@example.com", "news", false)
	wantState(t, s, "a@example.com", "news", StateNone)
}

func TestValidation(t *testing.T) {
	s, _ := newStore(t)
	for _, sub := range []Subscription{
		{Address: "not an address", List: "news"},
		{Address: "a@example.com", List: ""},
		{Address: "a@example.com", List: "bad\nlist"},
		{Address: "a@example.com", List: "news", IP: "999.1.1.1"},
		{Address: "a@example.com", List: "news", Name: strings.Repeat("n", 201)},
		{Address: "a@example.com", List: "news", Company: "x\r\ny"},
	} {
		if _, err := s.Subscribe(sub); err == nil {
			t.Errorf("Subscribe(%+v): no error", sub)
		}
	}
	// An over-long user agent is cut, not refused.
	e := mustSubscribe(t, s, Subscription{Address: "a@example.com", List: "news", UserAgent: strings.Repeat("u", 2000), Pending: true})
	if len(e.UserAgent) != maxUserAgent {
		t.Errorf("user agent kept at %d bytes", len(e.UserAgent))
	}
}

func TestImport(t *testing.T) {
	s, _ := newStore(t)
	// No evidence: a legitimate-interest candidate, never consent.
	e, err := s.ImportCandidate("li@example.com", "news", "contacts.csv", time.Time{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != KindImportedLegitimate || e.Source != "import:contacts.csv" {
		t.Errorf("import event = %+v", e)
	}
	wantState(t, s, "li@example.com", "news", StateLegitimateInterest)
	wantConfirmed(t, s, "li@example.com", "news", false)
	if _, err := s.ImportCandidate("li@example.com", "news", "again.csv", time.Time{}, ""); !errors.Is(err, ErrExists) {
		t.Errorf("second LI import: err = %v, want ErrExists", err)
	}

	// With consented_at: confirmed, dated then, carrying the evidence.
	at := time.Date(2023, 4, 5, 6, 7, 8, 0, time.UTC)
	e, err = s.ImportCandidate("ok@example.com", "news", "import:crm.csv", at, "2001:db8::1")
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != KindConfirmed || !e.Time.Equal(at) || e.Source != "import:crm.csv" || e.IP != "2001:db8::1" {
		t.Errorf("import event = %+v", e)
	}
	st := wantState(t, s, "ok@example.com", "news", StateConfirmed)
	if !st.Since.Equal(at) {
		t.Errorf("Since = %s; want %s", st.Since, at)
	}
	wantConfirmed(t, s, "ok@example.com", "news", true)
	if _, err := s.ImportCandidate("ok@example.com", "news", "x.csv", at, ""); !errors.Is(err, ErrExists) {
		t.Errorf("import over confirmed: err = %v, want ErrExists", err)
	}

	// Evidence upgrades a candidate.
	if _, err := s.ImportCandidate("li@example.com", "news", "later.csv", at, ""); err != nil {
		t.Fatal(err)
	}
	wantConfirmed(t, s, "li@example.com", "news", true)

	// An import never re-subscribes an unsubscribed address.
	if err := s.Unsubscribe("ok@example.com", "news", "one-click"); err != nil {
		t.Fatal(err)
	}
	for _, when := range []time.Time{{}, at} {
		if _, err := s.ImportCandidate("ok@example.com", "news", "x.csv", when, ""); !errors.Is(err, ErrUnsubscribed) {
			t.Errorf("import over unsubscribed: err = %v, want ErrUnsubscribed", err)
		}
	}
	wantConfirmed(t, s, "ok@example.com", "news", false)

	// Batch: per-row outcomes, bad rows do not stop good ones.
	res, err := s.Import([]Candidate{
		{Address: "c1@example.com", List: "news", Source: "b.csv", Name: "C One", Company: "Acme"},
		{Address: "bad", List: "news"},
		{Address: "c2@example.com", List: "news", ConsentedAt: time.Now().Add(48 * time.Hour)},
		{Address: "ok@example.com", List: "news"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || res[1].Err == nil || res[2].Err == nil || !errors.Is(res[3].Err, ErrUnsubscribed) {
		t.Errorf("Import results = %+v", res)
	}
	h, err := s.History("c1@example.com")
	if err != nil || len(h) != 1 || h[0].Name != "C One" || h[0].Company != "Acme" || h[0].Address != "c1@example.com" {
		t.Errorf("History(c1) = %+v, %v", h, err)
	}
}

// rawEvents copies every key/value of the events bucket.
func rawEvents(t *testing.T, s *Store) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := s.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			m[string(k)] = string(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAppendOnly(t *testing.T) {
	s, _ := newStore(t)
	const a = "ana@example.com"
	steps := []func() error{
		func() error { _, err := s.Subscribe(Subscription{Address: a, List: "news", Pending: true}); return err },
		func() error { _, err := s.Subscribe(Subscription{Address: a, List: "news", Pending: true}); return err },
		func() error { _, err := s.Confirm(a, "news", "192.0.2.1", "ua"); return err },
		func() error { return s.Unsubscribe(a, "news", "one-click") },
		func() error { _, err := s.Subscribe(Subscription{Address: a, List: "news", Pending: true}); return err },
		func() error { _, err := s.Confirm(a, "news", "", ""); return err },
		func() error { _, err := s.Subscribe(Subscription{Address: a, List: "events"}); return err },
		func() error { return s.Unsubscribe(a, "", "preferences") },
	}
	prev := rawEvents(t, s)
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		cur := rawEvents(t, s)
		if len(cur) <= len(prev) {
			t.Errorf("step %d: %d events, was %d; want growth", i, len(cur), len(prev))
		}
		for k, v := range prev {
			if cur[k] != v {
				t.Fatalf("step %d: event %x was rewritten or removed", i, k)
			}
		}
		prev = cur
	}
	h, err := s.History(a)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, lh := range h {
		for _, e := range lh.Events {
			kinds = append(kinds, lh.List+":"+e.Kind)
		}
	}
	want := "events:confirmed events:unsubscribed news:subscribed news:subscribed news:confirmed news:unsubscribed news:subscribed news:confirmed news:unsubscribed"
	if got := strings.Join(kinds, " "); got != want {
		t.Errorf("history:\n got %s\nwant %s", got, want)
	}
}

// scan reports which needles occur in any file under dir.
func scan(t *testing.T, dir string, needles ...[]byte) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(b, n) {
				found = append(found, fmt.Sprintf("%q in %s", n, filepath.Base(path)))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestSealedAtRestAndErase(t *testing.T) {
	s, dir := newStore(t)
	const (
		addr    = "Zebediah.Quux@Frobnitz-Mail.example"
		name    = "Zebediah Quuxworth"
		company = "Frobnitz Industries GmbH"
		ip      = "203.0.113.77"
		ua      = "QuuxBrowser/9.1"
	)
	needles := [][]byte{[]byte(addr), []byte(strings.ToLower(addr)), []byte("Zebediah.Quux"),
		[]byte(strings.ToLower("Zebediah.Quux")), []byte(name), []byte(company), []byte(ip), []byte(ua)}

	e := mustSubscribe(t, s, Subscription{Address: addr, List: "news", Name: name, Company: company,
		Source: "form-news", IP: ip, UserAgent: ua, Pending: true})
	first := e.Time
	if _, err := s.Confirm(addr, "news", ip, ua); err != nil {
		t.Fatal(err)
	}
	mustSubscribe(t, s, Subscription{Address: addr, List: "events", Source: "api", IP: ip})
	// Other people stay.
	mustSubscribe(t, s, Subscription{Address: "other@example.com", List: "news", Name: "Other Person"})

	// Sealed at rest: even before erasure no clear personal field is in the file.
	if f := scan(t, dir, needles...); len(f) > 0 {
		t.Fatalf("before erase, clear personal data on disk: %v", f)
	}
	h, err := s.History(addr)
	if err != nil || len(h) != 2 || h[0].Address != "Zebediah.Quux@frobnitz-mail.example" || h[0].Name != name || h[0].Company != company {
		t.Fatalf("History before erase = %+v, %v", h, err)
	}
	// The sealed address bytes, to prove Compact removes them from freed pages.
	var sealedAddr []byte
	s.view(func(tx *bbolt.Tx) error {
		p, _, _ := getPerson(tx, s.box.Index(strings.ToLower(addr)))
		sealedAddr = bytes.Clone(p.Addr)
		return nil
	})
	if len(sealedAddr) == 0 {
		t.Fatal("no sealed address found")
	}

	ts, err := s.Erase(addr, "REQ-42")
	if err != nil {
		t.Fatal(err)
	}
	if ts.Index != s.box.IndexHex(strings.ToLower(addr)) || ts.Ref != "REQ-42" || len(ts.Consents) != 2 {
		t.Fatalf("Tombstone = %+v", ts)
	}
	if c := ts.Consents[1]; c.List != "news" || !c.Subscribed.Equal(first) || c.Confirmed.IsZero() || c.Source != "double-opt-in" {
		t.Errorf("news consent dates = %+v", c)
	}
	if c := ts.Consents[0]; c.List != "events" || c.Confirmed.IsZero() || c.Source != "api" {
		t.Errorf("events consent dates = %+v", c)
	}

	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	if f := scan(t, dir, append(needles, sealedAddr)...); len(f) > 0 {
		t.Fatalf("after erase and compact, found: %v", f)
	}

	// Only the tombstone remains.
	h, err = s.History(addr)
	if err != nil || len(h) != 1 || h[0].List != "" || len(h[0].Events) != 1 || h[0].Events[0].Kind != KindErased ||
		h[0].Address != "" || h[0].Events[0].Source != "REQ-42" || len(h[0].Events[0].Consents) != 2 {
		t.Fatalf("History after erase = %+v, %v", h, err)
	}
	wantState(t, s, addr, "news", StateErased)
	wantState(t, s, addr, "anything", StateErased)
	wantConfirmed(t, s, addr, "news", false)
	if err := s.List("", func(sub Subscriber) error {
		if sub.Address != "other@example.com" {
			t.Errorf("List after erase shows %+v", sub)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantConfirmed(t, s, "other@example.com", "news", true)
}

func TestResubscribeAfterErase(t *testing.T) {
	s, _ := newStore(t)
	const a = "ana@example.com"
	old := mustSubscribe(t, s, Subscription{Address: a, List: "news"})
	if _, err := s.Erase(a, "REQ-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Subscribe(Subscription{Address: a, List: "news"}); !errors.Is(err, ErrErased) {
		t.Errorf("Subscribe after erase: err = %v, want ErrErased", err)
	}
	if _, err := s.Subscribe(Subscription{Address: a, List: "other", Pending: true}); !errors.Is(err, ErrErased) {
		t.Errorf("pending Subscribe without ViaDoubleOptIn after erase: err = %v, want ErrErased", err)
	}
	if _, err := s.ImportCandidate(a, "news", "x.csv", time.Now(), ""); !errors.Is(err, ErrErased) {
		t.Errorf("import after erase: err = %v, want ErrErased", err)
	}
	// Erasing someone never seen still blocks a plain sign-up later.
	if ts, err := s.Erase("stranger@example.com", "REQ-2"); err != nil || len(ts.Consents) != 0 {
		t.Fatalf("Erase unknown = %+v, %v", ts, err)
	}
	if _, err := s.Subscribe(Subscription{Address: "stranger@example.com", List: "news"}); !errors.Is(err, ErrErased) {
		t.Errorf("Subscribe after erasing an unknown address: err = %v, want ErrErased", err)
	}
	e, err := s.Subscribe(Subscription{Address: a, List: "news", ViaDoubleOptIn: true, Source: "form-news"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != KindResubscribed || e.SubscriberID == "" || e.SubscriberID == old.SubscriberID {
		t.Errorf("resubscribe event = %+v (old id %s)", e, old.SubscriberID)
	}
	wantState(t, s, a, "news", StatePending)
	wantConfirmed(t, s, a, "news", false)
	if _, err := s.Confirm(a, "news", "", ""); err != nil {
		t.Fatal(err)
	}
	wantConfirmed(t, s, a, "news", true)
	// Back as a person: other lists are ordinary again.
	wantState(t, s, a, "other", StateNone)
	if e2 := mustSubscribe(t, s, Subscription{Address: a, List: "other", Pending: true}); e2.Kind != KindSubscribed || e2.SubscriberID != e.SubscriberID {
		t.Errorf("second list event = %+v; want subscribed under %s", e2, e.SubscriberID)
	}
	h, _ := s.History(a)
	if len(h) != 3 || h[0].List != "" || h[0].Events[0].Kind != KindErased {
		t.Errorf("History = %+v", h)
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subscribers.db")
	s := openAt(t, path, testBox(t, 7))
	mustSubscribe(t, s, Subscription{Address: "ana@example.com", List: "news", Name: "Ana"})
	if _, err := s.ImportCandidate("li@example.com", "news", "x.csv", time.Time{}, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Confirmed("ana@example.com", "news"); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err = %v, want ErrClosed", err)
	}
	if _, err := Open(Config{Path: path, Box: testBox(t, 8)}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "data key") {
		t.Errorf("Open with another key: err = %v", err)
	}
	s = openAt(t, path, testBox(t, 7))
	defer s.Close()
	wantConfirmed(t, s, "ana@example.com", "news", true)
	wantState(t, s, "li@example.com", "news", StateLegitimateInterest)
	h, err := s.History("ana@example.com")
	if err != nil || len(h) != 1 || h[0].Name != "Ana" {
		t.Errorf("History after reopen = %+v, %v", h, err)
	}
	// A second opener waits, then says who to ask.
	_, err = Open(Config{Path: path, Box: testBox(t, 7), OpenTimeout: 50 * time.Millisecond}, zerolog.Nop())
	if !errors.Is(err, ErrLocked) {
		t.Errorf("second Open: err = %v, want ErrLocked", err)
	}
}

func TestPrunePending(t *testing.T) {
	s, _ := newStore(t)
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	mustSubscribe(t, s, Subscription{Address: "stale@example.com", List: "news", Name: "Stale", Pending: true})
	mustSubscribe(t, s, Subscription{Address: "done@example.com", List: "news", Pending: true})
	if _, err := s.Confirm("done@example.com", "news", "", ""); err != nil {
		t.Fatal(err)
	}
	// Unsubscribed, then a new sign-up left unconfirmed: it reverts to unsubscribed.
	mustSubscribe(t, s, Subscription{Address: "back@example.com", List: "news"})
	if err := s.Unsubscribe("back@example.com", "news", "one-click"); err != nil {
		t.Fatal(err)
	}
	mustSubscribe(t, s, Subscription{Address: "back@example.com", List: "news", Pending: true})
	// Two lists, one stale: the person stays.
	mustSubscribe(t, s, Subscription{Address: "two@example.com", List: "news", Pending: true})
	mustSubscribe(t, s, Subscription{Address: "two@example.com", List: "events"})

	now = now.Add(6 * 24 * time.Hour)
	mustSubscribe(t, s, Subscription{Address: "fresh@example.com", List: "news", Pending: true})
	now = now.Add(2 * 24 * time.Hour) // stale ones are 8 days old, fresh is 2

	n, err := s.PrunePending(7 * 24 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("pruned %d; want 3", n)
	}
	wantState(t, s, "stale@example.com", "news", StateNone)
	if h, _ := s.History("stale@example.com"); len(h) != 0 {
		t.Errorf("stale history = %+v", h)
	}
	wantState(t, s, "done@example.com", "news", StateConfirmed)
	wantState(t, s, "back@example.com", "news", StateUnsubscribed)
	wantState(t, s, "two@example.com", "news", StateNone)
	wantState(t, s, "two@example.com", "events", StateConfirmed)
	wantState(t, s, "fresh@example.com", "news", StatePending)
	var listed []string
	s.List("news", func(sub Subscriber) error { listed = append(listed, sub.Address+"="+sub.Status.State); return nil })
	if len(listed) != 3 { // done, back, fresh
		t.Errorf("List(news) after prune = %v", listed)
	}
	if n, _ := s.PrunePending(7 * 24 * time.Hour); n != 0 {
		t.Errorf("second prune: %d", n)
	}
}

func TestList(t *testing.T) {
	s, _ := newStore(t)
	mustSubscribe(t, s, Subscription{Address: "Ana@Example.com", List: "news", Name: "Ana", Company: "Acme"})
	mustSubscribe(t, s, Subscription{Address: "bob@example.com", List: "news", Pending: true})
	mustSubscribe(t, s, Subscription{Address: "bob@example.com", List: "events"})
	got := map[string]Subscriber{}
	err := s.List("news", func(sub Subscriber) error { got[sub.Address] = sub; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["Ana@example.com"].Name != "Ana" || got["Ana@example.com"].Company != "Acme" ||
		got["Ana@example.com"].Status.State != StateConfirmed || got["bob@example.com"].Status.State != StatePending ||
		got["bob@example.com"].List != "news" {
		t.Errorf("List(news) = %+v", got)
	}
	n := 0
	s.List("", func(Subscriber) error { n++; return nil })
	if n != 3 {
		t.Errorf("List(\"\") gave %d rows; want 3", n)
	}
	stop := errors.New("stop")
	if err := s.List("", func(Subscriber) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("List stop: %v", err)
	}
}

func TestConcurrentWithCompact(t *testing.T) {
	s, _ := newStore(t)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				a := fmt.Sprintf("u%d-%d@example.com", g, i)
				if _, err := s.Subscribe(Subscription{Address: a, List: "news", Pending: true}); err != nil {
					t.Error(err)
					return
				}
				if _, err := s.Confirm(a, "news", "", ""); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 0; i < 3; i++ {
		if err := s.Compact(); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
	n := 0
	s.List("news", func(sub Subscriber) error {
		if sub.Status.State == StateConfirmed {
			n++
		}
		return nil
	})
	if n != 160 {
		t.Errorf("%d confirmed; want 160", n)
	}
}

func BenchmarkConfirmed(b *testing.B) {
	s, _ := newStore(b)
	const total = 100_000
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for start := 0; start < total; start += 10_000 {
		cands := make([]Candidate, 0, 10_000)
		for i := start; i < start+10_000; i++ {
			cands = append(cands, Candidate{Address: fmt.Sprintf("user%06d@example.com", i), List: "news", ConsentedAt: at})
		}
		res, err := s.Import(cands)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
	}
	addrs := make([]string, 4096)
	for j := range addrs {
		addrs[j] = fmt.Sprintf("user%06d@example.com", j*7919%total)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ok, err := s.Confirmed(addrs[i%len(addrs)], "news")
		if err != nil || !ok {
			b.Fatalf("Confirmed: %v, %v", ok, err)
		}
		i++
	}
}
