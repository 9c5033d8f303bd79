package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/retention"
)

// TestShareRetentionPrunesFinished: the retention pass of a cluster node
// (retentionDeps, as the daemon's hourly run and `db prune` use it) purges
// the cluster records of a campaign finished longer ago than
// retention.finished_messages, keeps an unfinished one, counts it in its
// result and audits the count.
func TestShareRetentionPrunesFinished(t *testing.T) {
	const period = 300 * time.Millisecond
	w, kv := inProcessWorker(t, time.Minute)
	e := w.e
	e.shares = w
	e.cfg = &configs.Server{Retention: configs.Retention{FinishedMessages: period, PendingOptin: time.Hour, Audit: time.Hour}}
	e.cfg.Delivery.CaptureDir = t.TempDir()
	al, err := audit.Open(filepath.Join(t.TempDir(), "audit.db"), 0, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	e.audit = al
	ctx := context.Background()

	// No Run: the leases are what a node that finished both shards wrote.
	for _, c := range []string{"finished", "unfinished"} {
		if pub, err := w.coord.Publish(ctx, c, "h", shareRows(40)); err != nil || pub.Manifest.Shards != 2 {
			t.Fatalf("publish %s: %+v, %v", c, pub.Manifest, err)
		}
	}
	for s := range 2 {
		k := fmt.Sprintf("finished.s.%d", s)
		en, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Update(ctx, k, []byte(`{"state":"done","holder":"n1","token":1}`), en.Revision()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(period + 100*time.Millisecond)

	r, err := retention.Prune(ctx, e.retentionDeps(), retention.Request{Who: "local:ops"})
	if err != nil {
		t.Fatal(err)
	}
	if r.ClusterCampaigns != 1 {
		t.Errorf("retention pass: %+v, want 1 cluster campaign pruned", r)
	}
	for _, k := range []string{"finished.m", "finished.s.0", "finished.s.1"} {
		if _, err := kv.Get(ctx, k); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("key %s after the retention pass: %v, want not found", k, err)
		}
	}
	for _, k := range []string{"unfinished.m", "unfinished.s.0", "unfinished.s.1"} {
		if _, err := kv.Get(ctx, k); err != nil {
			t.Errorf("key %s of the unfinished campaign: %v", k, err)
		}
	}
	var last audit.Entry
	if err := al.List(time.Time{}, func(en audit.Entry) error { last = en; return nil }); err != nil {
		t.Fatal(err)
	}
	if last.Action != "db.prune" || last.Details["cluster_campaigns"] != "1" {
		t.Errorf("audit of the retention pass: %+v, want db.prune with cluster_campaigns 1", last)
	}

	// A single node (no share worker) prunes no cluster campaign.
	e.shares = nil
	if d := e.retentionDeps(); d.Campaigns != nil {
		t.Errorf("a single node's retention reaches the cluster: %T", d.Campaigns)
	}
}
