package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/campaign/report"
	"github.com/postwarden/postwarden/mta/mtatest"
)

// TestClusterPauseHoldsEveryNode: `campaign pause` on node 1 while the
// campaign runs on all three nodes holds every node's deliveries of it (no
// node starts one more than a second after the pause answered), and
// `campaign resume` on node 3 lets every node finish it, each recipient
// delivered once.
func TestClusterPauseHoldsEveryNode(t *testing.T) {
	nodes := startCluster3(t, mtatest.Options{DataDelay: 20 * time.Millisecond})
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	const n = 1500
	n1.mustRun(0, "campaign", "send", n1.campaign("held", spreadCSV(n)))
	waitUntil(t, 2*time.Minute, "the campaign under way on every node", func() bool {
		st := jsonLines[campaignStatus](t, n1.mustRun(0, "--json", "campaign", "status", "held").stdout)
		// Other nodes hold shares too: the pause must reach them.
		return len(st) == 1 && st[0].Cluster != nil && len(st[0].Cluster.Holders) >= 2 && n1.sink.Count() >= n/10
	})

	n1.mustRun(0, "campaign", "pause", "held", "--reason", "complaints from one customer")
	pausedAt := time.Now()
	// Every node is told: its own status says paused.
	for _, nd := range []*testNode{n2, n3} {
		waitUntil(t, 10*time.Second, nd.name+" paused", func() bool {
			return strings.Contains(nd.mustRun(0, "campaign", "status", "held").stdout, "paused         yes")
		})
	}
	time.Sleep(3 * time.Second)
	atResume := n1.sink.Count()
	var late []string
	for _, m := range n1.sink.Messages() {
		if m.Started.Sub(pausedAt) > time.Second {
			late = append(late, m.To[0])
		}
	}
	if len(late) > 0 {
		t.Errorf("%d deliveries started more than 1 s after the pause (first: %s)", len(late), late[0])
	}
	if atResume >= n {
		t.Fatalf("the campaign finished before the pause: nothing was tested")
	}

	n3.mustRun(0, "campaign", "resume", "held", "--reason", "customer answered")
	waitUntil(t, 4*time.Minute, "the campaign finished cluster-wide after the resume", func() bool {
		st := jsonLines[campaignStatus](t, n1.mustRun(0, "--json", "campaign", "status", "held").stdout)
		return len(st) == 1 && st[0].Cluster != nil && st[0].Cluster.Pending == 0
	})
	got := n1.sink.ByRecipient()
	for i := range n {
		a := fmt.Sprintf("r%d@%s", i, testDomains[i%len(testDomains)])
		if c := got[a]; c != 1 {
			t.Errorf("%s delivered %d times", a, c)
			break
		}
	}
	t.Logf("%d of %d delivered before the pause held; the rest after the resume on node 3", atResume, n)

	// The compliance report made on another node that took part carries
	// the cluster's figures, equal to campaign status there; a node that
	// took no part says where to make it.
	st := jsonLines[campaignStatus](t, n1.mustRun(0, "--json", "campaign", "status", "held").stdout)
	other := n2
	if st[0].Cluster.DoneBy[n2.name] == 0 {
		other = n3
		if r := n2.run("campaign", "report", "held"); r.code != 1 || !strings.Contains(r.stderr, "took no part") {
			t.Errorf("report on node 2, which took no part: exit %d, %s", r.code, r.stderr)
		}
	}
	if st[0].Cluster.DoneBy[other.name] == 0 {
		t.Fatalf("shares done by %v: neither node 2 nor node 3 took part", st[0].Cluster.DoneBy)
	}
	st = jsonLines[campaignStatus](t, other.mustRun(0, "--json", "campaign", "status", "held").stdout)
	rep := jsonLines[report.Report](t, other.mustRun(0, "--json", "campaign", "report", "held").stdout)
	if len(st) != 1 || st[0].Cluster == nil || len(rep) != 1 || rep[0].Cluster == nil {
		t.Fatalf("status %+v, report %+v: want both with the cluster's figures", st, rep)
	}
	c := rep[0].Cluster
	if c.Node != other.name || c.Recipients != st[0].Cluster.Recipients || c.Pending != st[0].Cluster.Pending ||
		c.Outcomes["delivered"] != st[0].Cluster.Outcomes["delivered"] || c.Recipients != n {
		t.Errorf("report's cluster figures %+v, status %+v", c, st[0].Cluster)
	}
	page := other.mustRun(0, "campaign", "report", "held", "--out", "-").stdout
	if want := fmt.Sprintf(`data-figure="cluster_recipients">%d<`, n); !strings.Contains(page, want) {
		t.Errorf("the report page lacks %s", want)
	}

	// A campaign's rate and brakes, armed on node 1, hold on every node:
	// the rate divided among the three nodes up, the brakes as the file says.
	file := n1.campaign("armed", "email,first_name,company\nx1@acme.example,X,Acme\n")
	n1.write("armed.yaml", readFile(t, file)+"rate: 90/s\nbrakes: {complaint_rate: 0.2%, min_sample: 300}\n")
	n1.mustRun(0, "campaign", "send", file)
	for _, nd := range nodes {
		waitUntil(t, 20*time.Second, nd.name+" armed with the campaign's settings", func() bool {
			r := nd.run("--json", "campaign", "status", "armed")
			if r.code != 0 {
				return false
			}
			st := jsonLines[campaignStatus](t, r.stdout)
			return len(st) == 1 && st[0].Rate == 30 && st[0].Brake != nil &&
				st[0].Brake.Thresholds.ComplaintRate == 0.002 && st[0].Brake.Thresholds.MinSample == 300
		})
	}
}
