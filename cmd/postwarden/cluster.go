package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/cmd/internal/natsnode"
	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/queue/cluster"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/audit/auditstream"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// clusterNode is serve's part in a cluster: the NATS link (and the
// embedded server, if configured) and the node's heartbeat.
type clusterNode struct {
	nats  *natsnode.Node
	heart *cluster.Heart
	stop  context.CancelFunc
	done  chan struct{}
	log   zerolog.Logger
	// workers are the node's loops besides the heartbeat (audit
	// publisher, …), stopped with it.
	workers sync.WaitGroup
}

// startCluster starts the embedded NATS server if configured, connects and
// starts beating; nil without a cluster section. reporters fill the beat's
// health fields (replica lag, leases, …).
func startCluster(ctx context.Context, cfg *configs.Server, log zerolog.Logger, reporters ...cluster.Reporter) (*clusterNode, error) {
	cc := cfg.Cluster
	if cc == nil {
		return nil, nil
	}
	nn, err := natsnode.Start(ctx, natsConfig(cc, false), log)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	hctx, stop := context.WithCancel(context.Background())
	cn := &clusterNode{nats: nn, stop: stop, done: make(chan struct{}), log: log}
	cn.heart = cluster.New(nn.JetStream(), cluster.Config{Node: cc.Node, Version: buildVersion(), Replicas: cc.Replicas}, log, reporters...)
	go func() { defer close(cn.done); _ = cn.heart.Run(hctx) }()
	log.Info().Str("node", cc.Node).Strs("nats", maskURLs(cc.NATSURLs())).Bool("embedded", cc.Embedded != nil).Int("replicas", cc.Replicas).Msg("cluster node started")
	return cn, nil
}

// Close stops beating, drains the NATS connection and stops the embedded
// server; nil-safe.
func (cn *clusterNode) Close() {
	if cn == nil {
		return
	}
	cn.stop()
	<-cn.done
	cn.workers.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := cn.heart.Leave(ctx); err != nil {
		cn.log.Warn().Err(err).Msg("cluster: could not say this node leaves; it shows as down once its beat expires")
	}
	cancel()
	_ = cn.nats.Close()
	cn.log.Info().Msg("cluster node stopped")
}

// publishAudit publishes this node's audit chain to the cluster until the
// node stops (suppression/audit/auditstream); nil-safe.
func (cn *clusterNode) publishAudit(l *audit.Log, box *sealed.Box, cc *configs.Cluster) error {
	if cn == nil {
		return nil
	}
	p, err := auditstream.New(cn.nats.JetStream(), l, box, auditstream.Config{Node: cc.Node, Replicas: cc.Replicas},
		cn.log.With().Str("component", "audit-stream").Logger())
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	cn.workers.Add(1)
	go func() {
		defer cn.workers.Done()
		if err := p.Run(ctx); err != nil {
			cn.log.Error().Err(err).Msg("audit chain no longer published")
		}
	}()
	prev := cn.stop
	cn.stop = func() { stop(); prev() }
	return nil
}

// clusterJS returns the cluster's JetStream for a command: the daemon's
// link, or a link of the command's own that done closes; errNotClustered
// without a cluster section.
func (e *env) clusterJS(ctx context.Context) (js jetstream.JetStream, done func(), err error) {
	if e.cfg.Cluster == nil {
		return nil, nil, errNotClustered
	}
	if e.cluster != nil {
		return e.cluster.nats.JetStream(), func() {}, nil
	}
	nn, err := natsnode.Start(ctx, natsConfig(e.cfg.Cluster, true), e.log)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: %w", err)
	}
	return nn.JetStream(), func() { _ = nn.Close() }, nil
}

// errNotClustered: a --cluster command on a single node.
var errNotClustered = &exitError{code: 2, msg: "no cluster: section in the config: this is a single node (drop --cluster)"}

// natsConfig is natsnode's configuration from the cluster section; a CLI
// (cli true) never runs the embedded server, it connects to it.
func natsConfig(cc *configs.Cluster, cli bool) natsnode.Config {
	nc := natsnode.Config{Node: cc.Node, Credentials: cc.Credentials}
	if cc.NATS != "" || cli {
		nc.URLs = cc.NATSURLs()
	}
	if cli {
		nc.FailFast = true
		nc.ReadyTimeout = clusterCLIWait
	} else if e := cc.Embedded; e != nil {
		nc.Embedded = &natsnode.Embedded{Listen: e.Listen, ClusterListen: e.ClusterListen, Routes: e.Routes, StoreDir: e.StoreDir}
	}
	return nc
}

// clusterCLIWait bounds how long a CLI command waits for JetStream.
const clusterCLIWait = 15 * time.Second

// maskURLs masks each URL's user information.
func maskURLs(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = natsnode.MaskURL(u)
	}
	return out
}

