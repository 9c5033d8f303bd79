package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
		m := mustGet(t, s, id)
		if m.To != "" || m.Key != "" || m.LastReply != "" || !m.Erased || m.Campaign == "" || m.Created.IsZero() {
			t.Errorf("erased record %+v", m)
		}
		for _, a := range m.History {
			if a.Reply != "" {
				t.Errorf("erased record %s keeps reply %q", id, a.Reply)
			}
		}
		if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("erased message %s still has a body (%v)", id, err)
		}
	}
	if m := mustGet(t, s, later.IDs[0]); m.State != StateCancelled || m.Reason != "erased: request 42" {
		t.Fatalf("pending erased message = %s %q, want cancelled, erased: request 42", m.State, m.Reason)
	}
	if m := mustGet(t, s, first.IDs[0]); m.State != StateBounced {
		t.Fatalf("finished erased message = %s, want it to stay bounced", m.State)
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
		m := mustGet(t, s, id)
		if m.State != StateCancelled || m.To != "" || m.LastReply != "" || !m.Erased || m.Reason != "erased: request 7" {
			t.Fatalf("outcome %v: erased in-flight message = %+v", outcome, m)
		}
		for _, a := range m.History {
			if a.Reply != "" {
				t.Fatalf("outcome %v: history keeps reply %q", outcome, a.Reply)
			}
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
	s.Close() // crash during the delivery
	s = openTest(t, Config{Path: path})
	if m := mustGet(t, s, id); m.State != StateCancelled || m.To != "" {
		t.Fatalf("recovered erased message = %+v, want cancelled", m)
	}
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
