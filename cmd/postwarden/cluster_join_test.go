package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// TestClusterNodeJoins (issue 13, promise 7): a fourth node with an empty
// data_dir joins a running cluster from the snapshot node 1 put after an
// erasure, reads the stream from the snapshot's sequence + 1 only, and then
// honours the changes from before the snapshot (an unsubscribe, the
// erasure) and after it (a domain suppressed on node 2). A campaign the
// three finished before it joined is not its to report: `campaign report`
// there says so and names the nodes that took part.
func TestClusterNodeJoins(t *testing.T) {
	nodes := startCluster3(t)
	n1, n2 := nodes[0], nodes[1]
	n1.mustRun(0, "suppress", "add", "ana@acme.example", "--reason", "manual")
	n1.mustRun(0, "suppress", "add", "erin@acme.example", "--reason", "manual")
	n1.mustRun(0, "subject", "erase", "erin@acme.example", "--reason", "DSAR-7 erasure request")
	// The node that made an erasure puts a fresh snapshot at once.
	waitUntil(t, 30*time.Second, "node 1 puts a snapshot", func() bool {
		return strings.Contains(readFile(t, n1.logPath), "suppression snapshot put")
	})
	n2.mustRun(0, "suppress", "add", "@late.example", "--reason", "manual")
	csv := "email,first_name,company\n"
	for i := range 6 {
		csv += fmt.Sprintf("early%d@%s,E%d,Acme\n", i, testDomains[i%len(testDomains)], i)
	}
	n1.mustRun(0, "campaign", "send", n1.campaign("before-n4", csv))
	var doneBy map[string]int
	waitUntil(t, 2*time.Minute, "the campaign finished before node 4 joins", func() bool {
		st := jsonLines[campaignStatus](t, n1.mustRun(0, "--json", "campaign", "status", "before-n4").stdout)
		if len(st) != 1 || st[0].Cluster == nil || st[0].Cluster.Pending != 0 {
			return false
		}
		doneBy = st[0].Cluster.DoneBy
		return true
	})

	// Node 4: NATS client of the three embedded servers, node 1's keys.
	h := newHarness(t, mtatest.Options{})
	h.write("postwarden.yaml", strings.ReplaceAll(readFile(t, h.cfgPath), h.sink.Addr, n1.sink.Addr))
	h.sink = n1.sink
	n4 := &testNode{harness: h, name: "n4"}
	var urls []string
	for _, nd := range nodes {
		urls = append(urls, "nats://"+nd.natsAddr)
	}
	n4.write("postwarden.yaml", readFile(t, n4.cfgPath)+fmt.Sprintf("cluster:\n  node: n4\n  nats: %q\n  replicas: 3\n", strings.Join(urls, ",")))
	from, to := n1.config(), n4.config()
	for src, dst := range map[string]string{from.TokenKeyFile: to.TokenKeyFile, from.DataKeyFile: to.DataKeyFile} {
		key, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, key, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	n4.bin = n1.bin
	n4.start(n4.bin)
	n4.waitServing()

	type local struct {
		Local struct {
			Halted  string `json:"halted"`
			Replica struct {
				AppliedSeq, StreamLast, Snapshot, FirstSeq, Applied uint64
				Stale                                               bool
			} `json:"replica"`
		} `json:"local"`
	}
	var last local
	waitUntil(t, time.Minute, "node 4 caught up", func() bool {
		r := n4.run("--json", "cluster", "status")
		last = local{}
		if err := json.Unmarshal([]byte(firstLine(r.stdout)), &last); err != nil {
			return false
		}
		rp := last.Local.Replica
		return !rp.Stale && last.Local.Halted == "" && rp.AppliedSeq > 0 && rp.AppliedSeq == rp.StreamLast
	})
	rp := last.Local.Replica
	if rp.Snapshot == 0 || rp.FirstSeq != rp.Snapshot+1 || rp.Applied != rp.AppliedSeq-rp.Snapshot {
		t.Fatalf("node 4 joined from snapshot %d, first applied %d, applied %d of %d; want a snapshot and the tail only", rp.Snapshot, rp.FirstSeq, rp.Applied, rp.AppliedSeq)
	}
	for _, addr := range []string{"ana@acme.example", "erin@acme.example", "x@late.example"} {
		if !suppressedOn(n4, addr) {
			t.Errorf("node 4 does not suppress %s", addr)
		}
	}
	r := n4.run("campaign", "report", "before-n4")
	if r.code != 1 || !strings.Contains(r.stderr, "this node took no part in it") {
		t.Errorf("report on node 4, which took no part: exit %d, %s", r.code, r.stderr)
	}
	for node := range doneBy {
		if !strings.Contains(r.stderr, node) {
			t.Errorf("the refusal %q does not name %s, which took part (shares done by %v)", r.stderr, node, doneBy)
		}
	}
}

// firstLine is s up to its first newline.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
