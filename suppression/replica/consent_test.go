package replica

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// consentNode is a replica with a consent store.
type consentNode struct {
	*node
	subs *subscribers.Store
}

// startConsentNode opens a consent store beside the suppression store at
// path and starts a replica applying consent ops to it.
func startConsentNode(t *testing.T, js jetstream.JetStream, box *sealed.Box, path string, cfg Config) *consentNode {
	t.Helper()
	subs, err := subscribers.Open(subscribers.Config{Path: path + ".subscribers", Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Consent = subs
	n := startNode(t, js, box, path, cfg)
	t.Cleanup(func() { subs.Close() })
	return &consentNode{node: n, subs: subs}
}

// stopAll stops the replica and closes both stores.
func (n *consentNode) stopAll() { n.stop(); n.subs.Close() }

// publishConsent is the cluster path of a consent write: checked by the
// local consent store, then published.
func publishConsent(n *consentNode, op subscribers.Op) error {
	op, idx, err := n.subs.CheckOp(op)
	if err != nil {
		return err
	}
	j, err := json.Marshal(op)
	if err != nil {
		return err
	}
	return n.rep.PublishConsent(context.Background(), idx, op.ID, j)
}

func consentState(t *testing.T, s *subscribers.Store, addr, list string) string {
	t.Helper()
	st, err := s.Status(addr, list)
	if err != nil {
		t.Fatalf("Status(%s, %s): %v", addr, list, err)
	}
	return st.State
}

func history(t *testing.T, s *subscribers.Store, addr string) []subscribers.ListHistory {
	t.Helper()
	h, err := s.History(addr)
	if err != nil && !errors.Is(err, subscribers.ErrNotFound) {
		t.Fatalf("History(%s): %v", addr, err)
	}
	return h
}

// streamLast is the stream's last sequence.
func streamLast(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.LastSeq
}

// TestConsentReplicated: a sign-up and its confirmation accepted on A, an
// unsubscribe on B and an import on A reach the other node's consent store
// as the same history (same SubscriberID, same times); a restarted node
// applies nothing twice, and a new node replays the stream to the same
// histories.
func TestConsentReplicated(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))

	sub := subscribers.Subscription{Address: "Ann@Example.com", List: "news", Name: "Ann Example", Source: "form",
		IP: "192.0.2.7", UserAgent: "test", PrivacyURL: "https://example.com/privacy", ViaDoubleOptIn: true}
	if err := publishConsent(a, subscribers.SubscribeOp(sub)); err != nil {
		t.Fatalf("subscribe on A: %v", err)
	}
	if got := consentState(t, a.subs, "ann@example.com", "news"); got != subscribers.StatePending {
		t.Fatalf("A after subscribe: %s; want pending (read-your-writes)", got)
	}
	if err := publishConsent(a, subscribers.ConfirmOp("ann@example.com", "news", "192.0.2.8", "click")); err != nil {
		t.Fatalf("confirm on A: %v", err)
	}
	eventually(t, "B holds A's confirmation", func() bool {
		return consentState(t, b.subs, "ann@example.com", "news") == subscribers.StateConfirmed
	})
	// B's refusal comes back as the single-node method's would.
	if err := publishConsent(b, subscribers.ConfirmOp("ann@example.com", "news", "", "")); !errors.Is(err, subscribers.ErrNoPending) {
		t.Fatalf("second confirm on B = %v; want ErrNoPending", err)
	}
	if err := publishConsent(b, subscribers.UnsubscribeOp("ann@example.com", "news", "preferences")); err != nil {
		t.Fatalf("unsubscribe on B: %v", err)
	}
	eventually(t, "A holds B's unsubscribe", func() bool {
		return consentState(t, a.subs, "ann@example.com", "news") == subscribers.StateUnsubscribed
	})
	at := time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)
	if err := publishConsent(a, subscribers.ImportOp(subscribers.Candidate{Address: "bo@example.org", List: "news",
		Source: "crm.csv", ConsentedAt: at})); err != nil {
		t.Fatalf("import on A: %v", err)
	}
	if err := publishConsent(a, subscribers.ImportOp(subscribers.Candidate{Address: "cy@example.org", List: "news"})); err != nil {
		t.Fatalf("legitimate-interest import on A: %v", err)
	}
	last := streamLast(t, connect(t, srv.ClientURL()))
	eventually(t, "B applies everything", func() bool { return b.rep.Status().AppliedSeq == last })
	for _, addr := range []string{"ann@example.com", "bo@example.org", "cy@example.org"} {
		ha, hb := history(t, a.subs, addr), history(t, b.subs, addr)
		if len(ha) == 0 || !reflect.DeepEqual(ha, hb) {
			t.Errorf("%s: A's history %+v\nB's %+v", addr, ha, hb)
		}
	}
	if got := consentState(t, b.subs, "bo@example.org", "news"); got != subscribers.StateConfirmed {
		t.Errorf("B: imported consent %s", got)
	}
	if got := consentState(t, b.subs, "cy@example.org", "news"); got != subscribers.StateLegitimateInterest {
		t.Errorf("B: legitimate-interest import %s", got)
	}
	if seq, err := b.subs.AppliedSeq(); err != nil || seq != last {
		t.Errorf("B's consent store applied seq %d, %v; want %d", seq, err, last)
	}

	// Restarted, B applies nothing twice; C, new, replays the stream.
	before := history(t, b.subs, "ann@example.com")
	b.stopAll()
	b = startConsentNode(t, connect(t, srv.ClientURL()), box, b.path, cfgFor("b"))
	c := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "c.db"), cfgFor("c"))
	eventually(t, "B and C caught up", func() bool { return caughtUp(b.node)() && caughtUp(c.node)() })
	if after := history(t, b.subs, "ann@example.com"); !reflect.DeepEqual(before, after) {
		t.Errorf("B after a restart: %+v; want %+v", after, before)
	}
	for _, addr := range []string{"ann@example.com", "bo@example.org", "cy@example.org"} {
		if ha, hc := history(t, a.subs, addr), history(t, c.subs, addr); !reflect.DeepEqual(ha, hc) {
			t.Errorf("%s: C replayed %+v\nwant %+v", addr, hc, ha)
		}
	}
}

