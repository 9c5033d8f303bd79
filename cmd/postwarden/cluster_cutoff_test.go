package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// linkProxy is a loopback TCP proxy standing for the network between a node
// and its NATS server: Cut drops every connection and refuses new ones
// (accepted, closed at once) until Heal.
type linkProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

// newLinkProxy listens on a loopback port and forwards to target.
func newLinkProxy(t *testing.T, target string) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { ln.Close(); p.Cut() })
	go p.serve()
	return p
}

func (p *linkProxy) Addr() string { return p.ln.Addr().String() }

func (p *linkProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.cut { // cut while dialling
			p.mu.Unlock()
			c.Close()
			up.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

// Cut drops the link: open connections are closed, new ones refused.
func (p *linkProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Heal lets connections through again.
func (p *linkProxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// scrape reads the gauges named on metricsAddr's /metrics (value -1 for a
// name not exposed).
func scrape(t *testing.T, metricsAddr string, names ...string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, n := range names {
		out[n] = -1
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Logf("scrape: %v", err)
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if _, ok := out[f[0]]; ok {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out
}

// member returns node's entry in a --json cluster status of nd.
func clusterMember(t *testing.T, nd *testNode, node string) (clusterReport, int, bool) {
	t.Helper()
	r := nd.run("--json", "cluster", "status")
	if r.code == 2 {
		return clusterReport{}, 2, false
	}
	rs := jsonLines[clusterReport](t, r.stdout)
	if len(rs) != 1 {
		return clusterReport{}, r.code, false
	}
	for _, m := range rs[0].Nodes {
		if m.Node == node {
			return rs[0], r.code, true
		}
	}
	return rs[0], r.code, false
}

// startCutOffCluster starts three `serve` processes sharing one sink:
// nodes 1 and 2 run embedded NATS servers routed to each other; node 3
// reaches node 1's through a linkProxy standing for the network, with
// max_lag 3s and its metrics on metricsAddr. extra (indented lines) is
// added to every node's cluster section, prep (nil: none) runs on each
// node before it starts. It waits until the three are up and caught up.
func startCutOffCluster(t *testing.T, opt mtatest.Options, extra string, prep func(*testNode)) (nodes []*testNode, proxy *linkProxy, metricsAddr string) {
	t.Helper()
	bin := buildBinary(t)
	for i := range 3 {
		h := newHarness(t, opt)
		if i > 0 { // one sink for the cluster
			h.write("postwarden.yaml", strings.ReplaceAll(readFile(t, h.cfgPath), h.sink.Addr, nodes[0].sink.Addr))
			h.sink = nodes[0].sink
		}
		nodes = append(nodes, &testNode{harness: h, name: fmt.Sprintf("n%d", i+1), natsAddr: listenAddr(t), routeAddr: listenAddr(t), bin: bin})
	}
	shareKeys(t, nodes)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, p := range [][2]*testNode{{n1, n2}, {n2, n1}} {
		nd, other := p[0], p[1]
		nd.write("postwarden.yaml", readFile(t, nd.cfgPath)+fmt.Sprintf(`cluster:
  node: %s
  embedded:
    listen: %s
    cluster_listen: %s
    routes: ["nats://%s"]
  replicas: 1
%s`, nd.name, nd.natsAddr, nd.routeAddr, other.routeAddr, extra))
	}
	proxy = newLinkProxy(t, n1.natsAddr)
	metricsAddr = listenAddr(t)
	n3.write("postwarden.yaml", readFile(t, n3.cfgPath)+fmt.Sprintf(`metrics_listen: %s
cluster:
  node: n3
  nats: nats://%s
  replicas: 1
  max_lag: 3s
%s`, metricsAddr, proxy.Addr(), extra))
	t.Cleanup(func() {
		if t.Failed() {
			for _, nd := range nodes {
				t.Logf("%s log:\n%s", nd.name, tail(grepOut(readFile(t, nd.logPath), "suppress.check", "queue.ls", "cluster status", "campaign.status"), 20000))
			}
		}
	})
	for _, nd := range nodes {
		if prep != nil {
			prep(nd)
		}
		nd.start(bin)
	}
	for _, nd := range nodes {
		nd.waitServing()
	}
	waitUntil(t, 2*time.Minute, "three nodes up, replicas caught up", func() bool {
		r := n1.run("--json", "cluster", "status")
		if r.code != 0 {
			return false
		}
		rs := jsonLines[clusterReport](t, r.stdout)
		if len(rs) != 1 || len(rs[0].Nodes) != 3 {
			return false
		}
		for _, m := range rs[0].Nodes {
			if !m.Up || m.Health.Stale != "" || m.Health.ReplicaPending > 0 || !m.Health.SharesUp {
				return false
			}
		}
		return true
	})
	return nodes, proxy, metricsAddr
}

// TestClusterCutOff: issue 13, promise 2 (fail closed). Nodes 1 and 2 run
// embedded NATS servers; node 3 reaches node 1's through a proxy standing
// for the network, with max_lag 3s. The link is cut: node 3 halts delivery
// (its metrics say stale; node 1's `cluster status` shows it down), a
// campaign sent on node 3 delivers nothing, and a one-click unsubscribe
// posted to node 3 answers 200 and is suppressed there at once, and stays
// so across a kill -9 and restart of node 3 still cut off. The link is
// healed: the unsubscribe reaches nodes 1 and 2, node 3 resumes by itself
// and delivers its campaign to everyone but the unsubscribed address.
func TestClusterCutOff(t *testing.T) {
	nodes, proxy, metricsAddr := startCutOffCluster(t, mtatest.Options{}, "", nil)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	const (
		gStale   = "postwarden_cluster_replica_stale"
		gLag     = "postwarden_cluster_replica_lag"
		gPending = "postwarden_cluster_replica_pending_changes"
	)
	if m := scrape(t, metricsAddr, gStale, gLag, gPending); m[gStale] != 0 || m[gLag] != 0 || m[gPending] != 0 {
		t.Fatalf("node 3 caught up, metrics %v", m)
	}

	// A message from node 1 gives ana an unsubscribe link (token.key is shared).
	const ana = "ana@acme.example"
	n1.mustRun(0, "campaign", "send", n1.campaign("c-1", "email,first_name,company\n"+ana+",Ana,Co\n"))
	// Any node may deliver it (campaign shares): wait at the sink.
	waitUntil(t, time.Minute, "ana's message at the sink", func() bool { return n1.sink.ByRecipient()[ana] > 0 })
	link := n1.unsubscribeLink(ana, "")
	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}

	// Cut node 3 off: within max_lag (+ a poll) it fails closed.
	proxy.Cut()
	cutAt := time.Now()
	waitUntil(t, 30*time.Second, "node 3's replica stale (metric)", func() bool {
		return scrape(t, metricsAddr, gStale)[gStale] == 1
	})
	t.Logf("node 3 stale %v after the cut", time.Since(cutAt).Round(100*time.Millisecond))
	// Stale counts from when the replica was last seen caught up: at most
	// one poll (1s) before the cut.
	if d := time.Since(cutAt); d < 2*time.Second {
		t.Errorf("node 3 stale %v after the cut, well before max_lag (3s)", d)
	}

	before := len(n1.sink.Messages())
	// A campaign cannot be spread from a node that cannot reach the cluster:
	// send says so and nothing is sent.
	c3 := n3.campaign("c-3", "email,first_name,company\n"+ana+",Ana,Cut\nbob@globex.example,Bob,Cut\ncarl@acme.example,Carl,Cut\n")
	if r := n3.run("campaign", "send", c3); r.code == 0 {
		t.Errorf("campaign send on cut-off node 3 succeeded:\n%s", r.stdout)
	}

	// A one-click unsubscribe on node 3 while cut off: 200, honoured there at once.
	resp, err := http.Post("http://"+n3.httpAddr+u.Path, "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("one-click POST on cut-off node 3: %d", resp.StatusCode)
	}
	if !suppressedOn(n3, ana) {
		t.Fatal("node 3 answered 200 but does not suppress the address")
	}
	if m := scrape(t, metricsAddr, gStale, gPending); m[gStale] != 1 || m[gPending] < 1 {
		t.Errorf("node 3 cut off after the unsubscribe: metrics %v", m)
	}

	// Killed with -9 and restarted while still cut off, node 3 keeps the
	// unsubscribe: suppressed there, still pending for the stream, still halted.
	if err := n3.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n3.exited
	restartAt := time.Now()
	n3.start(n3.bin)
	n3.waitServing()
	t.Logf("node 3 restarted while cut off, serving after %v", time.Since(restartAt).Round(100*time.Millisecond))
	if d := time.Since(restartAt); d > 15*time.Second { // it used to wait 30 s for JetStream first
		t.Errorf("node 3 restarted while cut off serves only after %v", d)
	}
	if !suppressedOn(n3, ana) {
		t.Fatal("node 3 lost the unsubscribe it accepted while cut off to a kill -9")
	}
	if m := scrape(t, metricsAddr, gStale, gPending); m[gStale] != 1 || m[gPending] < 1 {
		t.Errorf("node 3 restarted while cut off: metrics %v", m)
	}

	// Node 3's own `cluster status` cannot reach NATS, and says what its
	// daemon does about it.
	r3 := n3.run("--json", "cluster", "status")
	if rs := jsonLines[clusterReport](t, r3.stdout); r3.code != 2 || len(rs) != 1 || rs[0].Local == nil ||
		!strings.Contains(rs[0].Local.Halted, "stale") || rs[0].Local.Replica == nil || rs[0].Local.Replica.Pending < 1 ||
		rs[0].Local.NATS == nil || rs[0].Local.NATS.Connected || !strings.Contains(strings.Join(rs[0].Why, "; "), "cannot reach NATS") {
		t.Errorf("cluster status on cut-off node 3: exit %d\n%s\n%s", r3.code, r3.stdout, r3.stderr)
	}
	if r3 := n3.run("cluster", "status"); !strings.Contains(r3.stdout, "deliveries halted: suppression replica stale") ||
		!strings.Contains(r3.stdout, "kept here until the stream takes them") {
		t.Errorf("cluster status text on cut-off node 3: exit %d\n%s\n%s", r3.code, r3.stdout, r3.stderr)
	}

	// Node 1 sees node 3 down, and says so.
	waitUntil(t, 45*time.Second, "node 1's cluster status shows n3 down", func() bool {
		r, code, ok := clusterMember(t, n1, "n3")
		if !ok || code != 1 {
			return false
		}
		for _, m := range r.Nodes {
			if m.Node == "n3" && !m.Up {
				return strings.Contains(strings.Join(r.Why, "; "), "node n3 down")
			}
		}
		return false
	})
	// Node 3 started no delivery all along (the campaign is minutes... seconds old).
	for _, m := range n1.sink.Messages()[before:] {
		t.Errorf("node 3 delivered to %s while cut off", m.To[0])
	}
	if suppressedOn(n1, ana) {
		t.Fatal("node 1 suppresses an unsubscribe node 3 could not have published") // the proxy leaks?
	}
	if log := readFile(t, n3.logPath); !strings.Contains(log, "deliveries halted") {
		t.Errorf("node 3's log does not say deliveries halted")
	}

	// Heal: the unsubscribe reaches the others, node 3 resumes by itself.
	proxy.Heal()
	healAt := time.Now()
	for _, nd := range []*testNode{n1, n2} {
		waitUntil(t, time.Minute, nd.name+" suppresses the unsubscribe taken on n3", func() bool { return suppressedOn(nd, ana) })
	}
	t.Logf("unsubscribe on n1 and n2 %v after the heal", time.Since(healAt).Round(100*time.Millisecond))
	n3.mustRun(0, "campaign", "send", c3) // now the cluster takes it; ana is suppressed at the gate on node 3
	waitUntil(t, time.Minute, "bob and carl delivered", func() bool {
		by := n1.sink.ByRecipient()
		return by["bob@globex.example"] > 0 && by["carl@acme.example"] > 0
	})
	waitUntil(t, 30*time.Second, "node 3's metrics clear", func() bool {
		m := scrape(t, metricsAddr, gStale, gLag, gPending)
		return m[gStale] == 0 && m[gLag] == 0 && m[gPending] == 0
	})
	got := map[string]int{}
	for _, m := range n1.sink.Messages()[before:] {
		got[strings.ToLower(m.To[0])]++
	}
	if got[ana] != 0 || got["bob@globex.example"] != 1 || got["carl@acme.example"] != 1 {
		t.Errorf("after the heal the sink got %v; want bob and carl once, ana never", got)
	}
	if log := readFile(t, n3.logPath); !strings.Contains(log, "deliveries resumed") {
		t.Errorf("node 3's log does not say deliveries resumed")
	} else if strings.Contains(log, "audit chain no longer published") {
		t.Errorf("node 3 stopped publishing its audit chain after the cut")
	}
	waitUntil(t, 30*time.Second, "node 3's own cluster status healthy again", func() bool {
		r := n3.run("--json", "cluster", "status")
		rs := jsonLines[clusterReport](t, r.stdout)
		return r.code == 0 && len(rs) == 1 && rs[0].Local != nil && rs[0].Local.Halted == "" && rs[0].Local.NATS.Connected
	})
	waitUntil(t, 30*time.Second, "n3 up and not stale in node 1's cluster status", func() bool {
		r, code, _ := clusterMember(t, n1, "n3")
		if code != 0 {
			return false
		}
		for _, m := range r.Nodes {
			if m.Node == "n3" {
				return m.Up && m.Health.Stale == "" && m.Health.PendingUnsubscribes == 0
			}
		}
		return false
	})
}
