package retention_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/retention"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// stores is a data directory of real stores in a temp dir.
type stores struct {
	dir    string
	outbox mta.Outbox
	q      *queue.Store
	supp   *suppression.Store
	subs   *subscribers.Store
	audit  *audit.Log
}

func open(t *testing.T) *stores {
	t.Helper()
	s := &stores{dir: t.TempDir()}
	outbox := filepath.Join(s.dir, "outbox")
	if err := os.Mkdir(outbox, 0o700); err != nil {
		t.Fatal(err)
	}
	s.outbox = mta.NewOutbox(outbox)
	key := make([]byte, 32)
	rand.Read(key)
	box, err := sealed.New(key)
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.Nop()
	if s.q, err = queue.Open(queue.Config{Path: s.path("queue"), Box: box}, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.q.Close() })
	if s.supp, err = suppression.Open(suppression.Config{Path: s.path("suppression"), Box: box}, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.supp.Close() })
	if s.subs, err = subscribers.Open(subscribers.Config{Path: s.path("subscribers"), Box: box}, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.subs.Close() })
	if s.audit, err = audit.Open(s.path("audit"), 0, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.audit.Close() })
	return s
}

func (s *stores) path(name string) string { return filepath.Join(s.dir, name+".db") }

// enqueue puts one message per address in the queue and returns the ids.
func (s *stores) enqueue(t *testing.T, campaign string, body []byte, addrs ...string) []string {
	t.Helper()
	var msgs []queue.NewMessage
	for _, a := range addrs {
		msgs = append(msgs, queue.NewMessage{Campaign: campaign, Key: campaign + a, From: "news@sender.example", To: a, Body: body})
	}
	res, err := s.q.Enqueue(msgs)
	if err != nil {
		t.Fatal(err)
	}
	return res.IDs
}

// finish cancels messages, which makes them finished.
func (s *stores) finish(t *testing.T, ids ...string) {
	t.Helper()
	if n, err := s.q.Delete(ids, "test"); err != nil || n != len(ids) {
		t.Fatalf("Delete = %d, %v", n, err)
	}
}

func (s *stores) pending(t *testing.T, addr string) {
	t.Helper()
	if _, err := s.subs.Subscribe(subscribers.Subscription{Address: addr, List: "news", Source: "form", Pending: true}); err != nil {
		t.Fatal(err)
	}
}