// TestConsentRefusedNotPublished: an op the consent store refuses (a
// confirmation with nothing pending, a bad IP, an unknown kind) never
// reaches the stream.
func TestConsentRefusedNotPublished(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startConsentNode(t, js, box, filepath.Join(dir, "a.db"), cfgFor("a"))
	eventually(t, "A caught up", caughtUp(a.node))
	var fe *subscribers.FieldError
	for _, tc := range []struct {
		op   subscribers.Op
		want func(error) bool
	}{
		{subscribers.ConfirmOp("dee@example.com", "news", "", ""), func(err error) bool { return errors.Is(err, subscribers.ErrNoPending) }},
		{subscribers.SubscribeOp(subscribers.Subscription{Address: "dee@example.com", List: "news", IP: "not-an-ip"}), func(err error) bool { return errors.As(err, &fe) }},
		{subscribers.UnsubscribeOp("dee@example.com", "news", "x"), func(err error) bool { return errors.Is(err, subscribers.ErrNotFound) }},
		{subscribers.ImportOp(subscribers.Candidate{Address: "dee@example.com", List: "news", ConsentedAt: time.Now().Add(72 * time.Hour)}), func(err error) bool { return err != nil }},
		{subscribers.Op{Kind: "drop"}, func(err error) bool { return err != nil }},
		{subscribers.ConfirmOp("not an address", "news", "", ""), func(err error) bool { return err != nil }},
	} {
		if err := publishConsent(a, tc.op); !tc.want(err) {
			t.Errorf("%s: %v", tc.op.Kind, err)
		}
	}
	if last := streamLast(t, js); last != 0 {
		t.Errorf("the stream holds %d messages; want none", last)
	}
}

