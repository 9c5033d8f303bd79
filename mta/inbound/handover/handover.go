// Package handover carries a bounce or complaint report from the cluster
// node whose inbound listener took it to the node whose spool holds the
// message it is about (issue 13, promise 1: one suppression truth), over a
// JetStream stream.
//
// Contract:
//   - Hand(node, queueID, reports) publishes the reports, sealed with the
//     data key (context "mta/inbound/handover:<subject>"), on
//     pw.reports.<node tag>.<index> of stream PW_REPORTS (index: the keyed
//     index of the reported recipient, "_" when no report names one) and
//     returns once the
//     stream has stored it. If the stream does not answer (not connected,
//     or no ack within PublishTimeout) the sealed message is written,
//     fsynced, to the outbox directory and Hand returns nil: accepted. A
//     loop republishes the outbox with each message's own id (a copy the
//     stream already holds is dropped as a duplicate) and removes a file
//     only once the stream has it, so a kill -9 loses nothing.
//   - Every node consumes its own tag's subject with a durable consumer
//     ("reports-<tag>") and hands each report to Applier.Apply; the
//     message is acknowledged only once Apply returned nil, and retried
//     otherwise. The stream's work-queue retention removes it then. A report
//     no node consumes (a node gone for good) is removed after MaxAge.
//   - Subjects carry node tags and keyed indexes only; queue ids, addresses
//     and the reports themselves are only ever in sealed payloads.
//   - EraseIndex removes a person's reports from the stream (every node's
//     subject) and from this node's outbox; EraseOutbox from a node's
//     outbox alone (issue 13, promise 5: an erasure reaches the streams).
package handover

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/atomicfile"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// Defaults.
const (
	DefaultStream         = "PW_REPORTS"
	DefaultSubject        = "pw.reports"
	DefaultMaxAge         = 72 * time.Hour
	DefaultDuplicates     = 24 * time.Hour
	DefaultPublishTimeout = 2 * time.Second
	DefaultRetryMax       = 10 * time.Second
	DefaultAckWait        = 30 * time.Second
)

// Config configures a node's hand-over.
type Config struct {
	Tag            string        // this node's VERP node tag (verp.NodeTag); required
	Dir            string        // the outbox directory (0700); required
	Replicas       int           // stream replicas; default 1
	Stream         string        // default PW_REPORTS
	Subject        string        // subject prefix; default pw.reports
	MaxAge         time.Duration // how long an unconsumed report is kept; default 72h
	Duplicates     time.Duration // the stream's duplicate window; default 24h
	PublishTimeout time.Duration // default 2s
	RetryMax       time.Duration // the outbox's and the stream setup's longest backoff; default 10s
	AckWait        time.Duration // redelivery of a report whose Apply has not returned; default 30s
}

// Applier applies reports about this node's message queueID;
// *inbound.Local satisfies it. It must be idempotent: a report whose ack
// was lost comes again.
type Applier interface {
	Apply(queueID string, reps []bounce.Report) error
}

// payload is what a message carries, sealed.
type payload struct {
	QueueID string          `json:"queue_id"`
	Reports []bounce.Report `json:"reports"`
	At      time.Time       `json:"at"`
}

// Stats are the hand-over's counters since New.
type Stats struct {
	Outbox  int   // messages kept on disk for the stream now
	Handed  int64 // reports handed to the stream (directly or from the outbox)
	Kept    int64 // reports written to the outbox
	Applied int64 // reports from other nodes applied here
	Failed  int64 // Apply failures (each retried)
	Dropped int64 // messages that cannot be opened (another data key), dropped
}

// Handover is a node's end of the hand-over; safe for concurrent use.
type Handover struct {
	js    jetstream.JetStream
	box   *sealed.Box
	cfg   Config
	apply Applier
	log   zerolog.Logger

	kick   chan struct{}
	cancel context.CancelFunc
	done   sync.WaitGroup
	mu     sync.Mutex // one outbox pass at a time

	outbox                                 atomic.Int64
	handed, kept, applied, failed, dropped atomic.Int64
}

// New returns a node's hand-over; Start runs it.
func New(js jetstream.JetStream, box *sealed.Box, cfg Config, apply Applier, log zerolog.Logger) (*Handover, error) {
	if js == nil || box == nil || apply == nil {
		return nil, errors.New("handover: JetStream, box and applier are required")
	}
	if cfg.Tag == "" || strings.ContainsAny(cfg.Tag, ".*> \t") {
		return nil, fmt.Errorf("handover: node tag %q is not a subject token", cfg.Tag)
	}
	if cfg.Dir == "" {
		return nil, errors.New("handover: no outbox directory")
	}
	cfg.defaults()
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("handover: outbox %s: %w", cfg.Dir, err)
	}
	h := &Handover{js: js, box: box, cfg: cfg, apply: apply, log: log, kick: make(chan struct{}, 1)}
	n, err := pending(cfg.Dir)
	if err != nil {
		return nil, err
	}
	h.outbox.Store(int64(len(n)))
	return h, nil
}

