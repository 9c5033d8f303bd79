package main

// The suppression replica of a cluster node (issue 13, promise 1): every
// change to who may be mailed goes through the cluster's stream first; the
// delivery check reads the local replica only, and a replica that has not
// caught up for cluster.max_lag halts delivery (promise 2). A serving node
// puts a sealed snapshot of its replica into the cluster every
// cluster.snapshot_every; a node whose replica is empty joins from the
// newest one plus the stream's tail (promise 7).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postwarden/postwarden/cmd/internal/natsnode"
	"github.com/postwarden/postwarden/mta/inbound/handover"
	"github.com/postwarden/postwarden/queue/cluster"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/replica"
	"github.com/postwarden/postwarden/suppression/subject"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// suppressionWriter is what the binary hands to the packages that change
// suppressions: the local store on a single node, the replica's Writer on a
// cluster node. Both satisfy it.
type suppressionWriter interface {
	unsubscribe.Suppressor
	subject.Suppression
	gate.Suppressions
	SuppressAddress(addr, list, reason, source, note string) error
}

var (
	_ suppressionWriter = (*suppression.Store)(nil)
	_ suppressionWriter = (*replica.Store)(nil)
)

// suppressions is this env's suppression writer.
func (e *env) suppressions() suppressionWriter {
	if e.rep != nil {
		return e.rep.Writer()
	}
	return e.supp
}

// joinReplica makes this env's suppression store a replica of the
// cluster's stream (nothing on a single node): serve does it at start, a
// command that changes suppressions without a daemon does it for its run.
func (e *env) joinReplica(ctx context.Context) error {
	cc := e.cfg.Cluster
	if cc == nil || e.rep != nil {
		return nil
	}
	js, done, err := e.clusterJS(ctx)
	if err != nil {
		return err
	}
	rcfg := replica.Config{Node: cc.Node, Replicas: cc.Replicas, MaxLag: cc.MaxLag, OnErase: e.eraseHere}
	if e.daemon { // a CLI command's short join writes no snapshots (promise 7)
		rcfg.SnapshotEvery = cc.SnapshotEvery
	}
	if e.subs != nil { // consent ops of the stream reach this node's consent store
		rcfg.Consent = e.subs
	}
	rep, err := replica.New(js, e.supp, e.box, rcfg,
		e.log.With().Str("component", "replica").Logger())
	if err != nil {
		done()
		return fmt.Errorf("cluster: %w", err)
	}
	if err := rep.Start(context.Background()); err != nil {
		done()
		return fmt.Errorf("cluster: %w", err)
	}
	e.rep = rep
	e.closers = append(e.closers, func() { _ = rep.Close(); done() })
	if e.cluster != nil {
		e.cluster.heart.AddReporter(cluster.ReporterFunc(func(h *cluster.Health) {
			if st, err := e.queue.Stats(); err == nil {
				h.Queue = map[string]int{}
				for state, n := range st.ByState {
					h.Queue[string(state)] = n
				}
			}
			st := rep.Status()
			h.ReplicaPending, h.PendingUnsubscribes = st.Lag, st.Pending
			if !st.CaughtUp.IsZero() && st.Lag > 0 {
				h.ReplicaLag = time.Since(st.CaughtUp)
			}
			if st.Stale {
				h.Stale = st.Why
			}
		}))
	}
	return nil
}

// eraseHere is the replica's OnErase (issue 13, promise 5): an erasure
// another node was asked for, its tombstone applied here from the stream,
// carried out on this node's other stores by the person's index alone
// (subject.EraseIndex: consent, queue, capture files, compaction), audited
// as "cluster:<origin node>". The replica retries it until it succeeds.
func (e *env) eraseHere(_ context.Context, er replica.Erasure) error {
	if e.queue == nil || e.subs == nil || e.audit == nil {
		return errors.New("the queue, consent and audit stores are not open")
	}
	own := er.Origin == e.cfg.Cluster.Node
	_, err := subject.EraseIndex(e.subjectDeps(), subject.IndexRequest{
		Who: "cluster:" + er.Origin, Index: er.Index, Ref: er.Ref, Own: own,
		Reason: fmt.Sprintf("erasure %s requested on node %s", er.Ref, er.Origin),
	})
	if err != nil || own {
		return err
	}
	// Reports about them this node keeps for the cluster (the origin
	// purged the stream).
	if h := e.handover; h != nil {
		_, err = h.EraseOutbox(er.Index)
	} else {
		_, err = handover.EraseOutbox(e.reportsOutbox(), er.Index)
	}
	if err != nil {
		return err
	}
	// The origin node rewrote the shards; a shard held here must stop
	// waiting for the erased person's outcome.
	if w := e.shares; w != nil {
		select {
		case <-w.ready:
			w.coord.Forget(er.Index)
		default:
		}
	}
	return nil
}