// TestConsentErasure: an erasure on A wipes the person's consent events
// from the stream (their subject) and, through OnErase, from B's consent
// store; a node replaying the stream afterwards holds no consent of theirs.
func TestConsentErasure(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startConsentNode(t, js, box, filepath.Join(dir, "a.db"), cfgFor("a"))
	var bsubs *subscribers.Store
	cfgB := cfgFor("b")
	cfgB.OnErase = func(_ context.Context, e Erasure) error { _, err := bsubs.EraseIndex(e.Index, e.Ref); return err }
	b := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgB)
	bsubs = b.subs

	if err := publishConsent(a, subscribers.SubscribeOp(subscribers.Subscription{Address: "eve@example.com", List: "news", Name: "Eve Secret", ViaDoubleOptIn: true})); err != nil {
		t.Fatal(err)
	}
	if err := publishConsent(a, subscribers.ConfirmOp("eve@example.com", "news", "", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B confirmed", func() bool { return consentState(t, b.subs, "eve@example.com", "news") == subscribers.StateConfirmed })
	// A's erase path: its own consent store, then the stream.
	ts, err := a.subs.Erase("eve@example.com", "req-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.rep.Publish(context.Background(), Erase("eve@example.com", "req-1", nil)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B's consent erased", func() bool { return consentState(t, b.subs, "eve@example.com", "news") == subscribers.StateErased })
	st, err := js.Stream(context.Background(), DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(DefaultSubject+"."+ts.Index))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[DefaultSubject+"."+ts.Index]; n != 1 {
		t.Errorf("the person's subject holds %d messages; want the tombstone alone", n)
	}
	c := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "c.db"), cfgFor("c"))
	eventually(t, "C caught up", caughtUp(c.node))
	if h := history(t, c.subs, "eve@example.com"); len(h) != 0 {
		t.Errorf("C replayed consent of an erased person: %+v", h)
	}
}

