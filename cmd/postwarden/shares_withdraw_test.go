package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/campaign/shares"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// inProcessWorker is a node's share worker without serve: an in-process
// NATS server, a coordinator and a queue (no runner, so the spool keeps
// what it is handed).
func inProcessWorker(t *testing.T, lease time.Duration) (*shareWorker, jetstream.KeyValue) {
	t.Helper()
	w, kv, _ := inProcessWorkerServer(t, lease)
	return w, kv
}

// inProcessWorkerServer is inProcessWorker, and the NATS server it uses.
func inProcessWorkerServer(t *testing.T, lease time.Duration) (*shareWorker, jetstream.KeyValue, *server.Server) {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	box, q := openTestQueue(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	coord, err := shares.New(ctx, js, box, shares.Config{Node: "n1", Lease: lease, ShardSize: 20}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	supp, err := suppression.Open(suppression.Config{Path: filepath.Join(t.TempDir(), "suppression.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { supp.Close() })
	subs, err := subscribers.Open(subscribers.Config{Path: filepath.Join(t.TempDir(), "subscribers.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { subs.Close() })
	w := &shareWorker{e: &env{queue: q, box: box, supp: supp, subs: subs}, coord: coord, log: zerolog.Nop(),
		out: make(chan finalOutcome, 8), ready: make(chan struct{}), ctx: ctx}
	close(w.ready)
	w.checked.Store(true)
	kv, err := js.KeyValue(ctx, shares.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return w, kv, srv
}

// spoolCounts are the worker's spool's messages of campaign by state.
func spoolCounts(t *testing.T, w *shareWorker, campaign string) map[queue.State]int {
	t.Helper()
	c, err := w.e.queue.CampaignCounts(campaign)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// shareRows are n rendered messages as campaign send publishes them.
func shareRows(n int) []shares.Row {
	rows := make([]shares.Row, n)
	for i := range rows {
		to := fmt.Sprintf("w%03d@withdraw.example", i)
		rows[i] = shares.Row{Address: to, Fields: map[string]string{fieldKey: to, fieldFrom: "bounce@sender.example",
			fieldList: "news", fieldBody: "Subject: hi\r\n\r\nhello\r\n"}}
	}
	return rows
}

// takeFrom writes the lease of shard s as held by another node, as a
// takeover does.
func takeFrom(t *testing.T, kv jetstream.KeyValue, campaign string, s int) {
	t.Helper()
	k := fmt.Sprintf("%s.s.%d", campaign, s)
	e, err := kv.Get(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(context.Background(), k, []byte(`{"state":"held","holder":"n2","token":1}`), e.Revision()); err != nil {
		t.Fatal(err)
	}
}

// TestShareLostWithdraws: a node whose lease on a shard is lost while it
// is alive withdraws that shard's messages from its spool (cancelled, the
// reason recorded), not the other shard's; counts add up.
func TestShareLostWithdraws(t *testing.T) {
	const campaign = "lost"
	w, kv := inProcessWorker(t, time.Second)
	ctx, cancel := context.WithCancel(w.ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := w.coord.Run(ctx, shares.Worker{Enqueuer: w, Lost: w.lost}); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	pub, err := w.coord.Publish(ctx, campaign, "h", shareRows(40))
	if err != nil {
		t.Fatal(err)
	}
	if pub.Manifest.Shards != 2 {
		t.Fatalf("%d shards, want 2", pub.Manifest.Shards)
	}
	counts := func() map[queue.State]int { return spoolCounts(t, w, campaign) }
	waitUntil(t, 20*time.Second, "both shards in the spool", func() bool { return counts()[queue.StateReady] == 40 })

	takeFrom(t, kv, campaign, 0)
	lost0 := pub.Manifest.ShardRows[0]
	waitUntil(t, 20*time.Second, "shard 0 withdrawn", func() bool { return counts()[queue.StateCancelled] == lost0 })
	time.Sleep(500 * time.Millisecond)
	if c := counts(); c[queue.StateCancelled] != lost0 || c[queue.StateReady] != 40-lost0 {
		t.Errorf("counts after the lost lease: %v, want %d cancelled, %d ready", c, lost0, 40-lost0)
	}
	err = w.e.queue.List(queue.Filter{Campaign: campaign, State: queue.StateCancelled}, func(m queue.Message) error {
		if m.Reason != withdrawReason {
			t.Errorf("withdrawn message reason %q", m.Reason)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestShareRestartWithdrawsStale: at start, the spool's messages of a
// shard another node took over while this one was down are withdrawn;
// those of a shard this node still holds stay.
func TestShareRestartWithdrawsStale(t *testing.T) {
	const campaign = "stale"
	w, kv := inProcessWorker(t, time.Minute)
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.coord.Run(ctx, shares.Worker{Enqueuer: w}); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	pub, err := w.coord.Publish(ctx, campaign, "h", shareRows(40))
	if err != nil {
		t.Fatal(err)
	}
	counts := func() map[queue.State]int { return spoolCounts(t, w, campaign) }
	waitUntil(t, 20*time.Second, "both shards in the spool", func() bool { return counts()[queue.StateReady] == 40 })
	cancel() // the node goes down holding both shards
	<-done
	takeFrom(t, kv, campaign, 1)

	stale, err := pendingCampaigns(w.e.queue)
	if err != nil || len(stale) != 1 || stale[0] != campaign {
		t.Fatalf("pending campaigns %v, %v", stale, err)
	}
	if err := w.withdrawStale(w.ctx, stale); err != nil {
		t.Fatal(err)
	}
	lost1 := pub.Manifest.ShardRows[1]
	if c := counts(); c[queue.StateCancelled] != lost1 || c[queue.StateReady] != 40-lost1 {
		t.Errorf("counts after the start's check: %v, want %d cancelled, %d ready", c, lost1, 40-lost1)
	}
}

// TestShareSkipsSuppressedRows: a share's rows pass this node's gate before
// its spool: a person erased (the tombstone) or unsubscribed since the
// campaign was published never enters the spool, and is recorded skipped,
// so the shard completes.
func TestShareSkipsSuppressedRows(t *testing.T) {
	const campaign = "gated"
	w, _ := inProcessWorker(t, time.Minute)
	ctx, cancel := context.WithCancel(w.ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	rows := shareRows(20)
	if _, err := w.coord.Publish(ctx, campaign, "h", rows); err != nil {
		t.Fatal(err)
	}
	// After the publish, before any node takes the share: one erasure, one unsubscribe.
	if _, err := w.e.supp.Erase(rows[3].Address, "test-erasure", nil); err != nil {
		t.Fatal(err)
	}
	if err := w.e.supp.SuppressAddress(rows[7].Address, "news", string(suppression.Unsubscribed), "test", ""); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := w.coord.Run(ctx, shares.Worker{Enqueuer: w}); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	counts := func() map[queue.State]int { return spoolCounts(t, w, campaign) }
	waitUntil(t, 20*time.Second, "the share in the spool", func() bool { return counts()[queue.StateReady] == 18 })
	for _, i := range []int{3, 7} {
		if _, found, err := w.e.queue.ByKey(campaign, rows[i].Address); err != nil || found {
			t.Errorf("row %d (suppressed) in the spool: %v, %v", i, found, err)
		}
	}
	st, err := w.coord.Status(ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	if st.Outcomes[shares.Skipped] != 2 {
		t.Errorf("outcomes %v, want 2 skipped", st.Outcomes)
	}
}
