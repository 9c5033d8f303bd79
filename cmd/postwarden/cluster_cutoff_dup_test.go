package main

import (
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
)

// TestClusterCutOffDuplicates: issue 13, promises 2 and 4, for a node cut
// off from NATS mid-campaign rather than killed. Node 3 holds a share of a
// 3,000-recipient campaign when the link is cut; it keeps running. Within
// max_lag (+1 s) of the cut it starts no delivery until the link is
// healed; its lease runs out and nodes 1 and 2 take its shares over. Every
// recipient is delivered; those sent twice are all node 3's, at most its
// unsettled window (queue.MaxUnsettled(delivery.workers), docs/cluster.md). Healed, node
// 3 takes part in a second campaign and delivers no recipient another node
// delivered. Each node says EHLO with its own name: the sink tells who
// sent what.
func TestClusterCutOffDuplicates(t *testing.T) {
	const (
		n      = 3000 // 12 shards: all three nodes take some (4 shards' room each)
		n2     = 3000 // campaign 2
		lease  = 5 * time.Second
		maxLag = 3 * time.Second // startCutOffCluster's, on node 3
	)
	nodes, proxy, metricsAddr := startCutOffCluster(t, mtatest.Options{DataDelay: 10 * time.Millisecond}, "  lease: 5s\n", func(nd *testNode) {
		nd.write("postwarden.yaml", strings.Replace(readFile(t, nd.cfgPath), "hostname: mail.test.example", "hostname: "+nd.name+".test.example", 1))
	})
	n1, n3 := nodes[0], nodes[2]
	sink := n1.sink
	node := func(m mtatest.Received) string { return strings.TrimSuffix(m.Helo, ".test.example") }
	status := func(camp string) *clusterCampaign {
		st := jsonLines[campaignStatus](t, n1.mustRun(0, "--json", "campaign", "status", camp).stdout)
		if len(st) != 1 {
			return nil
		}
		return st[0].Cluster
	}
	sentBy := func(nd string, since time.Time) int {
		k := 0
		for _, m := range sink.Messages() {
			if node(m) == nd && !m.Started.Before(since) {
				k++
			}
		}
		return k
	}

	// Campaign 1 (r0@…): node 3 takes a share and delivers from it.
	n1.mustRun(0, "campaign", "send", n1.campaign("cut-1", spreadCSV(n)))
	waitUntil(t, 2*time.Minute, "node 3 delivering a share it holds", func() bool {
		if sentBy("n3", time.Time{}) < 50 {
			return false
		}
		c := status("cut-1")
		return c != nil && c.Holders["n3"] > 0
	})

	proxy.Cut()
	cutAt := time.Now()
	atCut := sink.Count()
	const gStale = "postwarden_cluster_replica_stale"
	waitUntil(t, 30*time.Second, "node 3's replica stale", func() bool { return scrape(t, metricsAddr, gStale)[gStale] == 1 })
	// Kept cut off until its lease ran out on both sides and nodes 1 and 2
	// hold (or finished) every share node 3 held: they take them over once
	// their spools have room.
	waitUntil(t, 2*time.Minute, "node 3's shares taken over", func() bool {
		c := status("cut-1")
		return time.Since(cutAt) > lease+maxLag && c != nil && c.Holders["n3"] == 0
	})
	if !strings.Contains(readFile(t, n3.logPath), "share lease lost") {
		t.Errorf("node 3's log does not say it lost its lease")
	}
	proxy.Heal()
	healAt := time.Now()
	t.Logf("cut at %d messages at the sink, healed at %d, %v later", atCut, sink.Count(), healAt.Sub(cutAt).Round(100*time.Millisecond))
	// Node 1's status would show node 3 up on its last beat before the cut:
	// ask node 3 itself whether it reconnected and resumed.
	waitUntil(t, time.Minute, "node 3 reconnected, not halted", func() bool {
		if scrape(t, metricsAddr, gStale)[gStale] != 0 {
			return false
		}
		r := n3.run("--json", "cluster", "status")
		rs := jsonLines[clusterReport](t, r.stdout)
		return r.code == 0 && len(rs) == 1 && rs[0].Local != nil && rs[0].Local.Halted == "" &&
			rs[0].Local.NATS != nil && rs[0].Local.NATS.Connected
	})
	t.Logf("node 3 healthy %v after the heal", time.Since(healAt).Round(100*time.Millisecond))

	waitUntil(t, 2*time.Minute, "campaign 1 delivered and recorded", func() bool {
		c := status("cut-1")
		return len(sink.ByRecipient()) >= n && c != nil && c.Pending == 0
	})
	// Node 3's watch of the share bucket resumes once the NATS client has
	// recreated its consumer, gone while cut off (docs/cluster.md): a pause
	// of the finished campaign 1 on node 1 shows when node 3 sees the
	// bucket again. Then campaign 2 is a race all three nodes run.
	n1.mustRun(0, "campaign", "pause", "cut-1", "--reason", "probe: node 3 watching the bucket again")
	waitUntil(t, time.Minute, "node 3 applies a pause made on node 1", func() bool {
		return strings.Contains(readFile(t, n3.logPath), "cluster pause applied")
	})
	t.Logf("node 3 sees the share bucket %v after the heal", time.Since(healAt).Round(100*time.Millisecond))

	// Campaign 2 (rcpt000@…, 12 shards; nodes 1 and 2 hold 8 at most):
	// node 3 takes part.
	sent2 := time.Now()
	n1.mustRun(0, "campaign", "send", n1.campaign("cut-2", bulkCSV(n2)))
	waitUntil(t, 3*time.Minute, "campaign 2 delivered and recorded", func() bool {
		c := status("cut-2")
		return len(sink.ByRecipient()) >= n+n2 && c != nil && c.Pending == 0
	})
	time.Sleep(2 * time.Second) // let late deliveries in, to count them

	msgs := sink.Messages()
	if got := len(sink.ByRecipient()); got != n+n2 {
		t.Errorf("%d recipients at the sink, want %d", got, n+n2)
	}
	// Which nodes sent each recipient, and when node 3 started each of its
	// deliveries (MAIL FROM: after that, the sink has it).
	senders := map[string][]string{}
	byNode := map[string]int{}
	var afterCut int
	lastAfterCut := time.Time{}
	haltBy := cutAt.Add(maxLag + time.Second) // docs/cluster.md: halted by max_lag + 1 s
	for _, m := range msgs {
		nd, rcpt := node(m), strings.ToLower(m.To[0])
		senders[rcpt] = append(senders[rcpt], nd)
		byNode[nd]++
		if nd != "n3" || !m.Started.After(cutAt) || !m.Started.Before(healAt) {
			continue
		}
		afterCut++
		lastAfterCut = m.Started
		if m.Started.After(haltBy) {
			t.Errorf("node 3 started a delivery to %s %v after the cut, past max_lag + 1 s and before the link was healed",
				m.To[0], m.Started.Sub(cutAt).Round(10*time.Millisecond))
		}
	}
	workers := n3.config().Delivery.Workers
	bound := queue.MaxUnsettled(workers)
	if afterCut > 0 {
		t.Logf("node 3 started %d deliveries after the cut, the last %v after it", afterCut, lastAfterCut.Sub(cutAt).Round(10*time.Millisecond))
	}
	// No outcome of node 3 reaches the cluster after the cut, so its runner
	// claims nothing once its window is full (the strict one as soon as its
	// publisher stalls): it stops long before max_lag.
	if afterCut > bound {
		t.Errorf("node 3 started %d deliveries after the cut, more than its window of queue.MaxUnsettled(%d workers) = %d", afterCut, workers, bound)
	}
	dups := 0
	for rcpt, ns := range senders {
		if len(ns) < 2 {
			continue
		}
		dups += len(ns) - 1
		// A recipient sent twice is one of node 3's window at the cut, sent
		// again by the node that took its share over.
		if strings.HasPrefix(rcpt, "rcpt") || strings.Count(strings.Join(ns, " "), "n3") != 1 {
			t.Errorf("%s sent by %v: a duplicate not from node 3's window", rcpt, ns)
		}
	}
	// Healed, node 3 sends only recipients nobody else sent.
	afterHeal, first2 := 0, time.Time{}
	for _, m := range msgs {
		if node(m) == "n3" && !m.Started.Before(healAt) {
			afterHeal++
			if strings.HasPrefix(m.To[0], "rcpt") && first2.IsZero() {
				first2 = m.Started
			}
			if ns := senders[strings.ToLower(m.To[0])]; len(ns) != 1 {
				t.Errorf("node 3, healed, delivered to %s, also sent by %v", m.To[0], ns)
			}
		}
	}
	t.Logf("by node %v; node 3 after the heal %d; %d recipients sent twice (bound %d)", byNode, afterHeal, dups, bound)
	if first2.IsZero() {
		t.Errorf("node 3 delivered nothing of campaign 2, sent after it was healed")
	} else {
		t.Logf("node 3's first delivery of campaign 2 %v after it was sent", first2.Sub(sent2).Round(100*time.Millisecond))
	}
	if dups > bound {
		t.Errorf("%d recipients sent twice, over the bound of queue.MaxUnsettled(%d workers) = %d", dups, workers, bound)
	}
	for camp, want := range map[string]int{"cut-1": n, "cut-2": n2} {
		if c := status(camp); c == nil || c.Outcomes["delivered"] != want {
			t.Errorf("cluster status of %s %+v: want %d delivered", camp, c, want)
		}
	}
	if log := readFile(t, n3.logPath); !strings.Contains(log, "deliveries resumed") {
		t.Errorf("node 3's log does not say deliveries resumed")
	}
}