// TestConsentOpAppliedAfterOwnErasure: the node that erases a person
// erases its consent store first and then publishes the tombstone; a
// consent op another node published before that tombstone, which the
// erasing node had not applied yet (here: A is down while B publishes a
// sign-up), is applied on A after its local erasure and brings the person
// back there. Once A applies its own tombstone, OnErase (A made it) erases
// the consent store again: A holds nothing of the person, as B does, and a
// retried erasure writes no second marker.
func TestConsentOpAppliedAfterOwnErasure(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	subsOf := map[string]**subscribers.Store{}
	cfg := func(node string) Config {
		c := cfgFor(node)
		c.OnErase = func(_ context.Context, e Erasure) error {
			_, err := (*subsOf[node]).EraseIndex(e.Index, e.Ref)
			return err
		}
		return c
	}
	var aSubs, bSubs *subscribers.Store
	subsOf["a"], subsOf["b"] = &aSubs, &bSubs
	a := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfg("a"))
	aSubs = a.subs
	b := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfg("b"))
	bSubs = b.subs

	const eve = "eve@example.com"
	if err := publishConsent(a, subscribers.SubscribeOp(subscribers.Subscription{Address: eve, List: "news", ViaDoubleOptIn: true})); err != nil {
		t.Fatal(err)
	}
	if err := publishConsent(a, subscribers.ConfirmOp(eve, "news", "", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B confirmed", func() bool { return consentState(t, b.subs, eve, "news") == subscribers.StateConfirmed })

	// A is behind the stream: B's sign-up to another list is published
	// before A's erasure and reaches A only after A erased locally.
	a.stopAll()
	if err := publishConsent(b, subscribers.SubscribeOp(subscribers.Subscription{Address: eve, List: "offers", Name: "Eve Secret", ViaDoubleOptIn: true})); err != nil {
		t.Fatal(err)
	}
	local, err := subscribers.Open(subscribers.Config{Path: a.path + ".subscribers", Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.Erase(eve, "req-1"); err != nil {
		t.Fatal(err)
	}
	local.Close()
	a = startConsentNode(t, connect(t, srv.ClientURL()), box, a.path, cfg("a"))
	aSubs = a.subs
	eventually(t, "A applied B's sign-up", func() bool { return caughtUp(a.node)() })
	if err := a.rep.Publish(context.Background(), Erase(eve, "req-1", nil)); err != nil {
		t.Fatal(err)
	}
	for name, n := range map[string]*consentNode{"A": a, "B": b} {
		eventually(t, name+"'s erasure done", func() bool { d, err := n.rep.DueErasures(); return err == nil && d == 0 })
		for _, list := range []string{"news", "offers"} {
			if got := consentState(t, n.subs, eve, list); got != subscribers.StateErased {
				t.Errorf("%s: %s on %s; want erased", name, got, list)
			}
		}
		for _, h := range history(t, n.subs, eve) {
			for _, e := range h.Events {
				if e.Kind != subscribers.KindErased {
					t.Errorf("%s still holds %s on %q: %+v", name, e.Kind, h.List, e)
				}
			}
		}
	}
	before := history(t, a.subs, eve)
	ts, err := a.subs.EraseIndex(box.IndexHex(eve), "req-1")
	if err != nil || !ts.Unchanged {
		t.Errorf("erasing again: %+v, %v; want unchanged", ts, err)
	}
	if after := history(t, a.subs, eve); !reflect.DeepEqual(before, after) {
		t.Errorf("a retried erasure wrote to the history: %+v\nwas %+v", after, before)
	}
}

// TestConsentAheadOfStream: a consent op accepted while NATS is out of
// reach is applied here at once, and once the stream has it, applied again
// nowhere twice.
func TestConsentAheadOfStream(t *testing.T) {
	sdir := t.TempDir()
	srv := startNATS(t, sdir, -1)
	port := portOf(srv)
	box, dir := testBox(t), t.TempDir()
	a := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	eventually(t, "A caught up", caughtUp(a.node))
	if err := publishConsent(a, subscribers.ImportOp(subscribers.Candidate{Address: "fay@example.com", List: "news", ConsentedAt: time.Now().Add(-time.Hour)})); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	eventually(t, "A disconnected", func() bool { return !a.rep.js.Conn().IsConnected() })
	if err := publishConsent(a, subscribers.UnsubscribeOp("fay@example.com", "news", "one-click")); err != nil {
		t.Fatalf("unsubscribe while cut off: %v", err)
	}
	if got := consentState(t, a.subs, "fay@example.com", "news"); got != subscribers.StateUnsubscribed {
		t.Fatalf("A while cut off: %s; want unsubscribed at once", got)
	}
	if err := publishConsent(a, subscribers.SubscribeOp(subscribers.Subscription{Address: "gus@example.com", List: "news", Pending: true})); err != nil {
		t.Fatal(err)
	}
	startNATS(t, sdir, port)
	b := startConsentNode(t, connect(t, fmt.Sprintf("nats://127.0.0.1:%d", port)), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "A's pending ops published", func() bool { return a.rep.Status().Pending == 0 })
	eventually(t, "B caught up", func() bool { return b.rep.Status().AppliedSeq == a.rep.Status().AppliedSeq && caughtUp(b.node)() })
	for _, addr := range []string{"fay@example.com", "gus@example.com"} {
		ha, hb := history(t, a.subs, addr), history(t, b.subs, addr)
		if len(ha) == 0 || !reflect.DeepEqual(ha, hb) {
			t.Errorf("%s: A %+v\nB %+v", addr, ha, hb)
		}
	}
	if h := history(t, a.subs, "gus@example.com"); len(h) != 1 || len(h[0].Events) != 1 {
		t.Errorf("gus: %+v; want one sign-up event (the stream's copy skipped)", h)
	}
}

// TestPublishAll: a batch is in the local store when PublishAll returns,
// reaches the other node, and published again adds nothing to the stream.
func TestPublishAll(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startNode(t, js, box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "A caught up", caughtUp(a))
	const n = 1500
	batch := func() []Change {
		cs := make([]Change, n)
		for i := range cs {
			cs[i] = Add(suppression.Entry{Target: fmt.Sprintf("r%d@example.com", i), Reason: suppression.Manual, Source: "import:t.csv"})
			cs[i].ID = fmt.Sprintf("t/%d", i)
		}
		return cs
	}
	refused, err := a.rep.PublishAll(context.Background(), batch())
	if err != nil {
		t.Fatalf("PublishAll: %v", err)
	}
	for i, err := range refused {
		if err != nil {
			t.Errorf("change %d refused: %v", i, err)
		}
	}
	for _, i := range []int{0, 999, n - 1} {
		if _, ok := suppressed(t, a.store, fmt.Sprintf("r%d@example.com", i)); !ok {
			t.Errorf("A: r%d not suppressed when PublishAll returned", i)
		}
	}
	last := streamLast(t, js)
	if last != n {
		t.Errorf("stream last %d; want %d", last, n)
	}
	eventually(t, "B applies the batch", func() bool { return b.rep.Status().AppliedSeq == last })
	if c, _ := b.store.Count(); c != n {
		t.Errorf("B holds %d entries; want %d", c, n)
	}
	if _, err := a.rep.PublishAll(context.Background(), batch()); err != nil {
		t.Fatalf("PublishAll again: %v", err)
	}
	if got := streamLast(t, js); got != last {
		t.Errorf("published again: stream last %d; want %d (duplicates dropped)", got, last)
	}
	if _, err := a.rep.PublishAll(context.Background(), []Change{Erase("r1@example.com", "x", nil)}); err == nil {
		t.Error("PublishAll took an erasure")
	}
}

// nopAuditor audits nothing.
type nopAuditor struct{}

func (nopAuditor) AuditImport(suppression.ImportStep) error { return nil }

// crashAfter publishes through the writer and fails once after publishing
// batch crashAt, as a crash between the stream's ack of the batch and the
// run's record of it would.
type crashAfter struct {
	*Store
	crashAt string
	crashed bool
	calls   int
}

func (c *crashAfter) PublishImport(key string, es []suppression.Entry) (int, error) {
	c.calls++
	n, err := c.Store.PublishImport(key, es)
	if err == nil && !c.crashed && strings.HasSuffix(key, c.crashAt) {
		c.crashed = true
		return 0, errors.New("killed")
	}
	return n, err
}

// TestImportResume: an import interrupted after its second batch reached
// the stream resumes on a re-run: the first batch is skipped, the second
// published again harmlessly (dropped as duplicates), and every node holds
// each row once.
func TestImportResume(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startNode(t, js, box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "A caught up", caughtUp(a))
	const rows = 2500 // three batches
	var sb strings.Builder
	sb.WriteString("email\n")
	for i := range rows {
		fmt.Fprintf(&sb, "u%d@example.net\n", i)
	}
	path := filepath.Join(dir, "supp.csv")
	if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	def := suppression.Entry{Reason: suppression.Manual}
	pub := &crashAfter{Store: a.rep.Writer(), crashAt: "/2"}
	if _, err := a.store.ImportFileVia(path, def, nopAuditor{}, pub); err == nil {
		t.Fatal("the interrupted import succeeded")
	}
	// The batches and the run's records: its start, batch 1 (not 2).
	if got := streamLast(t, js); got != 2000+2 {
		t.Fatalf("after the crash the stream holds %d; want 2002", got)
	}
	pub.calls = 0
	res, err := a.store.ImportFileVia(path, def, nopAuditor{}, pub)
	if err != nil {
		t.Fatalf("re-run: %v", err)
	}
	if res.Resumed != 1 || res.Batches != 3 || res.Rows != rows || pub.calls != 2 {
		t.Errorf("re-run: %+v, %d batches published; want 1 resumed of 3, %d rows, 2 published", res, pub.calls, rows)
	}
	if got := streamLast(t, js); got != rows+5 {
		t.Errorf("stream holds %d; want %d rows and 5 run records (the re-published batch dropped as duplicates)", got, rows)
	}
	eventually(t, "B holds every row", func() bool { c, _ := b.store.Count(); return c == rows })
	if c, _ := a.store.Count(); c != rows {
		t.Errorf("A holds %d; want %d", c, rows)
	}
}

// TestJoinFromSnapshotKeepsConsent: a node joining from a snapshot without
// the consent state (put by a node without a consent store, as a version 1
// snapshot) still holds every consent op taken before it: they are read
// from the stream up to the snapshot's sequence into its consent store,
// and the tail after it as usual.
func TestJoinFromSnapshotKeepsConsent(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), snapCfg("a"))
	ctx := context.Background()
	sub := subscribers.Subscription{Address: "ann@example.com", List: "news", Name: "Ann", Source: "form",
		PrivacyURL: "https://example.com/privacy", ViaDoubleOptIn: true}
	if err := publishConsent(a, subscribers.SubscribeOp(sub)); err != nil {
		t.Fatal(err)
	}
	if err := publishConsent(a, subscribers.ConfirmOp("ann@example.com", "news", "192.0.2.8", "click")); err != nil {
		t.Fatal(err)
	}
	if err := a.rep.Publish(ctx, Add(suppression.Entry{Target: "zed@example.com", Reason: suppression.Unsubscribed})); err != nil {
		t.Fatal(err)
	}
	p := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "p.db"), snapCfg("p"))
	eventually(t, "P applies all", caughtUp(p))
	k, err := p.rep.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sn := readSnapshot(t, connect(t, srv.ClientURL()), box, snapName("p", k)); sn.HasConsent() {
		t.Fatal("a node without a consent store put a snapshot with a consent section")
	}
	if err := publishConsent(a, subscribers.ImportOp(subscribers.Candidate{Address: "bo@example.org", List: "news"})); err != nil {
		t.Fatal(err)
	}
	last := streamLast(t, connect(t, srv.ClientURL()))
	c := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "c.db"), snapCfg("c"))
	eventually(t, "C catches up", func() bool { return c.rep.Status().AppliedSeq == last })
	if st := c.rep.Status(); st.Snapshot != k {
		t.Fatalf("C joined from snapshot %d; want %d", st.Snapshot, k)
	}
	if got := consentState(t, c.subs, "ann@example.com", "news"); got != subscribers.StateConfirmed {
		t.Errorf("C: consent taken before the snapshot is %q; want confirmed", got)
	}
	if got := consentState(t, c.subs, "bo@example.org", "news"); got != subscribers.StateLegitimateInterest {
		t.Errorf("C: import after the snapshot is %q", got)
	}
	for _, addr := range []string{"ann@example.com", "bo@example.org"} {
		if ha, hc := history(t, a.subs, addr), history(t, c.subs, addr); !reflect.DeepEqual(ha, hc) {
			t.Errorf("%s: A's history %+v\nC's %+v", addr, ha, hc)
		}
	}
}

