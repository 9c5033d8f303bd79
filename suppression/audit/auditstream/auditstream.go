// Package auditstream publishes a node's audit hash chain to the cluster
// (issue 13, promise 6) and verifies every node's chain from there.
//
// Each node keeps its own chain in its audit.db (package audit) and appends
// every entry, in order, to the JetStream stream PW_AUDIT on the subject
// pw.audit.<node>, each publish expecting the subject's last stream sequence
// to be the one it published before (Nats-Expected-Last-Subject-Sequence):
// two processes claiming one node name, or a node restored from an old
// backup, cannot fork the published chain — the second publish is refused.
// A refused entry that the subject already ends with (same seq and hash: an
// earlier attempt that landed after its publisher gave up, as a publish
// buffered across a lost link does) counts as published, not as a fork.
// Entries name people by masked address or keyed index only, and are sealed
// with the cluster's shared data key all the same: nothing personal crosses
// NATS in clear.
//
// VerifyCluster reads every node's subject and recomputes its chain (hash of
// each entry, prev links, no gap in seq), and when given this node's local
// log also compares each local entry with the published one, so an entry
// altered on disk after it was published is named even where the local
// chain was rewritten consistently.
package auditstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/audit"
)

// Stream and subjects.
const (
	StreamName    = "PW_AUDIT"
	subjectPrefix = "pw.audit."
	sealContext   = "audit-entry" // the sealed box's context: an entry sealed for another use does not open
)

// nodeName is what a node's name may be: it is a subject token.
var nodeName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Sealer seals and opens the entries crossing NATS (sealed.Box).
type Sealer interface {
	Seal(plain []byte, context string) []byte
	Open(sealed []byte, context string) ([]byte, error)
}

// Log is the local audit log the publisher reads (audit.Log).
type Log interface {
	Head() (seq uint64, hash string)
	Get(seq uint64) (audit.Entry, bool, error)
}

// Config configures a Publisher.
type Config struct {
	Node     string        // this node's name (cluster.node)
	Replicas int           // stream replicas (default 1)
	Interval time.Duration // how often the log is checked for new entries (default 1s)
}

// EnsureStream creates or updates the audit stream.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:     StreamName,
		Subjects: []string{subjectPrefix + ">"},
		Storage:  jetstream.FileStorage,
		Replicas: max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("audit stream %s: %w", StreamName, err)
	}
	return s, nil
}

// Publisher appends the local chain to the node's subject.
type Publisher struct {
	js    jetstream.JetStream
	local Log
	box   Sealer
	cfg   Config
	log   zerolog.Logger

	mu      sync.Mutex
	stream  jetstream.Stream
	lastSeq uint64 // the local seq last published
	subjSeq uint64 // the stream sequence of that message
	forked  error  // set when the stream refused a publish: stop
	kick    chan struct{}
}

// New returns a Publisher of local for cfg.Node.
func New(js jetstream.JetStream, local Log, box Sealer, cfg Config, log zerolog.Logger) (*Publisher, error) {
	if !nodeName.MatchString(cfg.Node) {
		return nil, fmt.Errorf("auditstream: node name %q: want 1-64 letters, digits, '-' or '_'", cfg.Node)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	return &Publisher{js: js, local: local, box: box, cfg: cfg, log: log, kick: make(chan struct{}, 1)}, nil
}

// subject is the subject of node's chain.
func subject(node string) string { return subjectPrefix + node }

// start finds where the published chain ends.
func (p *Publisher) start(ctx context.Context) error {
	s, err := EnsureStream(ctx, p.js, p.cfg.Replicas)
	if err != nil {
		return err
	}
	p.stream = s
	m, err := s.GetLastMsgForSubject(ctx, subject(p.cfg.Node))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit stream: last entry of %s: %w", p.cfg.Node, err)
	}
	e, err := p.open(m.Data)
	if err != nil {
		return fmt.Errorf("audit stream: last entry of %s (stream seq %d): %w", p.cfg.Node, m.Sequence, err)
	}
	// The published chain must be this log's: same entry at its end.
	le, ok, err := p.local.Get(e.Seq)
	if err != nil {
		return fmt.Errorf("audit entry %d: %w", e.Seq, err)
	}
	if head, _ := p.local.Head(); head < e.Seq || (ok && le.Hash != e.Hash) {
		p.forked = fmt.Errorf("audit stream refused this log for node %s: the published chain ends at entry %d, which this log does not hold as published (another process with the same node name, or a log restored from a backup)", p.cfg.Node, e.Seq)
		p.log.Error().Err(p.forked).Msg("audit chain not published")
		return p.forked
	}
	p.lastSeq, p.subjSeq = e.Seq, m.Sequence
	return nil
}

