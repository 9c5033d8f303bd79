package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// personMsg is a message to addr whose body carries text unique to it.
func personMsg(c, addr, text string) NewMessage {
	m := msg(c, addr)
	m.Body = []byte("Subject: hi\r\n\r\nDear " + text + ",\r\n")
	return m
}

// rawFile reads the queue file as it is on disk.
func rawFile(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// mustNotContain fails if raw holds any of needles (case-insensitive for text).
func mustNotContain(t *testing.T, raw []byte, what string, needles ...string) {
	t.Helper()
	low := bytes.ToLower(raw)
	for _, n := range needles {
		if bytes.Contains(low, bytes.ToLower([]byte(n))) {
			t.Errorf("%s: the file holds %q", what, n)
		}
	}
}

// rawValues returns copies of the stored (sealed) record and body of id.
func rawValues(t *testing.T, s *Store, id string) (rec, body []byte) {
	t.Helper()
	err := s.view(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		rec, body = bytes.Clone(b.msg.Get([]byte(id))), bytes.Clone(b.body.Get([]byte(id)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rec, body
}

// sealedPart returns the sealed personal fields of a stored record.
func sealedPart(t *testing.T, rec []byte) []byte {
	t.Helper()
	var r record
	if err := json.Unmarshal(rec, &r); err != nil {
		t.Fatal(err)
	}
	return r.Sealed
}

func TestSealedAtRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path, Retry: []time.Duration{time.Hour}})
	enqueue(t, s, personMsg("c1", "Ana.Lopez@Example.com", "Ana Lopez of Zyxwvut Ltd"),
		personMsg("c1", "bob.stone@example.org", "Bob Stone of Qwertyplex"))
	// A deferral whose reply quotes the address, as many remotes do.
	f := newFake()
	f.script["bob.stone@example.org"] = []error{&smtpErr{452, "4.2.2", "<bob.stone@example.org>: mailbox full"}}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))

	st, err := s.Stats()
	if err != nil || st.ByState[StateDeferred] != 1 || st.ByState[StateDelivered] != 1 {
		t.Fatalf("Stats = %+v, %v", st.ByState, err)
	}
	// The queue still reads back in clear.
	ms, err := s.MessagesFor("bob.stone@example.org")
	if err != nil || len(ms) != 1 || !strings.Contains(ms[0].LastReply, "bob.stone@example.org") ||
		ms[0].To != "bob.stone@example.org" || ms[0].History[0].Reply == "" {
		t.Fatalf("MessagesFor = %+v, %v", ms, err)
	}
	mustNotContain(t, rawFile(t, path), "queued messages",
		"ana.lopez@example.com", "Ana.Lopez", "bob.stone@example.org", "bob.stone", "Zyxwvut", "Qwertyplex", "mailbox full")
}

func TestBodyBoundToItsMessage(t *testing.T) {
	s := openTest(t, Config{})
	res := enqueue(t, s, personMsg("c1", "ana@example.com", "Ana"), personMsg("c1", "bob@example.com", "Bob"))
	a, b := res.IDs[0], res.IDs[1]
	err := s.update(func(tx *bbolt.Tx) error {
		bk := s.buckets(tx)
		va, vb := bytes.Clone(bk.body.Get([]byte(a))), bytes.Clone(bk.body.Get([]byte(b)))
		return errors.Join(bk.body.Put([]byte(a), vb), bk.body.Put([]byte(b), va))
	})
	if err != nil {
		t.Fatal(err)
	}
	if body, err := s.Body(a); err == nil {
		t.Fatalf("swapped body opened as another message's: %q", body)
	}
}

