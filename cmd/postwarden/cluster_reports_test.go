package main

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/bounce/bouncetest"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/mta/verp"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// TestClusterReportsReachTheSendingNode (issue 13, promise 1): the bounce
// domain's MX points at every node, so a complaint (ARF) and an
// after-delivery hard bounce (DSN) about a message one node sent arrive at
// another node's listener. Each report is answered 250 there, handed to the
// sending node, and applied there as if it had received it: the address is
// suppressed on every node and the message's record on the sending node
// shows the complaint or the bounce. (Before the hand-over the receiving
// node logged "unknown message" and dropped it: suppressed nowhere.)
func TestClusterReportsReachTheSendingNode(t *testing.T) {
	listens := map[string]string{}
	nodes := startCluster3Prep(t, func(nd *testNode) {
		listens[nd.name] = listenAddr(t)
		nd.write("postwarden.yaml", readFile(t, nd.cfgPath)+"smtp_listen: "+listens[nd.name]+"\nbounce_domain: "+bounceDomain+"\n")
	})
	n1 := nodes[0]
	const ana, dave = "ana@acme.example", "dave@globex.example"
	n1.mustRun(0, "campaign", "send", n1.campaign("rep-1", "email,first_name,company\n"+ana+",Ana,Acme\n"+dave+",Dave,Globex\n"))
	waitUntil(t, time.Minute, "both delivered", func() bool {
		got := n1.sink.ByRecipient()
		return got[ana] > 0 && got[dave] > 0
	})

	key, err := unsubscribe.LoadOrCreateKey(n1.config().TokenKeyFile) // every node holds the same
	if err != nil {
		t.Fatal(err)
	}
	codec, err := verp.New(verpKey(key), bounceDomain)
	if err != nil {
		t.Fatal(err)
	}
	byTag := map[string]*testNode{}
	for _, nd := range nodes {
		byTag[verp.NodeTag(nd.name)] = nd
	}
	// sent finds who delivered to rcpt: the VERP address the sink saw, the
	// queue id in it and the node whose spool holds it.
	sent := func(rcpt string) (string, string, *testNode) {
		for _, m := range n1.sink.Messages() {
			if len(m.To) == 1 && m.To[0] == rcpt {
				id, tag, err := codec.Route(m.From)
				if err != nil || byTag[tag] == nil {
					t.Fatalf("envelope sender %q of %s: id %q, node tag %q (%v)", m.From, rcpt, id, tag, err)
				}
				return m.From, id, byTag[tag]
			}
		}
		t.Fatalf("%s not at the sink", rcpt)
		return "", "", nil
	}
	// other is a node that did not send: the one whose listener the report reaches.
	other := func(sender *testNode) *testNode {
		for _, nd := range nodes {
			if nd != sender {
				return nd
			}
		}
		return nil
	}

	for _, tc := range []struct {
		rcpt, fixture, reason, outcome, from string
	}{
		{ana, "arf-headers-only.eml", "complaint", "bounce-complaint", "fbl@complaints.example.net"},
		{dave, "postfix-5.1.1.eml", "hard_bounce", "bounce-hard", ""},
	} {
		addr, id, sender := sent(tc.rcpt)
		to := other(sender)
		report := bytes.ReplaceAll(bouncetest.Read(t, tc.fixture), []byte(fixtureVERP), []byte(addr))
		if err := sendSMTP(listens[to.name], tc.from, addr, report); err != nil {
			t.Fatalf("%s about %s's message to %s's listener: %v", tc.fixture, sender.name, to.name, err)
		}
		t.Logf("%s: sent by %s (queue id %s), report taken by %s", tc.rcpt, sender.name, id, to.name)
		for _, nd := range nodes {
			waitUntil(t, 20*time.Second, nd.name+" suppresses "+tc.rcpt+" ("+tc.reason+")", func() bool {
				r := nd.run("suppress", "check", tc.rcpt, "--json")
				return r.code == 0 && strings.Contains(r.stdout, fmt.Sprintf(`"reason":%q`, tc.reason))
			})
		}
		show := jsonLines[msgView](t, sender.mustRun(0, "queue", "show", id, "--json").stdout)
		if len(show) != 1 || len(show[0].History) == 0 || show[0].History[len(show[0].History)-1].Outcome != tc.outcome {
			t.Errorf("queue show %s on %s: %+v; want the last event %s", id, sender.name, show, tc.outcome)
		}
	}
	// Nothing was left waiting in a node's outbox.
	for _, nd := range nodes {
		if strings.Contains(readFile(t, nd.logPath), "kept in the outbox") {
			t.Errorf("%s kept a report in its outbox with NATS up", nd.name)
		}
	}
}

