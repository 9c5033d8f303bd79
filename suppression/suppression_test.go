package suppression

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/sealed"
)

// testBox loads (creating on first use) the data key beside path.
func testBox(t testing.TB, path string) *sealed.Box {
	t.Helper()
	key, err := sealed.LoadOrCreateKey(filepath.Join(filepath.Dir(path), "data.key"))
	if err != nil {
		t.Fatal(err)
	}
	box, err := sealed.New(key)
	if err != nil {
		t.Fatal(err)
	}
	return box
}

func openTest(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(Config{Path: path, Box: testBox(t, path)}, zerolog.Nop())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func newStore(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "suppression.db")
	s := openTest(t, path)
	t.Cleanup(func() { s.Close() })
	return s, path
}

func mustAdd(t *testing.T, s *Store, e Entry) {
	t.Helper()
	if err := s.Add(e); err != nil {
		t.Fatalf("Add(%+v): %v", e, err)
	}
}

func wantCheck(t *testing.T, s *Store, addr, list, reason string, suppressed bool) {
	t.Helper()
	r, ok, err := s.Check(addr, list)
	if err != nil {
		t.Fatalf("Check(%q, %q): %v", addr, list, err)
	}
	if ok != suppressed || r != reason {
		t.Errorf("Check(%q, %q) = %q, %v; want %q, %v", addr, list, r, ok, reason, suppressed)
	}
}

func TestAddressAndDomain(t *testing.T) {
	s, _ := newStore(t)
	mustAdd(t, s, Entry{Target: "Ana.Ruiz@EXAMPLE.com", Reason: Unsubscribed, Source: "cli"})
	mustAdd(t, s, Entry{Target: "@Spam.Example.", Reason: Complaint})
	mustAdd(t, s, Entry{Target: "bob@example.org", List: "product-news", Reason: Unsubscribed})
	mustAdd(t, s, Entry{Target: "@ü.example", List: "events"})

	wantCheck(t, s, "ana.ruiz@example.com", "", "unsubscribed", true)
	wantCheck(t, s, "ANA.RUIZ@example.COM", "product-news", "unsubscribed", true)
	wantCheck(t, s, "anyone@spam.example", "events", "complaint", true)
	wantCheck(t, s, "anyone@SPAM.example", "", "complaint", true)
	wantCheck(t, s, "@spam.example", "", "complaint", true)
	wantCheck(t, s, "someone@example.com", "", "", false)

	// List-scoped suppresses only that list.
	wantCheck(t, s, "bob@example.org", "product-news", "unsubscribed", true)
	wantCheck(t, s, "Bob@Example.org", "events", "", false)
	wantCheck(t, s, "bob@example.org", "", "", false)
	wantCheck(t, s, "x@xn--tda.example", "events", "manual", true) // empty reason → manual, IDN domain
	wantCheck(t, s, "x@ü.example", "product-news", "", false)

	e, ok, err := s.Lookup("ana.ruiz@example.com", "x")
	if err != nil || !ok {
		t.Fatalf("Lookup: %v %v", ok, err)
	}
	if e.Target != "ana.ruiz@example.com" || e.List != "" || e.Source != "cli" || e.Time.IsZero() {
		t.Errorf("Lookup = %+v", e)
	}

	if _, _, err := s.Check("Ana <ana@example.com>", ""); err == nil {
		t.Error("Check of a display-name form: want error")
	}
	if err := s.Add(Entry{Target: "ana@example.com", Reason: "sulking"}); err == nil || !strings.Contains(err.Error(), `"sulking"`) {
		t.Errorf("Add with unknown reason: err = %v", err)
	}
	if err := s.Add(Entry{Target: "ana@@example.com"}); err == nil || !strings.Contains(err.Error(), "more than one @") {
		t.Errorf("Add with bad target: err = %v", err)
	}
	if err := s.Add(Entry{Target: "ana@example.com", List: "a\r\nb"}); err == nil {
		t.Error("Add with CRLF in list: want error")
	}
	if n, err := s.Count(); err != nil || n != 4 {
		t.Errorf("Count = %d, %v; want 4", n, err)
	}
}

func TestUpsertAndErased(t *testing.T) {
	s, _ := newStore(t)
	mustAdd(t, s, Entry{Target: "ana@example.com", Reason: HardBounce})
	mustAdd(t, s, Entry{Target: "ANA@example.com", Reason: Unsubscribed})
	wantCheck(t, s, "ana@example.com", "", "unsubscribed", true)

	mustAdd(t, s, Entry{Target: "ana@example.com", Reason: Erased, Source: "cli"})
	mustAdd(t, s, Entry{Target: "ana@example.com", Reason: Unsubscribed, Source: "one-click"})
	if err := s.SuppressAddress("ana@example.com", "", "hard_bounce", "bounce", "550 5.1.1"); err != nil {
		t.Fatal(err)
	}
	e, _, _ := s.Lookup("ana@example.com", "")
	if e.Reason != Erased || e.Source != "cli" {
		t.Errorf("erased entry was replaced: %+v", e)
	}
	if n, _ := s.Count(); n != 1 {
		t.Errorf("Count = %d, want 1", n)
	}
}

