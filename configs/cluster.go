package configs

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Cluster is the cluster section (issue 13): a postwarden node among
// others on NATS JetStream. A nil *Cluster in Server is a single node.
type Cluster struct {
	// Node is this node's unique, stable name (also the embedded NATS
	// server's name).
	Node string
	// NATS is the comma-separated list of NATS URLs to connect to (nats:// or
	// tls://, user and password in the URL if any); "" with Embedded set
	// connects to the embedded server.
	NATS string
	// Credentials is a NATS .creds file or nkey seed file (0600); absolute.
	Credentials string
	// Embedded runs a NATS server inside serve; nil when absent.
	Embedded *Embedded
	Replicas int           // JetStream stream replicas; default 3
	MaxLag   time.Duration // fail closed beyond this; default 30s
	Lease    time.Duration // campaign share lease; default 15s
	// SnapshotEvery is how often a serving node puts a sealed snapshot of
	// its suppression replica into the cluster, for nodes that join;
	// default 1h, at least 1m.
	SnapshotEvery time.Duration
}

// Embedded is cluster.embedded: a NATS server with JetStream run in-process.
type Embedded struct {
	Listen        string   // host:port of NATS clients
	ClusterListen string   // host:port of routes from the other servers
	Routes        []string // nats://host:port of the other servers' cluster_listen
	StoreDir      string   // JetStream store; absolute, default <data_dir>/nats
}

// Cluster defaults.
const (
	DefaultClusterReplicas = 3
	DefaultClusterMaxLag   = 30 * time.Second
	DefaultClusterLease    = 15 * time.Second
	DefaultSnapshotEvery   = time.Hour
	// MinSnapshotEvery bounds how often a snapshot (the whole store,
	// sealed) is written.
	MinSnapshotEvery = time.Minute
)

// NATSURLs returns the URLs this node connects to: cluster.nats, or the
// embedded server's listen address (a wildcard host becomes 127.0.0.1).
func (c *Cluster) NATSURLs() []string {
	var out []string
	for _, u := range strings.Split(c.NATS, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	if len(out) == 0 && c.Embedded != nil {
		host, port, err := net.SplitHostPort(c.Embedded.Listen)
		if err == nil {
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			out = []string{"nats://" + net.JoinHostPort(host, port)}
		}
	}
	return out
}

// MaskURL returns a NATS URL with its user information (a user and
// password, or a token) replaced by "***", for logs and errors.
func MaskURL(raw string) string {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" {
		if i := strings.LastIndex(raw, "@"); i >= 0 {
			return "***" + raw[i:]
		}
		return raw
	}
	if u.User != nil {
		return u.Scheme + "://***@" + u.Host + u.Path
	}
	return u.String()
}

// clusterFields decodes the cluster section into *dst, allocating it.
func (d *decoder) cluster(dst **Cluster) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) || !d.mapping(path, v) {
			return
		}
		c := &Cluster{}
		d.fields(v, path+".", map[string]func(string, *yaml.Node){
			"node":           d.str(&c.Node),
			"nats":           d.str(&c.NATS),
			"credentials":    d.str(&c.Credentials),
			"embedded":       d.embedded(&c.Embedded),
			"replicas":       d.integer(&c.Replicas),
			"max_lag":        d.duration(&c.MaxLag),
			"lease":          d.duration(&c.Lease),
			"snapshot_every": d.duration(&c.SnapshotEvery),
		}, "node")
		*dst = c
	}
}

// embedded decodes cluster.embedded.
func (d *decoder) embedded(dst **Embedded) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) || !d.mapping(path, v) {
			return
		}
		e := &Embedded{}
		d.fields(v, path+".", map[string]func(string, *yaml.Node){
			"listen":         d.str(&e.Listen),
			"cluster_listen": d.str(&e.ClusterListen),
			"routes":         d.urlList(&e.Routes),
			"store_dir":      d.str(&e.StoreDir),
		}, "listen", "cluster_listen")
		*dst = e
	}
}

// urlList decodes a list of strings (one string is a list of one).
func (d *decoder) urlList(dst *[]string) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!str" {
			d.lines[path+"[0]"] = v.Line
			*dst = []string{v.Value}
			return
		}
		if v.Kind != yaml.SequenceNode {
			d.typeErr(path, v, `a list of URLs such as ["nats://10.0.0.2:6222"]`)
			return
		}
		out := []string{}
		for i, e := range v.Content {
			e = resolve(e)
			p := fmt.Sprintf("%s[%d]", path, i)
			if e.Kind != yaml.ScalarNode || e.ShortTag() != "!!str" {
				d.typeErr(p, e, "a URL")
				continue
			}
			d.lines[p] = e.Line
			out = append(out, e.Value)
		}
		*dst = out
	}
}

