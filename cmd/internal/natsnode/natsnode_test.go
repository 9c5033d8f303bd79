package natsnode

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// freeAddr is a loopback host:port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startCluster starts n embedded servers on loopback, each routed to all,
// and returns their nodes once JetStream answers on each.
func startCluster(t *testing.T, n int) []*Node {
	t.Helper()
	routes := make([]string, n)
	for i := range routes {
		routes[i] = "nats://" + freeAddr(t)
	}
	dir := t.TempDir()
	nodes := make([]*Node, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("n%d", i+1)
			log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Str("node", name).Logger()
			nodes[i], errs[i] = Start(context.Background(), Config{
				Node: name,
				Embedded: &Embedded{
					Listen:        "127.0.0.1:0",
					ClusterListen: routes[i][len("nats://"):],
					Routes:        routes,
					StoreDir:      filepath.Join(dir, name),
				},
				ReadyTimeout: 2 * time.Minute,
				FailFast:     true,
			}, log)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d: %v", i+1, err)
		}
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.Close()
		}
	})
	return nodes
}

// TestEmbeddedClusterR3: three embedded servers form a JetStream cluster;
// an R3 stream created on one holds what another publishes, with a leader
// and two current followers.
func TestEmbeddedClusterR3(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, nd := range nodes {
		if !nd.State().Connected {
			t.Errorf("node %d not connected: %+v", i+1, nd.State())
		}
	}
	var s jetstream.Stream
	var err error
	for { // the first stream may race the meta group settling: retry until ctx ends
		s, err = nodes[0].JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3})
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("create R3 stream: %v", err)
	}
	for i := range 10 {
		if _, err := nodes[1].JetStream().Publish(ctx, "t.x", fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	s3, err := nodes[2].JetStream().Stream(ctx, "T")
	if err != nil {
		t.Fatalf("stream on node 3: %v", err)
	}
	msg, err := s3.GetLastMsgForSubject(ctx, "t.x")
	if err != nil || string(msg.Data) != "m9" {
		t.Fatalf("last message read on node 3: %v %v", msg, err)
	}
	for {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatalf("stream info: %v", err)
		}
		current := 0
		for _, p := range info.Cluster.Replicas {
			if p.Current {
				current++
			}
		}
		if info.State.Msgs == 10 && info.Cluster.Leader != "" && len(info.Cluster.Replicas) == 2 && current == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("stream never healthy: msgs %d leader %q replicas %+v", info.State.Msgs, info.Cluster.Leader, info.Cluster.Replicas)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if nodes[0].ClientURL() == "" {
		t.Error("no client URL for an embedded node")
	}
}

func TestReconnectDelay(t *testing.T) {
	for n, base := range map[int]time.Duration{1: backoffFirst, 2: 2 * backoffFirst, 6: backoffMax, 100: backoffMax} {
		if d := reconnectDelay(n); d < base || d > base+base/4 {
			t.Errorf("reconnectDelay(%d) = %v, want %v plus at most 25%%", n, d, base)
		}
	}
}

func TestMaskURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://u:p@10.0.0.1:4222": "nats://***@10.0.0.1:4222",
		"tls://tok@h:4222":         "tls://***@h:4222",
		"nats://h:4222":            "nats://h:4222",
	} {
		if got := MaskURL(in); got != want {
			t.Errorf("MaskURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReconnects: a node connected to a server that goes away reports the
// loss, and reconnects by itself when a server is back on that address.
func TestReconnects(t *testing.T) {
	addr := freeAddr(t)
	store := t.TempDir()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	server1, err := Start(context.Background(), Config{Node: "s1", Embedded: &Embedded{Listen: addr, StoreDir: store}, FailFast: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	client, err := Start(context.Background(), Config{Node: "c1", URLs: []string{"nats://" + addr}, FailFast: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if !client.State().Connected {
		t.Fatalf("not connected: %+v", client.State())
	}
	server1.Close()
	waitUntil(t, "the loss reported", func() bool { return !client.State().Connected })
	server2, err := Start(context.Background(), Config{Node: "s1", Embedded: &Embedded{Listen: addr, StoreDir: store}, FailFast: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer server2.Close()
	waitUntil(t, "the reconnection", func() bool { return client.State().Connected })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := client.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond for up to a minute.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOnlyConfiguredServers: a node given one server of a cluster uses that
// server only: the others' advertised client URLs (gossip) never join its
// pool, so a node whose configured link is cut stays cut off (issue 13's
// fail-closed test cuts a node off by its link) instead of slipping onto
// a server it was not told about.
func TestOnlyConfiguredServers(t *testing.T) {
	nodes := startCluster(t, 2)
	waitUntil(t, "the route", func() bool { return nodes[0].srv.NumRoutes() > 0 && nodes[1].srv.NumRoutes() > 0 })
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	url := nodes[0].ClientURL()
	client, err := Start(context.Background(), Config{Node: "c1", URLs: []string{url}, FailFast: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// A control client without the option learns the other server: the
	// gossip did happen.
	ctl, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	waitUntil(t, "the gossip", func() bool { return len(ctl.DiscoveredServers()) > 0 })
	if err := client.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if got := client.Conn().Servers(); len(got) != 1 || got[0] != url {
		t.Errorf("the node's server pool is %v, want only %s", got, url)
	}
}

// TestStartCutOff: a node (not a CLI) started while no server answers does
// not wait ReadyTimeout for JetStream: it returns at once, disconnected, and
// connects by itself once a server is there (a cluster node restarted while
// cut off serves its pages and keeps unsubscribes meanwhile).
func TestStartCutOff(t *testing.T) {
	addr := freeAddr(t)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	start := time.Now()
	client, err := Start(context.Background(), Config{Node: "c1", URLs: []string{"nats://" + addr}, ReadyTimeout: 20 * time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Start took %v with no server reachable", d)
	}
	if client.State().Connected {
		t.Fatal("connected to nothing")
	}
	srv, err := Start(context.Background(), Config{Node: "s1", Embedded: &Embedded{Listen: addr, StoreDir: t.TempDir()}, FailFast: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	waitUntil(t, "the connection", func() bool { return client.State().Connected })
}
