package replica

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// snapCfg is cfgFor with snapshots on; the period is long, so only the
// test (Snapshot) and erasures make them.
func snapCfg(node string) Config {
	c := cfgFor(node)
	c.SnapshotEvery = time.Hour
	return c
}

// allEntries lists every entry of st.
func allEntries(t *testing.T, st *suppression.Store) []suppression.Entry {
	t.Helper()
	var out []suppression.Entry
	if err := st.List(func(e suppression.Entry) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestJoinFromSnapshot: with 60 changes in the stream, a snapshot at 60,
// and 40 more changes, a fresh replica loads the snapshot, reads the
// stream from 61 only, ends with the same state as the node that made the
// changes, and is stale until it has applied the tail.
func TestJoinFromSnapshot(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), snapCfg("a"))
	ctx := context.Background()
	publish := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			addr := fmt.Sprintf("p%d@example.com", i%50)
			c := Add(suppression.Entry{Target: addr, Reason: suppression.Unsubscribed, Note: fmt.Sprintf("change %d", i)})
			switch {
			case i%7 == 3:
				c = Remove(addr, "")
			case i%11 == 5:
				c = Add(suppression.Entry{Target: fmt.Sprintf("@d%d.example", i), List: "news", Reason: suppression.Manual})
			case i%13 == 6:
				c = Restrict(addr, "objection")
			}
			if err := a.rep.Publish(ctx, c); err != nil {
				t.Fatalf("Publish %d: %v", i, err)
			}
		}
	}
	const n, k = 100, 60
	publish(0, k)
	seq, err := a.rep.Snapshot(ctx)
	if err != nil || seq != k {
		t.Fatalf("Snapshot = %d, %v; want %d", seq, err, k)
	}
	publish(k, n)

	c := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "c.db"), snapCfg("c"))
	var servedEarly atomic.Bool
	done := make(chan struct{})
	go func() { // "serves only once caught up": never not stale while behind
		defer close(done)
		for c.rep.Status().AppliedSeq < n {
			if !c.rep.Stale(time.Now()) && c.rep.Status().AppliedSeq < n {
				servedEarly.Store(true)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	eventually(t, "C catches up", func() bool { return c.rep.Status().AppliedSeq == n && !c.rep.Stale(time.Now()) })
	<-done
	if servedEarly.Load() {
		t.Error("C was not stale before it had applied the stream's tail")
	}
	st := c.rep.Status()
	if st.Snapshot != k || st.FirstSeq != k+1 || st.Applied != n-k {
		t.Fatalf("C joined from snapshot %d, first applied %d, applied %d; want %d, %d, %d", st.Snapshot, st.FirstSeq, st.Applied, k, k+1, n-k)
	}
	if ea, ec := allEntries(t, a.store), allEntries(t, c.store); !reflect.DeepEqual(ea, ec) || len(ea) == 0 {
		t.Fatalf("C's state differs from A's:\n A %d %+v\n C %d %+v", len(ea), ea, len(ec), ec)
	}

	// A replica whose store is not empty never loads a snapshot: restarted,
	// C resumes after its own applied sequence.
	c.stop()
	c2 := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "c.db"), snapCfg("c"))
	eventually(t, "C restarted catches up", caughtUp(c2))
	if st := c2.rep.Status(); st.Snapshot != 0 || st.Applied != 0 {
		t.Fatalf("C restarted: snapshot %d, applied %d; want 0, 0", st.Snapshot, st.Applied)
	}
}

// openSnapshots opens every snapshot in the bucket with the data key and
// loads each into a store of its own; it returns them by name.
func openSnapshots(t *testing.T, js jetstream.JetStream, box *sealed.Box) map[string]*suppression.Store {
	t.Helper()
	ctx := context.Background()
	obs, err := js.ObjectStore(ctx, DefaultSnapshots)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := obs.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*suppression.Store{}
	for _, in := range infos {
		data, err := obs.GetBytes(ctx, in.Name)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := box.Open(data, ctxSnapshot+in.Name)
		if err != nil {
			t.Fatalf("open %s: %v", in.Name, err)
		}
		st := openStore(t, filepath.Join(t.TempDir(), "snap.db"), box)
		t.Cleanup(func() { st.Close() })
		if _, err := st.LoadSnapshot(bytes.NewReader(plain)); err != nil {
			t.Fatalf("load %s: %v", in.Name, err)
		}
		out[in.Name] = st
	}
	return out
}

// TestSnapshotErasure: snapshots taken on two nodes before an erasure hold
// the person (sealed); once the erasure is applied, none of them is left,
// and the snapshot that remains (the erasing node's fresh one) has only
// the tombstone.
func TestSnapshotErasure(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), snapCfg("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), snapCfg("b"))
	ctx := context.Background()
	const addr = "erin.erasable@example.com"
	for _, c := range []Change{
		Add(suppression.Entry{Target: addr, Reason: suppression.Unsubscribed, Note: "Erin Erasable"}),
		Add(suppression.Entry{Target: "other@example.com", Reason: suppression.Manual}),
	} {
		if err := a.rep.Publish(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "B applies both", func() bool { return b.rep.Status().AppliedSeq == 2 })
	if _, err := a.rep.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.rep.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	before := openSnapshots(t, js, box)
	if len(before) != 2 {
		t.Fatalf("%d snapshots before the erasure; want 2", len(before))
	}
	for name, st := range before {
		if r, ok := suppressed(t, st, addr); !ok || r != "unsubscribed" {
			t.Fatalf("snapshot %s before the erasure: %q, %v; want the person", name, r, ok)
		}
	}

	if err := b.rep.Publish(ctx, Erase(addr, "REQ-1", nil)); err != nil {
		t.Fatal(err)
	}
	erasedAt := b.rep.Status().AppliedSeq
	eventually(t, "only snapshots at or after the erasure are left", func() bool {
		names := map[string]bool{}
		obs, err := js.ObjectStore(ctx, DefaultSnapshots)
		if err != nil {
			return false
		}
		infos, _ := obs.List(ctx)
		for _, in := range infos {
			s, ok := parseSnapName(in.Name)
			if !ok || s.seq < erasedAt {
				return false
			}
			names[in.Name] = true
		}
		return len(names) == 1 && names[snapName("b", erasedAt)]
	})
	for name, st := range openSnapshots(t, js, box) {
		for _, e := range allEntries(t, st) {
			if e.Index == box.IndexHex(addr) && (e.Reason != suppression.Erased || e.Target != "" || e.Note != "REQ-1") {
				t.Errorf("snapshot %s after the erasure holds the person: %+v", name, e)
			}
		}
		if r, ok := suppressed(t, st, addr); !ok || r != "erased" {
			t.Errorf("snapshot %s: %q, %v; want the tombstone", name, r, ok)
		}
		if _, ok := suppressed(t, st, "other@example.com"); !ok {
			t.Errorf("snapshot %s lost another entry", name)
		}
	}
	// A node joining now starts from the erasing node's fresh snapshot.
	c := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "c.db"), snapCfg("c"))
	eventually(t, "C catches up", caughtUp(c))
	if st := c.rep.Status(); st.Snapshot != erasedAt || st.Applied != 0 {
		t.Fatalf("C joined from %d and applied %d; want %d and 0", st.Snapshot, st.Applied, erasedAt)
	}
	if r, _ := suppressed(t, c.store, addr); r != "erased" {
		t.Fatalf("C: %q; want erased", r)
	}
}
