package shares

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postwarden/postwarden/suppression/address"
)

// rowCollector is an Enqueuer that keeps the rows it is handed.
type rowCollector struct {
	mu   sync.Mutex
	rows []Row
}

func (rc *rowCollector) Enqueue(ctx context.Context, campaign string, rows []Row, token uint64) error {
	rc.mu.Lock()
	rc.rows = append(rc.rows, rows...)
	rc.mu.Unlock()
	return nil
}

func (rc *rowCollector) got() []Row {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Row(nil), rc.rows...)
}

// TestEraseIndex: erasing one person rewrites their shard without their
// row; afterwards no message of PW_SHARE_DATA (every sequence, opened with
// the box) holds the row, the other rows are all there once, the old
// shard's bytes are gone from the store directory, their outcomes are
// purged, the manifest counts one row less, a second run changes nothing,
// a re-run of the publish adds nothing, and a node that takes the shard
// afterwards is handed the other rows only.
func TestEraseIndex(t *testing.T) {
	const campaign = "erase.me"
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js := connect(t, url)
	c := newCoordinator(t, js, box, Config{Node: "mta1", ShardSize: 10})

	rows := testRows(40)
	pub, err := c.Publish(ctx, campaign, "file-hash", rows)
	if err != nil {
		t.Fatal(err)
	}
	a, err := address.Parse(rows[17].Address)
	if err != nil {
		t.Fatal(err)
	}
	victim := box.IndexHex(a.Key())
	if err := c.Record(ctx, campaign, victim, Deferred); err != nil {
		t.Fatal(err)
	}
	other, _ := address.Parse(rows[3].Address)
	if err := c.Record(ctx, campaign, box.IndexHex(other.Key()), Delivered); err != nil {
		t.Fatal(err)
	}
	shard := shardOf(victim, pub.Manifest.Shards)
	data, err := js.Stream(ctx, DataStream)
	if err != nil {
		t.Fatal(err)
	}
	old, err := data.GetLastMsgForSubject(ctx, dataSubject("erase=2eme", shard))
	if err != nil {
		t.Fatal(err)
	}

	n, err := c.EraseIndex(ctx, victim)
	if err != nil || n != 1 {
		t.Fatalf("EraseIndex: %d rows, %v; want 1, nil", n, err)
	}

	// Every message the stream holds, by sequence, opened.
	info, err := data.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := data.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var s int
		for s = 0; s < pub.Manifest.Shards && dataSubject("erase=2eme", s) != m.Subject; s++ {
		}
		got, err := c.openShard(m.Data, campaign, s)
		if err != nil {
			t.Fatalf("message %d (%s): %v", seq, m.Subject, err)
		}
		for _, r := range got {
			seen[r.Key]++
		}
	}
	if seen[victim] != 0 {
		t.Errorf("the stream still holds the erased row %d times", seen[victim])
	}
	if len(seen) != 39 {
		t.Errorf("the stream holds %d distinct rows, want the other 39", len(seen))
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("row %s… held %d times, want once", k[:8], n)
		}
	}
	// The old shard's sealed bytes are overwritten on disk, not only marked deleted.
	probe := old.Data[len(old.Data)-48:]
	err = filepath.WalkDir(srv[0].storeDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, probe) {
			t.Errorf("%s still holds the erased shard's sealed bytes", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	st, err := c.Status(ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	if st.Manifest.Rows != 39 || st.Shards[shard].Rows != pub.Manifest.ShardRows[shard]-1 {
		t.Errorf("manifest after erasure: %d rows, shard %d has %d; want 39 and %d",
			st.Manifest.Rows, shard, st.Shards[shard].Rows, pub.Manifest.ShardRows[shard]-1)
	}
	if st.Outcomes[Deferred] != 0 || st.Outcomes[Delivered] != 1 || st.Pending != 38 {
		t.Errorf("outcomes after erasure %v, pending %d; want only the other's delivered, 38 pending", st.Outcomes, st.Pending)
	}

	if n, err := c.EraseIndex(ctx, victim); err != nil || n != 0 {
		t.Errorf("second EraseIndex: %d rows, %v; want 0, nil", n, err)
	}
	again, err := c.Publish(ctx, campaign, "file-hash", rows)
	if err != nil || again.New {
		t.Errorf("re-run of the publish: new %v, %v; want nothing added", again.New, err)
	}

	// A node taking the shards now is handed the other rows only.
	rc := &rowCollector{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := c.Run(ctx, Worker{Enqueuer: rc}); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	defer func() { cancel(); wg.Wait() }()
	waitFor(t, 20*time.Second, "the shards to be handed over", func() bool { return len(rc.got()) >= 38 })
	time.Sleep(200 * time.Millisecond)
	for _, r := range rc.got() {
		if r.Key == victim {
			t.Fatal("the erased person was handed to a node after the erasure")
		}
	}
	if n := len(rc.got()); n != 38 {
		t.Errorf("handed %d rows, want 38 (39 less the one delivered)", n)
	}
}

// TestEraseFromFinishedCampaign: once a finished campaign's shards are
// purged, erasing a recipient still takes them out of its counts (their
// outcome names them) and out of its outcomes; status then shows the
// others, none pending; a second run changes nothing.
func TestEraseFromFinishedCampaign(t *testing.T) {
	const campaign, rowsN = "done.then-erased", 30
	srv := startServers(t, 1)
	box := testBox(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	c := newCoordinator(t, connect(t, srv[0].srv.ClientURL()), box, Config{Node: "mta1", Lease: 3 * time.Second, ShardSize: 10})
	n := newFakeNode("mta1", c, newTally(), 100)
	wg.Add(2)
	go func() { defer wg.Done(); n.deliver(ctx, campaign) }()
	go func() {
		defer wg.Done()
		if err := c.Run(ctx, Worker{Enqueuer: n, Room: n.room}); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	rows := testRows(rowsN)
	if _, err := c.Publish(ctx, campaign, "h", rows); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the campaign finished and its shards purged", func() bool {
		_, done := allDone(t, c, campaign)
		purged, err := c.PruneDone(ctx, campaign)
		return done && err == nil && purged
	})
	a, _ := address.Parse(rows[12].Address)
	victim := box.IndexHex(a.Key())
	if got, err := c.EraseIndex(ctx, victim); err != nil || got != 1 {
		t.Fatalf("EraseIndex: %d rows, %v; want 1", got, err)
	}
	check := func(when string) {
		st, err := c.Status(ctx, campaign)
		if err != nil {
			t.Fatal(err)
		}
		if st.Manifest.Rows != rowsN-1 || st.Outcomes[Delivered] != rowsN-1 || st.Pending != 0 {
			t.Errorf("%s: rows %d, outcomes %v, pending %d; want %d delivered, none pending", when, st.Manifest.Rows, st.Outcomes, st.Pending, rowsN-1)
		}
	}
	check("after the erasure")
	if got, err := c.EraseIndex(ctx, victim); err != nil || got != 0 {
		t.Errorf("second EraseIndex: %d rows, %v; want 0", got, err)
	}
	check("after a second erasure")
}