// halt is the runners' RunnerConfig.Halt: why delivery must not start now
// (a cluster node whose replica is stale, or whose spool is not yet checked
// against the share leases), "" when it may.
func (e *env) halt() string {
	if why := e.shares.halt(); why != "" {
		return why
	}
	if e.rep == nil {
		return ""
	}
	if e.rep.Stale(time.Now()) {
		st := e.rep.Status()
		return "suppression replica stale: " + st.Why
	}
	return ""
}

// replicaCollector exposes the suppression replica's state on a cluster
// node (issue 13, promise 2): whether it fails closed, how far behind the
// stream it is and how many changes it keeps for the stream.
type replicaCollector struct{ rep *replica.Replica }

var (
	descReplicaStale = prometheus.NewDesc("postwarden_cluster_replica_stale",
		"1 while the suppression replica has not caught up with the stream within cluster.max_lag: the node starts no delivery.", nil, nil)
	descReplicaLag = prometheus.NewDesc("postwarden_cluster_replica_lag",
		"Suppression changes in the stream not yet applied to this node's replica (as last seen).", nil, nil)
	descReplicaPending = prometheus.NewDesc("postwarden_cluster_replica_pending_changes",
		"Suppression changes accepted on this node and kept here until the stream has them (unsubscribes taken while cut off).", nil, nil)
	descReplicaCaughtUp = prometheus.NewDesc("postwarden_cluster_replica_caught_up_seconds",
		"Seconds since the suppression replica was last seen caught up with the stream (-1: never since start).", nil, nil)
)

func (c replicaCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReplicaStale, descReplicaLag, descReplicaPending, descReplicaCaughtUp} {
		ch <- d
	}
}

func (c replicaCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.rep.Status()
	stale := 0.0
	if st.Stale {
		stale = 1
	}
	since := -1.0
	if !st.CaughtUp.IsZero() {
		since = time.Since(st.CaughtUp).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(descReplicaStale, prometheus.GaugeValue, stale)
	ch <- prometheus.MustNewConstMetric(descReplicaLag, prometheus.GaugeValue, float64(st.Lag))
	ch <- prometheus.MustNewConstMetric(descReplicaPending, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(descReplicaCaughtUp, prometheus.GaugeValue, since)
}

// localView is this node's own view of its part in the cluster, as its
// daemon holds it: `cluster status` prints it, and it is what there is to
// say when this node cannot reach NATS (issue 13, promise 2: the node says
// why it fails closed).
type localView struct {
	Node    string          `json:"node"`
	Daemon  bool            `json:"daemon"`           // false: no daemon runs here (nothing to report)
	Halted  string          `json:"halted,omitempty"` // why deliveries do not start; "" when they do
	NATS    *natsnode.State `json:"nats,omitempty"`
	Replica *replica.Status `json:"replica,omitempty"`
}

// opClusterLocal reports the daemon's local view; run without a daemon it
// reports none.
func opClusterLocal(ctx context.Context, e *env, req request, o *out) error {
	if err := decodeArgs(req, &struct{}{}); err != nil {
		return err
	}
	v := localView{Daemon: e.daemon}
	if e.cfg.Cluster != nil {
		v.Node = e.cfg.Cluster.Node
	}
	if e.daemon && e.rep != nil {
		v.Halted = e.halt()
		st := e.rep.Status()
		v.Replica = &st
	}
	if e.daemon && e.cluster != nil {
		ns := e.cluster.nats.State()
		v.NATS = &ns
	}
	return o.Record(v)
}