func TestMessagesFor(t *testing.T) {
	s := openTest(t, Config{Retry: []time.Duration{time.Hour}})
	enqueue(t, s, personMsg("c1", "ana@example.com", "Ana"), personMsg("c1", "bob@example.com", "Bob"))
	f := newFake()
	f.script["ana@example.com"] = []error{&smtpErr{421, "4.3.0", "try later"}}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	enqueue(t, s, personMsg("c2", "Ana@EXAMPLE.com", "Ana again"), personMsg("c3", "ana@example.com", "Ana"))
	held, err := s.AllIDs(Filter{Campaign: "c3"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(held); err != nil {
		t.Fatal(err)
	}

	ms, err := s.MessagesFor(" ANA@example.COM ")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.Campaign+":"+string(m.State))
		if !strings.EqualFold(m.To, "ana@example.com") || m.Key == "" {
			t.Errorf("message %s: To %q Key %q, want them in clear", m.ID, m.To, m.Key)
		}
	}
	if want := []string{"c1:deferred", "c2:ready", "c3:held"}; !slices.Equal(got, want) {
		t.Fatalf("MessagesFor = %v, want %v", got, want)
	}
	if h := ms[0].History; len(h) != 1 || h[0].Outcome != "deferred" || !strings.Contains(h[0].Reply, "try later") {
		t.Fatalf("history = %+v, want the deferral with its reply", h)
	}
	if none, err := s.MessagesFor("carol@example.com"); err != nil || none == nil || len(none) != 0 {
		t.Fatalf("MessagesFor(unknown) = %v, %v; want an empty slice", none, err)
	}
	if _, err := s.MessagesFor("not an address"); err == nil {
		t.Fatal("MessagesFor accepted a bad address")
	}
}

func TestEraseRecipientAndCompact(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	const anaText, bobText = "Ana Lopez of Zyxwvut Ltd", "Bob Stone of Qwertyplex"
	first := enqueue(t, s, personMsg("c1", "ana.lopez@example.com", anaText))
	f := newFake()
	f.script["ana.lopez@example.com"] = []error{&smtpErr{550, "5.7.1", "<ana.lopez@example.com> rejected by policy"}}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	if m := mustGet(t, s, first.IDs[0]); m.State != StateBounced {
		t.Fatalf("first message = %s, want bounced", m.State)
	}
	later := enqueue(t, s, personMsg("c2", "ana.lopez@example.com", anaText), personMsg("c2", "bob.stone@example.org", bobText),
		personMsg("c3", "Ana.Lopez@example.com", anaText))
	anaIDs := []string{first.IDs[0], later.IDs[0], later.IDs[2]}
	var sealedBefore [][]byte
	for _, id := range anaIDs {
		rec, body := rawValues(t, s, id)
		sealedBefore = append(sealedBefore, sealedPart(t, rec))
		if body != nil {
			sealedBefore = append(sealedBefore, body)
		}
	}

	if _, err := s.EraseRecipient("ana.lopez@example.com", ""); err == nil {
		t.Fatal("EraseRecipient without a reason succeeded")
	}
	res, err := s.EraseRecipient("ANA.LOPEZ@example.com", "request 42")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.IDs, anaIDs) || res.Cancelled != 2 || res.Scrubbed != 1 {
		t.Fatalf("EraseRecipient = %+v, want ids %v, 2 cancelled, 1 scrubbed", res, anaIDs)
	}
	for _, id := range anaIDs {
		if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("erased message %s still has a record (%v)", id, err)
		}
		if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("erased message %s still has a body (%v)", id, err)
		}
	}
	if c, err := s.CampaignCounts("c1"); err != nil || c[StateBounced] != 1 || len(c) != 1 {
		t.Fatalf("CampaignCounts(c1) = %v, %v; want the erased bounce counted", c, err)
	}
	if c, err := s.CampaignCounts("c3"); err != nil || c[StateCancelled] != 1 || len(c) != 1 {
		t.Fatalf("CampaignCounts(c3) = %v, %v; want the erased pending message counted as cancelled", c, err)
	}
	if ms, err := s.MessagesFor("ana.lopez@example.com"); err != nil || len(ms) != 0 {
		t.Fatalf("MessagesFor after erase = %+v, %v", ms, err)
	}
	if c, err := s.CampaignCounts("c2"); err != nil || c[StateCancelled] != 1 || c[StateReady] != 1 {
		t.Fatalf("CampaignCounts(c2) = %v, %v", c, err)
	}
	checkCounters(t, s)
	if _, err := s.RecordBounce(first.IDs[0], BounceRecord{Kind: "hard", Action: "failed", Diagnostic: "ana.lopez@example.com unknown"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RecordBounce on an erased message = %v, want ErrNotFound", err)
	}

	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	raw := rawFile(t, path)
	mustNotContain(t, raw, "after erase and compact", "ana.lopez@example.com", "ana.lopez", anaText, bobText, "rejected by policy")
	for i, v := range sealedBefore {
		if bytes.Contains(raw, v) {
			t.Errorf("after compact the file still holds sealed value %d of the erased recipient", i)
		}
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Errorf("compaction left %s.compact behind (%v)", path, err)
	}

	// The others are intact and still deliverable, by the same store after its swap.
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	if m := mustGet(t, s, later.IDs[1]); m.State != StateDelivered || f.count("bob.stone@example.org") != 1 {
		t.Fatalf("bob's message after erase = %+v", m)
	}
	if f.count("ana.lopez@example.com") != 1 || f.count("Ana.Lopez@example.com") != 0 {
		t.Fatal("an erased message was delivered")
	}
	checkCounters(t, s)
}