func TestRemove(t *testing.T) {
	s, _ := newStore(t)
	mustAdd(t, s, Entry{Target: "ana@example.com", List: "news"})
	mustAdd(t, s, Entry{Target: "@example.org"})

	if ok, err := s.Remove("ana@example.com", ""); err != nil || ok {
		t.Errorf("Remove global (absent) = %v, %v; want false", ok, err)
	}
	if ok, err := s.Remove("ANA@Example.com", "news"); err != nil || !ok {
		t.Errorf("Remove = %v, %v; want true", ok, err)
	}
	if ok, err := s.Remove("@EXAMPLE.org", ""); err != nil || !ok {
		t.Errorf("Remove domain = %v, %v; want true", ok, err)
	}
	wantCheck(t, s, "ana@example.com", "news", "", false)
	wantCheck(t, s, "x@example.org", "", "", false)
	if _, err := s.Remove("no at sign", ""); err == nil {
		t.Error("Remove of a bad target: want error")
	}
}

func TestListOrderAndCopy(t *testing.T) {
	s, _ := newStore(t)
	for _, e := range []Entry{
		{Target: "zed@example.com"},
		{Target: "ana@example.com", List: "news", Note: "n1"},
		{Target: "ana@example.com"},
		{Target: "@example.net", Reason: HardBounce},
	} {
		mustAdd(t, s, e)
	}
	var got []Entry
	if err := s.List(func(e Entry) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range got {
		if len(e.Index) != 2*sealed.IndexSize {
			t.Errorf("entry %s: Index %q", e.Target, e.Index)
		}
		keys = append(keys, e.Target+"|"+e.List+"|"+string(e.Reason)+"|"+e.Note)
	}
	if !slices.IsSortedFunc(got, func(a, b Entry) int { return strings.Compare(a.Index, b.Index) }) {
		t.Error("List is not in index order")
	}
	slices.Sort(keys) // index order reveals nothing about the targets
	want := "@example.net||hard_bounce|,ana@example.com|news|manual|n1,ana@example.com||manual|,zed@example.com||manual|"
	if strings.Join(keys, ",") != want {
		t.Errorf("List = %s\nwant   %s", strings.Join(keys, ","), want)
	}
	stop := errors.New("stop")
	n := 0
	if err := s.List(func(Entry) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Errorf("List stop: err %v after %d calls", err, n)
	}
}

func TestReopenPersistsAndLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "suppression.db")
	s := openTest(t, path)
	when := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	mustAdd(t, s, Entry{Target: "ana@example.com", List: "news", Reason: Complaint, Source: "arf", Note: "fbl", Time: when})

	// A second open of a locked file fails clearly instead of hanging.
	_, err := Open(Config{Path: path, OpenTimeout: 100 * time.Millisecond, Box: testBox(t, path)}, zerolog.Nop())
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Errorf("second Open: err = %v, want ErrLocked naming the path", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("store file mode: %v %v", fi.Mode(), err)
	}

	s = openTest(t, path)
	defer s.Close()
	e, ok, err := s.Lookup("ana@example.com", "news")
	if err != nil || !ok {
		t.Fatalf("after reopen: %v %v", ok, err)
	}
	want := Entry{Target: "ana@example.com", List: "news", Reason: Complaint, Source: "arf", Note: "fbl", Time: when,
		Index: testBox(t, path).IndexHex("ana@example.com")}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("after reopen = %+v\nwant %+v", e, want)
	}
}

func TestConcurrentAdd(t *testing.T) {
	s, _ := newStore(t)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				errs <- s.Add(Entry{Target: fmt.Sprintf("u%d.%d@example.com", g, i), Reason: HardBounce})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Count(); err != nil || n != 200 {
		t.Errorf("Count = %d, %v; want 200", n, err)
	}
}