// defaults fills the unset fields.
func (cfg *Config) defaults() {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Stream == "" {
		cfg.Stream = DefaultStream
	}
	if cfg.Subject == "" {
		cfg.Subject = DefaultSubject
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.Duplicates <= 0 {
		cfg.Duplicates = DefaultDuplicates
	}
	cfg.Duplicates = min(cfg.Duplicates, cfg.MaxAge)
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultPublishTimeout
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
}

// Start sets up the stream and this node's consumer (retrying in the
// background while NATS cannot be reached), consumes, and republishes the
// outbox; it returns at once.
func (h *Handover) Start(ctx context.Context) {
	ctx, h.cancel = context.WithCancel(ctx)
	h.done.Add(2)
	go func() { defer h.done.Done(); h.consume(ctx) }()
	go func() { defer h.done.Done(); h.drain(ctx) }()
}

// Close stops consuming and the outbox loop; what the outbox holds stays
// on disk for the next start.
func (h *Handover) Close() {
	if h.cancel != nil {
		h.cancel()
	}
	h.done.Wait()
}

// Mine reports whether node is this node's tag.
func (h *Handover) Mine(node string) bool { return node == h.cfg.Tag }

// Hand stores reps about queueID for node: in the stream, or else in the
// outbox; nil means stored (the caller may answer 250).
func (h *Handover) Hand(node, queueID string, reps []bounce.Report) error {
	if node == "" || strings.ContainsAny(node, ".*> \t") {
		return fmt.Errorf("handover: node tag %q is not a subject token", node)
	}
	b, err := json.Marshal(payload{QueueID: queueID, Reports: reps, At: time.Now().UTC()})
	if err != nil {
		return fmt.Errorf("handover: %w", err)
	}
	subj := h.cfg.Subject + "." + node + "." + h.indexOf(reps)
	id := newID()
	data := h.box.Seal(b, context_(subj))
	if h.js.Conn().IsConnected() {
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.PublishTimeout)
		err = h.publish(ctx, id, subj, data)
		cancel()
		if err == nil {
			h.handed.Add(1)
			return nil
		}
		h.log.Warn().Err(err).Str("node_tag", node).Msg("report hand-over not stored by the stream; kept in the outbox")
	}
	// The outbox file: subject, newline, sealed payload; its name the message id.
	file := append([]byte(subj+"\n"), data...)
	if err := atomicfile.WriteNew(filepath.Join(h.cfg.Dir, id), file, 0o600); err != nil {
		return fmt.Errorf("handover: keep report for node %s: %w", node, err)
	}
	h.kept.Add(1)
	h.outbox.Add(1)
	select {
	case h.kick <- struct{}{}:
	default:
	}
	return nil
}

// noIndex is the subject token of reports that name no recipient.
const noIndex = "_"

// indexOf is the keyed index of the first recipient reps name, the
// subject token an erasure finds them by; noIndex if none parses.
func (h *Handover) indexOf(reps []bounce.Report) string {
	for _, r := range reps {
		if a, err := address.Parse(r.Recipient); err == nil {
			return h.box.IndexHex(a.Key())
		}
	}
	return noIndex
}

// EraseIndex removes every report about the person of keyed index
// indexHex: from the stream, whichever node it is for, and from this
// node's outbox. It returns how many it removed from the outbox (the
// stream's purge does not count). Other nodes' outboxes: EraseOutbox,
// on each (the replica's erasure).
func (h *Handover) EraseIndex(ctx context.Context, indexHex string) (int, error) {
	h.mu.Lock() // no outbox pass hands one over meanwhile
	defer h.mu.Unlock()
	if err := PurgeIndex(ctx, h.js, h.cfg, indexHex); err != nil {
		return 0, err
	}
	return h.eraseOutbox(indexHex)
}

// EraseOutbox removes the reports about the person of keyed index indexHex
// from this node's outbox; it returns how many.
func (h *Handover) EraseOutbox(indexHex string) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.eraseOutbox(indexHex)
}

