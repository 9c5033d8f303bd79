// Package replica makes a node's suppression store a replica of one
// replicated NATS JetStream stream: every change to who may be mailed is
// published to the stream, and every node applies the stream, in order, to
// its own bbolt store. Delivery checks read only that store (Store.Check),
// never the network.
//
// Contract:
//   - A Change is one call of a mutating suppression.Store method
//     (suppression.Mutation) with an id (the JetStream Nats-Msg-Id, so a
//     retried publish is dropped as a duplicate within Config.Duplicates), a
//     time and the origin node. Its payload is sealed with the data key
//     (sealed.Box, context "suppression/replica:" + subject); its subject is
//     "<Subject>.<hex keyed index>" of the address or "@domain" it concerns,
//     never the address. An erasure carries the index alone.
//   - Each stream message is applied with its stream sequence recorded in
//     the same bbolt transaction (Store.Apply): after a crash the store holds
//     both or neither, and consumption resumes at the recorded sequence + 1,
//     applying nothing twice; a backlog is applied up to 512 changes per
//     transaction. A message that cannot be opened or applied
//     stops consumption there (fail closed: the replica goes stale) and is
//     retried; it is never skipped.
//   - Publish returns once the stream has acknowledged the change and the
//     local store has applied it (read-your-writes); if the local replica
//     lags beyond Config.ApplyWait it applies the change ahead of the stream.
//     If NATS cannot be reached the change is kept in the store's pending
//     bucket and applied, in one fsynced transaction, and Publish returns
//     nil: the change is accepted and honoured on this node at once. A
//     background loop republishes pending changes (same id); a pending
//     change is dropped only when its stream copy has been applied here, and
//     until then it is re-applied after every stream change to the same
//     index, so an older change arriving from the stream never undoes it.
//     Nothing accepted is lost to a kill -9.
//   - Stale reports whether the replica has been caught up with the stream
//     within Config.MaxLag; it clears by itself once caught up. A node that
//     has never caught up since Start is stale.
//   - An erasure overwrites the person's earlier events on the stream
//     (SecureDeleteMsg of each message on their subject), publishes the
//     erasure (the tombstone, which stays), then purges anything that
//     slipped onto the subject before the tombstone.
//   - An erasure, once applied here, is handed by index to Config.OnErase
//     (the rest of the erasure on this node's other stores; on the node
//     that made it, what a consent op earlier in the stream brought back
//     after the local erasure): kept due in the store in the transaction
//     that applies it, dropped only once OnErase returned nil, retried
//     with backoff after a failure and after a restart; never skipped.
//   - A replica whose store is empty at Start loads the newest snapshot in
//     the Config.Snapshots object store (sealed with the data key; the
//     store and its applied sequence in one transaction, the consent
//     store's state at the same sequence in one transaction of its own)
//     and reads the stream from the snapshot's sequence + 1; it is stale
//     until it has applied the tail. With Config.SnapshotEvery set it puts snapshots of
//     its own; once an erasure is applied, every snapshot taken before it
//     is deleted (the erasing node puts a fresh one first). The stream is
//     not compacted, but a node joining from a snapshot with the consent
//     state reads only its tail.
//   - A consent op (suppression.OpConsent, PublishConsent) is applied to
//     Config.Consent, which records the sequence in its own transaction,
//     before the store records it. PublishAll publishes a batch (imports)
//     asynchronously and keeps nothing pending.
//   - An import's run record (suppression.OpImport) is published after the
//     batch it counts is acknowledged, so every node applies it after the
//     batch's entries, with its own sequence: any node resumes the run.
//   - An import run holds a lock for the cluster while it runs (LockImport,
//     key-value bucket Config.ImportLocks, keyed by the keyed index its
//     records travel under, the holder's node name as value), renewed every
//     third of Config.ImportLockTTL: the same import started on two nodes
//     at once runs on one; a holder killed leaves the lock to lapse.
package replica

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// Config says which stream to replicate and how patiently.
type Config struct {
	Stream   string // JetStream stream name; default "PW_SUPPRESSION"
	Subject  string // subject prefix; default "pw.sup" (subjects "pw.sup.<index>")
	Replicas int    // stream replicas; default 1 (3 in a 3-node cluster)
	Node     string // this node's unique, stable name; required
	// MaxLag is how long the replica may go without being caught up with
	// the stream before Stale reports true; default 30s.
	MaxLag time.Duration
	// Duplicates is the stream's duplicate window: how long a change id
	// is remembered, so a republished change is dropped; default 24h.
	Duplicates time.Duration
	// PublishTimeout bounds one publish waiting for the stream's ack;
	// default 2s. Past it the change is kept pending.
	PublishTimeout time.Duration
	// ApplyWait bounds how long Publish waits for the local replica to
	// apply its change before applying it ahead of the stream; default 5s.
	ApplyWait time.Duration
	// Poll is how often the stream's last sequence is read; default 1s.
	Poll time.Duration
	// RetryMax caps the wait between retries (of the stream, of pending
	// changes); default 10s.
	RetryMax time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// SnapshotEvery is how often this node puts a sealed snapshot of its
	// store into the Snapshots bucket (when caught up, and only if it
	// applied something since its last one); 0 writes none (a CLI
	// command's short join). Whatever it is, a replica whose store is
	// empty at Start joins from the newest snapshot, and one that applied
	// an erasure deletes the snapshots taken before it.
	SnapshotEvery time.Duration
	// Snapshots is the JetStream object store bucket of the snapshots;
	// default "pw_snapshots".
	Snapshots string
	// OnErase, if set, is the rest of an erasure: called, once the
	// erasure from the stream has been applied to the store, to erase the
	// person from this node's other stores by index (the queue, consent,
	// capture files). The work is kept in the store (bucket due) in the
	// transaction that applies the erasure, and dropped only once OnErase
	// returned nil: a failure is logged and retried (0.5 s doubling up to
	// RetryMax), a crash resumes it at Start, nothing is skipped; so
	// OnErase must be idempotent. An erasure this node made itself comes
	// too (Origin is Config.Node): the procedure that published it erased
	// the rest by address first, but a consent op earlier in the stream
	// than the tombstone, not yet applied here then, was applied after it
	// (stream order); by now every such op is applied, so erasing the
	// consent store again leaves nothing of the person.
	OnErase func(ctx context.Context, e Erasure) error
	// ImportLocks is the JetStream key-value bucket of the import run
	// locks (LockImport); default "pw_import_locks".
	ImportLocks string
	// ImportLockTTL is how long an import's lock outlives its holder's
	// last renewal (the bucket's TTL; the holder renews every third of
	// it): a node killed while importing holds the import up for at most
	// this; default 30s. The bucket is the cluster's: give every node the
	// same.
	ImportLockTTL time.Duration
	// Consent, if set, is this node's consent store: the consent ops of
	// the stream (OpConsent, see PublishConsent) are applied to it, before
	// the suppression store records their sequence, in order, recording
	// their sequence in its own transaction (so a replay applies nothing
	// twice there either). Unset, consent ops are only recorded.
	Consent Consent
}