func TestImport(t *testing.T) {
	s, _ := newStore(t)
	f, err := os.Open("testdata/broken.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := s.Import(f, "testdata/broken.csv", Entry{Reason: Unsubscribed, Note: "legacy"})
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if res.Rows != 6 || res.Added != 3 || len(res.Errors) != 3 {
		t.Fatalf("Import = %+v; want 6 rows, 3 added, 3 errors", res)
	}
	for i, want := range []string{
		`testdata/broken.csv:4: target: address "not-an-address": missing @`,
		`testdata/broken.csv:6: reason "sulking": unknown`,
		`testdata/broken.csv:7: `,
	} {
		if !strings.HasPrefix(res.Errors[i].Error(), want) {
			t.Errorf("error %d = %q, want prefix %q", i, res.Errors[i], want)
		}
	}
	e, ok, _ := s.Lookup("ana@example.com", "")
	if !ok || e.Reason != Unsubscribed || e.Source != "import:broken.csv" || e.Note != "legacy" {
		t.Errorf("ana = %+v, %v", e, ok)
	}
	e, ok, _ = s.Lookup("bob@example.org", "product-news")
	if !ok || e.Reason != HardBounce || e.List != "product-news" || e.Note != "from old ESP" {
		t.Errorf("bob = %+v, %v", e, ok)
	}
	wantCheck(t, s, "bob@example.org", "events", "", false)
	wantCheck(t, s, "x@spam.example", "events", "complaint", true)
}

func TestImportBatchesAndHeaderErrors(t *testing.T) {
	s, _ := newStore(t)
	var b strings.Builder
	b.WriteString("\ufeffaddress,list\n")
	for i := 0; i < 2500; i++ {
		fmt.Fprintf(&b, "user%d@example.com,news\n", i)
	}
	b.WriteString("short-row\n")
	res, err := s.Import(strings.NewReader(b.String()), "/tmp/x/big.csv", Entry{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != 2501 || res.Added != 2500 || len(res.Errors) != 1 || !strings.Contains(res.Errors[0].Error(), "big.csv:2502: row has 1 fields") {
		t.Errorf("Import = rows %d added %d errors %v", res.Rows, res.Added, res.Errors)
	}
	wantCheck(t, s, "user2499@example.com", "news", "manual", true)
	e, _, _ := s.Lookup("user1@example.com", "news")
	if e.Source != "import:big.csv" {
		t.Errorf("source = %q", e.Source)
	}

	if _, err := s.Import(strings.NewReader("name,list\nx,y\n"), "no-email.csv", Entry{}); err == nil || !strings.Contains(err.Error(), "no-email.csv:1") {
		t.Errorf("Import without email column: err = %v", err)
	}
	if _, err := s.Import(strings.NewReader(""), "empty.csv", Entry{}); err == nil || !strings.Contains(err.Error(), "empty.csv") {
		t.Errorf("Import of empty file: err = %v", err)
	}
}

func benchStore(b testing.TB) *Store {
	s, _ := newStore(b)
	const n = 100_000
	for start := 0; start < n; start += importBatch {
		var sb strings.Builder
		sb.WriteString("email,list,reason\n")
		for i := start; i < start+importBatch; i++ {
			list := ""
			if i%3 == 0 {
				list = "news"
			}
			fmt.Fprintf(&sb, "user%d@domain%d.example,%s,hard_bounce\n", i, i%500, list)
		}
		if _, err := s.Import(strings.NewReader(sb.String()), "bench.csv", Entry{}); err != nil {
			b.Fatal(err)
		}
	}
	if c, err := s.Count(); err != nil || c != n {
		b.Fatalf("Count = %d, %v", c, err)
	}
	return s
}

func BenchmarkCheck(b *testing.B) {
	s := benchStore(b)
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, ok, err := s.Check("nobody@domain7.example", "news"); err != nil || ok {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok, err := s.Check("user1@domain1.example", "news"); err != nil || !ok {
				b.Fatal(ok, err)
			}
		}
	})
}

// Covers says whether an entry is in effect already: the same reason on the
// same list or globally, or an erased address; another reason, another list
// or a domain entry does not cover it.
func TestCovers(t *testing.T) {
	s, _ := newStore(t)
	for _, e := range []Entry{
		{Target: "ana@example.com", List: "news", Reason: Unsubscribed},
		{Target: "bob@example.com", Reason: Unsubscribed},
		{Target: "carol@example.com", Reason: HardBounce},
		{Target: "@example.net", Reason: Unsubscribed},
	} {
		if err := s.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Erase("erin@example.com", "req 1", nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		e    Entry
		want bool
	}{
		{Entry{Target: "ANA@example.com", List: "news", Reason: Unsubscribed}, true},
		{Entry{Target: "ana@example.com", Reason: Unsubscribed}, false}, // all lists: new
		{Entry{Target: "ana@example.com", List: "other", Reason: Unsubscribed}, false},
		{Entry{Target: "ana@example.com", List: "news", Reason: Complaint}, false},
		{Entry{Target: "bob@example.com", List: "news", Reason: Unsubscribed}, true}, // the global entry covers it
		{Entry{Target: "bob@example.com", Reason: Unsubscribed}, true},
		{Entry{Target: "carol@example.com", Reason: Unsubscribed}, false},
		{Entry{Target: "dave@example.net", Reason: Unsubscribed}, false}, // a domain entry is not the person's
		{Entry{Target: "erin@example.com", List: "news", Reason: Unsubscribed}, true},
	} {
		if got, err := s.Covers(c.e); got != c.want || err != nil {
			t.Errorf("Covers(%+v) = %v, %v; want %v", c.e, got, err, c.want)
		}
	}
	if _, err := s.Covers(Entry{Target: "not an address", Reason: Unsubscribed}); err == nil {
		t.Error("Covers accepted a bad target")
	}
}