// Notify asks for a publish soon (after an append); it never blocks.
func (p *Publisher) Notify() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run publishes new entries until ctx ends; errors other than a refused
// (forking) publish are logged and retried at the next tick.
func (p *Publisher) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	started := false
	for {
		if !started {
			if err := p.start(ctx); p.Forked() != nil {
				return p.forked
			} else if err != nil {
				p.log.Warn().Err(err).Msg("audit stream not reachable; retrying")
			} else {
				started = true
			}
		}
		if started {
			if _, err := p.Sync(ctx); err != nil {
				if p.Forked() != nil {
					return err
				}
				p.log.Warn().Err(err).Msg("audit entries not published yet; retrying")
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-p.kick:
		}
	}
}

// Forked returns why the stream refused this node's chain, nil if it did not.
func (p *Publisher) Forked() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forked
}

// Sync publishes every local entry after the last published one, in order,
// and returns how many it published.
func (p *Publisher) Sync(ctx context.Context) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.forked != nil {
		return 0, p.forked
	}
	if p.stream == nil {
		p.mu.Unlock()
		err := p.start(ctx)
		p.mu.Lock()
		if err != nil {
			return 0, err
		}
	}
	head, _ := p.local.Head()
	n := 0
	for seq := p.lastSeq + 1; seq <= head; seq++ {
		e, ok, err := p.local.Get(seq)
		if err != nil {
			return n, fmt.Errorf("audit entry %d: %w", seq, err)
		}
		if !ok { // pruned before it was published: the chain continues after it
			continue
		}
		raw, err := json.Marshal(e)
		if err != nil {
			return n, fmt.Errorf("audit entry %d: %w", seq, err)
		}
		ack, err := p.js.Publish(ctx, subject(p.cfg.Node), p.box.Seal(raw, sealContext),
			jetstream.WithExpectLastSequencePerSubject(p.subjSeq),
			jetstream.WithMsgID(fmt.Sprintf("%s-%d-%s", p.cfg.Node, e.Seq, e.Hash[:16])))
		if err != nil {
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
				// An earlier attempt of this very entry may have landed
				// after its caller gave up (a publish buffered while the
				// link was down, flushed on reconnect): then the subject
				// ends with it, and the chain has not moved on.
				if sseq, landed, lerr := p.landed(ctx, e); lerr != nil {
					return n, fmt.Errorf("audit entry %d: %w", seq, lerr)
				} else if landed {
					p.log.Info().Uint64("entry", e.Seq).Uint64("stream_seq", sseq).Msg("audit entry found published by an earlier attempt")
					p.lastSeq, p.subjSeq = e.Seq, sseq
					n++
					continue
				}
				p.forked = fmt.Errorf("audit stream refused entry %d of node %s: the published chain has moved on without this process (another process with the same node name, or a log restored from a backup): %w", e.Seq, p.cfg.Node, err)
				p.log.Error().Err(p.forked).Msg("audit chain not published")
				return n, p.forked
			}
			return n, fmt.Errorf("publish audit entry %d: %w", seq, err)
		}
		if ack.Duplicate { // published before a crash lost our note of it
			m, gerr := p.stream.GetLastMsgForSubject(ctx, subject(p.cfg.Node))
			if gerr != nil {
				return n, fmt.Errorf("audit entry %d: %w", seq, gerr)
			}
			ack.Sequence = m.Sequence
		}
		p.lastSeq, p.subjSeq = e.Seq, ack.Sequence
		n++
	}
	return n, nil
}

// landed reports whether the subject's last published entry is e (same
// seq and hash), with its stream sequence.
func (p *Publisher) landed(ctx context.Context, e audit.Entry) (uint64, bool, error) {
	m, err := p.stream.GetLastMsgForSubject(ctx, subject(p.cfg.Node))
	if err != nil {
		return 0, false, fmt.Errorf("last entry of %s: %w", p.cfg.Node, err)
	}
	pe, err := p.open(m.Data)
	if err != nil {
		return 0, false, fmt.Errorf("last entry of %s (stream seq %d): %w", p.cfg.Node, m.Sequence, err)
	}
	return m.Sequence, pe.Seq == e.Seq && pe.Hash == e.Hash, nil
}

// open unseals and decodes one published entry.
func (p *Publisher) open(data []byte) (audit.Entry, error) { return openEntry(p.box, data) }