func TestEraseInFlightStaysErased(t *testing.T) {
	for _, outcome := range []error{nil, &smtpErr{452, "4.2.2", "<ana@example.com> over quota"}, &smtpErr{550, "5.1.1", "<ana@example.com> no such user"}} {
		s := openTest(t, Config{})
		id := enqueue(t, s, personMsg("c1", "ana@example.com", "Ana")).IDs[0]
		f := newFake()
		f.start, f.block = make(chan string, 1), make(chan struct{})
		if outcome != nil {
			f.script["ana@example.com"] = []error{outcome}
		}
		done := make(chan error, 1)
		sup := newSup()
		go func() {
			done <- s.NewRunner(f, sup, RunnerConfig{}).Drain(context.Background())
		}()
		<-f.start
		res, err := s.EraseRecipient("ana@example.com", "request 7")
		if err != nil || res.Cancelled != 1 || len(res.IDs) != 1 {
			t.Fatalf("EraseRecipient in flight = %+v, %v", res, err)
		}
		close(f.block)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("outcome %v: erased in-flight message kept a record after its outcome (%v)", outcome, err)
		}
		if c, err := s.CampaignCounts("c1"); err != nil || c[StateCancelled] != 1 || len(c) != 1 {
			t.Fatalf("outcome %v: CampaignCounts = %v, %v; want 1 cancelled", outcome, c, err)
		}
		if ms, _ := s.MessagesFor("ana@example.com"); len(ms) != 0 {
			t.Fatalf("outcome %v: MessagesFor after erase = %+v", outcome, ms)
		}
		if len(sup.calls) != 0 { // the erasure's tombstone is the caller's; no new entry from us
			t.Fatalf("outcome %v: an erased address was suppressed again: %+v", outcome, sup.calls)
		}
		checkCounters(t, s)
	}
}

func TestEraseActiveRecoveredAsCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := Open(Config{Box: testBox, Path: path}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	id := enqueue(t, s, msg("c", "ana@example.com")).IDs[0]
	if msgs, _, _, err := s.NewRunner(newFake(), newSup(), RunnerConfig{}).claim(1); err != nil || len(msgs) != 1 {
		t.Fatalf("claim = %v, %v", msgs, err)
	}
	if _, err := s.EraseRecipient("ana@example.com", "r"); err != nil {
		t.Fatal(err)
	}
	// Its scrubbed record takes no report (a bounce handed over later):
	// nothing about the person is recorded any more.
	if _, err := s.RecordBounce(id, BounceRecord{Recipient: "ana@example.com", Status: "5.1.1", Action: "failed"}); !errors.Is(err, ErrErased) {
		t.Errorf("a report on the erased message in flight: %v; want ErrErased", err)
	}
	s.Close() // crash during the delivery
	s = openTest(t, Config{Path: path})
	if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("recovered erased message kept a record (%v)", err)
	}
	if c, err := s.CampaignCounts("c"); err != nil || c[StateCancelled] != 1 || len(c) != 1 {
		t.Fatalf("CampaignCounts after recovery = %v, %v; want 1 cancelled", c, err)
	}
	checkCounters(t, s)
}

