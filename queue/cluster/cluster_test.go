package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// jetStream starts a lone nats-server with JetStream on loopback and
// connects to it.
func jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv, err := server.NewServer(&server.Options{ServerName: "t1", Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	nc, err := nats.Connect(srv.ClientURL())
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

// TestMembers: two nodes beat with what their reporters say; both are up;
// the one that stops beating is shown down once its TTL passes.
func TestMembers(t *testing.T) {
	js := jetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)

	if _, err := Members(ctx, js); err != ErrNoBucket {
		t.Fatalf("no beats yet: %v, want ErrNoBucket", err)
	}
	lag := ReporterFunc(func(h *Health) { h.ReplicaLag, h.ReplicaPending = 3*time.Second, 7 })
	stale := ReporterFunc(func(h *Health) { h.Leases, h.Stale = 2, "replica 40s behind" })
	h1 := New(js, Config{Node: "n1", Version: "v1", Interval: 50 * time.Millisecond}, log, lag)
	h2 := New(js, Config{Node: "n2", Version: "v1", Interval: 50 * time.Millisecond}, log, stale)
	run1, stop1 := context.WithCancel(ctx)
	defer stop1()
	done1 := make(chan error, 1)
	go func() { done1 <- h1.Run(run1) }()
	if err := h2.Beat(ctx); err != nil {
		t.Fatal(err)
	}
	if b, err := h2.Last(); err != nil || b.Node != "n2" {
		t.Fatalf("Last: %+v %v", b, err)
	}

	var ms []Member
	waitFor(t, ctx, "both nodes listed up", func() bool {
		var err error
		ms, err = Members(ctx, js)
		return err == nil && len(ms) == 2 && ms[0].Up && ms[1].Up
	})
	if m := ms[0]; m.Node != "n1" || m.Version != "v1" || m.ReplicaLag != 3*time.Second || m.ReplicaPending != 7 || m.Started.IsZero() {
		t.Errorf("n1: %+v", m)
	}
	if m := ms[1]; m.Node != "n2" || m.Leases != 2 || m.Stale != "replica 40s behind" || m.TTL != TTLBeats*50*time.Millisecond {
		t.Errorf("n2: %+v", m)
	}

	// n2 beats no more: down after its TTL; n1 keeps beating and stays up.
	waitFor(t, ctx, "n2 shown down", func() bool {
		ms, _ = Members(ctx, js)
		return len(ms) == 2 && ms[0].Up && !ms[1].Up && ms[1].Age > ms[1].TTL
	})
	stop1()
	if err := <-done1; err != nil {
		t.Errorf("Run: %v", err)
	}
	// n1 leaves cleanly: down at once, marked left; a later reporter is asked.
	h1.AddReporter(ReporterFunc(func(h *Health) { h.PendingUnsubscribes = 4 }))
	if err := h1.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if ms, err := Members(ctx, js); err != nil || ms[0].Up || !ms[0].Left || ms[0].PendingUnsubscribes != 4 || ms[0].ReplicaPending != 7 {
		t.Errorf("after Leave: %+v %v", ms, err)
	}

	st, err := Streams(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Name != "KV_"+Bucket || !st[0].Healthy || st[0].Messages != 2 {
		t.Errorf("streams: %+v", st)
	}
}

// TestStreamHealth judges a stream's cluster info.
func TestStreamHealth(t *testing.T) {
	info := func(replicas int, leader string, peers ...*jetstream.PeerInfo) *jetstream.StreamInfo {
		return &jetstream.StreamInfo{Config: jetstream.StreamConfig{Name: "S", Replicas: replicas},
			Cluster: &jetstream.ClusterInfo{Leader: leader, Replicas: peers}}
	}
	ok := &jetstream.PeerInfo{Name: "n2", Current: true}
	for _, c := range []struct {
		si      *jetstream.StreamInfo
		healthy bool
		why     string
	}{
		{info(3, "n1", ok, &jetstream.PeerInfo{Name: "n3", Current: true}), true, ""},
		{info(3, "", ok, ok), false, "no leader"},
		{info(3, "n1", ok), false, "2 of 3 replicas"},
		{info(3, "n1", ok, &jetstream.PeerInfo{Name: "n3", Offline: true}), false, "1 replica(s) offline or not current"},
		{info(1, "n1"), true, ""},
	} {
		h := streamHealth(c.si)
		if h.Healthy != c.healthy || h.Why != c.why {
			t.Errorf("%+v: healthy %v why %q, want %v %q", c.si.Cluster, h.Healthy, h.Why, c.healthy, c.why)
		}
	}
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