// Consent is a node's consent store as the replica applies the stream's
// consent ops to it and carries its state in snapshots; *subscribers.Store
// satisfies it.
type Consent interface {
	// ApplyEncoded applies ops; seqs[i] is ops[i]'s stream sequence (0:
	// applied ahead of the stream, not recorded); refused[i] its store's
	// refusal; err means nothing was applied.
	ApplyEncoded(seqs []uint64, ops [][]byte) (refused []error, err error)
	// ExportState calls put for each record of the store's state (opaque
	// here, personal fields sealed), from one read transaction, and returns
	// the stream sequence it reflects.
	ExportState(put func(k, v []byte) error) (uint64, error)
	// StateEmpty reports whether LoadState may load into the store.
	StateEmpty() (bool, error)
	// LoadState loads records ExportState wrote, in one transaction, and
	// returns the stream sequence they reflect.
	LoadState(recs iter.Seq2[[]byte, []byte]) (uint64, error)
}

// Erasure is an erasure from the stream as OnErase sees it: the person's
// keyed index only, never the address.
type Erasure struct {
	Seq    uint64    `json:"seq"`    // its stream sequence
	ID     string    `json:"id"`     // the change id
	Origin string    `json:"origin"` // the node that made it
	Index  string    `json:"index"`  // hex keyed index of the address key
	Ref    string    `json:"ref"`    // the request reference
	Time   time.Time `json:"time"`   // when it was made
}