func (s *stores) audits(t *testing.T) []audit.Entry {
	t.Helper()
	var all []audit.Entry
	if err := s.audit.List(time.Time{}, func(e audit.Entry) error { all = append(all, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return all
}

// Prune removes only what is older than its period, in every store, and
// audits the counts; a daemon run that removed nothing is not audited.
func TestPruneRemovesOnlyWhatIsOld(t *testing.T) {
	s := open(t)
	const period = 300 * time.Millisecond
	body := []byte("Subject: hi\r\n\r\nhello\r\n")
	old := s.enqueue(t, "c1", body, "old@acme.example")
	s.finish(t, old...)
	s.pending(t, "slow@acme.example")
	if _, err := s.audit.Append(audit.Entry{Who: "local:test", Action: "suppress.add", Target: "@acme.example"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{old[0], "gone"} {
		p := s.outbox.Path(name)
		if err := os.WriteFile(p, body, 0o600); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-time.Hour)
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(period + 50*time.Millisecond)
	recent := s.enqueue(t, "c2", body, "recent@acme.example", "pending@acme.example")
	s.finish(t, recent[0])
	s.pending(t, "fresh@acme.example")
	if err := os.WriteFile(s.outbox.Path(recent[0]), body, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.audit.Append(audit.Entry{Who: "local:test", Action: "suppress.add", Target: "@globex.example"}); err != nil {
		t.Fatal(err)
	}

	d := retention.Deps{Queue: s.q, Outbox: s.outbox, Subscribers: s.subs, Audit: s.audit,
		Periods: retention.Periods{FinishedMessages: period, PendingOptin: period, Audit: period}}
	r, err := retention.Prune(context.Background(), d, retention.Request{Who: "local:ops"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (retention.Result{FinishedMessages: 1, CaptureFiles: 2, PendingOptins: 1, AuditEntries: 1}); r != want {
		t.Errorf("Prune = %+v, want %+v", r, want)
	}
	if _, err := s.q.Get(old[0]); err == nil {
		t.Error("the old finished message is still there")
	}
	for _, id := range recent {
		if _, err := s.q.Get(id); err != nil {
			t.Errorf("recent message %s: %v", id, err)
		}
	}
	if _, err := os.Stat(s.outbox.Path(recent[0])); err != nil {
		t.Errorf("recent capture file: %v", err)
	}
	if h, err := s.subs.History("fresh@acme.example"); err != nil || len(h) != 1 {
		t.Errorf("fresh pending sign-up: %+v, %v", h, err)
	}
	if h, _ := s.subs.History("slow@acme.example"); len(h) != 0 {
		t.Errorf("old pending sign-up kept: %+v", h)
	}
	all := s.audits(t)
	last := all[len(all)-1]
	if last.Action != "db.prune" || last.Who != "local:ops" || last.Reason != "retention" || last.Details["finished_messages"] != "1" ||
		last.Details["capture_files"] != "2" || last.Details["pending_optins"] != "1" || last.Details["audit_entries"] != "1" {
		t.Errorf("prune audit entry: %+v", last)
	}

	// Nothing more is due: the daemon's run is not audited, an operator's is.
	n := len(all)
	if r, err := retention.Prune(context.Background(), d, retention.Request{Who: "system:retention", SkipEmpty: true}); err != nil || r != (retention.Result{}) {
		t.Fatalf("second Prune = %+v, %v", r, err)
	}
	if got := len(s.audits(t)); got != n {
		t.Errorf("an empty daemon prune was audited: %d entries, want %d", got, n)
	}
	if _, err := retention.Prune(context.Background(), d, retention.Request{Who: "local:ops"}); err != nil {
		t.Fatal(err)
	}
	if got := len(s.audits(t)); got != n+1 {
		t.Errorf("an operator's empty prune: %d entries, want %d", got, n+1)
	}
}

// Compact shrinks a file whose records were deleted, keeps every record
// of every store, and reports the sizes sorted by file.
func TestCompactShrinksAndKeepsData(t *testing.T) {
	s := open(t)
	body := make([]byte, 8<<10) // random: zstd cannot shrink it
	rand.Read(body)
	var addrs []string
	for i := range 300 {
		addrs = append(addrs, fmt.Sprintf("p%d@acme.example", i))
	}
	ids := s.enqueue(t, "big", body, addrs...)
	s.finish(t, ids[10:]...)
	if n, err := s.q.PruneFinished(time.Nanosecond); err != nil || n != len(ids)-10 {
		t.Fatalf("PruneFinished = %d, %v", n, err)
	}
	if err := s.supp.SuppressAddress("kept@acme.example", "", "manual", "test", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.subs.Subscribe(subscribers.Subscription{Address: "kept@acme.example", List: "news", Source: "form"}); err != nil {
		t.Fatal(err)
	}

	sizes, err := retention.Compact([]retention.Store{
		{Name: "queue", Path: s.path("queue"), DB: s.q},
		{Name: "suppression", Path: s.path("suppression"), DB: s.supp},
		{Name: "subscribers", Path: s.path("subscribers"), DB: s.subs},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != 3 || sizes[0].File != "queue.db" || sizes[1].File != "subscribers.db" || sizes[2].File != "suppression.db" {
		t.Fatalf("sizes: %+v", sizes)
	}
	if q := sizes[0]; q.BytesAfter >= q.BytesBefore/2 || q.BytesAfter == 0 {
		t.Errorf("queue.db %d → %d bytes: want it to shrink by half at least", q.BytesBefore, q.BytesAfter)
	}
	for _, id := range ids[:10] {
		if b, err := s.q.Body(id); err != nil || len(b) != len(body) {
			t.Errorf("message %s after compaction: %d bytes, %v", id, len(b), err)
		}
	}
	if en, err := s.supp.EntriesFor("kept@acme.example"); err != nil || len(en) != 1 {
		t.Errorf("suppression after compaction: %+v, %v", en, err)
	}
	if h, err := s.subs.History("kept@acme.example"); err != nil || len(h) != 1 {
		t.Errorf("subscribers after compaction: %+v, %v", h, err)
	}
}

// campaignsProbe records what a prune asks of a cluster node's campaigns
// (campaign/shares.Coordinator in the binary; its own tests prune real
// JetStream records).
type campaignsProbe struct {
	asked []time.Duration
	n     int
	err   error
}

func (p *campaignsProbe) PruneFinished(ctx context.Context, olderThan time.Duration) (int, error) {
	p.asked = append(p.asked, olderThan)
	return p.n, p.err
}

// On a cluster node the finished campaigns are pruned with the
// finished-messages period, counted and audited; their error stops the pass.
func TestPruneClusterCampaigns(t *testing.T) {
	s := open(t)
	const period = 42 * time.Hour
	probe := &campaignsProbe{n: 3}
	d := retention.Deps{Queue: s.q, Campaigns: probe, Outbox: s.outbox, Subscribers: s.subs, Audit: s.audit,
		Periods: retention.Periods{FinishedMessages: period, PendingOptin: period, Audit: period}}
	r, err := retention.Prune(context.Background(), d, retention.Request{Who: "system:retention", SkipEmpty: true})
	if err != nil {
		t.Fatal(err)
	}
	if r != (retention.Result{ClusterCampaigns: 3}) || len(probe.asked) != 1 || probe.asked[0] != period {
		t.Errorf("Prune = %+v, asked %v; want 3 cluster campaigns, asked once for %v", r, probe.asked, period)
	}
	all := s.audits(t)
	if last := all[len(all)-1]; last.Action != "db.prune" || last.Details["cluster_campaigns"] != "3" {
		t.Errorf("prune audit entry: %+v, want cluster_campaigns 3", last)
	}
	probe.err = errors.New("nats: timeout")
	if _, err := retention.Prune(context.Background(), d, retention.Request{Who: "local:ops"}); err == nil || !errors.Is(err, probe.err) {
		t.Errorf("Prune with the cluster down: %v, want its error", err)
	}
}