// TestClusterReportWhileCutOff: a complaint about node 1's (or 2's) message
// reaches node 3's listener while node 3 is cut off from NATS. Node 3
// answers 250 (the report kept, sealed, in its outbox), keeps it across a
// kill -9 and a restart still cut off, and hands it over once the link is
// back: the sending node applies it and every node suppresses the address.
func TestClusterReportWhileCutOff(t *testing.T) {
	bin := buildBinary(t)
	var nodes []*testNode
	for i := range 3 {
		h := newHarness(t, mtatest.Options{})
		if i > 0 { // one sink for the cluster
			h.write("postwarden.yaml", strings.ReplaceAll(readFile(t, h.cfgPath), h.sink.Addr, nodes[0].sink.Addr))
			h.sink = nodes[0].sink
		}
		nodes = append(nodes, &testNode{harness: h, name: fmt.Sprintf("n%d", i+1), natsAddr: listenAddr(t), routeAddr: listenAddr(t)})
	}
	shareKeys(t, nodes)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, p := range [][2]*testNode{{n1, n2}, {n2, n1}} {
		nd, other := p[0], p[1]
		nd.write("postwarden.yaml", readFile(t, nd.cfgPath)+fmt.Sprintf(`bounce_domain: %s
cluster:
  node: %s
  embedded:
    listen: %s
    cluster_listen: %s
    routes: ["nats://%s"]
  replicas: 1
`, bounceDomain, nd.name, nd.natsAddr, nd.routeAddr, other.routeAddr))
	}
	proxy := newLinkProxy(t, n1.natsAddr)
	metricsAddr, listen := listenAddr(t), listenAddr(t)
	n3.write("postwarden.yaml", readFile(t, n3.cfgPath)+fmt.Sprintf(`metrics_listen: %s
smtp_listen: %s
bounce_domain: %s
cluster:
  node: n3
  nats: nats://%s
  replicas: 1
  max_lag: 3s
`, metricsAddr, listen, bounceDomain, proxy.Addr()))
	t.Cleanup(func() {
		if t.Failed() {
			for _, nd := range nodes {
				t.Logf("%s log:\n%s", nd.name, tail(readFile(t, nd.logPath), 20000))
			}
		}
	})
	for _, nd := range nodes {
		nd.start(bin)
	}
	for _, nd := range nodes {
		nd.waitServing()
	}
	waitUntil(t, 2*time.Minute, "three nodes up, replicas caught up", func() bool {
		r := n1.run("--json", "cluster", "status")
		rs := jsonLines[clusterReport](t, r.stdout)
		if r.code != 0 || len(rs) != 1 || len(rs[0].Nodes) != 3 {
			return false
		}
		for _, m := range rs[0].Nodes {
			if !m.Up || m.Health.Stale != "" || m.Health.ReplicaPending > 0 {
				return false
			}
		}
		return true
	})

	// Cut node 3 off first: the campaign goes out from nodes 1 and 2 only.
	proxy.Cut()
	const ana = "ana@acme.example"
	n1.mustRun(0, "campaign", "send", n1.campaign("c-1", "email,first_name,company\n"+ana+",Ana,Co\n"))
	waitUntil(t, time.Minute, "ana's message at the sink", func() bool { return n1.sink.ByRecipient()[ana] > 0 })
	key, err := unsubscribe.LoadOrCreateKey(n1.config().TokenKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := verp.New(verpKey(key), bounceDomain)
	if err != nil {
		t.Fatal(err)
	}
	var addr, id string
	var sender *testNode
	for _, m := range n1.sink.Messages() {
		if m.To[0] == ana {
			q, tag, err := codec.Route(m.From)
			if err != nil {
				t.Fatalf("envelope sender %q: %v", m.From, err)
			}
			for _, nd := range []*testNode{n1, n2} {
				if verp.NodeTag(nd.name) == tag {
					addr, id, sender = m.From, q, nd
				}
			}
		}
	}
	if sender == nil {
		t.Fatal("ana's message was not sent by node 1 or 2")
	}

	arf := bytes.ReplaceAll(bouncetest.Read(t, "arf-headers-only.eml"), []byte(fixtureVERP), []byte(addr))
	if err := sendSMTP(listen, "fbl@complaints.example.net", addr, arf); err != nil {
		t.Fatalf("ARF to cut-off node 3: %v", err)
	}
	const gOutbox = "postwarden_cluster_reports_outbox"
	if m := scrape(t, metricsAddr, gOutbox); m[gOutbox] != 1 {
		t.Errorf("node 3 after the 250: outbox %v, want 1", m[gOutbox])
	}
	// kill -9 and restart, still cut off: the report is still kept.
	if err := n3.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n3.exited
	n3.start(bin)
	n3.waitServing()
	waitUntil(t, 10*time.Second, "node 3's outbox after the restart", func() bool { return scrape(t, metricsAddr, gOutbox)[gOutbox] == 1 })
	if suppressedOn(sender, ana) {
		t.Fatal("the sending node suppresses a complaint node 3 could not have handed over")
	}

	proxy.Heal()
	for _, nd := range nodes {
		waitUntil(t, time.Minute, nd.name+" suppresses the complaint taken on n3", func() bool {
			r := nd.run("suppress", "check", ana, "--json")
			return r.code == 0 && strings.Contains(r.stdout, `"reason":"complaint"`)
		})
	}
	show := jsonLines[msgView](t, sender.mustRun(0, "queue", "show", id, "--json").stdout)
	if len(show) != 1 || len(show[0].History) == 0 || show[0].History[len(show[0].History)-1].Outcome != "bounce-complaint" {
		t.Errorf("queue show %s on %s: %+v", id, sender.name, show)
	}
	waitUntil(t, 30*time.Second, "node 3's outbox empty", func() bool { return scrape(t, metricsAddr, gOutbox)[gOutbox] == 0 })
}