// Defaults.
const (
	DefaultStream  = "PW_SUPPRESSION"
	DefaultSubject = "pw.sup"
	// DefaultSnapshots is the bucket of the sealed snapshots.
	DefaultSnapshots = "pw_snapshots"
	// DefaultImportLocks is the bucket of the import run locks.
	DefaultImportLocks = "pw_import_locks"
)

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.Subject == "" {
		c.Subject = DefaultSubject
	}
	if c.Snapshots == "" {
		c.Snapshots = DefaultSnapshots
	}
	if c.ImportLocks == "" {
		c.ImportLocks = DefaultImportLocks
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	def(&c.MaxLag, 30*time.Second)
	def(&c.Duplicates, 24*time.Hour)
	def(&c.PublishTimeout, 2*time.Second)
	def(&c.ApplyWait, 5*time.Second)
	def(&c.Poll, time.Second)
	def(&c.RetryMax, 10*time.Second)
	def(&c.ImportLockTTL, 30*time.Second)
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Change is one change to who may be mailed, as it crosses NATS (sealed).
type Change struct {
	ID       string               `json:"id"`     // Nats-Msg-Id; random if empty
	Time     time.Time            `json:"time"`   // when it was made; now if zero
	Origin   string               `json:"origin"` // the node that made it; Config.Node if empty
	Mutation suppression.Mutation `json:"m"`
}

// Add is the change of Store.Add (Store.SuppressAddress).
func Add(e suppression.Entry) Change {
	return Change{Mutation: suppression.Mutation{Op: suppression.OpAdd, Entry: &e}}
}

// Remove is the change of Store.Remove.
func Remove(target, list string) Change {
	return Change{Mutation: suppression.Mutation{Op: suppression.OpRemove, Addr: target, List: list}}
}

// Restrict is the change of Store.Restrict.
func Restrict(addr, reason string) Change {
	return Change{Mutation: suppression.Mutation{Op: suppression.OpRestrict, Addr: addr, Note: reason}}
}

// Unrestrict is the change of Store.Unrestrict.
func Unrestrict(addr string) Change {
	return Change{Mutation: suppression.Mutation{Op: suppression.OpUnrestrict, Addr: addr}}
}

// Erase is the change of Store.Erase; the address is turned into its index
// before anything is sealed or sent.
func Erase(addr, ref string, consents []suppression.ConsentDates) Change {
	return Change{Mutation: suppression.Mutation{Op: suppression.OpErase, Addr: addr, Ref: ref, Dates: consents}}
}

// EraseIndex is the change of Store.EraseIndex.
func EraseIndex(indexHex, ref string, consents []suppression.ConsentDates) Change {
	return Change{Mutation: suppression.Mutation{Op: suppression.OpErase, Index: indexHex, Ref: ref, Dates: consents}}
}

// ConsentOp is the change carrying a consent store op (opaque here, its
// JSON) for the address whose hex keyed index is indexHex; id is the op's
// own id, used as the change id, so a retried op is a stream duplicate.
func ConsentOp(indexHex, id string, op json.RawMessage) Change {
	return Change{ID: id, Mutation: suppression.Mutation{Op: suppression.OpConsent, Index: indexHex, Consent: op}}
}

// Status is the replica's state, for `cluster status` and metrics.
type Status struct {
	Node       string
	AppliedSeq uint64    // last stream sequence applied to the store
	StreamLast uint64    // the stream's last sequence, as last seen
	Lag        uint64    // StreamLast - AppliedSeq, if positive
	CaughtUp   time.Time // when the replica was last seen caught up; zero: never since Start
	Pending    int       // changes kept on this node, not yet applied from the stream
	Applied    uint64    // stream changes applied since Start
	Stale      bool      // Stale(now)
	Why        string    // why not caught up ("" when it is)
	// Snapshot is the sequence of the snapshot this replica joined from
	// at Start (0: none; it read the stream from its applied sequence).
	Snapshot uint64
	// FirstSeq is the first stream sequence applied since Start (0: none).
	FirstSeq uint64
}

// ctxChange is the seal context of a change; the subject is appended, so a
// payload moved to another subject does not open.
const ctxChange = "suppression/replica:"

// maxOutcomes bounds the outcomes kept for Publish callers waiting.
const maxOutcomes = 1024

// Replica keeps a suppression store in step with the stream; safe for
// concurrent use.
type Replica struct {
	js    jetstream.JetStream
	store *suppression.Store
	box   *sealed.Box
	cfg   Config
	log   zerolog.Logger

	// applyMu orders keeping a change pending against applying a stream
	// change, so that a kept change is always among those applied again.
	applyMu sync.Mutex

	mu         sync.Mutex
	applied    uint64
	advanced   chan struct{} // closed and replaced when applied moves
	streamLast uint64
	caughtUp   time.Time
	why        string
	consumeErr string           // the consumer's last failure, until it applies again
	count      uint64           // applied since Start
	outcomes   map[string]error // own changes' refusals, by id
	outOrder   []string         // ids in outcomes, oldest first
	ahead      []*pendingChange // kept changes not yet applied from the stream, in key order
	kick       chan struct{}    // wakes the republisher
	eraseKick  chan struct{}    // wakes the eraser (OnErase)
	cancel     context.CancelFunc
	runCtx     context.Context // Start's; import lock renewals end with it
	wg         sync.WaitGroup
	locks      jetstream.KeyValue // the import locks bucket, once opened
	heldLocks  map[string]bool    // import locks this replica holds and renews (keys)
	started    bool

	joined      bool          // join has run (from a snapshot or not)
	snapshotSeq uint64        // the snapshot joined from
	firstSeq    uint64        // first stream sequence applied since Start
	snapErase   bool          // an erasure this node made was applied: snapshot at once
	snapKick    chan struct{} // wakes the snapshot loop (an erasure was applied)
	snapMu      sync.Mutex    // one snapshot or prune at a time
	lastSnap    uint64        // the sequence of the last snapshot this node put
}

// pendingRecord is the value of a pending change in the store.
type pendingRecord struct {
	Subject string `json:"s"`
	ID      string `json:"id"`
	Data    []byte `json:"d"` // sealed Change
}

// pendingChange is a kept change in memory.
type pendingChange struct {
	key   string
	rec   pendingRecord
	index string
	m     suppression.Mutation
	acked bool   // the stream has it; drop once applied from the stream
	seq   uint64 // its stream sequence, once acked
}

// New makes a replica of the stream cfg.Stream in store; box is the data key
// every node shares. Start runs it.
func New(js jetstream.JetStream, store *suppression.Store, box *sealed.Box, cfg Config, log zerolog.Logger) (*Replica, error) {
	if js == nil || store == nil || box == nil {
		return nil, errors.New("suppression replica: JetStream, store and data key are required")
	}
	if cfg.Node == "" {
		return nil, errors.New("suppression replica: no node name (Config.Node)")
	}
	cfg = cfg.withDefaults()
	if cfg.ImportLockTTL < time.Second { // renewed every third of it, through NATS
		return nil, fmt.Errorf("suppression replica: import lock TTL %s: want at least 1s", cfg.ImportLockTTL)
	}
	if strings.ContainsAny(cfg.Subject, " *>") || strings.HasSuffix(cfg.Subject, ".") {
		return nil, fmt.Errorf("suppression replica: subject prefix %q: want tokens without wildcards", cfg.Subject)
	}
	return &Replica{
		js: js, store: store, box: box, cfg: cfg,
		log:       log.With().Str("stream", cfg.Stream).Str("node", cfg.Node).Logger(),
		advanced:  make(chan struct{}),
		outcomes:  map[string]error{},
		kick:      make(chan struct{}, 1),
		eraseKick: make(chan struct{}, 1),
		snapKick:  make(chan struct{}, 1),
	}, nil
}

// Start loads the store's applied sequence and pending changes, then runs
// in the background until ctx ends or Close: it creates or updates the
// stream (retrying while NATS cannot be reached), consumes it from the
// applied sequence + 1, watches the stream's last sequence and republishes
// pending changes.
func (r *Replica) Start(ctx context.Context) error {
	seq, err := r.store.AppliedSeq()
	if err != nil {
		return fmt.Errorf("start suppression replica: %w", err)
	}
	var ahead []*pendingChange
	err = r.store.Pending(func(key string, value []byte) error {
		p, err := r.loadPending(key, value)
		if err != nil {
			return err
		}
		ahead = append(ahead, p)
		return nil
	})
	if err != nil {
		return fmt.Errorf("start suppression replica: %w", err)
	}
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return errors.New("start suppression replica: started already")
	}
	r.started = true
	r.applied, r.ahead = seq, ahead
	r.why = "not caught up with the stream yet"
	runCtx, cancel := context.WithCancel(ctx)
	r.cancel, r.runCtx = cancel, runCtx
	// Added under mu, as Close cancels under it: a Close at the same
	// moment waits for every loop (WaitGroup: no Add after Wait began).
	n := 3
	if r.cfg.OnErase != nil {
		n++
	}
	if r.cfg.SnapshotEvery > 0 {
		n++
	}
	r.wg.Add(n)
	r.mu.Unlock()
	r.log.Info().Uint64("applied_seq", seq).Int("pending", len(ahead)).Msg("suppression replica starting")
	go func() { defer r.wg.Done(); r.run(runCtx) }()
	go func() { defer r.wg.Done(); r.poll(runCtx) }()
	go func() { defer r.wg.Done(); r.republishLoop(runCtx) }()
	if r.cfg.OnErase != nil {
		go func() { defer r.wg.Done(); r.eraseLoop(runCtx) }()
		r.nudgeEraser() // work a crash left
	}
	if r.cfg.SnapshotEvery > 0 {
		go func() { defer r.wg.Done(); r.snapshotLoop(runCtx) }()
	}
	r.nudge()
	return nil
}

