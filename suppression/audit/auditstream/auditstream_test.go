package auditstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// startJetStream runs a real NATS server with JetStream on a loopback port,
// its store in a temporary folder it returns.
func startJetStream(t *testing.T) (jetstream.JetStream, string) {
	t.Helper()
	dir := t.TempDir()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js, dir
}

func testBox(t *testing.T) *sealed.Box {
	t.Helper()
	b, err := sealed.New(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openLog opens an audit log in dir with n entries appended.
func openLog(t *testing.T, path string, n int, reason string) *audit.Log {
	t.Helper()
	l, err := audit.Open(path, time.Second, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := l.Append(audit.Entry{Who: "uid:1000", Action: "suppress.add", Target: "a***@example.com",
			Reason: reason + string(rune('a'+i))}); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func verifyAll(t *testing.T, js jetstream.JetStream, box Sealer, node string, local Log) map[string]NodeResult {
	t.Helper()
	rs, err := VerifyCluster(context.Background(), js, box, node, local)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]NodeResult{}
	for _, r := range rs {
		out[r.Node] = r
	}
	return out
}

// TestClusterChains: two nodes publish their chains; both verify from the
// stream, the local one entry by entry too; a restarted publisher goes on
// where the stream ends; payloads are sealed.
func TestClusterChains(t *testing.T) {
	js, storeDir := startJetStream(t)
	box := testBox(t)
	ctx := context.Background()
	dir := t.TempDir()
	la := openLog(t, filepath.Join(dir, "a.db"), 5, "ticket-SECRETREASON-")
	lb := openLog(t, filepath.Join(dir, "b.db"), 3, "ticket-OTHERREASON-")
	defer lb.Close()
	for node, l := range map[string]*audit.Log{"mta1": la, "mta2": lb} {
		p, err := New(js, l, box, Config{Node: node}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if n, err := p.Sync(ctx); err != nil || n != map[string]int{"mta1": 5, "mta2": 3}[node] {
			t.Fatalf("%s: published %d, %v", node, n, err)
		}
	}
	got := verifyAll(t, js, box, "mta1", la)
	if r := got["mta1"]; !r.OK || r.Entries != 5 || !r.Local || r.HeadSeq != 5 {
		t.Errorf("mta1: %+v", r)
	}
	if r := got["mta2"]; !r.OK || r.Entries != 3 || r.Local {
		t.Errorf("mta2: %+v", r)
	}

	// A new process for mta1 publishes only what is new.
	p, err := New(js, la, box, Config{Node: "mta1"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := p.Sync(ctx); err != nil || n != 0 {
		t.Fatalf("restart: published %d, %v; want 0", n, err)
	}
	la.Append(audit.Entry{Who: "uid:1000", Action: "suppress.remove", Target: "a***@example.com"})
	if n, err := p.Sync(ctx); err != nil || n != 1 {
		t.Fatalf("after one append: published %d, %v; want 1", n, err)
	}
	if r := verifyAll(t, js, box, "mta1", la)["mta1"]; !r.OK || r.Entries != 6 {
		t.Errorf("mta1 after restart: %+v", r)
	}
	la.Close()

	// Sealed: the reasons are nowhere in the NATS store in clear.
	filepath.WalkDir(storeDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte("SECRETREASON")) || bytes.Contains(b, []byte("OTHERREASON")) || bytes.Contains(b, []byte("example.com")) {
			t.Errorf("%s holds an audit entry in clear", path)
		}
		return nil
	})
}

// TestAlteredOnDisk: an entry changed in audit.db after it was published
// (its hash recomputed, the rest of the chain rewritten to match, so the
// local chain alone verifies) is named by the cluster's verification.
func TestAlteredOnDisk(t *testing.T) {
	js, _ := startJetStream(t)
	box := testBox(t)
	path := filepath.Join(t.TempDir(), "audit.db")
	l := openLog(t, path, 4, "r")
	p, _ := New(js, l, box, Config{Node: "mta1"}, zerolog.Nop())
	if _, err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Close()
	// Rewrite entry 2 and re-chain 2..4, as a careful tamperer would.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("entries"))
		prev := ""
		for seq := uint64(1); seq <= 4; seq++ {
			k := binary.BigEndian.AppendUint64(nil, seq)
			var e audit.Entry
			json.Unmarshal(b.Get(k), &e)
			if seq == 2 {
				e.Reason = "nothing happened"
			}
			if seq > 1 {
				e.Prev = prev
			}
			e.Hash = audit.Hash(e)
			prev = e.Hash
			v, _ := json.Marshal(e)
			b.Put(k, v)
		}
		return nil
	})
	db.Close()
	l, err = audit.Open(path, time.Second, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if r, _ := l.Verify(); !r.OK {
		t.Fatalf("the rewritten local chain should verify alone: %+v", r)
	}
	r := verifyAll(t, js, box, "mta1", l)["mta1"]
	if r.OK || r.FirstBad != 2 || !strings.Contains(r.Problem, "entry 2") || !strings.Contains(r.Problem, "altered on disk") {
		t.Fatalf("cluster verify: %+v, want entry 2 named as altered", r)
	}
	// Without the local log the published chain itself is intact.
	if r := verifyAll(t, js, box, "mta1", nil)["mta1"]; !r.OK {
		t.Errorf("published chain: %+v", r)
	}
}

// TestNoFork: a second process publishing under the same node name from
// another log is refused by the stream and stops.
func TestNoFork(t *testing.T) {
	js, _ := startJetStream(t)
	box := testBox(t)
	ctx := context.Background()
	dir := t.TempDir()
	l1 := openLog(t, filepath.Join(dir, "1.db"), 3, "one")
	defer l1.Close()
	p1, _ := New(js, l1, box, Config{Node: "mta1"}, zerolog.Nop())
	p2log := openLog(t, filepath.Join(dir, "2.db"), 2, "two")
	defer p2log.Close()
	p2, _ := New(js, p2log, box, Config{Node: "mta1"}, zerolog.Nop())
	if _, err := p2.Sync(ctx); err != nil { // p2 starts first: publishes its 2
		t.Fatal(err)
	}
	// p1 finds the stream at p2's entry 2, which is not its own entry 2.
	if _, err := p1.Sync(ctx); err == nil || p1.Forked() == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("second log under one name: %v, want a refusal", err)
	}
	// A process that started before the other published is refused by the
	// stream itself (expected last subject sequence).
	p3, _ := New(js, p2log, box, Config{Node: "mta1"}, zerolog.Nop())
	if _, err := p3.Sync(ctx); err != nil {
		t.Fatal(err) // same log as p2: nothing new
	}
	p2log.Append(audit.Entry{Who: "uid:1", Action: "x", Target: "y"})
	if _, err := p2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	l4 := openLog(t, filepath.Join(dir, "4.db"), 3, "four")
	defer l4.Close()
	p4, _ := New(js, l4, box, Config{Node: "mta1"}, zerolog.Nop())
	p4.mu.Lock()
	p4.lastSeq, p4.subjSeq = 2, 2 // as if it had read the stream before p2's last publish
	p4.stream, _ = js.Stream(ctx, StreamName)
	p4.mu.Unlock()
	if _, err := p4.Sync(ctx); err == nil || p4.Forked() == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("stale writer: %v, want the stream's refusal", err)
	}
	if r := verifyAll(t, js, box, "mta1", nil)["mta1"]; !r.OK || r.Entries != 3 {
		t.Errorf("the published chain: %+v, want p2's 3 entries intact", r)
	}
	if _, err := New(js, l1, box, Config{Node: "mta 1"}, zerolog.Nop()); err == nil {
		t.Error("a node name with a space was accepted")
	}
}

// TestEarlierAttemptLanded: an entry whose earlier publish landed after the
// publisher gave up on it (buffered while the link was down, flushed on
// reconnect; in a clustered stream the expected-last-sequence check comes
// before the duplicate check) is recognised at the retry as published, not
// taken for a fork; the chain goes on after it.
func TestEarlierAttemptLanded(t *testing.T) {
	js, _ := startJetStream(t)
	box := testBox(t)
	ctx := context.Background()
	l := openLog(t, filepath.Join(t.TempDir(), "a.db"), 1, "one")
	defer l.Close()
	p, _ := New(js, l, box, Config{Node: "mta1"}, zerolog.Nop())
	if n, err := p.Sync(ctx); err != nil || n != 1 {
		t.Fatalf("first sync: %d, %v", n, err)
	}
	l.Append(audit.Entry{Who: "uid:1", Action: "x", Target: "y"})
	e, _, _ := l.Get(2)
	raw, _ := json.Marshal(e)
	// The earlier attempt, landing behind the publisher's back.
	if _, err := js.Publish(ctx, subject("mta1"), box.Seal(raw, sealContext), jetstream.WithExpectLastSequencePerSubject(p.subjSeq)); err != nil {
		t.Fatal(err)
	}
	l.Append(audit.Entry{Who: "uid:1", Action: "x2", Target: "y"})
	if n, err := p.Sync(ctx); err != nil || n != 2 || p.Forked() != nil {
		t.Fatalf("retry after the earlier attempt landed: %d, %v (forked %v)", n, err, p.Forked())
	}
	if r := verifyAll(t, js, box, "mta1", l)["mta1"]; !r.OK || r.Entries != 3 {
		t.Errorf("the published chain: %+v, want 3 entries", r)
	}
}
