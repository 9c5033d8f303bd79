package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/subject"
)

// TestClusterErasure (issue 13, promise 5): three nodes in capture mode,
// so every message they deliver is a capture file holding the recipient in
// clear under its data_dir. A campaign sent on node 2 (spread over the
// nodes in shares) reaches the person, and node 3 takes their sign-up to a
// list (consent events, and the confirmation's queue record and capture
// file on node 3). `subject erase` on node 1 erases them on every node:
// nodes 2 and 3 run the erasure by index when the tombstone reaches them
// (audited as "cluster:n1"), every node's export shows nothing but the
// tombstone, and after the three stop no file under any data_dir, the NATS
// store directory included, holds the address or the name. Node 1 also
// removes them from the campaign's sealed shard and their outcome from the
// share streams: the campaign counts eight recipients after it.
func TestClusterErasure(t *testing.T) {
	bin := buildBinary(t)
	nodes := newTestCluster(t, 3, mtatest.Options{})
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, nd := range nodes {
		nd.write("postwarden.yaml", strings.Replace(readFile(t, nd.cfgPath), "mode: mx", "mode: capture", 1))
	}
	n3.withLists()
	shareKeys(t, nodes)
	for _, nd := range nodes {
		nd.start(bin)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, nd := range nodes {
				t.Logf("%s log:\n%s", nd.name, tail(readFile(t, nd.logPath), 20000))
			}
		}
	})
	waitClusterReady(t, nodes)

	const (
		rcpt = "zbigniewa.kowalczyk@acme.example"
		name = "Zbigniewa"
	)
	csv := "email,first_name,company\n" + rcpt + "," + name + ",Acme\n"
	for i := range 8 {
		csv += fmt.Sprintf("r%d@globex.example,R%d,Globex\n", i, i)
	}
	n2.mustRun(0, "campaign", "send", n2.campaign("e-2", csv))
	waitUntil(t, 2*time.Minute, "e-2 delivered", func() bool {
		st := jsonLines[campaignStatus](t, n2.mustRun(0, "--json", "campaign", "status", "e-2").stdout)
		return len(st) == 1 && st[0].Cluster != nil && st[0].Cluster.Outcomes["delivered"] == 9 && st[0].Cluster.Pending == 0
	})
	if code, page := postForm(t, "http://"+n3.httpAddr+"/subscribe", url.Values{"list": {"news"}, "email": {rcpt}, "name": {name + " Kowalczyk"},
		"company": {"Acme"}, "consent_text": {"newsletter-consent-v2"}}); code != 200 {
		t.Fatalf("sign-up on node 3: %d\n%s", code, page)
	}
	export := func(nd *testNode) subject.Data {
		r := nd.mustRun(0, "--json", "subject", "export", rcpt, "--reason", "DSAR-9 check")
		var x subject.Data
		if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &x); err != nil {
			t.Fatalf("%s export: %v\n%s", nd.name, err, r.stdout)
		}
		return x
	}
	waitUntil(t, 30*time.Second, "node 3 captures the confirmation", func() bool {
		x := export(n3)
		return len(x.Subscriber) == 1 && len(x.Captures) >= 1
	})
	held := 0
	for _, nd := range nodes {
		x := export(nd)
		t.Logf("%s before the erasure: %d messages, %d capture files, %d consent histories", nd.name, len(x.Messages), len(x.Captures), len(x.Subscriber))
		held += len(x.Messages)
	}
	if held != 2 { // the campaign's message on one node, the confirmation on node 3
		t.Fatalf("the person's messages across the nodes: %d, want 2", held)
	}
	// The test means something: the data_dirs hold the person in clear.
	for _, needle := range []string{rcpt, name} {
		found := false
		for _, nd := range nodes {
			found = found || len(scanData(t, nd.config().DataDir, needle)) > 0
		}
		if !found {
			t.Fatalf("no data_dir holds %q before the erasure", needle)
		}
	}

	n1.mustRun(0, "subject", "erase", rcpt, "--reason", "DSAR-9 erasure request")
	for _, nd := range []*testNode{n2, n3} {
		waitUntil(t, 30*time.Second, nd.name+" erases by index", func() bool {
			for _, e := range jsonLines[audit.Entry](t, nd.mustRun(0, "--json", "audit", "ls").stdout) {
				if e.Who == "cluster:n1" && e.Action == "subject.erase" && strings.HasPrefix(e.Target, "subject:") {
					return true
				}
			}
			return false
		})
	}
	for _, nd := range nodes {
		x := export(nd)
		if len(x.Messages) != 0 || len(x.Captures) != 0 || len(x.Suppression) != 1 || x.Suppression[0].Reason != "erased" {
			t.Errorf("%s after the erasure: %d messages, %d capture files, suppression %+v", nd.name, len(x.Messages), len(x.Captures), x.Suppression)
		}
		for _, h := range x.Subscriber {
			for _, ev := range h.Events {
				if ev.Kind != "erased" {
					t.Errorf("%s after the erasure: consent event %+v", nd.name, ev)
				}
			}
		}
	}

	// Their row left the campaign's sealed shard and their outcome the
	// outcome stream: the cluster-wide status counts the eight others.
	st := jsonLines[campaignStatus](t, n3.mustRun(0, "--json", "campaign", "status", "e-2").stdout)
	if len(st) != 1 || st[0].Cluster == nil || st[0].Cluster.Recipients != 8 ||
		st[0].Cluster.Outcomes["delivered"] != 8 || st[0].Cluster.Pending != 0 {
		for _, c := range st {
			t.Logf("campaign e-2 cluster-wide: %+v", c.Cluster)
		}
		t.Error("campaign e-2 after the erasure: want 8 recipients, 8 delivered, none pending")
	}

	for _, nd := range nodes {
		if err := nd.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range nodes {
		select {
		case <-nd.exited:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not stop on SIGTERM", nd.name)
		}
	}
	for _, nd := range nodes {
		dir := nd.config().DataDir
		if _, err := os.Stat(filepath.Join(dir, "nats")); err != nil {
			t.Errorf("%s: no NATS store directory in its data_dir: %v", nd.name, err)
		}
		if hits := scanData(t, dir, rcpt, name); len(hits) > 0 {
			t.Errorf("%s: the erased person is still in %v", nd.name, hits)
		}
	}
}

// waitClusterReady waits until the three nodes serve and their replicas
// have caught up (startCluster3 after start).
func waitClusterReady(t *testing.T, nodes []*testNode) {
	t.Helper()
	for _, nd := range nodes {
		nd.waitServing()
	}
	waitUntil(t, 2*time.Minute, "three nodes up, replicas caught up", func() bool {
		r := nodes[0].run("--json", "cluster", "status")
		if r.code != 0 {
			return false
		}
		rs := jsonLines[clusterReport](t, r.stdout)
		if len(rs) != 1 || len(rs[0].Nodes) != 3 {
			return false
		}
		for _, m := range rs[0].Nodes {
			if !m.Up || m.Health.Stale != "" || m.Health.ReplicaPending > 0 {
				return false
			}
		}
		return true
	})
}