// TestJoinFromSnapshotPurgedStream: the snapshot carries the consent store
// too, so a node joining from it needs only the stream's tail: with every
// message below the snapshot's sequence purged from the stream, a fresh
// node still holds the consent evidence taken before it, the same history
// as the node that took it.
func TestJoinFromSnapshotPurgedStream(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startConsentNode(t, js, box, filepath.Join(dir, "a.db"), snapCfg("a"))
	ctx := context.Background()
	sub := subscribers.Subscription{Address: "ann@example.com", List: "news", Name: "Ann", Company: "Acme", Source: "form",
		PrivacyURL: "https://example.com/privacy", ConsentText: "v3", ViaDoubleOptIn: true}
	for _, op := range []subscribers.Op{
		subscribers.SubscribeOp(sub),
		subscribers.ConfirmOp("ann@example.com", "news", "192.0.2.8", "click"),
		subscribers.ImportOp(subscribers.Candidate{Address: "cy@example.net", List: "news", Source: "crm.csv",
			ConsentedAt: time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC), IP: "198.51.100.4"}),
		subscribers.UnsubscribeOp("cy@example.net", "news", "link"),
	} {
		if err := publishConsent(a, op); err != nil {
			t.Fatalf("%s: %v", op.Kind, err)
		}
	}
	if err := a.rep.Publish(ctx, Add(suppression.Entry{Target: "zed@example.com", Reason: suppression.Unsubscribed})); err != nil {
		t.Fatal(err)
	}
	k, err := a.rep.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Only the tail after the snapshot stays in the stream.
	st, err := js.Stream(ctx, DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSequence(k+1)); err != nil {
		t.Fatal(err)
	}
	if err := publishConsent(a, subscribers.ImportOp(subscribers.Candidate{Address: "bo@example.org", List: "news"})); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.FirstSeq != k+1 || info.State.Msgs != 1 {
		t.Fatalf("stream after the purge: first %d, %d messages; want %d, 1", info.State.FirstSeq, info.State.Msgs, k+1)
	}
	last := info.State.LastSeq

	c := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "c.db"), snapCfg("c"))
	eventually(t, "C catches up", func() bool { return c.rep.Status().AppliedSeq == last && !c.rep.Stale(time.Now()) })
	if st := c.rep.Status(); st.Snapshot != k {
		t.Fatalf("C joined from snapshot %d; want %d", st.Snapshot, k)
	}
	for addr, want := range map[string]string{
		"ann@example.com": subscribers.StateConfirmed,
		"cy@example.net":  subscribers.StateUnsubscribed,
		"bo@example.org":  subscribers.StateLegitimateInterest,
	} {
		if got := consentState(t, c.subs, addr, "news"); got != want {
			t.Errorf("C: %s on news is %q; want %q", addr, got, want)
		}
		if ha, hc := history(t, a.subs, addr), history(t, c.subs, addr); !reflect.DeepEqual(ha, hc) || len(hc) == 0 {
			t.Errorf("%s: A's history %+v\nC's %+v", addr, ha, hc)
		}
	}
	if ok, err := c.subs.Confirmed("ann@example.com", "news"); err != nil || !ok {
		t.Errorf("C: Confirmed(ann, news) = %v, %v; want true", ok, err)
	}
	// The consent store's own sequence is the snapshot's at least: a
	// replay from an earlier point applies nothing twice.
	if seq, err := c.subs.AppliedSeq(); err != nil || seq != last {
		t.Errorf("C: consent applied sequence %d, %v; want %d", seq, err, last)
	}
}

