package shares

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postwarden/postwarden/suppression/address"
)

// instantNode records every row it is handed as delivered before it
// returns: a node whose deliveries all succeed at once.
type instantNode struct{ c *Coordinator }

func (n instantNode) Enqueue(ctx context.Context, campaign string, rows []Row, token uint64) error {
	for _, r := range rows {
		if err := n.c.Record(ctx, campaign, r.Key, Delivered); err != nil {
			return err
		}
	}
	return nil
}

func mustParse(t *testing.T, addr string) address.Address {
	t.Helper()
	a, err := address.Parse(addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// subjectsOf counts the subjects of stream name under filter.
func subjectsOf(t *testing.T, js jetstream.JetStream, name, filter string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	return len(info.State.Subjects)
}

// TestPruneFinished: a finished campaign whose last activity is older than
// the retention period loses every record in JetStream (manifest, lease,
// pause, settings and figures keys, outcomes, delete markers included);
// a campaign finished since, one with an outcome recorded since and an
// unfinished older one are kept; two nodes
// pruning at once are harmless, and a second pass purges nothing.
func TestPruneFinished(t *testing.T) {
	const old, recent, unfinished, late, rowsN = "old.done", "recent-done", "old_unfinished", "late-outcome", 30
	srv := startServers(t, 1)
	box := testBox(t)
	js := connect(t, srv[0].srv.ClientURL())
	c := newCoordinator(t, js, box, Config{Node: "mta1", Lease: 3 * time.Second, ShardSize: 10})
	c2 := newCoordinator(t, connect(t, srv[0].srv.ClientURL()), box, Config{Node: "mta2", Lease: 3 * time.Second, ShardSize: 10})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	// Paused before it is published: no shard of it is ever taken.
	if err := c.SetPause(ctx, Pause{Campaign: unfinished, Paused: true, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, unfinished, "h", testRows(rowsN)); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := c.Run(ctx, Worker{Enqueuer: instantNode{c}}); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	rows := testRows(rowsN)
	if _, err := c.Publish(ctx, old, "h", rows); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, late, "h", rows); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{old, late} {
		waitFor(t, 30*time.Second, id+" finished", func() bool { _, done := allDone(t, c, id); return done })
	}
	// Every kind of key a campaign has.
	if err := c.SetPause(ctx, Pause{Campaign: old, Paused: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetSettings(ctx, old, []byte(`{"rate":"10/s"}`)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetFigures(ctx, old, []byte(`{"attempts":30}`)); err != nil {
		t.Fatal(err)
	}
	if err := c2.SetFigures(ctx, old, []byte(`{"attempts":0}`)); err != nil {
		t.Fatal(err)
	}
	otok := mustToken(t, old)
	if n := subjectsOf(t, js, OutcomeStream, outcomePrefix+otok+".>"); n != rowsN {
		t.Fatalf("%d outcome subjects of %s before the prune, want %d", n, old, rowsN)
	}

	time.Sleep(100 * time.Millisecond)
	mark := time.Now()
	time.Sleep(100 * time.Millisecond)
	// An outcome recorded after its shards were done (a lost node's, or a
	// bounce that came late) is activity too.
	lateKey := box.IndexHex(mustParse(t, rows[0].Address).Key())
	if err := c.Record(ctx, late, lateKey, Bounced); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, recent, "h", rows); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, recent+" finished", func() bool { _, done := allDone(t, c, recent); return done })

	// Two nodes at once, with the cutoff between the two campaigns.
	age := time.Since(mark)
	var n1, n2 int
	var err1, err2 error
	var pw sync.WaitGroup
	pw.Add(2)
	go func() { defer pw.Done(); n1, err1 = c.PruneFinished(ctx, age) }()
	go func() { defer pw.Done(); n2, err2 = c2.PruneFinished(ctx, age) }()
	pw.Wait()
	if err1 != nil || err2 != nil {
		t.Fatalf("PruneFinished on two nodes at once: %v; %v", err1, err2)
	}
	if n1+n2 < 1 || n1 > 1 || n2 > 1 {
		t.Fatalf("PruneFinished counted %d and %d campaigns, want one campaign (%s) by either or both", n1, n2, old)
	}

	if keys, err := c.keys(ctx, otok+".>"); err != nil || len(keys) != 0 {
		t.Errorf("keys of %s after the prune: %v, %v; want none", old, keys, err)
	}
	for _, cc := range []*Coordinator{c, c2} {
		if _, err := cc.Status(ctx, old); !errors.Is(err, ErrNoCampaign) {
			t.Errorf("Status of %s on %s after the prune: %v, want ErrNoCampaign", old, cc.Node(), err)
		}
	}
	for _, kept := range []string{recent, unfinished, late} {
		st, err := c.Status(ctx, kept)
		if err != nil {
			t.Fatalf("Status of %s: %v", kept, err)
		}
		if st.Manifest.Rows != rowsN {
			t.Errorf("%s kept with %d rows, want %d", kept, st.Manifest.Rows, rowsN)
		}
	}
	if st, _ := c.Status(ctx, recent); st.Outcomes[Delivered] != rowsN || st.States[StateDone] != 3 {
		t.Errorf("%s: outcomes %v, shards %v; want its %d outcomes and 3 done shards kept", recent, st.Outcomes, st.States, rowsN)
	}
	if st, _ := c.Status(ctx, unfinished); st.States[StateFree] != 3 {
		t.Errorf("%s: shards %v, want 3 free", unfinished, st.States)
	}

	// Nothing of it is left, not even delete markers; a second pass
	// purges nothing more.
	if n, err := c.PruneFinished(ctx, time.Since(mark)); err != nil || n != 0 {
		t.Errorf("second PruneFinished: %d campaigns, %v; want 0, nil", n, err)
	}
	for _, s := range []struct{ stream, filter string }{
		{OutcomeStream, outcomePrefix + otok + ".>"},
		{DataStream, dataPrefix + otok + ".>"},
		{kvStream, kvPrefix + otok + ".>"},
	} {
		if n := subjectsOf(t, js, s.stream, s.filter); n != 0 {
			t.Errorf("stream %s holds %d subjects %s after the prune, want none", s.stream, n, s.filter)
		}
	}
	for _, kept := range []string{recent, unfinished, late} {
		if n := subjectsOf(t, js, kvStream, kvPrefix+mustToken(t, kept)+".>"); n < 4 {
			t.Errorf("bucket holds %d keys of %s, want its manifest and 3 leases at least", n, kept)
		}
	}
	if n := subjectsOf(t, js, OutcomeStream, outcomePrefix+mustToken(t, recent)+".>"); n != rowsN {
		t.Errorf("%d outcome subjects of %s, want %d", n, recent, rowsN)
	}

	// A prune cut short (a lease key gone, the manifest still there) is
	// finished by the next pass, though an outcome is newer than the cutoff.
	ltok := mustToken(t, late)
	if err := c.kv.Purge(ctx, leaseKey(ltok, 1)); err != nil {
		t.Fatal(err)
	}
	if n, err := c.PruneFinished(ctx, time.Since(mark)); err != nil || n != 1 {
		t.Errorf("PruneFinished after a cut-short prune of %s: %d campaigns, %v; want 1", late, n, err)
	}
	if keys, err := c.keys(ctx, ltok+".>"); err != nil || len(keys) != 0 {
		t.Errorf("keys of %s after the pass that finished its prune: %v, %v; want none", late, keys, err)
	}
	if _, err := c.Status(ctx, recent); err != nil {
		t.Errorf("Status of %s after the third pass: %v", recent, err)
	}

	// Erasure still works on what is left: the person is a recipient of
	// the recent campaign only.
	if got, err := c.EraseIndex(ctx, box.IndexHex(mustParse(t, rows[7].Address).Key())); err != nil || got != 2 {
		t.Errorf("EraseIndex after the prune: %d rows, %v; want 2 (%s, %s)", got, err, recent, unfinished)
	}

	// A re-run of the pruned campaign is published anew.
	if pub, err := c.Publish(ctx, old, "h", rows); err != nil || !pub.New {
		t.Errorf("re-run of %s after the prune: new %v, %v; want a new publish", old, pub.New, err)
	}
}

// TestStatusAfterPruneElsewhere: a node that read a campaign's status
// (caching its manifest) and runs no watcher answers ErrNoCampaign once
// another node pruned it, not the status it cached.
func TestStatusAfterPruneElsewhere(t *testing.T) {
	srv := startServers(t, 1)
	box := testBox(t)
	worker := newCoordinator(t, connect(t, srv[0].srv.ClientURL()), box, Config{Node: "mta1", Lease: 3 * time.Second, ShardSize: 10})
	reader := newCoordinator(t, connect(t, srv[0].srv.ClientURL()), box, Config{Node: "mta2", Lease: 3 * time.Second, ShardSize: 10})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := worker.Run(ctx, Worker{Enqueuer: instantNode{worker}}); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	const id = "gone-elsewhere"
	if _, err := worker.Publish(ctx, id, "h", testRows(20)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, id+" finished", func() bool { _, done := allDone(t, worker, id); return done })
	if st, err := reader.Status(ctx, id); err != nil || st.Manifest.Rows != 20 {
		t.Fatalf("status before the prune: %+v, %v", st.Manifest, err)
	}
	time.Sleep(50 * time.Millisecond)
	if n, err := worker.PruneFinished(ctx, time.Millisecond); err != nil || n != 1 {
		t.Fatalf("PruneFinished = %d, %v; want the campaign", n, err)
	}
	if _, err := reader.Status(ctx, id); !errors.Is(err, ErrNoCampaign) {
		t.Errorf("status on the other node after the prune: %v; want ErrNoCampaign", err)
	}
}