func TestPruneFinished(t *testing.T) {
	s := openTest(t, Config{})
	old := enqueue(t, s, msg("c1", "ana@example.com"), msg("c1", "bob@example.com"), msg("c1", "carol@example.com"))
	f := newFake()
	f.script["bob@example.com"] = []error{&smtpErr{550, "5.7.1", "no"}}
	if _, err := s.Delete(old.IDs[2:], "test"); err != nil {
		t.Fatal(err)
	}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	age(t, s, 2*time.Hour, old.IDs...)
	recent := enqueue(t, s, msg("c1", "dave@example.com"), msg("c2", "ana@example.com"), msg("c1", "erin@example.com"))
	if _, err := s.Hold(recent.IDs[2:]); err != nil {
		t.Fatal(err)
	}
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Campaign: "c2"}))

	if _, err := s.PruneFinished(0); err == nil {
		t.Fatal("PruneFinished(0) accepted")
	}
	n, err := s.PruneFinished(time.Hour)
	if err != nil || n != 3 {
		t.Fatalf("PruneFinished = %d, %v; want the 3 old finished ones", n, err)
	}
	for _, id := range old.IDs {
		if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("pruned %s: Get = %v", id, err)
		}
	}
	for _, id := range recent.IDs {
		mustGet(t, s, id)
	}
	checkCounters(t, s)
	st, err := s.Stats()
	if err != nil || st.Total != 3 || st.ByState[StateReady] != 1 || st.ByState[StateDelivered] != 1 || st.ByState[StateHeld] != 1 {
		t.Fatalf("Stats after prune = %+v, %v", st, err)
	}
	if c, err := s.CampaignCounts("c1"); err != nil || len(c) != 2 || c[StateReady] != 1 || c[StateHeld] != 1 {
		t.Fatalf("CampaignCounts(c1) = %v, %v", c, err)
	}
	ms, err := s.MessagesFor("ana@example.com")
	if err != nil || len(ms) != 1 || ms[0].Campaign != "c2" {
		t.Fatalf("MessagesFor after prune = %+v, %v", ms, err)
	}
	// Pruned keys are forgotten; kept ones still dedupe.
	if res := enqueue(t, s, msg("c1", "ana@example.com"), msg("c1", "dave@example.com")); res.Added != 1 || res.Duplicates != 1 {
		t.Fatalf("enqueue after prune = %+v", res)
	}
	if n, err := s.PruneFinished(time.Hour); err != nil || n != 0 {
		t.Fatalf("second PruneFinished = %d, %v", n, err)
	}
}

