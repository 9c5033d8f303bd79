// Package cluster is node membership and health in a postwarden cluster
// (issue 13): each node beats into the JetStream key-value bucket pw_nodes,
// and anyone with a JetStream connection lists the members and the streams'
// health from there, without asking the nodes.
//
// A beat is the node's name, version, start time and the fields other parts
// of the node report through Reporter (replica lag, pending unsubscribes,
// leases held, why the node fails closed). A beat carries its own TTL (a few
// beat intervals); a member whose last beat, as stamped by the NATS server,
// is older than that TTL is down. Beats are best effort: a failed put is
// logged and retried at the next interval, and nothing else on the node waits
// for one. The bucket keeps a node's last beat for BucketMaxAge, so a node
// that is gone stays listed as down for that long.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Bucket is the key-value bucket of the beats, keyed by node name.
const Bucket = "pw_nodes"

// BucketMaxAge is how long a node's last beat stays in the bucket.
const BucketMaxAge = 7 * 24 * time.Hour

// Defaults.
const (
	DefaultInterval = 2 * time.Second
	// TTLBeats is how many intervals a beat stays valid: one late beat on a
	// busy box does not make a node look down.
	TTLBeats = 5
)

// Health is what parts of the node other than this package report in each
// beat; zero values mean "nothing to report".
type Health struct {
	// ReplicaLag is how far the node's suppression replica is behind the
	// stream: the age of the oldest change not applied yet (0 = caught up).
	ReplicaLag time.Duration `json:"replica_lag,omitempty"`
	// ReplicaPending is the number of stream changes not applied yet.
	ReplicaPending uint64 `json:"replica_pending,omitempty"`
	// PendingUnsubscribes are unsubscribes accepted while cut off, kept on
	// the node and not yet published.
	PendingUnsubscribes int `json:"pending_unsubscribes,omitempty"`
	// Leases are the campaign shares the node holds.
	Leases int `json:"leases,omitempty"`
	// Stale is why the node fails closed (does not start deliveries); ""
	// when it does not.
	Stale string `json:"stale,omitempty"`
	// Queue counts the node's messages by state (pending and finished), for
	// `queue stats --cluster`.
	Queue map[string]int `json:"queue,omitempty"`
	// SharesUp: the node's share worker is up and takes campaign shares.
	SharesUp bool `json:"shares_up,omitempty"`
}

// Reporter fills its part of the node's health before each beat; it must
// not block.
type Reporter interface {
	Report(h *Health)
}

// ReporterFunc is a function as a Reporter.
type ReporterFunc func(h *Health)

// Report calls f.
func (f ReporterFunc) Report(h *Health) { f(h) }

// Beat is one node's record in the bucket.
type Beat struct {
	Node    string        `json:"node"`
	Version string        `json:"version,omitempty"`
	Started time.Time     `json:"started"`
	At      time.Time     `json:"at"`  // the node's clock when it beat
	TTL     time.Duration `json:"ttl"` // a beat older than this means down
	// Left: the node stopped cleanly (Leave); it is down until it beats again.
	Left bool `json:"left,omitempty"`
	Health
}

// Member is a node as listed: its last beat, its age by the NATS server's
// clock, and whether it is up.
type Member struct {
	Beat
	Age time.Duration `json:"age"`
	Up  bool          `json:"up"`
}

// Config is a node's beating.
type Config struct {
	Node     string
	Version  string
	Replicas int           // replicas of the bucket (default 1)
	Interval time.Duration // between beats (default DefaultInterval)
}

// Heart beats for one node.
type Heart struct {
	js        jetstream.JetStream
	cfg       Config
	log       zerolog.Logger
	reporters []Reporter
	started   time.Time

	mu      sync.Mutex
	last    Beat
	lastErr error
	kv      jetstream.KeyValue
}

// AddReporter adds r to the reporters asked before each beat, for parts of
// the node that start after the heart.
func (h *Heart) AddReporter(r Reporter) {
	h.mu.Lock()
	h.reporters = append(h.reporters, r)
	h.mu.Unlock()
}

// New returns the node's heart; Run beats.
func New(js jetstream.JetStream, cfg Config, log zerolog.Logger, reporters ...Reporter) *Heart {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	return &Heart{js: js, cfg: cfg, log: log, reporters: reporters, started: time.Now().UTC()}
}