// buildVersion is the module version the binary was built from.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func (c *cli) clusterCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Inspect the cluster of postwarden nodes (issue 13)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Nodes (up or down, last beat, lag, leases, why stale) and the JetStream streams' health; exit 1 if a node is down or a stream lacks replicas",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.clusterStatus(cmd.Context())
		},
	})
	return cmd
}

// clusterReport is `cluster status`: what --json prints as one object.
type clusterReport struct {
	Node    string                 `json:"node"` // this config's node
	Healthy bool                   `json:"healthy"`
	Why     []string               `json:"why,omitempty"`
	Nodes   []cluster.Member       `json:"nodes"`
	Streams []cluster.StreamHealth `json:"streams"`
	// Local is this node's daemon's own view (nil when no daemon answers
	// on the admin socket): whether it halts delivery and why, its replica
	// and its NATS link. It is all there is when NATS cannot be reached.
	Local *localView `json:"local,omitempty"`
}

// clusterStatus talks to NATS directly (no daemon needed) and prints the
// members and the streams; exit 1 when not healthy.
func (c *cli) clusterStatus(ctx context.Context) error {
	cfg, err := c.loadConfig()
	if err != nil {
		return err
	}
	if cfg.Cluster == nil {
		if c.jsonOut {
			fmt.Fprintln(c.stdout, `{"single_node":true}`)
		} else {
			fmt.Fprintln(c.stdout, "single node (no cluster: section)")
		}
		return nil
	}
	r := clusterReport{Node: cfg.Cluster.Node, Local: c.localView(ctx, cfg.AdminSocket)}
	nn, err := c.clusterLink(ctx, cfg)
	if err != nil {
		if r.Local == nil {
			return err
		}
		// Cut off: say so, and what this node does about it.
		r.Why = append(r.Why, "this node cannot reach NATS: "+err.Error())
		r.Nodes, r.Streams = []cluster.Member{}, []cluster.StreamHealth{}
		if err := c.printCluster(r); err != nil {
			return err
		}
		c.code = 2
		return nil
	}
	defer nn.Close()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r.Nodes, err = cluster.Members(rctx, nn.JetStream())
	if errors.Is(err, cluster.ErrNoBucket) {
		r.Why = append(r.Why, "no node has beaten yet")
	} else if err != nil {
		return err
	}
	if r.Streams, err = cluster.Streams(rctx, nn.JetStream()); err != nil {
		return err
	}
	for _, m := range r.Nodes {
		switch {
		case m.Left:
			r.Why = append(r.Why, fmt.Sprintf("node %s left (stopped cleanly %s ago)", m.Node, m.Age.Round(time.Second)))
		case !m.Up:
			r.Why = append(r.Why, fmt.Sprintf("node %s down (last beat %s ago)", m.Node, m.Age.Round(time.Second)))
		case m.Stale != "" && (r.Local == nil || m.Node != r.Local.Node): // this node's own says it below, fresher
			r.Why = append(r.Why, fmt.Sprintf("node %s halts delivery: %s", m.Node, m.Stale))
		}
	}
	for _, s := range r.Streams {
		if !s.Healthy {
			r.Why = append(r.Why, fmt.Sprintf("stream %s: %s", s.Name, s.Why))
		}
	}
	if l := r.Local; l != nil && l.Halted != "" {
		r.Why = append(r.Why, fmt.Sprintf("node %s halts delivery: %s", l.Node, l.Halted))
	}
	r.Healthy = len(r.Why) == 0
	if r.Nodes == nil {
		r.Nodes = []cluster.Member{}
	}
	if r.Streams == nil {
		r.Streams = []cluster.StreamHealth{}
	}
	if err := c.printCluster(r); err != nil {
		return err
	}
	if !r.Healthy {
		c.code = 1
	}
	return nil
}

// printCluster prints r as JSON or as tables.
func (c *cli) printCluster(r clusterReport) error {
	if c.jsonOut {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode cluster status: %w", err)
		}
		fmt.Fprintf(c.stdout, "%s\n", b)
		return nil
	}
	c.printClusterReport(r)
	return nil
}

// localView asks this node's daemon for its own view; nil when no daemon
// answers (or it says nothing).
func (c *cli) localView(ctx context.Context, sock string) *localView {
	hc := daemonClient(sock)
	if hc == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var v *localView
	_, err := callDaemon(ctx, hc, "cluster.local", request{Args: json.RawMessage("{}")}, func(l line) error {
		if l.Record != nil {
			var lv localView
			if err := json.Unmarshal(l.Record, &lv); err != nil {
				return fmt.Errorf("decode cluster.local: %w", err)
			}
			v = &lv
		}
		return nil
	})
	if err != nil || v == nil || !v.Daemon {
		return nil
	}
	return v
}

