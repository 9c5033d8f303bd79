package suppression

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// rawValues returns copies of every stored value whose key starts with the
// index of target.
func rawValues(t *testing.T, s *Store, target string) [][]byte {
	t.Helper()
	var out [][]byte
	prefix := key(s.box.Index(target), "")
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketEntries).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			out = append(out, bytes.Clone(v))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sealedParts returns the sealed target and note of a stored value, as they
// lie in the file (base64 in the JSON).
func sealedParts(t *testing.T, raw []byte) [][]byte {
	t.Helper()
	_, st, err := decodeValue(raw)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, b := range [][]byte{st.Target, st.Note} {
		if len(b) > 0 {
			out = append(out, []byte(base64.StdEncoding.EncodeToString(b)))
		}
	}
	return out
}

func fileHas(t *testing.T, path string, needle []byte) bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(raw, needle)
}

func TestNoClearAddressAtRestAndErase(t *testing.T) {
	s, path := newStore(t)
	const ana = "ana.ruiz@acme.example"
	mustAdd(t, s, Entry{Target: "Ana.Ruiz@ACME.example", Reason: Unsubscribed, Source: "one-click", Note: "Ana Ruiz called"})
	mustAdd(t, s, Entry{Target: ana, List: "news", Reason: HardBounce, Note: "550 5.1.1 <ana.ruiz@acme.example> unknown"})
	mustAdd(t, s, Entry{Target: ana, List: "events", Reason: Complaint})
	mustAdd(t, s, Entry{Target: "@acme.example", List: "events", Reason: Manual, Note: "whole company"})
	mustAdd(t, s, Entry{Target: "bob@globex.example", Reason: Manual})
	if _, err := s.Import(strings.NewReader("email,note\ncarol@initech.example,Carol Smith\n"), "x.csv", Entry{}); err != nil {
		t.Fatal(err)
	}

	var secrets [][]byte // the sealed bytes of ana's entries, as stored before the erasure
	for _, v := range rawValues(t, s, ana) {
		secrets = append(secrets, sealedParts(t, v)...)
	}
	if len(secrets) != 5 { // one target per entry, two notes
		t.Fatalf("sealed parts of ana: %d, want 5", len(secrets))
	}
	s.Close()
	for _, clear := range []string{ana, "Ana.Ruiz", "Ana Ruiz", "acme.example", "bob@globex.example", "carol@initech.example", "Carol Smith", "whole company"} {
		if fileHas(t, path, []byte(clear)) {
			t.Errorf("suppression.db holds %q in clear", clear)
		}
	}
	for i, sec := range secrets {
		if !fileHas(t, path, sec) {
			t.Errorf("sealed part %d not in the file before erasure (the scan would prove nothing)", i)
		}
	}

	s = openTest(t, path)
	defer s.Close()
	consents := []ConsentDates{{List: "news", Subscribed: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), Confirmed: time.Date(2024, 1, 2, 3, 9, 0, 0, time.UTC), Source: "form:footer"}}
	ts, err := s.Erase("ANA.RUIZ@acme.example", "DSR-2025-0042", consents)
	if err != nil {
		t.Fatal(err)
	}
	if ts.Target != "" || ts.Reason != Erased || ts.Source != "erasure" || ts.Note != "DSR-2025-0042" || ts.List != "" ||
		ts.Index != s.box.IndexHex(ana) || ts.Time.IsZero() || !reflect.DeepEqual(ts.Consents, consents) {
		t.Errorf("tombstone = %+v", ts)
	}
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("compact temp file left behind: %v", err)
	}
	if fileHas(t, path, []byte(ana)) {
		t.Error("suppression.db holds the address after erase + compact")
	}
	for i, sec := range secrets {
		if fileHas(t, path, sec) {
			t.Errorf("suppression.db still holds sealed part %d of the erased address after compact", i)
		}
	}

	// The tombstone blocks forever, on every list, against every write.
	for _, l := range []string{"", "news", "events", "other"} {
		wantCheck(t, s, ana, l, "erased", true)
	}
	mustAdd(t, s, Entry{Target: ana, Reason: Unsubscribed})
	if err := s.SuppressAddress(ana, "", "hard_bounce", "bounce", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Remove(ana, ""); !errors.Is(err, ErrErased) {
		t.Errorf("Remove of a tombstone: err = %v, want ErrErased", err)
	}
	if err := s.Restrict(ana, "asked"); !errors.Is(err, ErrErased) {
		t.Errorf("Restrict of an erased address: err = %v, want ErrErased", err)
	}
	if ok, err := s.Unrestrict(ana); ok || err != nil {
		t.Errorf("Unrestrict of an erased address = %v, %v", ok, err)
	}
	mustAdd(t, s, Entry{Target: ana, List: "news", Reason: Manual}) // an erased address takes no list entry
	if _, err := s.Import(strings.NewReader("email,list\nana.ruiz@acme.example,events\n"), "again.csv", Entry{}); err != nil {
		t.Fatal(err)
	}
	if got := rawValues(t, s, ana); len(got) != 1 {
		t.Errorf("%d values under the erased address, want only the tombstone", len(got))
	}

	// Erasing again keeps the first tombstone and adds missing consent dates.
	more := ConsentDates{List: "events", Confirmed: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), Source: "import:x.csv"}
	ts2, err := s.Erase(ana, "DSR-2025-0099", append(consents, more))
	if err != nil {
		t.Fatal(err)
	}
	if !ts2.Time.Equal(ts.Time) || ts2.Note != "DSR-2025-0042" || !reflect.DeepEqual(ts2.Consents, append(consents, more)) {
		t.Errorf("second erase = %+v", ts2)
	}

	// Domain entries stay; List shows the tombstone without a target.
	wantCheck(t, s, "dave@acme.example", "events", "manual", true)
	var tombs, all int
	err = s.List(func(e Entry) error {
		all++
		if e.Reason == Erased {
			tombs++
			if e.Target != "" || e.Index != ts.Index || e.Note != "DSR-2025-0042" || len(e.Consents) != 2 {
				t.Errorf("listed tombstone = %+v", e)
			}
		}
		return nil
	})
	if err != nil || tombs != 1 || all != 4 {
		t.Errorf("List: %d entries, %d tombstones, %v; want 4, 1", all, tombs, err)
	}
	got, err := s.EntriesFor(ana)
	if err != nil || len(got) != 2 || got[0].Reason != Erased || got[0].Target != "" || got[1].Target != "@acme.example" {
		t.Errorf("EntriesFor after erase = %+v, %v", got, err)
	}

	// Reopening keeps it.
	s.Close()
	s = openTest(t, path)
	wantCheck(t, s, "Ana.Ruiz@Acme.Example", "news", "erased", true)
}