// age moves the last update of messages ids back by d.
func age(t *testing.T, s *Store, d time.Duration, ids ...string) {
	t.Helper()
	err := s.update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		for _, id := range ids {
			m, err := b.get(id)
			if err != nil {
				return err
			}
			prev := m
			m.Updated = m.Updated.Add(-d)
			if err := b.save(&m, &prev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCompactWhileRunnerIdle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	f := newFake()
	delivered := make(chan int, 10)
	f.onOK = func(n int) { delivered <- n }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.NewRunner(f, newSup(), RunnerConfig{Poll: 10 * time.Millisecond}).Run(ctx) }()
	enqueue(t, s, msg("c1", "ana@example.com"))
	<-delivered
	for range 3 {
		if err := s.Compact(); err != nil {
			t.Fatal(err)
		}
	}
	enqueue(t, s, msg("c1", "bob@example.com"))
	select {
	case <-delivered:
	case <-time.After(10 * time.Second):
		t.Fatal("the runner delivers nothing after Compact")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkCounters(t, s)
}

func TestOpenSealsVersion1File(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	ids := enqueue(t, s, personMsg("c1", "ana@example.com", "Zyxwvut"), personMsg("c1", "bob@example.com", "Qwertyplex")).IDs
	s.Close()
	// Rewrite it as version 1 wrote it: clear JSON, clear body, clear idempotency key.
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		for i, to := range []string{"ana@example.com", "bob@example.com"} {
			m, err := b.get(ids[i])
			if err != nil {
				return err
			}
			body, err := testBox.Open(b.body.Get([]byte(ids[i])), bodyContext(ids[i]))
			if err != nil {
				return err
			}
			v, _ := json.Marshal(m)
			if err := errors.Join(b.msg.Put([]byte(ids[i]), v), b.body.Put([]byte(ids[i]), body),
				b.idem.Delete(b.idemKey("c1", to)), b.idem.Put(join("c1", to), []byte(ids[i]))); err != nil {
				return err
			}
		}
		if err := tx.DeleteBucket(bktRcpt); err != nil {
			return err
		}
		return tx.DeleteBucket(bktMeta)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(rawFile(t, path), []byte("Zyxwvut")) {
		t.Fatal("test setup: version 1 file has no clear body")
	}

	s = openTest(t, Config{Path: path})
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	mustNotContain(t, rawFile(t, path), "sealed version 1 file", "ana@example.com", "bob@example.com", "Zyxwvut", "Qwertyplex")
	if ms, err := s.MessagesFor("ana@example.com"); err != nil || len(ms) != 1 || ms[0].ID != ids[0] {
		t.Fatalf("MessagesFor after migration = %+v, %v", ms, err)
	}
	if res := enqueue(t, s, personMsg("c1", "bob@example.com", "x")); res.Duplicates != 1 {
		t.Fatalf("idempotency lost by migration: %+v", res)
	}
	f := newFake()
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{}))
	if f.count("ana@example.com") != 1 || f.count("bob@example.com") != 1 {
		t.Fatal("migrated messages were not delivered")
	}
}

// eachBucketEntry calls fn with every key and value of every bucket (nested
// ones included), as stored.
func eachBucketEntry(t *testing.T, s *Store, fn func(bucket string, k, v []byte)) {
	t.Helper()
	var walk func(name string, b *bbolt.Bucket) error
	walk = func(name string, b *bbolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if v == nil && b.Bucket(k) != nil {
				return walk(name+"/"+string(k), b.Bucket(k))
			}
			fn(name, k, v)
			return nil
		})
	}
	if err := s.view(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bbolt.Bucket) error { return walk(string(name), b) })
	}); err != nil {
		t.Fatal(err)
	}
}