// Close stops the background work and waits for it; the store stays open.
// Import locks held are no longer renewed (they lapse, see LockImport).
func (r *Replica) Close() error {
	r.mu.Lock()
	if r.cancel != nil {
		// Under mu: LockImport adds its renewal to wg only before this.
		r.cancel()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

// loadPending decodes a pending record kept in the store.
func (r *Replica) loadPending(key string, value []byte) (*pendingChange, error) {
	var rec pendingRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return nil, fmt.Errorf("pending change %s: %w", key, err)
	}
	c, err := r.open(rec.Subject, rec.Data)
	if err != nil {
		return nil, fmt.Errorf("pending change %s: %w", key, err)
	}
	return &pendingChange{key: key, rec: rec, index: r.indexOf(rec.Subject), m: c.Mutation}, nil
}

// ---- publishing ----

// Publish makes c part of the one suppression truth and returns once this
// node honours it: the stream has acknowledged it and the local store has
// applied it, or, NATS out of reach, it is kept pending on this node and
// applied here. The error is the store's refusal (suppression.ErrErased,
// ErrRestricted), an invalid change, or a local store failure; nil means
// the change is accepted and honoured here.
func (r *Replica) Publish(ctx context.Context, c Change) error {
	c, err := r.prepare(c)
	if err != nil {
		return fmt.Errorf("publish suppression change: %w", err)
	}
	subj := r.subject(c)
	data, err := r.seal(subj, c)
	if err != nil {
		return fmt.Errorf("publish suppression change %s: %w", c.ID, err)
	}
	if nc := r.js.Conn(); nc == nil || !nc.IsConnected() {
		return r.keep(c, subj, data, errors.New("not connected to NATS"))
	}
	seq, err := r.send(ctx, c.Mutation.Op, subj, c.ID, data)
	if err != nil {
		return r.keep(c, subj, data, err)
	}
	return r.await(ctx, c, seq)
}

// prepare fills the id, time and origin and normalises the mutation.
func (r *Replica) prepare(c Change) (Change, error) {
	if c.ID == "" {
		var b [16]byte
		rand.Read(b[:]) // never fails (crypto/rand, Go ≥ 1.24)
		c.ID = hex.EncodeToString(b[:])
	}
	if strings.ContainsAny(c.ID, " \t\r\n") || len(c.ID) > 128 {
		return Change{}, fmt.Errorf("change id %q: want up to 128 bytes without spaces", c.ID)
	}
	if c.Time.IsZero() {
		c.Time = r.cfg.Now()
	}
	c.Time = c.Time.UTC()
	if c.Origin == "" {
		c.Origin = r.cfg.Node
	}
	if c.Mutation.Time.IsZero() {
		c.Mutation.Time = c.Time
	}
	m, err := r.store.NormalizeMutation(c.Mutation)
	if err != nil {
		return Change{}, err
	}
	c.Mutation = m
	return c, nil
}

// subject is the change's subject: the prefix and the keyed index.
func (r *Replica) subject(c Change) string {
	return r.cfg.Subject + "." + r.store.MutationIndex(c.Mutation)
}

// indexOf returns the index part of a subject.
func (r *Replica) indexOf(subj string) string {
	return strings.TrimPrefix(subj, r.cfg.Subject+".")
}

// seal encodes and seals c for subj.
func (r *Replica) seal(subj string, c Change) ([]byte, error) {
	j, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return r.box.Seal(j, ctxChange+subj), nil
}

// open opens a sealed change and checks it belongs under its subject.
func (r *Replica) open(subj string, data []byte) (Change, error) {
	j, err := r.box.Open(data, ctxChange+subj)
	if err != nil {
		return Change{}, fmt.Errorf("open change: %w (another data key?)", err)
	}
	var c Change
	if err := json.Unmarshal(j, &c); err != nil {
		return Change{}, fmt.Errorf("decode change: %w", err)
	}
	if m, err := r.store.NormalizeMutation(c.Mutation); err == nil && r.cfg.Subject+"."+r.store.MutationIndex(m) != subj {
		return Change{}, fmt.Errorf("change %s does not belong under its subject", c.ID)
	}
	return c, nil
}

// send publishes one sealed change and returns its stream sequence. An
// erasure first overwrites the person's earlier events, and afterwards
// purges what reached the subject before the tombstone.
func (r *Replica) send(ctx context.Context, op suppression.Op, subj, id string, data []byte) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	erase := op == suppression.OpErase
	if erase {
		if err := r.wipeSubject(ctx, subj); err != nil {
			return 0, err
		}
	}
	ack, err := r.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: data},
		jetstream.WithMsgID(id), jetstream.WithExpectStream(r.cfg.Stream))
	if err != nil {
		return 0, fmt.Errorf("publish to %s: %w", r.cfg.Stream, err)
	}
	if erase {
		if err := r.purgeBefore(ctx, subj, ack.Sequence); err != nil {
			// The tombstone is in; what slipped in before it is sealed and
			// erased by it on every node. Logged, not failed.
			r.log.Error().Err(err).Str("index", shortIndex(r.indexOf(subj))).Msg("purge before erasure tombstone")
		}
	}
	return ack.Sequence, nil
}

