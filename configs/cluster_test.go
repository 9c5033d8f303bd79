package configs

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestClusterSection reads the example and the defaults.
func TestClusterSection(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "node.creds")
	os.WriteFile(creds, []byte("-----BEGIN NATS USER JWT-----\n"), 0o600)
	p := filepath.Join(dir, "pw.yaml")
	os.WriteFile(p, []byte(serverHead+`cluster:
  node: mta1
  nats: "nats://10.0.0.1:4222, tls://u:secret@10.0.0.2:4222"
  credentials: node.creds
  embedded:
    listen: 127.0.0.1:4222
    cluster_listen: 127.0.0.1:6222
    routes: ["nats://127.0.0.1:6223", "nats://127.0.0.1:6224"]
    store_dir: ""
  replicas: 3
  max_lag: 30s
  lease: 15s
  snapshot_every: 30m
`), 0o644)
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	c := s.Cluster
	if c == nil {
		t.Fatal("no cluster")
	}
	if c.Node != "mta1" || c.Credentials != creds || c.Replicas != 3 || c.MaxLag != 30*time.Second || c.Lease != 15*time.Second || c.SnapshotEvery != 30*time.Minute {
		t.Errorf("cluster %+v", c)
	}
	if want := []string{"nats://10.0.0.1:4222", "tls://u:secret@10.0.0.2:4222"}; !reflect.DeepEqual(c.NATSURLs(), want) {
		t.Errorf("NATSURLs %v", c.NATSURLs())
	}
	want := &Embedded{Listen: "127.0.0.1:4222", ClusterListen: "127.0.0.1:6222",
		Routes: []string{"nats://127.0.0.1:6223", "nats://127.0.0.1:6224"}, StoreDir: filepath.Join(dir, "var", "nats")}
	if !reflect.DeepEqual(c.Embedded, want) {
		t.Errorf("embedded %+v", c.Embedded)
	}

	// Embedded alone: connect to it; the defaults.
	os.WriteFile(p, []byte(serverHead+"cluster:\n  node: n-2\n  embedded: {listen: \"0.0.0.0:4222\", cluster_listen: \":6222\"}\n"), 0o644)
	if s, err = LoadServer(p); err != nil {
		t.Fatal(err)
	}
	c = s.Cluster
	if got := c.NATSURLs(); !reflect.DeepEqual(got, []string{"nats://127.0.0.1:4222"}) {
		t.Errorf("embedded NATSURLs %v", got)
	}
	if c.Replicas != DefaultClusterReplicas || c.MaxLag != DefaultClusterMaxLag || c.Lease != DefaultClusterLease || c.SnapshotEvery != time.Hour {
		t.Errorf("defaults %+v", c)
	}

	// Absent: a single node.
	os.WriteFile(p, []byte(serverHead), 0o644)
	if s, err = LoadServer(p); err != nil || s.Cluster != nil {
		t.Errorf("no cluster section: %+v %v", s.Cluster, err)
	}
}

// TestClusterErrors: each mistake is named by its field and line, and a
// password in a URL is never echoed.
func TestClusterErrors(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose.creds")
	os.WriteFile(loose, []byte("SUAAAA\n"), 0o644)
	for _, c := range []struct{ yaml, want string }{
		{"cluster:\n  nats: nats://127.0.0.1:4222\n", `pw.yaml:6: missing required key "cluster.node"`},
		{"cluster:\n  node: a.b\n  nats: nats://127.0.0.1:4222\n", `pw.yaml:6: cluster.node: "a.b" must be 1-63`},
		{"cluster:\n  node: mta1\n", `pw.yaml:5: cluster: needs nats (an existing NATS cluster) or embedded`},
		{"cluster:\n  node: mta1\n  nats: http://10.0.0.1:4222\n", `pw.yaml:7: cluster.nats: "http://10.0.0.1:4222": scheme "http"`},
		{"cluster:\n  node: mta1\n  nats: nats://u:hunter2@10.0.0.1\n", `pw.yaml:7: cluster.nats: "nats://***@10.0.0.1": want host:port`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222,\n", `cluster.nats: has an empty URL between commas`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222\n  credentials: " + loose + "\n", `pw.yaml:8: cluster.credentials: "` + loose + `" has mode 0644`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222\n  credentials: missing.creds\n", `pw.yaml:8: cluster.credentials: credentials: stat`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222\n  replicas: 7\n", `pw.yaml:8: cluster.replicas: 7 must be between 1 and 5`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222\n  max_lag: soon\n", `pw.yaml:8: cluster.max_lag: "soon" is not a duration`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222\n  lease: 0s\n", `pw.yaml:8: cluster.lease: "0s" must be positive`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222\n  snapshot_every: 30s\n", `pw.yaml:8: cluster.snapshot_every: "30s" must be at least 1m0s`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222\n  snapshot_every: hourly\n", `pw.yaml:8: cluster.snapshot_every: "hourly" is not a duration`},
		{"cluster:\n  node: mta1\n  embedded: {listen: 127.0.0.1:4222}\n", `pw.yaml:7: missing required key "cluster.embedded.cluster_listen"`},
		{"cluster:\n  node: mta1\n  embedded:\n    listen: localhost\n    cluster_listen: 127.0.0.1:6222\n", `pw.yaml:8: cluster.embedded.listen: "localhost": want host:port`},
		{"cluster:\n  node: mta1\n  embedded:\n    listen: 127.0.0.1:4222\n    cluster_listen: 127.0.0.1:99999\n", `pw.yaml:9: cluster.embedded.cluster_listen: "127.0.0.1:99999": port "99999" is not 1-65535`},
		{"cluster:\n  node: mta1\n  embedded:\n    listen: 127.0.0.1:4222\n    cluster_listen: 127.0.0.1:6222\n    routes:\n      - nats://127.0.0.1:6223\n      - 127.0.0.1:6224\n", `pw.yaml:12: cluster.embedded.routes[1]: "127.0.0.1:6224": want nats://host:port`},
		{"cluster:\n  node: mta1\n  embedded:\n    listen: 127.0.0.1:4222\n    cluster_listen: 127.0.0.1:6222\n    routes: 5\n", `pw.yaml:10: cluster.embedded.routes: expected a list of URLs`},
		{"cluster:\n  node: mta1\n  nats: nats://10.0.0.1:4222\n  gossip: true\n", `pw.yaml:8: unknown key "cluster.gossip"`},
		{"cluster: [mta1]\n", `pw.yaml:5: cluster: expected a mapping`},
	} {
		p := filepath.Join(dir, "pw.yaml")
		os.WriteFile(p, []byte(serverHead+c.yaml), 0o644)
		_, err := LoadServer(p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q:\n got %v\nwant one naming %s", c.yaml, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: the error echoes the password: %v", c.yaml, err)
		}
	}
}

func TestMaskURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://u:p@10.0.0.1:4222": "nats://***@10.0.0.1:4222",
		"tls://token@h:4222":       "tls://***@h:4222",
		"nats://h:4222":            "nats://h:4222",
		"u:p@h:4222":               "***@h:4222",
	} {
		if got := MaskURL(in); got != want {
			t.Errorf("MaskURL(%q) = %q, want %q", in, got, want)
		}
	}
}