// printClusterReport prints the two tables and the verdict.
func (c *cli) printClusterReport(r clusterReport) {
	t := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(t, "NODE\tSTATE\tLAST BEAT\tLAG\tPENDING UNSUBS\tLEASES\tSTALE")
	for _, m := range r.Nodes {
		state := "up"
		switch {
		case m.Left:
			state = "left"
		case !m.Up:
			state = "down"
		}
		fmt.Fprintf(t, "%s\t%s\t%s ago\t%s\t%d\t%d\t%s\n", m.Node, state, m.Age.Round(100*time.Millisecond), m.ReplicaLag.Round(time.Millisecond), m.PendingUnsubscribes, m.Leases, dash(m.Stale))
	}
	fmt.Fprintln(t)
	fmt.Fprintln(t, "STREAM\tREPLICAS\tLEADER\tLAGGING\tMESSAGES\tHEALTH")
	for _, s := range r.Streams {
		health := "ok"
		if !s.Healthy {
			health = s.Why
		}
		fmt.Fprintf(t, "%s\t%d\t%s\t%s\t%d\t%s\n", s.Name, s.Replicas, dash(s.Leader), dash(strings.Join(s.Lagging, ",")), s.Messages, health)
	}
	t.Flush()
	if l := r.Local; l != nil {
		fmt.Fprintf(c.stdout, "\nthis node (%s, its daemon): ", l.Node)
		if l.Halted != "" {
			fmt.Fprintf(c.stdout, "deliveries halted: %s", l.Halted)
		} else {
			fmt.Fprint(c.stdout, "delivering")
		}
		if l.NATS != nil && !l.NATS.Connected {
			fmt.Fprintf(c.stdout, "; NATS not connected since %s", l.NATS.Since.UTC().Format(time.RFC3339))
		}
		if l.Replica != nil && l.Replica.Pending > 0 {
			fmt.Fprintf(c.stdout, "; %d suppression change(s) kept here until the stream takes them", l.Replica.Pending)
		}
		fmt.Fprintln(c.stdout)
	}
	if r.Healthy {
		fmt.Fprintln(c.stdout, "\nhealthy")
	} else {
		fmt.Fprintf(c.stdout, "\nnot healthy: %s\n", strings.Join(r.Why, "; "))
	}
}

// clusterQueue is `queue stats --cluster`: each node's messages by state as
// its last beat reported them, and the sum.
type clusterQueue struct {
	Nodes []nodeQueue    `json:"nodes"`
	Total map[string]int `json:"total"`
}

// nodeQueue is one node's part of `queue stats --cluster`.
type nodeQueue struct {
	Node  string         `json:"node"`
	Up    bool           `json:"up"`
	Age   time.Duration  `json:"age"` // of the beat the counts come from
	Queue map[string]int `json:"queue"`
}

// clusterQueueStats prints every node's queue counts from the nodes bucket.
func (c *cli) clusterQueueStats(ctx context.Context) error {
	cfg, err := c.loadConfig()
	if err != nil {
		return err
	}
	if cfg.Cluster == nil {
		return errNotClustered
	}
	nn, err := c.clusterLink(ctx, cfg)
	if err != nil {
		return err
	}
	defer nn.Close()
	members, err := cluster.Members(ctx, nn.JetStream())
	if err != nil {
		return err
	}
	r := clusterQueue{Total: map[string]int{}}
	for _, m := range members {
		q := m.Health.Queue
		if q == nil {
			q = map[string]int{}
		}
		r.Nodes = append(r.Nodes, nodeQueue{Node: m.Node, Up: m.Up, Age: m.Age, Queue: q})
		for st, n := range q {
			r.Total[st] += n
		}
	}
	if c.jsonOut {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s\n", b)
		return nil
	}
	t := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(t, "NODE\tUP\tBEAT AGE\tREADY\tDEFERRED\tHELD\tACTIVE\tDELIVERED\tBOUNCED\tEXPIRED\tCANCELLED")
	row := func(name, up, age string, q map[string]int) {
		fmt.Fprintf(t, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", name, up, age, q["ready"], q["deferred"], q["held"],
			q["active"], q["delivered"], q["bounced"], q["expired"], q["cancelled"])
	}
	for _, n := range r.Nodes {
		up := "up"
		if !n.Up {
			up = "DOWN"
		}
		row(n.Node, up, n.Age.Round(time.Second).String(), n.Queue)
	}
	row("total", "", "", r.Total)
	return t.Flush()
}

// clusterLink is a CLI command's own link to the cluster's NATS.
func (c *cli) clusterLink(ctx context.Context, cfg *configs.Server) (*natsnode.Node, error) {
	log, err := c.logger(zerolog.WarnLevel)
	if err != nil {
		return nil, err
	}
	return natsnode.Start(ctx, natsConfig(cfg.Cluster, true), log)
}