func openEntry(box Sealer, data []byte) (audit.Entry, error) {
	plain, err := box.Open(data, sealContext)
	if err != nil {
		return audit.Entry{}, fmt.Errorf("unseal: %w (is data.key the cluster's?)", err)
	}
	var e audit.Entry
	if err := json.Unmarshal(plain, &e); err != nil {
		return audit.Entry{}, fmt.Errorf("decode: %w", err)
	}
	return e, nil
}

// NodeResult is what VerifyCluster found for one node's chain.
type NodeResult struct {
	Node     string `json:"node"`
	Entries  int    `json:"entries"`
	OK       bool   `json:"ok"`
	FirstBad uint64 `json:"first_bad,omitempty"` // the node's audit seq
	Problem  string `json:"problem,omitempty"`
	HeadSeq  uint64 `json:"head_seq"`
	HeadHash string `json:"head_hash,omitempty"`
	Local    bool   `json:"local,omitempty"` // compared with this node's own log too
}

// VerifyCluster verifies every node's published chain; local, when not nil,
// is this node's log (named node), compared entry by entry with its
// published chain. The error is for failures to read the stream.
func VerifyCluster(ctx context.Context, js jetstream.JetStream, box Sealer, node string, local Log) ([]NodeResult, error) {
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		return nil, fmt.Errorf("audit stream %s: %w", StreamName, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subjectPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("audit stream %s: %w", StreamName, err)
	}
	var nodes []string
	for subj := range info.State.Subjects {
		nodes = append(nodes, strings.TrimPrefix(subj, subjectPrefix))
	}
	if local != nil && info.State.Subjects[subject(node)] == 0 {
		nodes = append(nodes, node) // a node whose chain never reached the stream
	}
	sort.Strings(nodes)
	var out []NodeResult
	for _, n := range nodes {
		var l Log
		if n == node {
			l = local
		}
		r, err := verifyNode(ctx, s, box, n, l)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// verifyNode reads node's subject from the start and checks its chain.
func verifyNode(ctx context.Context, s jetstream.Stream, box Sealer, node string, local Log) (NodeResult, error) {
	r := NodeResult{Node: node, Local: local != nil}
	fail := func(seq uint64, format string, args ...any) {
		if r.Problem == "" {
			r.FirstBad, r.Problem = seq, fmt.Sprintf("node %s: ", node)+fmt.Sprintf(format, args...)
		}
	}
	var prev audit.Entry
	for next := uint64(1); ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject(node)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return r, fmt.Errorf("audit stream: node %s after stream seq %d: %w", node, next, err)
		}
		next = m.Sequence + 1
		r.Entries++
		e, err := openEntry(box, m.Data)
		if err != nil {
			fail(prev.Seq+1, "published entry at stream seq %d: %v", m.Sequence, err)
			continue
		}
		switch {
		case audit.Hash(e) != e.Hash:
			fail(e.Seq, "entry %d: hash mismatch: content changed", e.Seq)
		case prev.Seq != 0 && e.Seq != prev.Seq+1: // a jump before the first is history pruned before publishing
			fail(prev.Seq+1, "entry %d missing: published chain jumps from %d to %d", prev.Seq+1, prev.Seq, e.Seq)
		case prev.Seq != 0 && e.Seq == prev.Seq+1 && e.Prev != prev.Hash:
			fail(e.Seq, "entry %d: prev does not match entry %d's hash", e.Seq, prev.Seq)
		case prev.Seq == 0 && e.Seq == 1 && e.Prev != "":
			fail(e.Seq, "entry 1: prev should be empty for the first entry")
		}
		if local != nil && r.Problem == "" {
			if le, ok, err := local.Get(e.Seq); err != nil {
				return r, fmt.Errorf("local audit entry %d: %w", e.Seq, err)
			} else if ok && le.Hash != e.Hash {
				fail(e.Seq, "entry %d: the local copy differs from the one published (altered on disk)", e.Seq)
			} else if ok && audit.Hash(le) != le.Hash {
				fail(e.Seq, "entry %d: local hash mismatch: content changed on disk", e.Seq)
			}
		}
		prev = e
	}
	if local != nil && r.Problem == "" {
		if head, _ := local.Head(); head < prev.Seq {
			fail(head+1, "entries %d to %d published but gone from the local log", head+1, prev.Seq)
		}
	}
	r.OK = r.Problem == ""
	if r.OK {
		r.HeadSeq, r.HeadHash = prev.Seq, prev.Hash
	}
	return r, nil
}