// Run beats every interval until ctx ends; failures are logged and retried.
// It returns nil when ctx ends.
func (h *Heart) Run(ctx context.Context) error {
	t := time.NewTicker(h.cfg.Interval)
	defer t.Stop()
	failing := false
	for {
		err := h.Beat(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			h.log.Warn().Err(err).Msg("cluster heartbeat failed; retrying")
		case err == nil && failing:
			failing = false
			h.log.Info().Msg("cluster heartbeat restored")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Beat writes one beat now, creating the bucket if needed.
func (h *Heart) Beat(ctx context.Context) error { return h.beat(ctx, false) }

// Leave writes a last beat saying the node stopped cleanly, so it is listed
// as left rather than as lost; call it after Run has returned.
func (h *Heart) Leave(ctx context.Context) error { return h.beat(ctx, true) }

// beat writes one beat; left marks the node's clean stop.
func (h *Heart) beat(ctx context.Context, left bool) error {
	kv, err := h.bucket(ctx)
	if err != nil {
		return h.fail(err)
	}
	b := Beat{Node: h.cfg.Node, Version: h.cfg.Version, Started: h.started, At: time.Now().UTC(), TTL: TTLBeats * h.cfg.Interval, Left: left}
	h.mu.Lock()
	reporters := h.reporters
	h.mu.Unlock()
	for _, r := range reporters {
		r.Report(&b.Health)
	}
	data, err := json.Marshal(b)
	if err != nil {
		return h.fail(fmt.Errorf("cluster: encode beat: %w", err))
	}
	pctx, cancel := context.WithTimeout(ctx, h.cfg.Interval*2)
	defer cancel()
	if _, err := kv.Put(pctx, h.cfg.Node, data); err != nil {
		return h.fail(fmt.Errorf("cluster: beat of %s: %w", h.cfg.Node, err))
	}
	h.mu.Lock()
	h.last, h.lastErr = b, nil
	h.mu.Unlock()
	return nil
}

// fail records err as the last beat's outcome.
func (h *Heart) fail(err error) error {
	h.mu.Lock()
	h.lastErr = err
	h.mu.Unlock()
	return err
}

// Last is the last beat written and the error of the last attempt, if it
// failed.
func (h *Heart) Last() (Beat, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last, h.lastErr
}

// bucket opens or creates the bucket once.
func (h *Heart) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	h.mu.Lock()
	kv := h.kv
	h.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := h.js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "postwarden node heartbeats",
		History:     1,
		TTL:         BucketMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    h.cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: bucket %s (replicas %d): %w", Bucket, h.cfg.Replicas, err)
	}
	h.mu.Lock()
	h.kv = kv
	h.mu.Unlock()
	return kv, nil
}

// ErrNoBucket is Members' error when no node has beaten yet.
var ErrNoBucket = errors.New("cluster: no node has beaten yet (no bucket " + Bucket + ")")

// Members lists every node with a beat in the bucket, by name. A node is
// up while its last beat is younger than the beat's TTL, aged by the NATS
// server's timestamp of the beat, and not a Leave.
func Members(ctx context.Context, js jetstream.JetStream) ([]Member, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNoBucket
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: open bucket %s: %w", Bucket, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("cluster: list %s: %w", Bucket, err)
	}
	defer w.Stop()
	now := time.Now()
	var out []Member
	for {
		var e jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: list %s: %w", Bucket, ctx.Err())
		case e = <-w.Updates():
		}
		if e == nil { // the initial values are all delivered
			break
		}
		var b Beat
		if err := json.Unmarshal(e.Value(), &b); err != nil {
			b = Beat{Node: e.Key(), Health: Health{Stale: "unreadable beat: " + err.Error()}}
		}
		b.Node = e.Key()
		m := Member{Beat: b, Age: max(now.Sub(e.Created()), 0)}
		m.Up = !b.Left && b.TTL > 0 && m.Age <= b.TTL
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// Peer is one replica of a stream other than its leader.
type Peer struct {
	Name    string        `json:"name"`
	Current bool          `json:"current"`
	Offline bool          `json:"offline,omitempty"`
	Active  time.Duration `json:"active"` // since last seen by the leader
	Lag     uint64        `json:"lag,omitempty"`
}

// StreamHealth is one JetStream stream as the cluster sees it.
type StreamHealth struct {
	Name     string `json:"name"`
	Replicas int    `json:"replicas"` // configured
	Leader   string `json:"leader"`
	Peers    []Peer `json:"peers,omitempty"`
	// Lagging names the peers that are offline or not current.
	Lagging  []string `json:"lagging,omitempty"`
	Messages uint64   `json:"messages"`
	Bytes    uint64   `json:"bytes"`
	// Healthy: a leader, every configured replica present, online and
	// current.
	Healthy bool   `json:"healthy"`
	Why     string `json:"why,omitempty"` // when not healthy
}

// Streams reports every stream of the account (the beats' bucket is one),
// by name.
func Streams(ctx context.Context, js jetstream.JetStream) ([]StreamHealth, error) {
	l := js.ListStreams(ctx)
	var out []StreamHealth
	for si := range l.Info() {
		out = append(out, streamHealth(si))
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("cluster: list streams: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// streamHealth judges one stream's info.
func streamHealth(si *jetstream.StreamInfo) StreamHealth {
	h := StreamHealth{Name: si.Config.Name, Replicas: max(si.Config.Replicas, 1), Messages: si.State.Msgs, Bytes: si.State.Bytes}
	if si.Cluster != nil {
		h.Leader = si.Cluster.Leader
		for _, p := range si.Cluster.Replicas {
			h.Peers = append(h.Peers, Peer{Name: p.Name, Current: p.Current, Offline: p.Offline, Active: p.Active, Lag: p.Lag})
			if p.Offline || !p.Current {
				h.Lagging = append(h.Lagging, p.Name)
			}
		}
	} else {
		h.Leader = "(not clustered)"
	}
	switch {
	case h.Leader == "":
		h.Why = "no leader"
	case si.Cluster != nil && len(h.Peers)+1 < h.Replicas:
		h.Why = fmt.Sprintf("%d of %d replicas", len(h.Peers)+1, h.Replicas)
	case len(h.Lagging) > 0:
		h.Why = fmt.Sprintf("%d replica(s) offline or not current", len(h.Lagging))
	default:
		h.Healthy = true
	}
	return h
}