func (h *Handover) eraseOutbox(indexHex string) (int, error) {
	n, err := EraseOutbox(h.cfg.Dir, indexHex)
	if left, perr := pending(h.cfg.Dir); perr == nil {
		h.outbox.Store(int64(len(left)))
	}
	return n, err
}

// PurgeIndex removes the reports about the person of keyed index indexHex
// from the stream cfg names (its defaults filled), for every node; a node
// without a running Handover (a CLI command) erases through it.
func PurgeIndex(ctx context.Context, js jetstream.JetStream, cfg Config, indexHex string) error {
	if !validIndex(indexHex) {
		return fmt.Errorf("handover: erase: %q is not a keyed index", indexHex)
	}
	cfg.defaults()
	st, err := js.Stream(ctx, cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // no report was ever handed over
	}
	if err != nil {
		return fmt.Errorf("handover: erase: stream %s: %w", cfg.Stream, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(cfg.Subject+".*."+indexHex)); err != nil {
		return fmt.Errorf("handover: erase: purge %s: %w", cfg.Stream, err)
	}
	return nil
}

// EraseOutbox removes from outbox directory dir the kept reports about the
// person of keyed index indexHex (the subject on each file's first line);
// it returns how many. A folder that does not exist holds none.
func EraseOutbox(dir, indexHex string) (int, error) {
	if !validIndex(indexHex) {
		return 0, fmt.Errorf("handover: erase: %q is not a keyed index", indexHex)
	}
	names, err := pending(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		path := filepath.Join(dir, name)
		subj, err := firstLine(path)
		if err != nil {
			return n, err
		}
		if !strings.HasSuffix(subj, "."+indexHex) {
			continue
		}
		if err := os.Remove(path); err != nil {
			return n, fmt.Errorf("handover: erase: %w", err)
		}
		n++
	}
	if n > 0 {
		return n, atomicfile.SyncDir(dir)
	}
	return 0, nil
}

// firstLine reads an outbox file's subject line.
func firstLine(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("handover: %w", err)
	}
	subj, _, _ := strings.Cut(string(b), "\n")
	return subj, nil
}

// validIndex reports whether s is a keyed index (hex of sealed.IndexSize
// bytes): a subject token that matches nothing else.
func validIndex(s string) bool {
	if len(s) != 2*sealed.IndexSize {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// Stats returns the counters.
func (h *Handover) Stats() Stats {
	return Stats{Outbox: int(h.outbox.Load()), Handed: h.handed.Load(), Kept: h.kept.Load(),
		Applied: h.applied.Load(), Failed: h.failed.Load(), Dropped: h.dropped.Load()}
}

// context_ is the sealing context of a payload on subj: a payload moved to
// another subject does not open.
func context_(subj string) string { return "mta/inbound/handover:" + subj }

// newID is a message id (the stream's duplicate detection, the outbox
// file's name): the time in hex, so names sort by age, then 8 random bytes.
func newID() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixNano()))
	rand.Read(b[8:]) // never fails (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}

// publish puts one sealed message on the stream and waits for its ack.
func (h *Handover) publish(ctx context.Context, id, subj string, data []byte) error {
	m := nats.NewMsg(subj)
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := h.js.PublishMsg(ctx, m, jetstream.WithExpectStream(h.cfg.Stream)); err != nil {
		return err
	}
	return nil
}

// ensure creates or updates the stream.
func (h *Handover) ensure(ctx context.Context) (jetstream.Stream, error) {
	return h.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        h.cfg.Stream,
		Description: "postwarden: sealed bounce and complaint reports handed to the node that sent the message",
		Subjects:    []string{h.cfg.Subject + ".>"},
		Retention:   jetstream.WorkQueuePolicy, // gone once the node it names applied it
		Storage:     jetstream.FileStorage,
		Replicas:    h.cfg.Replicas,
		MaxAge:      h.cfg.MaxAge,
		Duplicates:  h.cfg.Duplicates,
	})
}

// consume sets up this node's consumer (retrying) and applies what it
// delivers until ctx ends; a consumer that stops (deleted, its stream
// recreated) is set up again.
func (h *Handover) consume(ctx context.Context) {
	wait := 250 * time.Millisecond
	for {
		cc, err := h.subscribe(ctx)
		if err == nil {
			wait = 250 * time.Millisecond
			select {
			case <-ctx.Done():
				cc.Stop()
				return
			case <-cc.Closed():
				h.log.Warn().Msg("report hand-over consumer stopped; setting it up again")
			}
		} else {
			h.log.Warn().Err(err).Dur("retry_in_ms", wait).Msg("report hand-over stream not reachable yet")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, h.cfg.RetryMax)
	}
}