// readSnapshot opens and reads the snapshot name (not loaded).
func readSnapshot(t *testing.T, js jetstream.JetStream, box *sealed.Box, name string) *suppression.Snapshot {
	t.Helper()
	ctx := context.Background()
	obs, err := js.ObjectStore(ctx, DefaultSnapshots)
	if err != nil {
		t.Fatal(err)
	}
	data, err := obs.GetBytes(ctx, name)
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	plain, err := box.Open(data, ctxSnapshot+name)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	st := openStore(t, filepath.Join(t.TempDir(), "read.db"), box)
	defer st.Close()
	sn, err := st.ReadSnapshot(bytes.NewReader(plain))
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return sn
}

// snapshotConsent loads the consent section of every snapshot in the bucket
// into a consent store of its own; it returns them by name.
func snapshotConsent(t *testing.T, js jetstream.JetStream, box *sealed.Box) map[string]*subscribers.Store {
	t.Helper()
	obs, err := js.ObjectStore(context.Background(), DefaultSnapshots)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := obs.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*subscribers.Store{}
	for _, in := range infos {
		sn := readSnapshot(t, js, box, in.Name)
		if !sn.HasConsent() {
			t.Fatalf("snapshot %s has no consent section", in.Name)
		}
		subs, err := subscribers.Open(subscribers.Config{Path: filepath.Join(t.TempDir(), "subs.db"), Box: box}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { subs.Close() })
		if _, err := subs.LoadState(sn.Consent()); err != nil {
			t.Fatalf("load the consent of %s: %v", in.Name, err)
		}
		out[in.Name] = subs
	}
	return out
}