// After EraseRecipient nothing in queue.db ties a record to the person: no
// key or value of any bucket holds their recipient domain, the ids of their
// messages (an id carries the creation time in milliseconds) or the exact
// times of those messages, and after Compact the file holds none of them;
// the campaign counts still include their messages.
func TestEraseLeavesOnlyCounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	const dom = "zyxwvut-ana.example"
	// One enqueue each: messages enqueued together share their times.
	f := newFake()
	f.script["bob@other.example"] = []error{&smtpErr{550, "5.7.1", "policy"}}
	c1 := enqueue(t, s, msg("c1", "ana@"+dom))
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Campaign: "c1"}))
	enqueue(t, s, msg("c1", "bob@other.example"))
	drain(t, s.NewRunner(f, newSup(), RunnerConfig{Campaign: "c1"}))
	c2 := enqueue(t, s, msg("c2", "ana@"+dom))
	time.Sleep(time.Millisecond) // so carol's id (milliseconds) differs too
	enqueue(t, s, msg("c2", "carol@other.example"))
	anaIDs := []string{c1.IDs[0], c2.IDs[0]}
	var needles [][]byte
	for _, id := range anaIDs {
		m := mustGet(t, s, id)
		needles = append(needles, []byte(id))
		for _, tm := range []time.Time{m.Created, m.Updated, m.NextAttempt} {
			j, _ := tm.MarshalJSON()
			needles = append(needles, bytes.Trim(j, `"`), dueKey(tm, "")) // as JSON, and as the due index writes it
		}
	}
	needles = append(needles, []byte(dom))
	if _, err := s.CountCampaignEvent("c1", "ana@"+dom, "complained"); err != nil {
		t.Fatal(err)
	}

	res, err := s.EraseRecipient("ana@"+dom, "request 9")
	if err != nil || len(res.IDs) != 2 || res.Cancelled != 1 || res.Scrubbed != 1 {
		t.Fatalf("EraseRecipient = %+v, %v", res, err)
	}
	eachBucketEntry(t, s, func(bucket string, k, v []byte) {
		for _, n := range needles {
			if bytes.Contains(k, n) || bytes.Contains(v, n) {
				t.Errorf("bucket %s: entry %q holds %q of the erased person", bucket, k, n)
			}
		}
	})
	for c, want := range map[string]map[State]int{
		"c1": {StateDelivered: 1, StateBounced: 1},
		"c2": {StateCancelled: 1, StateReady: 1},
	} {
		if got, err := s.CampaignCounts(c); err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("CampaignCounts(%s) = %v, %v; want %v", c, got, err, want)
		}
	}
	if ev, err := s.CampaignEvents("c1"); err != nil || ev["complained"] != 1 {
		t.Errorf("CampaignEvents(c1) = %v, %v; want the erased person's complaint still counted", ev, err)
	}
	if ok, err := s.CountCampaignEvent("c1", "ana@"+dom, "unsubscribed"); ok || err != nil {
		t.Errorf("CountCampaignEvent after erase = %v, %v; want nothing counted", ok, err)
	}
	checkCounters(t, s)

	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	raw := rawFile(t, path)
	for _, n := range append([]string{dom}, anaIDs...) {
		if bytes.Contains(raw, []byte(n)) {
			t.Errorf("after compact the file holds %q of the erased person", n)
		}
	}
	// Reopened (the one-time fold of older files' erased records runs), the counts stay.
	s.Close()
	s = openTest(t, Config{Path: path})
	if got, _ := s.CampaignCounts("c1"); got[StateDelivered] != 1 || got[StateBounced] != 1 {
		t.Errorf("CampaignCounts(c1) after reopen = %v", got)
	}
}

// CountCampaignEvent counts a kind once per person per campaign, however
// many times and however concurrently it is asked; other kinds, other
// campaigns and other people count on their own; an address without a
// message in the campaign counts nothing.
func TestCountCampaignEventOnce(t *testing.T) {
	s := openTest(t, Config{})
	enqueue(t, s, msg("c1", "ana@example.com"), msg("c1", "bob@example.com"), msg("c2", "ana@example.com"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	firsts := 0
	for i := range 50 {
		wg.Go(func() {
			addr := "ana@example.com"
			if i%2 == 1 {
				addr = "ANA@Example.com" // the same person
			}
			ok, err := s.CountCampaignEvent("c1", addr, "unsubscribed")
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				firsts++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firsts != 1 {
		t.Errorf("%d calls reported a first count, want 1", firsts)
	}
	for _, c := range []struct {
		campaign, addr, kind string
		want                 bool
	}{
		{"c1", "ana@example.com", "complained", true},
		{"c1", "ana@example.com", "complained", false},
		{"c1", "bob@example.com", "unsubscribed", true},
		{"c2", "ana@example.com", "unsubscribed", true},
		{"c1", "carol@example.com", "unsubscribed", false}, // not a recipient of c1
		{"c3", "ana@example.com", "unsubscribed", false},
	} {
		if ok, err := s.CountCampaignEvent(c.campaign, c.addr, c.kind); ok != c.want || err != nil {
			t.Errorf("CountCampaignEvent(%s, %s, %s) = %v, %v; want %v", c.campaign, c.addr, c.kind, ok, err, c.want)
		}
	}
	if ev, err := s.CampaignEvents("c1"); err != nil || fmt.Sprint(ev) != fmt.Sprint(map[string]int{"complained": 1, "unsubscribed": 2}) {
		t.Errorf("CampaignEvents(c1) = %v, %v", ev, err)
	}
	if _, err := s.CountCampaignEvent("c1", "not an address", "unsubscribed"); err == nil {
		t.Error("CountCampaignEvent accepted a bad address")
	}
	checkCounters(t, s)
}