// maxWipe bounds the events of one subject overwritten in one erasure.
const maxWipe = 100000

// wipeSubject overwrites every message on subj in the stream, newest
// first (SecureDeleteMsg: the bytes are overwritten on disk, where a purge
// would only mark them deleted).
func (r *Replica) wipeSubject(ctx context.Context, subj string) error {
	st, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return fmt.Errorf("wipe erased subject: stream %s: %w", r.cfg.Stream, err)
	}
	n := 0
	for ; n < maxWipe; n++ {
		m, err := st.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return fmt.Errorf("wipe erased subject: last message: %w", err)
		}
		if err := st.SecureDeleteMsg(ctx, m.Sequence); err != nil {
			return fmt.Errorf("wipe erased subject: delete %d: %w", m.Sequence, err)
		}
	}
	r.log.Info().Str("index", shortIndex(r.indexOf(subj))).Int("events", n).Msg("erased events overwritten on the stream")
	return nil
}

// purgeBefore purges subj's messages below seq (the tombstone's).
func (r *Replica) purgeBefore(ctx context.Context, subj string, seq uint64) error {
	st, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", r.cfg.Stream, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeSequence(seq)); err != nil {
		return fmt.Errorf("purge %s below %d: %w", shortIndex(r.indexOf(subj)), seq, err)
	}
	return nil
}

// await waits until the local store has applied seq and returns the
// change's refusal, if any. Past ApplyWait (or ctx) it applies the change
// ahead of the stream, so this node honours it at once either way.
func (r *Replica) await(ctx context.Context, c Change, seq uint64) error {
	wctx, cancel := context.WithTimeout(ctx, r.cfg.ApplyWait)
	defer cancel()
	if err := r.waitApplied(wctx, seq); err != nil {
		out, aerr := r.store.Apply(0, c.Mutation)
		if aerr == nil && c.Mutation.Op == suppression.OpConsent {
			out.Refused, aerr = r.applyConsentAhead(c)
		}
		if aerr != nil {
			return fmt.Errorf("publish suppression change %s: applied by the stream (seq %d), not yet here: %w", c.ID, seq, aerr)
		}
		r.log.Warn().Str("id", c.ID).Uint64("seq", seq).Msg("suppression replica behind: change applied ahead of the stream")
		return r.refusal(c, out.Refused)
	}
	r.mu.Lock()
	refused := r.outcomes[c.ID]
	r.mu.Unlock()
	return r.refusal(c, refused)
}

// applyConsentAhead applies a consent change to the consent store without
// a sequence (ahead of the stream); its stream copy, applied later, is
// skipped there unless another op came between (then it is applied again,
// so this node ends as every other).
func (r *Replica) applyConsentAhead(c Change) (error, error) {
	if r.cfg.Consent == nil {
		return nil, nil
	}
	refused, err := r.cfg.Consent.ApplyEncoded([]uint64{0}, [][]byte{c.Mutation.Consent})
	if err != nil {
		return nil, fmt.Errorf("apply consent change %s here: %w", c.ID, err)
	}
	return refused[0], nil
}

// refusal wraps the store's refusal of c, keeping it matchable.
func (r *Replica) refusal(c Change, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("suppression change %s (%s): %w", c.ID, c.Mutation.Op, err)
}