// defaultCluster fills the cluster section's defaults (after absPaths).
func (c *Cluster) applyDefaults(dir, dataDir string) {
	if c.Replicas == 0 {
		c.Replicas = DefaultClusterReplicas
	}
	if c.MaxLag == 0 {
		c.MaxLag = DefaultClusterMaxLag
	}
	if c.Lease == 0 {
		c.Lease = DefaultClusterLease
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = DefaultSnapshotEvery
	}
	c.Credentials = absPath(dir, c.Credentials)
	if c.Embedded != nil {
		c.Embedded.StoreDir = absPath(dir, c.Embedded.StoreDir)
		orDefault(&c.Embedded.StoreDir, filepath.Join(dataDir, "nats"))
	}
}

// nodeName is the pattern of cluster.node: it names the embedded NATS
// server and is a key of the membership bucket.
var nodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// check records every bad value of the cluster section.
func (c *Cluster) check(d *decoder) {
	if c.Node != "" && !nodeName.MatchString(c.Node) {
		d.fieldErr("cluster.node", "%s must be 1-63 of A-Z a-z 0-9 _ - (starting with a letter or digit)", Quote(c.Node))
	}
	if strings.TrimSpace(c.NATS) == "" && c.Embedded == nil {
		d.fieldErr("cluster", "needs nats (an existing NATS cluster) or embedded (a NATS server run by serve), or both")
	}
	for _, u := range strings.Split(c.NATS, ",") {
		if u = strings.TrimSpace(u); u == "" && strings.TrimSpace(c.NATS) != "" {
			d.fieldErr("cluster.nats", "has an empty URL between commas")
		} else if u != "" {
			if err := natsURL(u, "nats", "tls"); err != nil {
				d.fieldErr("cluster.nats", "%s: %v", Quote(MaskURL(u)), err)
			}
		}
	}
	if c.Credentials != "" {
		switch fi, err := os.Stat(c.Credentials); {
		case err != nil:
			d.fieldErr("cluster.credentials", "%v", fileErr("credentials", c.Credentials, err))
		case !fi.Mode().IsRegular():
			d.fieldErr("cluster.credentials", "%s is not a file", Quote(c.Credentials))
		case fi.Mode().Perm()&0o077 != 0:
			d.fieldErr("cluster.credentials", "%s has mode %04o: it holds a secret, make it 0600", Quote(c.Credentials), fi.Mode().Perm())
		}
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		d.fieldErr("cluster.replicas", "%d must be between 1 and 5 (JetStream's limit)", c.Replicas)
	}
	if c.SnapshotEvery < MinSnapshotEvery {
		d.fieldErr("cluster.snapshot_every", "%s must be at least %s (each snapshot is the whole suppression store)", Quote(c.SnapshotEvery.String()), MinSnapshotEvery)
	}
	if c.Embedded != nil {
		c.Embedded.check(d)
	}
}

// check records every bad value of cluster.embedded.
func (e *Embedded) check(d *decoder) {
	for _, l := range []struct{ key, v string }{{"cluster.embedded.listen", e.Listen}, {"cluster.embedded.cluster_listen", e.ClusterListen}} {
		if l.v == "" {
			continue // missing: reported by fields
		}
		if err := hostPort(l.v, true); err != nil {
			d.fieldErr(l.key, "%s: %v", Quote(l.v), err)
		}
	}
	if e.Listen != "" && e.Listen == e.ClusterListen {
		d.fieldErr("cluster.embedded.cluster_listen", "%s is also listen", Quote(e.Listen))
	}
	for i, r := range e.Routes {
		if err := natsURL(r, "nats", "nats-route", "tls"); err != nil {
			d.fieldErr(fmt.Sprintf("cluster.embedded.routes[%d]", i), "%s: %v", Quote(MaskURL(r)), err)
		}
	}
}

// natsURL checks one URL: a scheme of schemes and a host:port.
func natsURL(raw string, schemes ...string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("want %s://host:port", schemes[0])
	}
	ok := false
	for _, s := range schemes {
		ok = ok || u.Scheme == s
	}
	if !ok {
		return fmt.Errorf("scheme %s: want %s", Quote(u.Scheme), strings.Join(schemes, ":// or ")+"://")
	}
	if err := hostPort(u.Host, false); err != nil {
		return err
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return fmt.Errorf("want only scheme://host:port")
	}
	return nil
}