// subscribe creates the stream and the consumer and starts consuming.
func (h *Handover) subscribe(ctx context.Context) (jetstream.ConsumeContext, error) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := h.ensure(sctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", h.cfg.Stream, err)
	}
	cons, err := st.CreateOrUpdateConsumer(sctx, jetstream.ConsumerConfig{
		Durable:       "reports-" + h.cfg.Tag,
		FilterSubject: h.cfg.Subject + "." + h.cfg.Tag + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       h.cfg.AckWait,
		MaxDeliver:    -1,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	return cons.Consume(h.handle, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		h.log.Debug().Err(err).Msg("report hand-over consumer")
	}))
}

// handle applies one handed report and acknowledges it once applied.
func (h *Handover) handle(m jetstream.Msg) {
	b, err := h.box.Open(m.Data(), context_(m.Subject()))
	var p payload
	if err == nil {
		err = json.Unmarshal(b, &p)
	}
	if err != nil {
		// Another data key or a damaged message: no retry can open it.
		h.dropped.Add(1)
		h.log.Error().Err(err).Msg("handed report cannot be opened (is data.key the same on every node?); dropped")
		_ = m.Term()
		return
	}
	if err := h.apply.Apply(p.QueueID, p.Reports); err != nil {
		h.failed.Add(1)
		delay := time.Second // doubling per delivery, at most a minute: a lasting failure does not spin
		if md, err := m.Metadata(); err == nil && md.NumDelivered > 1 {
			delay = min(time.Second<<min(md.NumDelivered-1, 6), time.Minute)
		}
		h.log.Error().Err(err).Str("queue_id", p.QueueID).Dur("retry_in_ms", delay).Msg("handed report not applied; retrying")
		_ = m.NakWithDelay(delay)
		return
	}
	if err := m.DoubleAck(context.Background()); err != nil {
		// Applied; the stream delivers it again and Apply changes nothing.
		h.log.Warn().Err(err).Str("queue_id", p.QueueID).Msg("handed report applied but not acknowledged")
	}
	h.applied.Add(1)
	h.log.Info().Str("queue_id", p.QueueID).Time("received", p.At).Msg("handed report applied")
}

// drain republishes the outbox until ctx ends: at start, when Hand kept
// something, and with backoff while the stream does not take it.
func (h *Handover) drain(ctx context.Context) {
	wait := 500 * time.Millisecond
	for {
		n, err := h.flush(ctx)
		next := time.Hour // only a kick wakes an empty outbox
		if err != nil {
			h.log.Warn().Err(err).Int("outbox", n).Dur("retry_in_ms", wait).Msg("report outbox not handed yet")
			next, wait = wait, min(2*wait, h.cfg.RetryMax)
		} else {
			wait = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-h.kick:
		case <-time.After(next):
		}
	}
}

// pending lists the outbox's files in dir, oldest name first.
func pending(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("handover: outbox %s: %w", dir, err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && len(e.Name()) == 32 && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// flush publishes every outbox file and removes each the stream stored;
// it returns how many are left and the first error.
func (h *Handover) flush(ctx context.Context) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	names, err := pending(h.cfg.Dir)
	if err != nil || len(names) == 0 {
		h.outbox.Store(int64(len(names)))
		return len(names), err
	}
	if !h.js.Conn().IsConnected() {
		return len(names), errors.New("not connected to NATS")
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = h.ensure(sctx) // the stream may not exist yet if NATS was out at start
	cancel()
	if err != nil {
		return len(names), fmt.Errorf("stream %s: %w", h.cfg.Stream, err)
	}
	left := len(names)
	for _, name := range names {
		path := filepath.Join(h.cfg.Dir, name)
		b, err := os.ReadFile(path)
		if err != nil {
			return left, fmt.Errorf("read %s: %w", path, err)
		}
		nl := strings.IndexByte(string(b), '\n')
		if nl <= 0 {
			h.log.Error().Str("file", path).Msg("report outbox file damaged; dropped")
			_ = os.Remove(path)
			left--
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, h.cfg.PublishTimeout)
		err = h.publish(pctx, name, string(b[:nl]), b[nl+1:])
		cancel()
		if err != nil {
			h.outbox.Store(int64(left))
			return left, err
		}
		if err := os.Remove(path); err != nil {
			return left, fmt.Errorf("remove %s: %w", path, err)
		}
		left--
		h.handed.Add(1)
		h.log.Info().Msg("kept report handed to the stream")
	}
	h.outbox.Store(int64(left))
	return 0, atomicfile.SyncDir(h.cfg.Dir)
}