// TestSnapshotConsentErasure: snapshots taken before an erasure hold the
// person's consent (sealed); a node whose consent store has not yet done
// an erasure from another node (OnErase) puts no snapshot; once it has,
// the snapshots left hold the erasure marker alone, and a node joining from
// one holds no consent of the person.
func TestSnapshotConsentErasure(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), snapCfg("a"))
	var bsubs *subscribers.Store
	release := make(chan struct{})
	cfgB := snapCfg("b")
	cfgB.OnErase = func(ctx context.Context, e Erasure) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		_, err := bsubs.EraseIndex(e.Index, e.Ref)
		return err
	}
	b := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgB)
	bsubs = b.subs
	ctx := context.Background()
	const eve = "eve@example.com"
	for _, op := range []subscribers.Op{
		subscribers.SubscribeOp(subscribers.Subscription{Address: eve, List: "news", Name: "Eve Secret", ViaDoubleOptIn: true}),
		subscribers.ConfirmOp(eve, "news", "203.0.113.9", "ua"),
		subscribers.ImportOp(subscribers.Candidate{Address: "other@example.com", List: "news", ConsentedAt: time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC)}),
	} {
		if err := publishConsent(a, op); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "B applies all", caughtUp(b.node))
	for _, n := range []*consentNode{a, b} {
		if _, err := n.rep.Snapshot(ctx); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshotConsent(t, js, box)
	if len(before) != 2 {
		t.Fatalf("%d snapshots before the erasure; want 2", len(before))
	}
	for name, subs := range before {
		if got := consentState(t, subs, eve, "news"); got != subscribers.StateConfirmed {
			t.Fatalf("snapshot %s before the erasure: Eve %q; want confirmed", name, got)
		}
	}

	// A's erase path: its own consent store, then the stream.
	if _, err := a.subs.Erase(eve, "req-1"); err != nil {
		t.Fatal(err)
	}
	if err := a.rep.Publish(ctx, Erase(eve, "req-1", nil)); err != nil {
		t.Fatal(err)
	}
	erasedAt := a.rep.Status().AppliedSeq
	eventually(t, "B applies the erasure", func() bool { return b.rep.Status().AppliedSeq == erasedAt })
	if _, err := b.rep.Snapshot(ctx); err == nil || !strings.Contains(err.Error(), "not yet done in the consent store") {
		t.Fatalf("B's snapshot with the erasure due = %v; want refused", err)
	}
	close(release)
	eventually(t, "B's consent erased", func() bool { n, _ := b.rep.DueErasures(); return n == 0 })
	if _, err := b.rep.Snapshot(ctx); err != nil {
		t.Fatalf("B's snapshot once the erasure is done: %v", err)
	}
	eventually(t, "only snapshots at or after the erasure are left", func() bool {
		obs, err := js.ObjectStore(ctx, DefaultSnapshots)
		if err != nil {
			return false
		}
		infos, _ := obs.List(ctx)
		for _, in := range infos {
			if s, ok := parseSnapName(in.Name); !ok || s.seq < erasedAt {
				return false
			}
		}
		return len(infos) == 2
	})
	for name, subs := range snapshotConsent(t, js, box) {
		if got := consentState(t, subs, eve, "news"); got != subscribers.StateErased {
			t.Errorf("snapshot %s: Eve %q; want erased", name, got)
		}
		for _, h := range history(t, subs, eve) {
			if h.Name != "" || h.Address != "" || len(h.Events) != 1 || h.Events[0].Kind != subscribers.KindErased {
				t.Errorf("snapshot %s holds Eve's consent: %+v", name, h)
			}
		}
		if got := consentState(t, subs, "other@example.com", "news"); got != subscribers.StateConfirmed {
			t.Errorf("snapshot %s lost another person's consent: %q", name, got)
		}
	}
	c := startConsentNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "c.db"), snapCfg("c"))
	eventually(t, "C catches up", caughtUp(c.node))
	if st := c.rep.Status(); st.Snapshot < erasedAt {
		t.Fatalf("C joined from %d; want at or after the erasure (%d)", st.Snapshot, erasedAt)
	}
	if got := consentState(t, c.subs, eve, "news"); got != subscribers.StateErased {
		t.Errorf("C: Eve %q; want erased", got)
	}
}
