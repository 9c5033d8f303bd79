package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/bounce/bouncetest"
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
