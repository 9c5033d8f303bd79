package main

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/audit/auditstream"
)

// shareKeys gives every node the same token.key and data.key, as
// docs/cluster.md tells operators to.
func shareKeys(t *testing.T, nodes []*testNode) {
	t.Helper()
	token, data := make([]byte, 32), make([]byte, 32)
	rand.Read(token)
	rand.Read(data)
	for _, nd := range nodes {
		cfg := nd.config()
		for path, key := range map[string][]byte{cfg.TokenKeyFile: token, cfg.DataKeyFile: data} {
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, key, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestClusterAuditVerify: three nodes each audit a suppression; `audit
// verify --cluster` on node 1 verifies all three chains as published. Node
// 1's audit.db is then rewritten while it is stopped (an entry's reason
// changed and the chain recomputed, so the local chain alone verifies);
// restarted, `audit verify --cluster` names that entry and exits 1.
func TestClusterAuditVerify(t *testing.T) {
	bin := buildBinary(t)
	nodes := newTestCluster(t, 3, mtatest.Options{})
	shareKeys(t, nodes)
	for _, nd := range nodes {
		nd.start(bin)
	}
	for _, nd := range nodes {
		nd.waitServing()
	}
	for _, nd := range nodes {
		nd.mustRun(0, "suppress", "add", "someone-"+nd.name+"@example.com", "--reason", "manual", "--note", "asked by phone")
	}
	n1 := nodes[0]
	var last result
	waitUntil(t, 2*time.Minute, "three chains published and verified", func() bool {
		last = n1.run("--json", "audit", "verify", "--cluster")
		if last.code != 0 {
			return false
		}
		ok := 0
		for _, l := range strings.Split(strings.TrimSpace(last.stdout), "\n") {
			var r auditstream.NodeResult
			if json.Unmarshal([]byte(l), &r) == nil && r.Node != "" && r.OK && r.Entries > 0 {
				ok++
			}
		}
		return ok == 3
	})
	if text := n1.mustRun(0, "audit", "verify", "--cluster").stdout; !strings.Contains(text, "node n1: audit chain verified") || !strings.Contains(text, "matches the local log") {
		t.Errorf("audit verify --cluster:\n%s", text)
	}

	// Stop node 1, rewrite its audit.db with care, start it again.
	if err := n1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-n1.exited
	path := filepath.Join(n1.config().DataDir, "audit.db")
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("entries"))
		prev, bad := "", uint64(0)
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var e audit.Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if bad == 0 && e.Action == "suppress.add" {
				e.Reason, bad = "nothing to see", e.Seq
			}
			if e.Seq > 1 {
				e.Prev = prev
			}
			e.Hash = audit.Hash(e)
			prev = e.Hash
			nv, _ := json.Marshal(e)
			if err := b.Put(append([]byte(nil), k...), nv); err != nil {
				return err
			}
		}
		if bad == 0 {
			t.Error("no suppress.add entry in node 1's log")
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	n1.start(bin)
	n1.waitServing()
	n1.mustRun(0, "audit", "verify") // the local chain alone
	r := n1.mustRun(1, "audit", "verify", "--cluster")
	if !strings.Contains(r.stdout, "node n1: audit chain BROKEN") || !strings.Contains(r.stdout, "altered on disk") ||
		!strings.Contains(r.stdout, "node n2: audit chain verified") {
		t.Errorf("audit verify --cluster after the rewrite:\n%s\n%s", r.stdout, r.stderr)
	}
}

// TestAuditVerifyClusterOnSingleNode: --cluster without a cluster section
// is a usage error (exit 2) that says so; plain verify still works.
func TestAuditVerifyClusterOnSingleNode(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mustRun(0, "suppress", "add", "ana@example.com", "--reason", "manual")
	h.mustRun(0, "audit", "verify")
	if r := h.mustRun(2, "audit", "verify", "--cluster"); !strings.Contains(r.stderr, "single node") {
		t.Errorf("stderr: %s", r.stderr)
	}
}
