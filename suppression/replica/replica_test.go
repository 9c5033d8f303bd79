package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// The tests run real parts on loopback: nats-server in-process with
// JetStream on a temp store dir, bbolt stores in temp dirs. Waits poll
// with generous deadlines; nothing asserts a duration.

const wait = 20 * time.Second // deadline of every poll

// startNATS runs a JetStream server on 127.0.0.1 (port -1: a random one).
func startNATS(t *testing.T, storeDir string, port int, edit ...func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: storeDir,
		NoLog: true, NoSigs: true,
	}
	for _, e := range edit {
		e(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(wait) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// portOf returns the client port of s.
func portOf(s *server.Server) int { return s.Addr().(*net.TCPAddr).Port }

// connect opens a JetStream client that reconnects forever.
func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// testBox is the data key every node of a test shares.
func testBox(t *testing.T) *sealed.Box {
	t.Helper()
	box, err := sealed.New(bytes.Repeat([]byte{7}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return box
}

// openStore opens (or reopens) a suppression store at path.
func openStore(t *testing.T, path string, box *sealed.Box) *suppression.Store {
	t.Helper()
	s, err := suppression.Open(suppression.Config{Path: path, Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	return s
}

// node is one replica and its store.
type node struct {
	store *suppression.Store
	rep   *Replica
	path  string
}

// startNode opens the store at path and starts a replica of it.
func startNode(t *testing.T, js jetstream.JetStream, box *sealed.Box, path string, cfg Config) *node {
	t.Helper()
	st := openStore(t, path, box)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	r, err := New(js, st, box, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := &node{store: st, rep: r, path: path}
	t.Cleanup(n.stop)
	return n
}

// stop closes the replica and the store (idempotent), as a kill would
// leave them: nothing is flushed beyond what every commit fsyncs.
func (n *node) stop() {
	n.rep.Close()
	n.store.Close()
}

func cfgFor(node string) Config {
	return Config{Node: node, MaxLag: 5 * time.Second, Poll: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// suppressed reports whether addr is suppressed (globally) in st, and why.
func suppressed(t *testing.T, st *suppression.Store, addr string) (string, bool) {
	t.Helper()
	r, ok, err := st.Check(addr, "")
	if err != nil {
		t.Fatalf("Check(%s): %v", addr, err)
	}
	return r, ok
}

func caughtUp(n *node) func() bool { return func() bool { return !n.rep.Stale(time.Now()) } }

// TestTwoReplicas: a change published on A is in A's store when Publish
// returns and reaches B; B restarted resumes from its stored sequence and
// applies nothing twice.
func TestTwoReplicas(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	ctx := context.Background()

	if err := a.rep.Publish(ctx, Add(suppression.Entry{Target: "Ann@Example.com", Reason: suppression.Unsubscribed, Source: "one-click"})); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if r, ok := suppressed(t, a.store, "ann@example.com"); !ok || r != "unsubscribed" {
		t.Fatalf("A after Publish: %q, %v; want unsubscribed (read-your-writes)", r, ok)
	}
	eventually(t, "B applies the unsubscribe", func() bool { _, ok := suppressed(t, b.store, "ann@example.com"); return ok })

	for _, c := range []Change{
		Add(suppression.Entry{Target: "@corp.example", Reason: suppression.Manual, Source: "cli"}),
		Restrict("cy@example.org", "objection"),
		Add(suppression.Entry{Target: "dee@example.net", List: "news", Reason: suppression.HardBounce}),
		Remove("ann@example.com", ""),
	} {
		if err := a.rep.Publish(ctx, c); err != nil {
			t.Fatalf("Publish %s: %v", c.Mutation.Op, err)
		}
	}
	// A refusal comes back to the publisher: a restriction is lifted only by unrestrict.
	if err := a.rep.Publish(ctx, Remove("cy@example.org", "")); !errors.Is(err, suppression.ErrRestricted) {
		t.Fatalf("Publish remove of a restriction = %v; want ErrRestricted", err)
	}
	if err := a.rep.Publish(ctx, Change{Mutation: suppression.Mutation{Op: "drop"}}); err == nil {
		t.Fatal("an unknown operation was published")
	}
	eventually(t, "B applies all six", func() bool { return b.rep.Status().AppliedSeq == 6 })
	for _, st := range []*suppression.Store{a.store, b.store} {
		if _, ok := suppressed(t, st, "ann@example.com"); ok {
			t.Error("ann still suppressed after remove")
		}
		if r, ok := suppressed(t, st, "x@corp.example"); !ok || r != "manual" {
			t.Errorf("domain: %q, %v", r, ok)
		}
		if r, ok := suppressed(t, st, "cy@example.org"); !ok || r != "restricted" {
			t.Errorf("restricted: %q, %v", r, ok)
		}
		if r, ok, _ := st.Check("dee@example.net", "news"); !ok || r != "hard_bounce" {
			t.Errorf("list entry: %q, %v", r, ok)
		}
	}
	eventually(t, "B caught up", caughtUp(b))
	if st := b.rep.Status(); st.Applied != 6 || st.AppliedSeq != 6 || st.Lag != 0 || st.Why != "" || st.Pending != 0 {
		t.Fatalf("B status = %+v", st)
	}

	// Restart B: it resumes after seq 6 and applies nothing again.
	b.stop()
	b = startNode(t, connect(t, srv.ClientURL()), box, b.path, cfgFor("b"))
	eventually(t, "B caught up after restart", caughtUp(b))
	if st := b.rep.Status(); st.Applied != 0 || st.AppliedSeq != 6 {
		t.Fatalf("B after restart: %+v; want nothing applied again, seq 6", st)
	}
	if err := a.rep.Publish(ctx, Unrestrict("cy@example.org")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B applies the seventh", func() bool { return b.rep.Status().AppliedSeq == 7 })
	if st := b.rep.Status(); st.Applied != 1 {
		t.Fatalf("B applied %d after restart; want 1", st.Applied)
	}
	if _, ok := suppressed(t, b.store, "cy@example.org"); ok {
		t.Error("cy still restricted on B")
	}
}

// TestCluster: three nats-servers routed on loopback, the stream with
// three replicas, one replica per server: a change published on node 1's
// replica is applied on all three.
func TestCluster(t *testing.T) {
	// Route ports picked up front (listen on :0, close): every server
	// lists all three, and JetStream forms its meta group once all are up.
	var ports []int
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	routes := server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d,nats://127.0.0.1:%d", ports[0], ports[1], ports[2]))
	var (
		servers   []*server.Server
		storeDirs []string
	)
	for i := range 3 {
		storeDirs = append(storeDirs, t.TempDir())
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: storeDirs[i], NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "pw", Host: "127.0.0.1", Port: ports[i]},
			Routes:  routes,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		servers = append(servers, s)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(wait) {
			t.Fatal("nats server not ready")
		}
	}
	n1, n2, n3 := servers[0], servers[1], servers[2]
	box, dir := testBox(t), t.TempDir()
	var nodes []*node
	for i, s := range []*server.Server{n1, n2, n3} {
		cfg := cfgFor(fmt.Sprintf("mta%d", i+1))
		cfg.Replicas = 3
		nodes = append(nodes, startNode(t, connect(t, s.ClientURL()), box, filepath.Join(dir, fmt.Sprintf("n%d.db", i+1)), cfg))
	}
	for i, n := range nodes {
		eventually(t, fmt.Sprintf("node %d caught up (stream created, R3)", i+1), caughtUp(n))
	}
	ctx := context.Background()
	spy, err := nats.Connect(n1.ClientURL()) // where node 1 publishes: no route interest to wait for
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	got := make(chan []byte, 10)
	if _, err := spy.Subscribe(DefaultSubject+".>", func(m *nats.Msg) { got <- bytes.Clone(m.Data) }); err != nil {
		t.Fatal(err)
	}
	spy.Flush()
	const name = "Eve Example"
	if err := nodes[0].rep.Publish(ctx, Add(suppression.Entry{Target: "eve@example.com", Reason: suppression.Unsubscribed, Note: name})); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	sealedEvent := receive(t, got)
	if _, ok := suppressed(t, nodes[0].store, "eve@example.com"); !ok {
		t.Fatal("node 1 does not suppress after Publish")
	}
	for i, n := range nodes {
		eventually(t, fmt.Sprintf("node %d applies", i+1), func() bool { _, ok := suppressed(t, n.store, "eve@example.com"); return ok })
	}
	info, err := nodes[0].rep.js.Stream(ctx, DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.CachedInfo().Config.Replicas; c != 3 {
		t.Fatalf("stream replicas = %d; want 3", c)
	}

	// Erasure on node 2 reaches every node and every server's store dir.
	if err := nodes[1].rep.Publish(ctx, Erase("eve@example.com", "REQ-9", nil)); err != nil {
		t.Fatalf("Publish erase: %v", err)
	}
	for i, n := range nodes {
		eventually(t, fmt.Sprintf("node %d erases", i+1), func() bool { r, _ := suppressed(t, n.store, "eve@example.com"); return r == "erased" })
	}
	// Nothing personal is on any disk in clear, ever; the erased event's
	// sealed bytes are gone from the stream's message store. The stream's
	// raft log ($SYS/_js_/<group>) keeps its sealed copy until nats-server
	// next snapshots the group (docs/cluster.md): logged, not asserted.
	needles := map[string][]byte{"address": []byte("eve@example.com"), "name": []byte(name), "sealed event": sealedEvent[len(sealedEvent)-16:]}
	for i, d := range storeDirs {
		for what, hits := range scan(t, d, needles) {
			for _, hit := range hits {
				if what == "sealed event" && strings.Contains(hit, "/_js_/") {
					t.Logf("server n%d: the raft log still holds the erased event, sealed (%s)", i+1, hit)
					continue
				}
				t.Errorf("server n%d's store dir still holds the %s (%s)", i+1, what, hit)
			}
		}
	}
}

// TestNATSDown: with NATS gone, Publish accepts, the local store
// suppresses at once, the change survives a restart of the node, reaches
// the other replica once NATS is back, and the replica is stale meanwhile
// and not after catching up.
func TestNATSDown(t *testing.T) {
	storeDir := t.TempDir()
	srv := startNATS(t, storeDir, -1)
	port := portOf(srv)
	url := srv.ClientURL()
	box, dir := testBox(t), t.TempDir()
	cfg := cfgFor("a")
	cfg.MaxLag = 500 * time.Millisecond
	a := startNode(t, connect(t, url), box, filepath.Join(dir, "a.db"), cfg)
	b := startNode(t, connect(t, url), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "A caught up", caughtUp(a))
	ctx := context.Background()
	if err := a.rep.Publish(ctx, Add(suppression.Entry{Target: "first@example.com", Reason: suppression.Unsubscribed})); err != nil {
		t.Fatal(err)
	}

	srv.Shutdown()
	srv.WaitForShutdown()
	if err := a.rep.Publish(ctx, Add(suppression.Entry{Target: "Cut@Example.com", Reason: suppression.Unsubscribed, Source: "one-click"})); err != nil {
		t.Fatalf("Publish with NATS down = %v; want accepted", err)
	}
	if r, ok := suppressed(t, a.store, "cut@example.com"); !ok || r != "unsubscribed" {
		t.Fatalf("A with NATS down: %q, %v; want suppressed at once", r, ok)
	}
	if st := a.rep.Status(); st.Pending != 1 {
		t.Fatalf("pending = %d; want 1", st.Pending)
	}
	eventually(t, "A stale with NATS down", func() bool { return a.rep.Stale(time.Now()) })
	if why := a.rep.Status().Why; why == "" {
		t.Error("stale without a reason")
	}

	// kill A: close without anything special, reopen.
	a.stop()
	st := openStore(t, a.path, box)
	if n, err := st.PendingCount(); err != nil || n != 1 {
		t.Fatalf("pending after reopen = %d, %v; want 1", n, err)
	}
	if _, ok := suppressed(t, st, "cut@example.com"); !ok {
		t.Fatal("not suppressed after reopen")
	}
	st.Close()
	a = startNode(t, connect(t, url), box, a.path, cfg)
	if !a.rep.Stale(time.Now()) {
		t.Fatal("a replica that has not caught up since Start is not stale")
	}

	startNATS(t, storeDir, port)
	eventually(t, "the kept change reaches B", func() bool { _, ok := suppressed(t, b.store, "cut@example.com"); return ok })
	eventually(t, "A caught up, nothing pending, in memory and in the store", func() bool {
		n, err := a.store.PendingCount()
		return !a.rep.Stale(time.Now()) && a.rep.Status().Pending == 0 && err == nil && n == 0
	})
	if _, ok := suppressed(t, a.store, "cut@example.com"); !ok {
		t.Fatal("A lost the change")
	}
	if seq, _ := a.store.AppliedSeq(); seq != 2 {
		t.Fatalf("A applied seq = %d; want 2 (the change once in the stream)", seq)
	}
}

// TestPendingNotUndone: a change kept while cut off is re-applied with
// every older stream change of the same address, so it is never undone,
// not even for a moment, while the node catches up.
func TestPendingNotUndone(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	ctx := context.Background()
	for _, c := range []Change{
		Add(suppression.Entry{Target: "fay@example.com", Reason: suppression.Manual}),
		Remove("fay@example.com", ""),
	} {
		if err := b.rep.Publish(ctx, c); err != nil {
			t.Fatal(err)
		}
	}

	// A, cut off (its connection closed), accepts an unsubscribe of fay.
	cut, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	cut.Close()
	cutJS, err := jetstream.New(cut)
	if err != nil {
		t.Fatal(err)
	}
	a := startNode(t, cutJS, box, filepath.Join(dir, "a.db"), cfgFor("a"))
	if err := a.rep.Publish(ctx, Add(suppression.Entry{Target: "fay@example.com", Reason: suppression.Unsubscribed})); err != nil {
		t.Fatal(err)
	}
	a.rep.Close()

	// A reconnects and applies add, remove (older), then its own change;
	// a reader checking all along never sees fay unsuppressed.
	var (
		mu       sync.Mutex
		seen     []string
		stopRead = make(chan struct{})
		readDone = make(chan struct{})
	)
	go func() {
		defer close(readDone)
		for {
			select {
			case <-stopRead:
				return
			default:
			}
			if r, ok, err := a.store.Check("fay@example.com", ""); err != nil || !ok {
				mu.Lock()
				seen = append(seen, fmt.Sprintf("%q %v %v", r, ok, err))
				mu.Unlock()
			}
		}
	}()
	a2, err := New(connect(t, srv.ClientURL()), a.store, box, cfgFor("a"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := a2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	eventually(t, "A applies its kept change from the stream", func() bool {
		st := a2.Status()
		return st.AppliedSeq == 3 && st.Pending == 0
	})
	close(stopRead)
	<-readDone
	if len(seen) > 0 {
		t.Fatalf("fay seen unsuppressed on A while it caught up: %v", seen[0])
	}
	eventually(t, "B has the unsubscribe", func() bool { r, _ := suppressed(t, b.store, "fay@example.com"); return r == "unsubscribed" })
}

// TestErasure: an erasure overwrites the person's events on the stream and
// keeps only the tombstone; a raw scan of the JetStream store dir finds
// neither the address, nor the name, nor the sealed payloads of the erased
// events; every replica erases.
func TestErasure(t *testing.T) {
	storeDir := t.TempDir()
	srv := startNATS(t, storeDir, -1)
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	ctx := context.Background()

	// Capture the sealed payloads as they cross NATS.
	spy, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	var (
		mu       sync.Mutex
		payloads = map[string][][]byte{}
	)
	// A publish whose ack timed out (a loaded box, the stream's leader not
	// yet elected) is sent again from the outbox, the same bytes: the spy
	// keeps each payload once.
	sub, err := spy.Subscribe(DefaultSubject+".>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range payloads[m.Subject] {
			if bytes.Equal(p, m.Data) {
				return
			}
		}
		payloads[m.Subject] = append(payloads[m.Subject], bytes.Clone(m.Data))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}

	const addr, name = "erin.erasable@example.com", "Erin Erasable"
	for _, c := range []Change{
		Add(suppression.Entry{Target: addr, Reason: suppression.Unsubscribed, Note: "asked by " + name}),
		Add(suppression.Entry{Target: addr, List: "news", Reason: suppression.Complaint, Note: name}),
		Restrict(addr, "objection by "+name),
		Add(suppression.Entry{Target: "other@example.com", Reason: suppression.Manual, Note: "keep me"}),
	} {
		if err := a.rep.Publish(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "B and the spy have the four", func() bool {
		s, _ := b.store.AppliedSeq()
		mu.Lock()
		defer mu.Unlock()
		return s == 4 && len(payloads[DefaultSubject+"."+box.IndexHex(addr)]) == 3
	})
	subj := DefaultSubject + "." + box.IndexHex(addr)
	mu.Lock()
	erased := append([][]byte(nil), payloads[subj]...)
	mu.Unlock()
	if len(erased) != 3 {
		t.Fatalf("captured %d payloads of the person; want 3", len(erased))
	}
	for _, p := range erased {
		if bytes.Contains(p, []byte(addr)) || bytes.Contains(p, []byte(name)) {
			t.Fatal("a payload crossed NATS unsealed")
		}
	}
	waitOnDisk(t, storeDir, erased[0][len(erased[0])-16:])

	if err := a.rep.Publish(ctx, Erase(addr, "REQ-7", nil)); err != nil {
		t.Fatalf("Publish erase: %v", err)
	}
	eventually(t, "the spy sees the tombstone", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(payloads[subj]) == 4
	})
	sub.Unsubscribe()
	mu.Lock()
	tomb := payloads[subj][3]
	mu.Unlock()
	eventually(t, "B erases", func() bool { r, _ := suppressed(t, b.store, addr); return r == "erased" })
	if r, _ := suppressed(t, a.store, addr); r != "erased" {
		t.Fatalf("A: %q; want erased", r)
	}
	if r, _ := suppressed(t, b.store, "other@example.com"); r != "manual" {
		t.Fatalf("another person's entry went: %q", r)
	}

	st, err := a.rep.js.Stream(ctx, DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[subj]; n != 1 {
		t.Fatalf("%d messages left on the person's subject; want 1 (the tombstone)", n)
	}
	last, err := st.GetLastMsgForSubject(ctx, subj)
	if err != nil || !bytes.Equal(last.Data, tomb) {
		t.Fatalf("the message left is not the tombstone (%v)", err)
	}

	// Raw scan of every file under the store dir, as it is on disk now.
	needles := map[string][]byte{"address": []byte(addr), "name": []byte(name)}
	for i, p := range erased {
		needles[fmt.Sprintf("sealed event %d", i+1)] = p[len(p)-16:] // its GCM tag
	}
	for what, hit := range scan(t, storeDir, needles) {
		t.Errorf("the NATS store dir still holds the %s (%s)", what, hit)
	}
}

// waitOnDisk waits until needle is in some file under dir (the store has
// written its block), so the scan after erasure means something.
func waitOnDisk(t *testing.T, dir string, needle []byte) {
	t.Helper()
	eventually(t, "the stream's block on disk", func() bool {
		return len(scan(t, dir, map[string][]byte{"x": needle})) > 0
	})
}

// scan reads every file under dir and returns which needles it found, and
// in which files.
func scan(t *testing.T, dir string, needles map[string][]byte) map[string][]string {
	t.Helper()
	found := map[string][]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for what, n := range needles {
			if bytes.Contains(data, n) || bytes.Contains(bytes.ToLower(data), bytes.ToLower(n)) {
				found[what] = append(found[what], strings.TrimPrefix(p, dir))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestFailClosed: a replica that cannot open the stream's changes (another
// data key) applies nothing, skips nothing and stays stale, saying why.
func TestFailClosed(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	if err := a.rep.Publish(context.Background(), Add(suppression.Entry{Target: "gus@example.com"})); err != nil {
		t.Fatal(err)
	}
	other, err := sealed.New(bytes.Repeat([]byte{8}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	cfg := cfgFor("wrongkey")
	cfg.MaxLag = 200 * time.Millisecond
	w := startNode(t, connect(t, srv.ClientURL()), other, filepath.Join(dir, "w.db"), cfg)
	eventually(t, "the wrong-key replica says why", func() bool {
		return strings.Contains(w.rep.Status().Why, "open change")
	})
	time.Sleep(3 * cfg.MaxLag)
	if st := w.rep.Status(); !st.Stale || st.AppliedSeq != 0 || st.Lag != 1 {
		t.Fatalf("wrong-key replica: %+v; want stale, nothing applied, lag 1", st)
	}
}

// TestStaleClock: Stale follows the replica's clock: caught up at T, not
// stale at T, stale past T+MaxLag, and not stale again by itself once it
// has caught up at a later time.
func TestStaleClock(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	var (
		mu  sync.Mutex
		now = time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC)
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	cfg := cfgFor("a")
	cfg.MaxLag, cfg.Now = 30*time.Second, clock
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfg)
	eventually(t, "caught up at T", func() bool { return !a.rep.Stale(clock()) })
	if !a.rep.Stale(clock().Add(31 * time.Second)) {
		t.Fatal("not stale past T+MaxLag")
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	eventually(t, "caught up again an hour later", func() bool { return !a.rep.Stale(clock()) })
	if st := a.rep.Status(); !st.CaughtUp.Equal(clock()) || st.Stale {
		t.Fatalf("status = %+v", st)
	}
}

// TestErasureWhileCutOff: an erasure accepted with NATS gone erases here at
// once and, once NATS is back, wipes the person's events from the stream and
// reaches the other replica.
func TestErasureWhileCutOff(t *testing.T) {
	storeDir := t.TempDir()
	srv := startNATS(t, storeDir, -1)
	port, url := portOf(srv), srv.ClientURL()
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, url), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, url), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	ctx := context.Background()
	const addr = "hal.hidden@example.com"
	subj := DefaultSubject + "." + box.IndexHex(addr)

	spy, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 4)
	if _, err := spy.Subscribe(subj, func(m *nats.Msg) { got <- bytes.Clone(m.Data) }); err != nil {
		t.Fatal(err)
	}
	spy.Flush()
	if err := a.rep.Publish(ctx, Add(suppression.Entry{Target: addr, Reason: suppression.Unsubscribed, Note: "Hal Hidden"})); err != nil {
		t.Fatal(err)
	}
	ev := receive(t, got)
	spy.Close()
	eventually(t, "B has the add", func() bool { _, ok := suppressed(t, b.store, addr); return ok })
	waitOnDisk(t, storeDir, ev[len(ev)-16:])

	srv.Shutdown()
	srv.WaitForShutdown()
	if err := a.rep.Publish(ctx, Erase(addr, "REQ-11", nil)); err != nil {
		t.Fatalf("erase with NATS down = %v; want accepted", err)
	}
	if r, _ := suppressed(t, a.store, addr); r != "erased" {
		t.Fatalf("A: %q; want erased at once", r)
	}
	startNATS(t, storeDir, port)
	eventually(t, "B erases", func() bool { r, _ := suppressed(t, b.store, addr); return r == "erased" })
	eventually(t, "A has nothing pending", func() bool { return a.rep.Status().Pending == 0 })
	for what, hits := range scan(t, storeDir, map[string][]byte{"address": []byte(addr), "name": []byte("Hal Hidden"), "sealed event": ev[len(ev)-16:]}) {
		t.Errorf("the NATS store dir still holds the %s (%v)", what, hits)
	}
}

// receive takes one message from ch, failing the test past the deadline.
func receive(t *testing.T, ch <-chan []byte) []byte {
	t.Helper()
	select {
	case b := <-ch:
		return b
	case <-time.After(wait):
		t.Fatalf("no message within %s", wait)
		return nil
	}
}

// TestBacklog: a replica started after many changes applies them all (in
// batches), in order, and ends in the same state as the publisher.
func TestBacklog(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	ctx := context.Background()
	const n = 400
	for i := range n {
		c := Add(suppression.Entry{Target: fmt.Sprintf("p%d@example.com", i%100), Reason: suppression.Unsubscribed})
		if i%100 >= 50 && i >= 300 { // the last round removes half of them
			c = Remove(fmt.Sprintf("p%d@example.com", i%100), "")
		}
		if err := a.rep.Publish(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "B applies the backlog", func() bool { return b.rep.Status().AppliedSeq == n })
	if st := b.rep.Status(); st.Applied != n {
		t.Fatalf("B applied %d; want %d", st.Applied, n)
	}
	for i := range 100 {
		addr := fmt.Sprintf("p%d@example.com", i)
		_, okA := suppressed(t, a.store, addr)
		_, okB := suppressed(t, b.store, addr)
		if okA != okB || okB != (i < 50) {
			t.Fatalf("%s: A %v, B %v; want %v", addr, okA, okB, i < 50)
		}
	}
}

// TestOnErase: an erasure published on A is handed to B's OnErase by index,
// and to A's once (A made it: its consent store is erased again there); a
// failing OnErase is retried until it succeeds; work left when B stops
// (OnErase failing throughout) is done after B restarts, though the stream
// has nothing new for it.
func TestOnErase(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	type call struct {
		e  Erasure
		ok bool
	}
	var (
		mu     sync.Mutex
		calls  []call // B's
		aCalls []Erasure
		fail   = 2 // B's first two calls fail
	)
	onErase := func(node string) func(context.Context, Erasure) error {
		return func(_ context.Context, e Erasure) error {
			mu.Lock()
			defer mu.Unlock()
			if node == "a" {
				aCalls = append(aCalls, e)
				return nil
			}
			ok := fail == 0
			if fail > 0 {
				fail--
			}
			calls = append(calls, call{e, ok})
			if !ok {
				return errors.New("store busy")
			}
			return nil
		}
	}
	cfg := func(node string) Config { c := cfgFor(node); c.OnErase = onErase(node); return c }
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfg("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfg("b"))
	ctx := context.Background()
	if err := a.rep.Publish(ctx, Add(suppression.Entry{Target: "zb@example.com", List: "news", Reason: suppression.Unsubscribed})); err != nil {
		t.Fatal(err)
	}
	if err := a.rep.Publish(ctx, Erase("zb@example.com", "erase-1", nil)); err != nil {
		t.Fatal(err)
	}
	ix := box.IndexHex("zb@example.com")
	done := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) > 0 && calls[len(calls)-1].ok
	}
	eventually(t, "B's OnErase succeeds", done)
	mu.Lock()
	for _, c := range calls {
		if c.e.Index != ix || c.e.Origin != "a" || c.e.Ref != "erase-1" || c.e.Seq != 2 {
			t.Errorf("OnErase(%+v)", c.e)
		}
	}
	if len(calls) != 3 {
		t.Errorf("B's OnErase called %d times; want 3 (two failures, then done)", len(calls))
	}
	mu.Unlock()
	eventually(t, "A's OnErase of its own erasure", func() bool { mu.Lock(); defer mu.Unlock(); return len(aCalls) > 0 })
	eventually(t, "A's due work dropped", func() bool { n, err := a.rep.DueErasures(); return err == nil && n == 0 })
	mu.Lock()
	if len(aCalls) != 1 || aCalls[0].Index != ix || aCalls[0].Origin != "a" || aCalls[0].Seq != 2 {
		t.Errorf("A's OnErase: %+v; want its erasure once, origin a, seq 2", aCalls)
	}
	mu.Unlock()
	eventually(t, "B's due work dropped", func() bool { n, err := b.rep.DueErasures(); return err == nil && n == 0 })

	// B's OnErase fails throughout; B stops with the work due.
	b.stop()
	mu.Lock()
	fail, calls = 1<<30, nil
	mu.Unlock()
	b = startNode(t, connect(t, srv.ClientURL()), box, b.path, cfg("b"))
	if err := a.rep.Publish(ctx, Erase("yv@example.com", "erase-2", nil)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B tried", func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) > 0 })
	b.stop()
	mu.Lock()
	fail, calls = 0, nil
	mu.Unlock()
	b = startNode(t, connect(t, srv.ClientURL()), box, b.path, cfg("b"))
	eventually(t, "B's OnErase after the restart", done)
	mu.Lock()
	if c := calls[len(calls)-1].e; c.Index != box.IndexHex("yv@example.com") || c.Seq != 3 {
		t.Errorf("after the restart: OnErase(%+v)", c)
	}
	calls = nil
	mu.Unlock()

	// An erasure made while B is down reaches OnErase as B catches up.
	b.stop()
	if err := a.rep.Publish(ctx, Erase("xw@example.com", "erase-3", nil)); err != nil {
		t.Fatal(err)
	}
	b = startNode(t, connect(t, srv.ClientURL()), box, b.path, cfg("b"))
	eventually(t, "B's OnErase after catching up", done)
	mu.Lock()
	if c := calls[len(calls)-1].e; c.Index != box.IndexHex("xw@example.com") || c.Seq != 4 || c.Ref != "erase-3" {
		t.Errorf("after catching up: OnErase(%+v)", c)
	}
	mu.Unlock()
	eventually(t, "B's due work dropped", func() bool { n, err := b.rep.DueErasures(); return err == nil && n == 0 })
}