// waitApplied blocks until the applied sequence reaches seq or ctx ends.
func (r *Replica) waitApplied(ctx context.Context, seq uint64) error {
	for {
		r.mu.Lock()
		applied, ch := r.applied, r.advanced
		r.mu.Unlock()
		if applied >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// keep stores c pending and applies it here, in one transaction.
func (r *Replica) keep(c Change, subj string, data []byte, cause error) error {
	rec := pendingRecord{Subject: subj, ID: c.ID, Data: data}
	v, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("keep suppression change %s: %w", c.ID, err)
	}
	key := fmt.Sprintf("%016x-%s", uint64(time.Now().UnixNano()), c.ID)
	r.applyMu.Lock() // one at a time, so the in-memory order is the key order
	out, err := r.store.AddPending(key, v, c.Mutation)
	if err == nil && c.Mutation.Op == suppression.OpConsent {
		out.Refused, err = r.applyConsentAhead(c)
	}
	r.mu.Lock()
	if err == nil {
		r.ahead = append(r.ahead, &pendingChange{key: key, rec: rec, index: r.indexOf(subj), m: c.Mutation})
	}
	n := len(r.ahead)
	r.mu.Unlock()
	r.applyMu.Unlock()
	if err != nil {
		return fmt.Errorf("keep suppression change %s: %w", c.ID, err)
	}
	r.log.Warn().Err(cause).Str("id", c.ID).Str("op", string(c.Mutation.Op)).Int("pending", n).
		Msg("suppression change kept on this node until the stream takes it")
	r.nudge()
	return r.refusal(c, out.Refused)
}

// nudge wakes the republisher.
func (r *Replica) nudge() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// republishLoop publishes pending changes until none is left. After a
// failed round it waits 0.5 s, doubling up to RetryMax, each wait ±20 %
// at random so nodes coming back together do not stampede; a new pending
// change or the stream becoming reachable (poll) starts a round at once.
func (r *Replica) republishLoop(ctx context.Context) {
	delay := 500 * time.Millisecond
	for {
		wait := time.Duration(1<<62 - 1)
		left, err := r.republish(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			r.log.Warn().Err(err).Int("pending", left).Dur("retry_in_ms", delay).Msg("pending suppression changes not published yet")
			wait = jitter(delay)
			delay = min(2*delay, r.cfg.RetryMax)
		case left > 0:
			wait = jitter(delay) // published, not yet applied from the stream
		default:
			delay = 500 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-r.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// ---- erasures made elsewhere (OnErase) ----

// nudgeEraser wakes the eraser.
func (r *Replica) nudgeEraser() {
	select {
	case r.eraseKick <- struct{}{}:
	default:
	}
}

// eraseLoop hands the due erasures to OnErase until none is left, then
// waits for the next. After a failure it waits 0.5 s, doubling up to
// RetryMax (±20 %), and tries again from the same erasure.
func (r *Replica) eraseLoop(ctx context.Context) {
	delay := 500 * time.Millisecond
	for {
		wait := time.Duration(1<<62 - 1)
		if err := r.eraseDue(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.Warn().Err(err).Dur("retry_in_ms", delay).Msg("erasure not done here yet; retrying")
			wait = jitter(delay)
			delay = min(2*delay, r.cfg.RetryMax)
		} else {
			delay = 500 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-r.eraseKick:
		case <-t.C:
		}
		t.Stop()
	}
}

// eraseDue hands each due erasure, in stream order, to OnErase and drops it
// once done; it stops at the first failure.
func (r *Replica) eraseDue(ctx context.Context) error {
	var due []Erasure
	err := r.store.Due(func(seq uint64, v []byte) error {
		var e Erasure
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("due erasure at %d: %w", seq, err)
		}
		e.Seq = seq
		due = append(due, e)
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range due {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := r.cfg.OnErase(ctx, e); err != nil {
			return fmt.Errorf("erasure %s (seq %d, index %s, from %s): %w", e.ID, e.Seq, shortIndex(e.Index), e.Origin, err)
		}
		if err := r.store.DoneDue(e.Seq); err != nil {
			return err
		}
		r.log.Info().Uint64("seq", e.Seq).Str("index", shortIndex(e.Index)).Str("origin", e.Origin).Msg("erasure done here")
	}
	return nil
}

// DueErasures returns how many erasures are applied to the store but not
// yet done in this node's other stores (OnErase).
func (r *Replica) DueErasures() (int, error) {
	n := 0
	err := r.store.Due(func(uint64, []byte) error { n++; return nil })
	return n, err
}

// jitter returns d ±20 %.
func jitter(d time.Duration) time.Duration {
	var b [2]byte
	rand.Read(b[:])
	f := 0.8 + 0.4*float64(uint16(b[0])<<8|uint16(b[1]))/65535
	return time.Duration(float64(d) * f)
}

// republish publishes the pending changes not yet acknowledged, in order,
// stopping at the first failure; it returns how many are still pending.
func (r *Replica) republish(ctx context.Context) (int, error) {
	r.mu.Lock()
	todo := make([]*pendingChange, 0, len(r.ahead))
	for _, p := range r.ahead {
		if !p.acked {
			todo = append(todo, p)
		}
	}
	n := len(r.ahead)
	r.mu.Unlock()
	if len(todo) == 0 {
		return n, nil
	}
	if nc := r.js.Conn(); nc == nil || !nc.IsConnected() {
		return n, errors.New("not connected to NATS")
	}
	for _, p := range todo {
		seq, err := r.send(ctx, p.m.Op, p.rec.Subject, p.rec.ID, p.rec.Data)
		if err != nil {
			return n, err
		}
		r.log.Info().Str("id", p.rec.ID).Uint64("seq", seq).Msg("pending suppression change published")
		if err := r.acked(p, seq); err != nil {
			return n, err
		}
	}
	r.mu.Lock()
	n = len(r.ahead)
	r.mu.Unlock()
	return n, nil
}

// acked marks p as in the stream at seq. Usually the stream's copy is
// applied later and drops it (handle); if the replica has applied seq
// already (a duplicate ack: the copy was applied before a crash left the
// pending record behind), p is dropped here.
func (r *Replica) acked(p *pendingChange, seq uint64) error {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	r.mu.Lock()
	p.acked, p.seq = true, seq
	drop := seq <= r.applied
	if drop {
		r.ahead = slices.DeleteFunc(r.ahead, func(q *pendingChange) bool { return q == p })
	}
	r.mu.Unlock()
	if drop {
		return r.store.DeletePending(p.key)
	}
	return nil
}

// ---- consuming ----

// run keeps the stream and a consumer of it going until ctx ends.
func (r *Replica) run(ctx context.Context) {
	delay := 500 * time.Millisecond
	for ctx.Err() == nil {
		err := r.ensureStream(ctx)
		if err == nil {
			err = r.join(ctx)
		}
		if err == nil {
			delay = 500 * time.Millisecond
			err = r.consume(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errConsumeAgain) {
			r.log.Info().Msg("consuming the stream again after a reconnect")
			continue
		}
		r.mu.Lock()
		r.why, r.consumeErr = err.Error(), err.Error()
		r.mu.Unlock()
		r.log.Warn().Err(err).Dur("retry_in_ms", delay).Msg("suppression replica not consuming")
		t := time.NewTimer(jitter(delay))
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		delay = min(2*delay, r.cfg.RetryMax)
	}
}

// ensureStream creates the stream or updates it to cfg.
func (r *Replica) ensureStream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := r.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        r.cfg.Stream,
		Description: "postwarden suppression changes (sealed; subjects are keyed indexes)",
		Subjects:    []string{r.cfg.Subject + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    r.cfg.Replicas,
		Retention:   jetstream.LimitsPolicy,
		Duplicates:  r.cfg.Duplicates,
	})
	if err != nil {
		return fmt.Errorf("create or update stream %s: %w", r.cfg.Stream, err)
	}
	return nil
}

// consume applies the stream from the applied sequence + 1 until ctx ends
// or a change cannot be applied.
func (r *Replica) consume(ctx context.Context) error {
	r.mu.Lock()
	from := r.applied + 1
	r.mu.Unlock()
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{r.cfg.Subject + ".>"}}
	if from > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	cons, err := r.js.OrderedConsumer(cctx, r.cfg.Stream, cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("consume stream %s from %d: %w", r.cfg.Stream, from, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume stream %s from %d: %w", r.cfg.Stream, from, err)
	}
	done := make(chan struct{})
	defer close(done)
	// After a reconnect the server may have lost the ordered consumer (a
	// server restarted, or one that dropped it during the cut); the client
	// makes it again only after missed heartbeats, tens of seconds. Consume
	// again at once from the applied sequence instead (errConsumeAgain).
	nc := r.js.Conn()
	reconnects := nc.Stats().Reconnects
	var again atomic.Bool
	go func() {
		defer it.Stop()
		t := time.NewTicker(r.cfg.Poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-t.C:
				if nc.Stats().Reconnects != reconnects && nc.IsConnected() {
					again.Store(true)
					return
				}
			}
		}
	}()
	stopped := func(err error) error {
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case again.Load():
			return errConsumeAgain
		}
		return fmt.Errorf("consume stream %s: %w", r.cfg.Stream, err)
	}
	for {
		msg, err := it.Next()
		if err != nil {
			return stopped(err)
		}
		// A backlog (NumPending > 0) is applied in batches of up to
		// maxBatch, one transaction each.
		batch := []jetstream.Msg{msg}
		var next error
		for len(batch) < maxBatch && numPending(batch[len(batch)-1]) > 0 {
			m, err := it.Next(jetstream.NextMaxWait(100 * time.Millisecond))
			if err != nil {
				if !errors.Is(err, nats.ErrTimeout) {
					next = err
				}
				break
			}
			batch = append(batch, m)
		}
		if err := r.handle(batch); err != nil {
			return err
		}
		if next != nil {
			return stopped(next)
		}
	}
}

// errConsumeAgain ends consume after a reconnect: run consumes again at once.
var errConsumeAgain = errors.New("reconnected to NATS: consuming the stream again")

// maxBatch bounds the stream changes applied in one transaction.
const maxBatch = 512

// numPending is the consumer's count of messages not yet delivered after m.
func numPending(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.NumPending
}

// handle applies stream messages (consecutive, as delivered) to the store
// in one transaction, the last sequence with them. A message that cannot
// be opened ends the batch: those before it are applied, and its error is
// returned, so consumption stops there.
func (r *Replica) handle(msgs []jetstream.Msg) error {
	type item struct {
		c       Change
		index   string
		pending uint64 // the consumer's NumPending after it
	}
	var (
		items  []item
		logged []suppression.Logged
		stop   error
	)
	for _, msg := range msgs {
		md, err := msg.Metadata()
		if err != nil {
			stop = fmt.Errorf("stream message metadata: %w", err)
			break
		}
		seq := md.Sequence.Stream
		c, err := r.open(msg.Subject(), msg.Data())
		if err != nil {
			stop = fmt.Errorf("stream change at %d: %w", seq, err)
			break
		}
		l := suppression.Logged{Seq: seq, Mutation: c.Mutation}
		if c.Mutation.Op == suppression.OpErase && r.cfg.OnErase != nil {
			due, err := json.Marshal(Erasure{Seq: seq, ID: c.ID, Origin: c.Origin, Index: r.indexOf(msg.Subject()), Ref: c.Mutation.Ref, Time: c.Time})
			if err != nil {
				stop = fmt.Errorf("stream change at %d: %w", seq, err)
				break
			}
			l.Due = due
		}
		items = append(items, item{c: c, index: r.indexOf(msg.Subject()), pending: md.NumPending})
		logged = append(logged, l)
	}
	if len(items) == 0 {
		return stop
	}

	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	r.mu.Lock()
	for i, it := range items { // kept changes on the same index, still ahead of the stream
		for _, p := range r.ahead {
			if p.index == it.index && p.rec.ID != it.c.ID {
				logged[i].Ahead = append(logged[i].Ahead, p.m)
			}
		}
	}
	r.mu.Unlock()
	consentRefused, err := r.applyConsent(logged)
	if err != nil {
		return fmt.Errorf("stream changes %d-%d: %w", logged[0].Seq, logged[len(logged)-1].Seq, err)
	}
	outs, err := r.store.ApplyAll(logged)
	if err != nil {
		return fmt.Errorf("stream changes %d-%d: %w", logged[0].Seq, logged[len(logged)-1].Seq, err)
	}
	for i, refused := range consentRefused {
		if refused != nil && !outs[i].Skipped {
			outs[i].Refused = refused
		}
	}
	for i, it := range items {
		out, seq := outs[i], logged[i].Seq
		if logged[i].Due != nil && !out.Skipped {
			r.nudgeEraser()
		}
		if out.Refused != nil && it.c.Origin != r.cfg.Node {
			r.log.Info().Uint64("seq", seq).Str("id", it.c.ID).Str("op", string(it.c.Mutation.Op)).Str("refused", out.Refused.Error()).Msg("stream change refused by the store")
		}
		if it.c.Mutation.Op == suppression.OpErase && !out.Skipped && out.Refused == nil {
			r.erasureApplied(it.c.Origin == r.cfg.Node)
		}
		if it.c.Mutation.Op == suppression.OpErase && !out.Skipped {
			r.log.Info().Uint64("seq", seq).Str("index", shortIndex(it.index)).Str("origin", it.c.Origin).Msg("erasure applied")
		}
	}

	last := logged[len(logged)-1].Seq
	ids := make(map[string]bool, len(items))
	var drop []string
	r.mu.Lock()
	for i, it := range items {
		ids[it.c.ID] = true
		if !outs[i].Skipped {
			r.count++
			if r.firstSeq == 0 {
				r.firstSeq = logged[i].Seq
			}
		}
		if it.c.Origin == r.cfg.Node {
			if len(r.outOrder) >= maxOutcomes {
				delete(r.outcomes, r.outOrder[0])
				r.outOrder = r.outOrder[1:]
			}
			r.outcomes[it.c.ID], r.outOrder = outs[i].Refused, append(r.outOrder, it.c.ID)
		}
	}
	if last > r.applied {
		r.applied = last
		close(r.advanced)
		r.advanced = make(chan struct{})
	}
	keep := r.ahead[:0]
	for _, p := range r.ahead {
		// Its copy applied now, or passed over (wiped by an erasure
		// before this node read it).
		if ids[p.rec.ID] || (p.acked && p.seq <= last) {
			drop = append(drop, p.key)
		} else {
			keep = append(keep, p)
		}
	}
	clear(r.ahead[len(keep):])
	r.ahead = keep
	if last > r.streamLast {
		r.streamLast = last
	}
	r.consumeErr = ""
	if items[len(items)-1].pending == 0 && stop == nil {
		r.caughtUp, r.why = r.cfg.Now(), ""
	}
	r.mu.Unlock()
	for _, k := range drop {
		if err := r.store.DeletePending(k); err != nil {
			return err
		}
	}
	return stop
}

// applyConsent applies the consent ops among logged to the consent store,
// in one transaction that records their sequences; refused is indexed as
// logged (nil where there is no refusal or no consent op). The suppression
// store records the sequences afterwards: after a crash between the two,
// the replay is skipped by the consent store's own sequence.
func (r *Replica) applyConsent(logged []suppression.Logged) (refused []error, err error) {
	var (
		seqs []uint64
		ops  [][]byte
		at   []int
	)
	for i, l := range logged {
		if l.Mutation.Op == suppression.OpConsent {
			seqs, ops, at = append(seqs, l.Seq), append(ops, l.Mutation.Consent), append(at, i)
		}
	}
	if len(ops) == 0 {
		return nil, nil
	}
	if r.cfg.Consent == nil {
		r.log.Debug().Int("ops", len(ops)).Msg("consent ops recorded only: no consent store")
		return nil, nil
	}
	rs, err := r.cfg.Consent.ApplyEncoded(seqs, ops)
	if err != nil {
		return nil, err
	}
	refused = make([]error, len(logged))
	for j, i := range at {
		refused[i] = rs[j]
	}
	return refused, nil
}

// ---- staleness ----

// poll reads the stream's last sequence every Poll and marks the replica
// caught up when it has applied it.
func (r *Replica) poll(ctx context.Context) {
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	for {
		r.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check compares the stream's last sequence with the applied one.
func (r *Replica) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Poll)
	defer cancel()
	if nc := r.js.Conn(); nc == nil || !nc.IsConnected() {
		r.setWhy("not connected to NATS")
		return
	}
	st, err := r.js.Stream(ctx, r.cfg.Stream) // fetches the stream's info
	if err != nil {
		r.setWhy("stream " + r.cfg.Stream + " unreachable: " + err.Error())
		return
	}
	last := st.CachedInfo().State.LastSeq
	r.mu.Lock()
	r.streamLast = last
	switch {
	case r.applied > last:
		// The stream has fewer changes than this store applied: it was
		// recreated or restored from an older backup. Consuming from
		// applied+1 would miss its changes; stay stale until an operator
		// looks (issue 13: a node joins from a snapshot plus the tail).
		r.why = fmt.Sprintf("stream %s ends at %d, before this store's %d (recreated?)", r.cfg.Stream, last, r.applied)
	case r.applied >= last:
		r.caughtUp, r.why = r.cfg.Now(), ""
	case r.consumeErr != "":
		r.why = r.consumeErr
	default:
		r.why = fmt.Sprintf("%d changes behind the stream", last-r.applied)
	}
	pending := false
	for _, p := range r.ahead {
		pending = pending || !p.acked
	}
	r.mu.Unlock()
	if pending {
		r.nudge()
	}
}

// setWhy records why the replica is not caught up.
func (r *Replica) setWhy(why string) {
	r.mu.Lock()
	r.why = why
	r.mu.Unlock()
}

// Stale reports whether the replica has not been caught up with the stream
// for longer than MaxLag at now, or never since Start: the delivery gate
// starts no delivery while it is true.
func (r *Replica) Stale(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.staleLocked(now)
}

func (r *Replica) staleLocked(now time.Time) bool {
	return r.caughtUp.IsZero() || now.Sub(r.caughtUp) > r.cfg.MaxLag
}

// Status returns the replica's state now.
func (r *Replica) Status() Status {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Status{
		Node: r.cfg.Node, AppliedSeq: r.applied, StreamLast: r.streamLast, CaughtUp: r.caughtUp,
		Pending: len(r.ahead), Applied: r.count, Stale: r.staleLocked(now), Why: r.why,
		Snapshot: r.snapshotSeq, FirstSeq: r.firstSeq,
	}
	if s.StreamLast > s.AppliedSeq {
		s.Lag = s.StreamLast - s.AppliedSeq
	}
	if s.Why == "" && s.Stale {
		s.Why = "not caught up within max_lag"
	}
	return s
}

// shortIndex is the first 12 hex digits of an index, for logs.
func shortIndex(ih string) string {
	if len(ih) > 12 {
		return ih[:12]
	}
	return ih
}