func TestEraseIndexMatchesSubscribers(t *testing.T) {
	dir := t.TempDir()
	box := testBox(t, filepath.Join(dir, "x"))
	subs, err := subscribers.Open(subscribers.Config{Path: filepath.Join(dir, "subscribers.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer subs.Close()
	if _, err := subs.Subscribe(subscribers.Subscription{Address: "Ana.Ruiz@ACME.example", List: "news", Source: "form"}); err != nil {
		t.Fatal(err)
	}
	sts, err := subs.Erase("ana.ruiz@acme.example", "DSR-1")
	if err != nil {
		t.Fatal(err)
	}

	s, err := Open(Config{Path: filepath.Join(dir, "suppression.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ts, err := s.Erase("ANA.RUIZ@acme.example", "DSR-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ts.Index != sts.Index {
		t.Errorf("suppression tombstone index %s, subscribers' %s", ts.Index, sts.Index)
	}

	// A caller that holds only the subscriber tombstone blocks the same address.
	other, err := Open(Config{Path: filepath.Join(dir, "other.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var consents []ConsentDates
	for _, c := range sts.Consents {
		consents = append(consents, ConsentDates(c))
	}
	ts2, err := other.EraseIndex(sts.Index, sts.Ref, consents)
	if err != nil {
		t.Fatal(err)
	}
	if ts2.Index != sts.Index || len(ts2.Consents) != 1 || ts2.Consents[0].List != "news" || ts2.Consents[0].Confirmed.IsZero() {
		t.Errorf("EraseIndex = %+v", ts2)
	}
	wantCheck(t, other, "ana.ruiz@ACME.EXAMPLE", "news", "erased", true)
	for _, bad := range []string{"", "zz", sts.Index[:10]} {
		if _, err := other.EraseIndex(bad, "r", nil); err == nil {
			t.Errorf("EraseIndex(%q): want error", bad)
		}
	}
	if _, err := other.Erase("ana@acme.example", "line\nbreak", nil); err == nil {
		t.Error("Erase with a control character in the reference: want error")
	}
	if _, err := other.Erase("@acme.example", "r", nil); err == nil {
		t.Error("Erase of a domain: want error")
	}
}

func TestRestrict(t *testing.T) {
	s, _ := newStore(t)
	const ana = "ana@acme.example"
	if err := s.Restrict("Ana@ACME.example", "Art. 18 request DSR-7"); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, s, ana, "news", "restricted", true)
	e, _, _ := s.Lookup(ana, "")
	if e.Reason != Restricted || e.Source != "restriction" || e.Note != "Art. 18 request DSR-7" || e.Target != ana {
		t.Errorf("Lookup = %+v", e)
	}
	if _, err := s.Remove(ana, ""); !errors.Is(err, ErrRestricted) {
		t.Errorf("Remove of a restriction: err = %v, want ErrRestricted", err)
	}
	if ok, err := s.Unrestrict(ana); !ok || err != nil {
		t.Fatalf("Unrestrict = %v, %v", ok, err)
	}
	wantCheck(t, s, ana, "news", "", false)
	if ok, err := s.Unrestrict(ana); ok || err != nil {
		t.Errorf("Unrestrict again = %v, %v", ok, err)
	}

	// Unrestrict never lifts another reason; a restriction survives beneath one.
	mustAdd(t, s, Entry{Target: ana, Reason: Unsubscribed, Source: "one-click"})
	if ok, err := s.Unrestrict(ana); ok || err != nil {
		t.Errorf("Unrestrict of an unsubscribed address = %v, %v", ok, err)
	}
	wantCheck(t, s, ana, "", "unsubscribed", true)
	if err := s.Restrict(ana, "DSR-8"); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, s, ana, "", "unsubscribed", true)
	got, err := s.EntriesFor(ana)
	if err != nil || len(got) != 2 || got[0].Reason != Unsubscribed || got[1].Reason != Restricted || got[1].Note != "DSR-8" {
		t.Errorf("EntriesFor = %+v, %v", got, err)
	}
	if ok, err := s.Unrestrict(ana); !ok || err != nil {
		t.Errorf("Unrestrict beneath unsubscribed = %v, %v", ok, err)
	}
	wantCheck(t, s, ana, "", "unsubscribed", true)

	// A newer reason over a restriction keeps it; removing that reason leaves it.
	if _, err := s.Remove(ana, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Restrict(ana, "DSR-9"); err != nil {
		t.Fatal(err)
	}
	mustAdd(t, s, Entry{Target: ana, Reason: HardBounce})
	wantCheck(t, s, ana, "", "hard_bounce", true)
	if ok, err := s.Remove(ana, ""); !ok || err != nil {
		t.Fatalf("Remove = %v, %v", ok, err)
	}
	wantCheck(t, s, ana, "", "restricted", true)
	if n, _ := s.Count(); n != 1 {
		t.Errorf("Count = %d, want 1", n)
	}
	if ok, err := s.Unrestrict(ana); !ok || err != nil {
		t.Errorf("Unrestrict = %v, %v", ok, err)
	}
	wantCheck(t, s, ana, "", "", false)

	if err := s.Restrict("@acme.example", "x"); err == nil {
		t.Error("Restrict of a domain: want error")
	}
}

func TestEntriesFor(t *testing.T) {
	s, _ := newStore(t)
	mustAdd(t, s, Entry{Target: "ana@acme.example", Reason: Unsubscribed})
	mustAdd(t, s, Entry{Target: "ana@acme.example", List: "news", Reason: HardBounce, Note: "n"})
	mustAdd(t, s, Entry{Target: "ana@acme.example", List: "events", Reason: Complaint})
	mustAdd(t, s, Entry{Target: "@acme.example", List: "events"})
	mustAdd(t, s, Entry{Target: "bob@acme.example"})
	mustAdd(t, s, Entry{Target: "ana@acme.example.org"})
	mustAdd(t, s, Entry{Target: "@acme.example.org"})

	got, err := s.EntriesFor("ANA@acme.example")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range got {
		keys = append(keys, e.Target+"|"+e.List+"|"+string(e.Reason)+"|"+e.Note)
		if e.Index == "" || e.Time.IsZero() {
			t.Errorf("entry %+v", e)
		}
	}
	want := "ana@acme.example||unsubscribed|,ana@acme.example|events|complaint|,ana@acme.example|news|hard_bounce|n,@acme.example|events|manual|"
	if strings.Join(keys, ",") != want {
		t.Errorf("EntriesFor = %s\nwant %s", strings.Join(keys, ","), want)
	}
	if got, err := s.EntriesFor("nobody@nowhere.example"); err != nil || got == nil || len(got) != 0 {
		t.Errorf("EntriesFor of a stranger = %#v, %v; want an empty slice", got, err)
	}
	if _, err := s.EntriesFor("not an address"); err == nil {
		t.Error("EntriesFor of a bad address: want error")
	}
}

func TestOpenNeedsTheRightKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "suppression.db")
	if _, err := Open(Config{Path: path}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "data key") {
		t.Errorf("Open without a Box: err = %v", err)
	}
	s := openTest(t, path)
	mustAdd(t, s, Entry{Target: "ana@acme.example"})
	s.Close()
	other, err := sealed.New(bytes.Repeat([]byte{9}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Path: path, Box: other}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "wrong data_key_file") {
		t.Errorf("Open with another key: err = %v", err)
	}
}

func TestMigratesClearEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "suppression.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error { // the layout written before sealing
		b, err := tx.CreateBucket(bucketLegacy)
		if err != nil {
			return err
		}
		b.Put([]byte("ana@acme.example\x00news"), []byte(`{"r":"hard_bounce","s":"bounce","n":"550 for ana@acme.example","t":"2025-01-02T03:04:05Z"}`))
		b.Put([]byte("@globex.example\x00"), []byte(`{"r":"complaint","t":"2025-01-02T03:04:05Z"}`))
		return b.Put([]byte("zed@acme.example\x00"), []byte(`{"r":"erased","s":"cli","t":"2025-01-02T03:04:05Z"}`))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s := openTest(t, path)
	defer s.Close()
	e, ok, err := s.Lookup("ana@acme.example", "news")
	if err != nil || !ok || e.Reason != HardBounce || e.Source != "bounce" || e.Note != "550 for ana@acme.example" || !e.Time.Equal(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("migrated entry = %+v, %v, %v", e, ok, err)
	}
	wantCheck(t, s, "x@globex.example", "", "complaint", true)
	wantCheck(t, s, "zed@acme.example", "", "erased", true)
	if n, _ := s.Count(); n != 3 {
		t.Errorf("Count = %d, want 3", n)
	}
	for _, clear := range []string{"ana@acme.example", "globex.example", "zed@acme.example"} {
		if fileHas(t, path, []byte(clear)) {
			t.Errorf("migrated file still holds %q", clear)
		}
	}
}

func TestCompactWhileChecking(t *testing.T) {
	s, _ := newStore(t)
	mustAdd(t, s, Entry{Target: "ana@acme.example", Reason: Unsubscribed})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r, ok, err := s.Check("ana@acme.example", "news"); err != nil || !ok || r != "unsubscribed" {
					t.Errorf("Check during compact = %q, %v, %v", r, ok, err)
					return
				}
			}
		}()
	}
	for range 3 {
		if err := s.Compact(); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
	mustAdd(t, s, Entry{Target: "bob@acme.example"})
	wantCheck(t, s, "bob@acme.example", "", "manual", true)
	s.Close()
	if err := s.Compact(); !errors.Is(err, ErrClosed) {
		t.Errorf("Compact after Close: err = %v", err)
	}
	if _, _, err := s.Check("ana@acme.example", ""); !errors.Is(err, ErrClosed) {
		t.Errorf("Check after Close: err = %v", err)
	}
}
