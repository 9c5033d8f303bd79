package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue/cluster"
)

// clusterNode is one node of a test cluster: a harness whose config has a
// cluster section with an embedded NATS server, and its serve process.
type testNode struct {
	*harness
	name      string
	natsAddr  string // embedded listen
	routeAddr string // embedded cluster_listen
	cmd       *exec.Cmd
	bin       string // the binary it runs
	logPath   string
	exited    chan error
}

// newTestCluster makes n harnesses sharing the first one's SMTP sink, each
// with an embedded NATS server on loopback routed to all the others.
func newTestCluster(t *testing.T, n int, opt mtatest.Options) []*testNode {
	t.Helper()
	nodes := make([]*testNode, n)
	for i := range nodes {
		h := newHarness(t, opt)
		if i > 0 { // one sink for the cluster: route to the first node's
			cfg := strings.ReplaceAll(readFile(t, h.cfgPath), h.sink.Addr, nodes[0].sink.Addr)
			h.write("postwarden.yaml", cfg)
			h.sink = nodes[0].sink
		}
		nodes[i] = &testNode{harness: h, name: fmt.Sprintf("n%d", i+1), natsAddr: listenAddr(t), routeAddr: listenAddr(t)}
	}
	for _, nd := range nodes {
		var routes []string
		for _, o := range nodes {
			if o != nd {
				routes = append(routes, fmt.Sprintf("%q", "nats://"+o.routeAddr))
			}
		}
		section := fmt.Sprintf(`cluster:
  node: %s
  embedded:
    listen: %s
    cluster_listen: %s
    routes: [%s]
  replicas: 3
`, nd.name, nd.natsAddr, nd.routeAddr, strings.Join(routes, ", "))
		nd.write("postwarden.yaml", readFile(t, nd.cfgPath)+section)
	}
	return nodes
}

// start runs `postwarden serve` for the node as a process, its log in a
// file of the node's folder.
func (nd *testNode) start(bin string) {
	t := nd.t
	t.Helper()
	nd.logPath = filepath.Join(nd.dir, "serve.log")
	f, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	nd.cmd = exec.Command(bin, "-c", nd.cfgPath, "--log-level", "info", "serve")
	nd.cmd.Stdout, nd.cmd.Stderr = f, f
	if err := nd.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	nd.exited = make(chan error, 1)
	go func() { nd.exited <- nd.cmd.Wait() }()
	t.Cleanup(func() { _ = nd.cmd.Process.Kill() })
}

// waitServing waits until the node's admin socket answers.
func (nd *testNode) waitServing() {
	nd.t.Helper()
	sock := nd.config().AdminSocket
	waitUntil(nd.t, 2*time.Minute, nd.name+" serving", func() bool {
		select {
		case err := <-nd.exited:
			nd.t.Fatalf("%s exited: %v\n%s", nd.name, err, readFile(nd.t, nd.logPath))
		default:
		}
		return daemonClient(sock) != nil
	})
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestClusterStatus: three `serve` processes, each running an embedded NATS
// server routed to the others, form a cluster; `cluster status` on node 1
// lists the three up and exits 0; after node 3 is killed with SIGKILL it
// shows it down and exits 1; nodes 1 and 2 stop cleanly on SIGTERM.
func TestClusterStatus(t *testing.T) {
	bin := buildBinary(t)
	nodes := newTestCluster(t, 3, mtatest.Options{})
	for _, nd := range nodes {
		nd.start(bin)
	}
	for _, nd := range nodes {
		nd.waitServing()
	}
	n1 := nodes[0]
	var last result
	status := func() (clusterReport, int) {
		last = n1.run("--json", "cluster", "status")
		if last.code == 2 {
			return clusterReport{}, 2
		}
		rs := jsonLines[clusterReport](t, last.stdout)
		if len(rs) != 1 {
			t.Fatalf("cluster status --json: %d objects\n%s", len(rs), last.stdout)
		}
		return rs[0], last.code
	}
	up := func(r clusterReport) map[string]bool {
		m := map[string]bool{}
		for _, n := range r.Nodes {
			m[n.Node] = n.Up
		}
		return m
	}
	var r clusterReport
	ok := false
	deadline := time.Now().Add(2 * time.Minute)
	for !ok && time.Now().Before(deadline) {
		var code int
		r, code = status()
		u := up(r)
		ok = code == 0 && r.Healthy && len(u) == 3 && u["n1"] && u["n2"] && u["n3"]
		if !ok {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if !ok {
		t.Fatalf("three nodes never all up and healthy: exit %d\n%s\n%s\nnode 3 log:\n%s", last.code, last.stdout, last.stderr, readFile(t, nodes[2].logPath))
	}
	if r.Node != "n1" || !hasStream(r.Streams, "KV_"+cluster.Bucket, 3) {
		t.Errorf("status: %+v", r)
	}
	text := n1.mustRun(0, "cluster", "status").stdout
	for _, want := range []string{"NODE", "n3", "up", "KV_" + cluster.Bucket, "healthy"} {
		if !strings.Contains(text, want) {
			t.Errorf("status text lacks %q:\n%s", want, text)
		}
	}

	// Node 3 killed: shown down, exit 1.
	if err := nodes[2].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-nodes[2].exited
	waitUntil(t, 2*time.Minute, "n3 shown down with exit 1", func() bool {
		r, code := status()
		u := up(r)
		return code == 1 && !r.Healthy && u["n1"] && u["n2"] && !u["n3"]
	})
	if !strings.Contains(last.stdout, "node n3 down") {
		t.Errorf("status does not say why: %s", last.stdout)
	}
	text = n1.mustRun(1, "cluster", "status").stdout
	if !strings.Contains(text, "down") || !strings.Contains(text, "not healthy: node n3 down") {
		t.Errorf("status text after the kill:\n%s", text)
	}

	// The others stop cleanly on SIGTERM.
	for _, nd := range nodes[:2] {
		if err := nd.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range nodes[:2] {
		select {
		case err := <-nd.exited:
			if err != nil {
				t.Errorf("%s after SIGTERM: %v\n%s", nd.name, err, readFile(t, nd.logPath))
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s still running a minute after SIGTERM", nd.name)
		}
		log := readFile(t, nd.logPath)
		for _, want := range []string{"embedded nats-server started", "cluster node started", "cluster node stopped", "embedded nats-server stopped"} {
			if !strings.Contains(log, want) {
				t.Errorf("%s's log lacks %q", nd.name, want)
			}
		}
	}
}

// hasStream reports whether streams holds name with the replicas.
func hasStream(streams []cluster.StreamHealth, name string, replicas int) bool {
	for _, s := range streams {
		if s.Name == name && s.Replicas == replicas {
			return true
		}
	}
	return false
}

// Without a cluster section, cluster status says so and exits 0; with one
// whose NATS does not answer, it exits 2 without echoing the password.
func TestClusterStatusSingleAndUnreachable(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	if r := h.mustRun(0, "cluster", "status"); strings.TrimSpace(r.stdout) != "single node (no cluster: section)" {
		t.Errorf("single node: %q", r.stdout)
	}
	h.write("postwarden.yaml", readFile(t, h.cfgPath)+fmt.Sprintf("cluster:\n  node: n1\n  nats: nats://pw:hunter2@%s\n", freeAddr(t)))
	r := h.mustRun(2, "cluster", "status")
	if strings.Contains(r.stdout+r.stderr, "hunter2") || !strings.Contains(r.stderr, "***@127.0.0.1") {
		t.Errorf("unreachable NATS: stdout %q stderr %q", r.stdout, r.stderr)
	}
}
