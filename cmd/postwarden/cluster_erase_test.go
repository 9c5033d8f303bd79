package main

import (
	"encoding/json"
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

// TestClusterErasure (issue 13, promise 5): a person is held on nodes 2
// and 3 — node 2 (capture mode) sent them a campaign and keeps the capture
// file, node 3 sent them one and holds their sign-up to a list — and node 1
// holds nothing but the stream. `subject erase` on node 1 erases them on
// every node: nodes 2 and 3 run the erasure by index when the tombstone
// reaches them (audited as "cluster:n1"), their exports show nothing, and
// after the three stop no file under any data_dir, the NATS store
// directory included, holds the address or the name.
func TestClusterErasure(t *testing.T) {
	bin := buildBinary(t)
	nodes := newTestCluster(t, 3, mtatest.Options{})
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	n2.write("postwarden.yaml", strings.Replace(readFile(t, n2.cfgPath), "mode: mx", "mode: capture", 1))
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
	csv := "email,first_name,company\n" + rcpt + "," + name + ",Acme\nbob@globex.example,Bob,Globex\n"
	n2.mustRun(0, "campaign", "send", n2.campaign("e-2", csv))
	n2.waitDelivered("e-2", 2)
	n3.mustRun(0, "campaign", "send", n3.campaign("e-3", csv))
	n3.waitDelivered("e-3", 2)
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
	if x := export(n2); len(x.Messages) != 1 || len(x.Captures) != 1 {
		t.Fatalf("node 2 before the erasure: %d messages, %d capture files", len(x.Messages), len(x.Captures))
	}
	if x := export(n3); len(x.Messages) < 1 || len(x.Subscriber) != 1 {
		t.Fatalf("node 3 before the erasure: %d messages, %d consent histories", len(x.Messages), len(x.Subscriber))
	}
	// The test means something: node 2's data_dir holds the person in clear.
	if hits := scanData(t, n2.config().DataDir, rcpt, name); len(hits) == 0 {
		t.Fatal("node 2's data_dir does not hold the person before the erasure")
	}

	n1.mustRun(0, "subject", "erase", rcpt, "--reason", "DSAR-9 erasure request")
	for _, nd := range []*testNode{n2, n3} {
		waitUntil(t, 30*time.Second, nd.name+" erases by index", func() bool {
			for _, e := range jsonLines[audit.Entry](t, nd.mustRun(0, "--json", "audit", "ls").stdout) {
				if e.Who == "cluster:n1" && e.Action == "subject.erase" {
					return true
				}
			}
			return false
		})
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
	if x := export(n2); len(x.Messages) != 0 {
		t.Errorf("node 2: %+v", x.Messages)
	}
	if r := n3.mustRun(0, "--json", "queue", "ls", "--campaign", "e-3"); strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("node 3's queue for e-3 after the erasure (bob's message only):\n%s", r.stdout)
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
