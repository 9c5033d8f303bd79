package shares

import (
	"bytes"
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// syncBuffer is a log sink safe for the coordinator's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Contains(sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Contains(s.b.Bytes(), []byte(sub))
}

// TestRunWatchesAgainAfterReconnect: the NATS server restarts under a
// running worker (its watcher's consumer is gone with it); once the client
// has reconnected, Run watches the bucket again at its next tick rather
// than wait for the client to notice missed heartbeats, and takes a shard
// of a campaign published after the restart.
func TestRunWatchesAgainAfterReconnect(t *testing.T) {
	port, dir := freePort(t), t.TempDir()
	start := func() *server.Server {
		s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true,
			StoreDir: dir, NoLog: true, NoSigs: true})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats server not ready")
		}
		return s
	}
	srv := start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	box := testBox(t)
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	worker, err := New(ctx, js, box, Config{Node: "w", Lease: 2 * time.Second, ShardSize: 10}, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	n := newFakeNode("w", worker, newTally(), 1000)
	runDone := make(chan error, 1)
	go func() { runDone <- worker.Run(ctx, Worker{Enqueuer: n, Room: n.room}) }()

	// The worker watches: it takes a campaign published before the restart.
	pub := newCoordinator(t, connect(t, url), box, Config{Node: "p", ShardSize: 10})
	if _, err := pub.Publish(ctx, "before", "", testRows(3)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for n.inQueue.Load() != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the worker took %d of the 3 rows published before the restart", n.inQueue.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}

	srv.Shutdown()
	srv.WaitForShutdown()
	srv = start()
	deadline = time.Now().Add(30 * time.Second)
	for !logs.Contains("watching the share bucket again after a reconnect") {
		if time.Now().After(deadline) {
			select {
			case err := <-runDone:
				t.Fatalf("Run returned %v; log:\n%s", err, logs.b.String())
			default:
			}
			t.Fatalf("no new watch after the reconnect (reconnects %d); log:\n%s", nc.Stats().Reconnects, logs.b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	rows := testRows(8)[3:] // other people than campaign "before"
	for {
		_, err := pub.Publish(ctx, "after", "", rows)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for n.inQueue.Load() != 8 {
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatalf("the worker took %d of the 5 rows published after the restart", n.inQueue.Load()-3)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Errorf("Run = %v", err)
	}
}
