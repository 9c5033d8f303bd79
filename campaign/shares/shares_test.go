package shares

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// testDomain and namePrefix mark every address and name of the test
// campaigns, so a raw scan looks for one string per file.
const (
	testDomain = "shares-probe.example"
	namePrefix = "Probe-Name-"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// natsNode is one in-process nats-server with JetStream.
type natsNode struct {
	srv      *server.Server
	storeDir string
}

// startServers runs n nats-servers on loopback with JetStream, clustered
// when n > 1, and stops them at the end of the test.
func startServers(t *testing.T, n int) []*natsNode {
	t.Helper()
	cports := make([]int, n)
	for i := range cports {
		cports[i] = freePort(t)
	}
	var nodes []*natsNode
	for i := 0; i < n; i++ {
		dir := t.TempDir()
		opts := &server.Options{
			ServerName: "nats" + strconv.Itoa(i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   dir,
			NoLog:      true,
			NoSigs:     true,
		}
		if n > 1 {
			opts.Cluster = server.ClusterOpts{Name: "pw-test", Host: "127.0.0.1", Port: cports[i]}
			var routes []string
			for j, p := range cports {
				if j != i {
					routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
				}
			}
			opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("nats server %d: %v", i+1, err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats server %d not ready", i+1)
		}
		nodes = append(nodes, &natsNode{srv: s, storeDir: dir})
	}
	t.Cleanup(func() {
		for _, nn := range nodes {
			nn.srv.Shutdown()
			nn.srv.WaitForShutdown()
		}
	})
	return nodes
}

// connect opens a JetStream client to url, closed at the end of the test.
func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// newCoordinator retries New until the (cluster's) JetStream takes it.
func newCoordinator(t *testing.T, js jetstream.JetStream, box *sealed.Box, cfg Config) *Coordinator {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := New(ctx, js, box, cfg, zerolog.Nop())
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("coordinator %s: %v", cfg.Node, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func testBox(t *testing.T) *sealed.Box {
	t.Helper()
	key := make([]byte, sealed.KeySize)
	rand.Read(key)
	b, err := sealed.New(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testRows(n int) []Row {
	rows := make([]Row, n)
	for i := range rows {
		rows[i] = Row{
			Address: fmt.Sprintf("person%05d@%s", i, testDomain),
			Fields:  map[string]string{"name": fmt.Sprintf("%s%05d", namePrefix, i)},
		}
	}
	return rows
}

// tally counts deliveries per recipient key and per node.
type tally struct {
	mu     sync.Mutex
	byKey  map[string]int
	byNode map[string]int
}

func newTally() *tally { return &tally{byKey: map[string]int{}, byNode: map[string]int{}} }

func (tl *tally) add(key, node string) {
	tl.mu.Lock()
	tl.byKey[key]++
	tl.byNode[node]++
	tl.mu.Unlock()
}

func (tl *tally) distinct() int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return len(tl.byKey)
}

// fakeNode is a node's spool and delivery: Enqueue puts rows into an
// in-memory queue, one delivery worker "sends" each (counted in the tally)
// and records the outcome before taking the next, as the package doc asks.
type fakeNode struct {
	name   string
	c      *Coordinator
	tl     *tally
	window int
	queue  chan Row

	inQueue atomic.Int64
	mu      sync.Mutex
	tokens  []uint64
	// recordLimit, when > 0, makes the worker record only that many
	// outcomes, deliver unrecorded more rows, then stall (a node about
	// to be lost); stalled is closed then.
	recordLimit, unrecorded int
	stalled                 chan struct{}
}

func newFakeNode(name string, c *Coordinator, tl *tally, window int) *fakeNode {
	return &fakeNode{name: name, c: c, tl: tl, window: window, queue: make(chan Row, 10000), stalled: make(chan struct{})}
}

func (n *fakeNode) Enqueue(ctx context.Context, campaign string, rows []Row, token uint64) error {
	n.mu.Lock()
	n.tokens = append(n.tokens, token)
	n.mu.Unlock()
	n.inQueue.Add(int64(len(rows)))
	for _, r := range rows {
		n.queue <- r
	}
	return nil
}

func (n *fakeNode) room() int { return n.window - int(n.inQueue.Load()) }

// deliver runs the node's one delivery worker until ctx ends.
func (n *fakeNode) deliver(ctx context.Context, campaign string) {
	sent := 0
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-n.queue:
			if n.recordLimit > 0 && sent == n.recordLimit+n.unrecorded {
				close(n.stalled)
				<-ctx.Done()
				return
			}
			n.tl.add(r.Key, n.name)
			sent++
			if n.recordLimit == 0 || sent <= n.recordLimit {
				for {
					err := n.c.Record(ctx, campaign, r.Key, Delivered)
					if err == nil || ctx.Err() != nil {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			n.inQueue.Add(-1)
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// allDone reports whether Status shows every shard done and no row pending.
func allDone(t *testing.T, c *Coordinator, campaign string) (Status, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx, campaign)
	if err != nil {
		return st, false
	}
	return st, st.States[StateDone] == st.Manifest.Shards && st.Pending == 0
}

// streamSeqs are the last sequences of the package's streams and bucket.
func streamSeqs(t *testing.T, js jetstream.JetStream) [3]uint64 {
	t.Helper()
	ctx := context.Background()
	var out [3]uint64
	for i, name := range []string{DataStream, OutcomeStream, "KV_" + Bucket} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = info.State.LastSeq
	}
	return out
}

// scanNoPersonal walks dirs byte by byte for the test domain and name prefix.
func scanNoPersonal(t *testing.T, dirs ...string) {
	t.Helper()
	files := 0
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			files++
			for _, probe := range []string{testDomain, namePrefix, "person0"} {
				if bytes.Contains(b, []byte(probe)) {
					t.Errorf("%s holds %q in clear", p, probe)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files == 0 {
		t.Fatal("the store dirs hold no file: nothing was scanned")
	}
}

// TestSpreadExactlyOnce: three coordinators on one JetStream server.
func TestSpreadExactlyOnce(t *testing.T) {
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	testSpread(t, srv, []string{url, url, url}, 1)
}

// TestSpreadExactlyOnceR3: three coordinators, each on its own server of a
// three-node cluster, streams and bucket replicated three times.
func TestSpreadExactlyOnceR3(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster")
	}
	srv := startServers(t, 3)
	testSpread(t, srv, []string{srv[0].srv.ClientURL(), srv[1].srv.ClientURL(), srv[2].srv.ClientURL()}, 3)
}

// testSpread publishes a 3,000-row campaign once and checks it is handled
// exactly once across three nodes, each taking part; a re-publish adds
// nothing; the store dirs hold no address or name in clear.
func testSpread(t *testing.T, srv []*natsNode, urls []string, replicas int) {
	const campaign, rowsN = "spring.launch-2026", 3000
	box := testBox(t)
	tl := newTally()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	var nodes []*fakeNode
	var jss []jetstream.JetStream
	for i, url := range urls {
		js := connect(t, url)
		jss = append(jss, js)
		name := "mta" + strconv.Itoa(i+1)
		c := newCoordinator(t, js, box, Config{Node: name, Replicas: replicas, Lease: 5 * time.Second, ShardSize: 100})
		n := newFakeNode(name, c, tl, 150)
		nodes = append(nodes, n)
		wg.Add(2)
		go func() { defer wg.Done(); n.deliver(ctx, campaign) }()
		go func() {
			defer wg.Done()
			if err := c.Run(ctx, Worker{Enqueuer: n, Room: n.room}); err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		}()
	}

	rows := testRows(rowsN)
	pub, err := nodes[0].c.Publish(ctx, campaign, "hash-1", rows)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.New || pub.Manifest.Rows != rowsN || pub.Manifest.Shards != 30 {
		t.Fatalf("publish: %+v", pub)
	}
	var st Status
	waitFor(t, 90*time.Second, "every shard done", func() bool {
		var ok bool
		st, ok = allDone(t, nodes[2].c, campaign)
		return ok
	})

	tl.mu.Lock()
	if len(tl.byKey) != rowsN {
		t.Errorf("%d distinct recipients handled, want %d", len(tl.byKey), rowsN)
	}
	for k, n := range tl.byKey {
		if n != 1 {
			t.Errorf("recipient %s… handled %d times", k[:8], n)
		}
	}
	for _, n := range nodes {
		if tl.byNode[n.name] == 0 {
			t.Errorf("node %s took no part (%v)", n.name, tl.byNode)
		}
	}
	t.Logf("handled per node: %v; shards done per node: %v", tl.byNode, st.Done)
	tl.mu.Unlock()
	if st.Outcomes[Delivered] != rowsN || st.Pending != 0 {
		t.Errorf("status outcomes %v pending %d, want %d delivered", st.Outcomes, st.Pending, rowsN)
	}

	// Once every shard is done the sealed rows leave PW_SHARE_DATA: nobody
	// reads them again, and personal data is kept no longer than needed.
	ctok, _ := campaignToken(campaign)
	data, err := jss[0].Stream(ctx, DataStream)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the finished campaign's shards purged", func() bool {
		info, err := data.Info(ctx, jetstream.WithSubjectFilter(dataPrefix+ctok+".>"))
		if err != nil {
			t.Fatal(err)
		}
		return len(info.State.Subjects) == 0
	})
	if st2, err := nodes[1].c.Status(ctx, campaign); err != nil || st2.Outcomes[Delivered] != rowsN {
		t.Errorf("status after the purge: %+v, %v", st2, err)
	}

	// Re-publish anywhere: nothing added.
	before := streamSeqs(t, jss[1])
	again, err := nodes[1].c.Publish(ctx, campaign, "hash-1", rows)
	if err != nil {
		t.Fatal(err)
	}
	if again.New {
		t.Error("re-publish says it added the campaign")
	}
	if after := streamSeqs(t, jss[1]); after != before {
		t.Errorf("re-publish changed the streams: last sequences %v → %v", before, after)
	}
	if _, err := nodes[2].c.Publish(ctx, campaign, "hash-2", rows); !errors.Is(err, ErrHashMismatch) {
		t.Errorf("publish with another file hash: %v, want ErrHashMismatch", err)
	}
	time.Sleep(200 * time.Millisecond)
	if tl.distinct() != rowsN {
		t.Error("re-publish handed rows out again")
	}

	cancel()
	wg.Wait()
	var dirs []string
	for _, s := range srv {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
		dirs = append(dirs, s.storeDir)
	}
	scanNoPersonal(t, dirs...)
}

// TestTakeover: a node that stops renewing mid-shard loses it after the
// lease; another node takes it over, skipping the recipients the lost node
// had recorded; the lost node's late completion fails; no recipient is
// handled more than twice, and no more than the lost node's unpublished
// window twice.
func TestTakeover(t *testing.T) {
	const campaign, rowsN = "takeover", 600
	const recorded, unpublished = 50, 5
	const lease = 2 * time.Second
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	tl := newTally()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	// Node A takes one shard, records 50 outcomes, delivers 5 more without
	// recording them, and is lost (its Run and delivery stop).
	jsA := connect(t, url)
	cA := newCoordinator(t, jsA, box, Config{Node: "mtaA", Lease: lease, ShardSize: 200})
	a := newFakeNode("mtaA", cA, tl, 0)
	a.recordLimit, a.unrecorded = recorded, unpublished
	var claimed atomic.Bool
	actx, acancel := context.WithCancel(ctx)
	wg.Add(2)
	go func() { defer wg.Done(); a.deliver(actx, campaign) }()
	go func() {
		defer wg.Done()
		room := func() int {
			if claimed.Load() {
				return 0
			}
			return 1
		}
		if err := cA.Run(actx, Worker{Enqueuer: a, Room: room}); err != nil {
			t.Errorf("mtaA: Run: %v", err)
		}
	}()
	pub, err := cA.Publish(ctx, campaign, "", testRows(rowsN))
	if err != nil {
		t.Fatal(err)
	}
	if pub.Manifest.Shards != 3 {
		t.Fatalf("publish: %+v", pub)
	}
	select {
	case <-a.stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("node A never reached its unpublished window")
	}
	claimed.Store(true)
	acancel()
	a.mu.Lock()
	if len(a.tokens) != 1 {
		t.Fatalf("node A enqueued %d shards, want 1", len(a.tokens))
	}
	tokenA := a.tokens[0]
	a.mu.Unlock()
	st, err := cA.Status(ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	shardA := -1
	for _, s := range st.Shards {
		if s.Holder == "mtaA" && s.Token == tokenA {
			shardA = s.Shard
		}
	}
	if shardA < 0 || st.Holders["mtaA"] != 1 {
		t.Fatalf("node A's shard not held by it: %+v", st.Shards)
	}
	keysA := map[string]bool{}
	tl.mu.Lock()
	for k := range tl.byKey {
		keysA[k] = true
	}
	tl.mu.Unlock()
	if len(keysA) != recorded+unpublished {
		t.Fatalf("node A handled %d recipients, want %d", len(keysA), recorded+unpublished)
	}

	// Nodes B and C come up and take every shard, A's after its lease.
	var others []*fakeNode
	for _, name := range []string{"mtaB", "mtaC"} {
		c := newCoordinator(t, connect(t, url), box, Config{Node: name, Lease: lease, ShardSize: 200})
		n := newFakeNode(name, c, tl, 1000)
		others = append(others, n)
		wg.Add(2)
		go func() { defer wg.Done(); n.deliver(ctx, campaign) }()
		go func() {
			defer wg.Done()
			if err := c.Run(ctx, Worker{Enqueuer: n, Room: n.room}); err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		}()
	}
	waitFor(t, 60*time.Second, "every shard done", func() bool {
		st, _ = allDone(t, others[0].c, campaign)
		return st.States[StateDone] == 3 && st.Pending == 0
	})
	if h := st.Shards[shardA].Holder; h != "mtaB" && h != "mtaC" {
		t.Errorf("shard %d completed by %q, want mtaB or mtaC", shardA, h)
	}
	if st.Shards[shardA].Token <= tokenA {
		t.Errorf("new token %d not above the lost one %d", st.Shards[shardA].Token, tokenA)
	}

	// The lost node's late completion with its old token fails.
	if err := cA.Complete(ctx, campaign, shardA, tokenA); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("late completion with the old token: %v, want ErrLeaseLost", err)
	}

	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.byKey) != rowsN {
		t.Errorf("%d distinct recipients handled, want %d", len(tl.byKey), rowsN)
	}
	twice := 0
	for k, n := range tl.byKey {
		if n > 1+1 {
			t.Errorf("recipient %s… handled %d times", k[:8], n)
		}
		if n == 2 {
			twice++
			if !keysA[k] {
				t.Errorf("recipient %s… handled twice but was not in node A's window", k[:8])
			}
		}
	}
	if twice > unpublished {
		t.Errorf("%d recipients handled twice; the bound is node A's unpublished window, %d", twice, unpublished)
	}
	if twice != unpublished {
		t.Logf("note: %d of the %d unpublished recipients were handled again", twice, unpublished)
	}
	t.Logf("handled per node: %v; recipients handled twice: %d (bound %d)", tl.byNode, twice, unpublished)
}

// blockingNode enqueues into nowhere: its rows never get an outcome, so the
// shard stays held and renewed.
type blockingNode struct {
	mu     sync.Mutex
	tokens []uint64
	rows   int
}

func (b *blockingNode) Enqueue(ctx context.Context, campaign string, rows []Row, token uint64) error {
	b.mu.Lock()
	b.tokens = append(b.tokens, token)
	b.rows += len(rows)
	b.mu.Unlock()
	return nil
}

func (b *blockingNode) last() (uint64, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.tokens) == 0 {
		return 0, 0
	}
	return b.tokens[len(b.tokens)-1], b.rows
}

// TestRenewAndFence: a live holder keeps its shard past several leases
// while another node watches; when the lease key is taken from under it, its
// next renewal fails, Worker.Lost reports the lost token, and completion
// with that token fails.
func TestRenewAndFence(t *testing.T) {
	const campaign = "fence"
	const lease = time.Second
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	cX := newCoordinator(t, connect(t, url), box, Config{Node: "mtaX", Lease: lease, ShardSize: 100})
	x := &blockingNode{}
	lost := make(chan Lost, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := cX.Run(ctx, Worker{Enqueuer: x, Lost: func(l Lost) { lost <- l }}); err != nil {
			t.Errorf("mtaX: Run: %v", err)
		}
	}()
	if _, err := cX.Publish(ctx, campaign, "h", testRows(40)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "mtaX to claim the shard", func() bool { tok, _ := x.last(); return tok != 0 })
	token, rows := x.last()
	if rows != 40 {
		t.Fatalf("mtaX got %d rows, want 40", rows)
	}

	// mtaY runs beside it for three leases and must not take it over.
	y := &blockingNode{}
	yctx, ycancel := context.WithCancel(ctx)
	cY := newCoordinator(t, connect(t, url), box, Config{Node: "mtaY", Lease: lease, ShardSize: 100})
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := cY.Run(yctx, Worker{Enqueuer: y}); err != nil {
			t.Errorf("mtaY: Run: %v", err)
		}
	}()
	time.Sleep(3 * lease)
	ycancel()
	if tok, _ := y.last(); tok != 0 {
		t.Fatalf("mtaY took over a shard whose holder renews (token %d)", tok)
	}
	st, err := cX.Status(ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Shards[0]; s.State != StateHeld || s.Holder != "mtaX" || s.Token != token {
		t.Fatalf("shard after three leases: %+v, want held by mtaX with token %d", s, token)
	}

	// Take the key from under mtaX, as a node that took it over would.
	kv, err := connect(t, url).KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "fence.s.0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "fence.s.0", []byte(`{"state":"held","holder":"mtaZ"}`), e.Revision()); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-lost:
		if l.Token != token || l.Shard != 0 || l.Campaign != campaign || !errors.Is(l.Err, ErrLeaseLost) {
			t.Errorf("Lost %+v, want token %d of shard 0 with ErrLeaseLost", l, token)
		}
	case <-time.After(10 * lease):
		t.Fatal("mtaX never reported its lost lease")
	}
	if err := cX.Complete(ctx, campaign, 0, token); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("completion with the lost token: %v, want ErrLeaseLost", err)
	}
}

// TestRestartTakesBack: a node restarted under the same name takes its held
// shard back without waiting for the lease, and is handed only the rows
// without a recorded outcome.
func TestRestartTakesBack(t *testing.T) {
	const campaign = "restart"
	const lease = time.Minute // a restart must not wait for it
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c1 := newCoordinator(t, connect(t, url), box, Config{Node: "mta1", Lease: lease, ShardSize: 100})
	first := &blockingNode{}
	ctx1, cancel1 := context.WithCancel(ctx)
	done1 := make(chan struct{})
	go func() {
		defer close(done1)
		if err := c1.Run(ctx1, Worker{Enqueuer: first}); err != nil {
			t.Errorf("mta1: Run: %v", err)
		}
	}()
	rows := testRows(30)
	pub, err := c1.Publish(ctx, campaign, "h", rows)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "mta1 to claim the shard", func() bool { tok, _ := first.last(); return tok != 0 })
	token1, _ := first.last()
	// Ten recipients delivered and recorded, then the process "dies".
	for _, r := range rows[:10] {
		a, err := address.Parse(r.Address)
		if err != nil {
			t.Fatal(err)
		}
		if err := c1.Record(ctx, campaign, box.IndexHex(a.Key()), Delivered); err != nil {
			t.Fatal(err)
		}
	}
	cancel1()
	<-done1

	c2 := newCoordinator(t, connect(t, url), box, Config{Node: "mta1", Lease: lease, ShardSize: 100})
	second := &blockingNode{}
	wg := sync.WaitGroup{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := c2.Run(ctx, Worker{Enqueuer: second}); err != nil {
			t.Errorf("mta1 restarted: Run: %v", err)
		}
	}()
	defer func() { cancel(); wg.Wait() }()
	waitFor(t, 20*time.Second, "the restarted mta1 to take its shard back", func() bool { tok, _ := second.last(); return tok != 0 })
	token2, got := second.last()
	if token2 <= token1 {
		t.Errorf("token after restart %d, want above %d", token2, token1)
	}
	if got != pub.Manifest.Rows-10 {
		t.Errorf("restarted node handed %d rows, want %d (the recorded 10 left out)", got, pub.Manifest.Rows-10)
	}
}

// TestPublishConcurrent: the same campaign published at once from three
// nodes is stored once (one sealed message and one lease per shard);
// invalid and repeated addresses are left out and counted; a bad id is
// refused.
func TestPublishConcurrent(t *testing.T) {
	const campaign = "twice.at.once"
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	ctx := context.Background()
	rows := testRows(1000)
	rows = append(rows, Row{Address: "not an address"}, Row{Address: strings.ToUpper(rows[7].Address)})

	var cs []*Coordinator
	for i := 0; i < 3; i++ {
		cs = append(cs, newCoordinator(t, connect(t, url), box, Config{Node: "mta" + strconv.Itoa(i+1), ShardSize: 100}))
	}
	res := make([]Published, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = c.Publish(ctx, campaign, "same-file", rows)
		}()
	}
	wg.Wait()
	for i := range cs {
		if errs[i] != nil {
			t.Fatalf("publish on mta%d: %v", i+1, errs[i])
		}
		m := res[i].Manifest
		if m.State != ManifestReady || m.Rows != 1000 || m.Shards != 10 {
			t.Errorf("mta%d: manifest %+v", i+1, m)
		}
		if res[i].Invalid != 1 || res[i].Duplicate != 1 {
			t.Errorf("mta%d: invalid %d duplicate %d, want 1 and 1", i+1, res[i].Invalid, res[i].Duplicate)
		}
	}
	js := connect(t, url)
	s, err := js.Stream(ctx, DataStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 10 || info.State.LastSeq != 10 {
		t.Errorf("data stream holds %d messages (last sequence %d), want 10 and 10", info.State.Msgs, info.State.LastSeq)
	}
	st, err := cs[0].Status(ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, sh := range st.Shards {
		total += sh.Rows
	}
	if len(st.Shards) != 10 || st.States[StateFree] != 10 || total != 1000 || st.Pending != 1000 {
		t.Errorf("status: %d shards %v, %d rows, %d pending", len(st.Shards), st.States, total, st.Pending)
	}
	if _, err := cs[0].Publish(ctx, "bad id", "", rows); !errors.Is(err, ErrBadCampaign) {
		t.Errorf("publish with a bad id: %v, want ErrBadCampaign", err)
	}
	if err := cs[0].Record(ctx, campaign, "person00001@"+testDomain, Delivered); !errors.Is(err, ErrBadKey) {
		t.Errorf("record under an address: %v, want ErrBadKey", err)
	}
}
