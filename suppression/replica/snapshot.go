package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/postwarden/postwarden/suppression"
)

// Snapshots (issue 13, promise 7): a node puts its store's replicated state
// (suppression.Store.WriteSnapshot) and its consent store's
// (Consent.ExportState) at the same stream sequence, sealed with the data
// key, into the object store bucket Config.Snapshots as
// "suppression.<node>.<seq>"; a node whose stores are empty at Start loads
// the newest one and reads the stream from its sequence + 1 only, so the
// stream's messages below it are not needed. A snapshot without the
// consent state (version 1, or put by a node without a consent store)
// still loads; the consent ops below it are then read from the stream
// (replayConsent). A node without a usable snapshot replays the stream.

// ctxSnapshot is the seal context of a snapshot; its object name is
// appended, so a snapshot renamed to another node or sequence does not open.
const ctxSnapshot = "suppression/replica:snapshot:"

// snapKeep is how many snapshots (taken at or after the last erasure) are
// kept; a joining node needs only the newest, the one before it covers a
// put that went wrong.
const snapKeep = 2

// snapInfo is a snapshot as the bucket lists it.
type snapInfo struct {
	name string
	node string
	seq  uint64
}

// snapName is the object name of this node's snapshot at seq; the
// zero-padded sequence sorts as it compares.
func snapName(node string, seq uint64) string {
	return fmt.Sprintf("suppression.%s.%020d", node, seq)
}

// parseSnapName reverses snapName; ok is false for another object.
func parseSnapName(name string) (snapInfo, bool) {
	parts := strings.Split(name, ".")
	if len(parts) != 3 || parts[0] != "suppression" || parts[1] == "" {
		return snapInfo{}, false
	}
	seq, err := strconv.ParseUint(parts[2], 10, 64)
	if err != nil || seq == 0 {
		return snapInfo{}, false
	}
	return snapInfo{name: name, node: parts[1], seq: seq}, true
}

// listSnapshots returns the snapshots in the bucket, newest first; none if
// the bucket does not exist.
func (r *Replica) listSnapshots(ctx context.Context) (jetstream.ObjectStore, []snapInfo, error) {
	obs, err := r.js.ObjectStore(ctx, r.cfg.Snapshots)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot bucket %s: %w", r.cfg.Snapshots, err)
	}
	infos, err := obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return obs, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list snapshots in %s: %w", r.cfg.Snapshots, err)
	}
	var out []snapInfo
	for _, in := range infos {
		if s, ok := parseSnapName(in.Name); ok && !in.Deleted {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b snapInfo) int {
		if a.seq != b.seq {
			return -cmpUint(a.seq, b.seq)
		}
		return strings.Compare(a.name, b.name)
	})
	return obs, out, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// join runs once, before the first consumption: a store that is empty
// loads the newest usable snapshot, so consumption starts at its sequence
// + 1. No bucket, no snapshot, none usable, or a store that took a change
// meanwhile: the stream is read from the start, as before snapshots. A
// bucket that cannot be read is an error (retried by run; the replica
// stays stale meanwhile).
func (r *Replica) join(ctx context.Context) error {
	r.mu.Lock()
	done := r.joined
	r.mu.Unlock()
	if done {
		return nil
	}
	empty, err := r.store.Empty()
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	if !empty {
		r.setJoined(0)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	obs, snaps, err := r.listSnapshots(ctx)
	if err != nil {
		return fmt.Errorf("join from a snapshot: %w", err)
	}
	if r.cfg.Consent != nil {
		ok, err := r.cfg.Consent.StateEmpty()
		if err != nil {
			return fmt.Errorf("join: %w", err)
		}
		if !ok {
			// Consent held but no suppression: the snapshot's consent
			// state cannot load over it; the stream has every op.
			r.log.Warn().Msg("consent store not empty; reading the stream from the start")
			r.setJoined(0)
			return nil
		}
	}
	for _, s := range snaps {
		data, err := obs.GetBytes(ctx, s.name)
		switch {
		case errors.Is(err, jetstream.ErrObjectNotFound):
			continue // pruned since the listing
		case errors.Is(err, jetstream.ErrDigestMismatch):
			r.log.Warn().Err(err).Str("snapshot", s.name).Msg("snapshot unusable; trying an older one")
			continue
		case err != nil:
			return fmt.Errorf("join from snapshot %s: %w", s.name, err)
		}
		sn, err := r.read(s.name, data)
		if err != nil {
			r.log.Warn().Err(err).Str("snapshot", s.name).Msg("snapshot unusable; trying an older one")
			continue
		}
		// The consent store first: interrupted before the suppression
		// store loads, the join runs again and loads it again (StateEmpty).
		if err := r.loadConsent(ctx, s.name, sn); err != nil {
			if ctx.Err() != nil || !sn.HasConsent() {
				return fmt.Errorf("join from snapshot %s: %w", s.name, err)
			}
			r.log.Warn().Err(err).Str("snapshot", s.name).Msg("snapshot's consent state unusable; trying an older one")
			continue
		}
		seq, err := r.load(sn)
		if errors.Is(err, suppression.ErrNotEmpty) {
			// A change was applied here meanwhile (a publish applied
			// ahead, a change kept while cut off): read the whole stream.
			r.log.Info().Err(err).Msg("store took a change before the snapshot loaded; reading the stream from the start")
			r.setJoined(0)
			return nil
		}
		if err != nil {
			return fmt.Errorf("join from snapshot %s: %w", s.name, err)
		}
		r.log.Info().Str("snapshot", s.name).Uint64("seq", seq).Bool("consent", sn.HasConsent()).Msg("joined from a snapshot; reading the stream's tail")
		return nil
	}
	r.log.Info().Int("snapshots", len(snaps)).Msg("no usable snapshot; reading the stream from the start")
	r.setJoined(0)
	return nil
}

// loadConsent gives the consent store its state up to the snapshot's
// sequence: the snapshot's consent section, or, from a snapshot without
// one (version 1), the consent ops of the stream up to it.
func (r *Replica) loadConsent(ctx context.Context, name string, sn *suppression.Snapshot) error {
	if r.cfg.Consent == nil {
		return nil
	}
	if !sn.HasConsent() {
		return r.replayConsent(ctx, sn.Seq)
	}
	r.applyMu.Lock()
	cseq, err := r.cfg.Consent.LoadState(sn.Consent())
	r.applyMu.Unlock()
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	r.log.Info().Str("snapshot", name).Uint64("consent_seq", cseq).Msg("consent state loaded from the snapshot")
	return nil
}

// replayConsent applies the stream's consent ops up to sequence upTo to
// Config.Consent, before a snapshot at upTo without the consent state (an
// older one) is loaded: consumption resumes after it. It needs the
// stream's messages below upTo; a purged stream leaves those ops out. The consent store skips what it has applied already (its own
// applied sequence), so a join interrupted and run again applies nothing
// twice. Only the ops are read into it; nothing else is applied.
func (r *Replica) replayConsent(ctx context.Context, upTo uint64) error {
	if r.cfg.Consent == nil || upTo == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	cons, err := r.js.OrderedConsumer(cctx, r.cfg.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{r.cfg.Subject + ".>"}})
	cancel()
	if err != nil {
		return fmt.Errorf("read consent ops of stream %s: %w", r.cfg.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("read consent ops of stream %s: %w", r.cfg.Stream, err)
	}
	defer it.Stop()
	var seqs []uint64
	var ops [][]byte
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		r.applyMu.Lock()
		_, err := r.cfg.Consent.ApplyEncoded(seqs, ops)
		r.applyMu.Unlock()
		seqs, ops = seqs[:0], ops[:0]
		if err != nil {
			return fmt.Errorf("apply consent ops below the snapshot: %w", err)
		}
		return nil
	}
	applied := 0
	for {
		msg, err := it.Next(jetstream.NextMaxWait(2 * time.Second))
		if errors.Is(err, nats.ErrTimeout) {
			break // the stream has nothing more below upTo (purged)
		}
		if err != nil {
			return fmt.Errorf("read consent ops of stream %s: %w", r.cfg.Stream, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("stream message metadata: %w", err)
		}
		seq := md.Sequence.Stream
		if seq > upTo {
			break
		}
		c, err := r.open(msg.Subject(), msg.Data())
		if err != nil {
			return fmt.Errorf("stream change at %d: %w", seq, err)
		}
		if c.Mutation.Op == suppression.OpConsent {
			seqs, ops = append(seqs, seq), append(ops, c.Mutation.Consent)
			applied++
			if len(ops) == maxBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if seq == upTo || md.NumPending == 0 {
			break
		}
	}
	if err := flush(); err != nil {
		return err
	}
	r.log.Info().Uint64("up_to", upTo).Int("consent_ops", applied).Msg("consent ops below the snapshot applied")
	return nil
}

// read opens a sealed snapshot and reads it whole (checked, not loaded).
func (r *Replica) read(name string, data []byte) (*suppression.Snapshot, error) {
	plain, err := r.box.Open(data, ctxSnapshot+name)
	if err != nil {
		return nil, fmt.Errorf("open snapshot %s: %w (another data key?)", name, err)
	}
	return r.store.ReadSnapshot(bytes.NewReader(plain))
}

// load loads a snapshot into the store; the applied sequence moves to its
// sequence in the same step, under applyMu, so no change is kept pending
// in between.
func (r *Replica) load(sn *suppression.Snapshot) (uint64, error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	seq, err := r.store.Load(sn)
	if err != nil {
		return 0, err
	}
	r.setJoined(seq)
	return seq, nil
}

// setJoined records that join has run, from the snapshot at seq (0: none).
func (r *Replica) setJoined(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.joined = true
	if seq > r.applied {
		r.snapshotSeq, r.applied = seq, seq
		close(r.advanced)
		r.advanced = make(chan struct{})
	}
}

// Snapshot puts a sealed snapshot of the store and the consent store into
// the bucket now, then deletes the snapshots no longer needed (see prune);
// it returns the snapshot's sequence. It refuses while the store keeps
// changes the stream does not have yet (suppression.ErrSnapshotPending),
// while an erasure is not yet done in the consent store
// (OnErase: it would still hold the person, in a snapshot taken after the
// erasure, which prune keeps), and while the store has applied nothing.
func (r *Replica) Snapshot(ctx context.Context) (uint64, error) {
	r.snapMu.Lock()
	defer r.snapMu.Unlock()
	var (
		buf     bytes.Buffer
		consent suppression.ConsentExport
	)
	if r.cfg.Consent != nil {
		consent = func(put func(k, v []byte) error) error {
			_, err := r.cfg.Consent.ExportState(put)
			return err
		}
	}
	// Under applyMu no stream change is applied: both stores reflect the
	// same sequence.
	r.applyMu.Lock()
	due, err := r.DueErasures()
	if err == nil && due > 0 && consent != nil {
		err = fmt.Errorf("%d erasures not yet done in the consent store", due)
	}
	var seq uint64
	if err == nil {
		seq, err = r.store.WriteSnapshot(&buf, consent)
	}
	r.applyMu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("snapshot: %w", err)
	}
	if seq == 0 {
		return 0, errors.New("snapshot: the store has applied nothing of the stream")
	}
	obs, err := r.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      r.cfg.Snapshots,
		Description: "postwarden suppression snapshots (sealed)",
		Storage:     jetstream.FileStorage,
		Replicas:    r.cfg.Replicas,
	})
	if err != nil {
		return 0, fmt.Errorf("snapshot: bucket %s: %w", r.cfg.Snapshots, err)
	}
	name := snapName(r.cfg.Node, seq)
	if _, err := obs.PutBytes(ctx, name, r.box.Seal(buf.Bytes(), ctxSnapshot+name)); err != nil {
		return 0, fmt.Errorf("snapshot: put %s: %w", name, err)
	}
	r.mu.Lock()
	r.lastSnap = seq
	r.mu.Unlock()
	r.log.Info().Str("snapshot", name).Uint64("seq", seq).Int("bytes", buf.Len()).Msg("suppression snapshot put")
	return seq, r.pruneLocked(ctx)
}

// prune deletes the snapshots no longer needed: every one taken before the
// last erasure this store applied (it still holds the person, sealed), and
// all but the newest snapKeep of the others.
func (r *Replica) prune(ctx context.Context) error {
	r.snapMu.Lock()
	defer r.snapMu.Unlock()
	return r.pruneLocked(ctx)
}

func (r *Replica) pruneLocked(ctx context.Context) error {
	erased, err := r.store.ErasedSeq()
	if err != nil {
		return fmt.Errorf("prune snapshots: %w", err)
	}
	obs, snaps, err := r.listSnapshots(ctx)
	if err != nil {
		return fmt.Errorf("prune snapshots: %w", err)
	}
	kept := 0
	for _, s := range snaps { // newest first
		if s.seq >= erased && kept < snapKeep {
			kept++
			continue
		}
		if err := obs.Delete(ctx, s.name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("prune snapshots: delete %s: %w", s.name, err)
		}
		r.log.Info().Str("snapshot", s.name).Uint64("seq", s.seq).Uint64("erased_seq", erased).Msg("suppression snapshot deleted")
	}
	return nil
}

// erasureApplied wakes the snapshot loop after an erasure was applied:
// every node deletes the snapshots taken before it; the node that made it
// first puts a fresh one, so joining stays fast.
func (r *Replica) erasureApplied(own bool) {
	if r.cfg.SnapshotEvery <= 0 {
		return
	}
	r.mu.Lock()
	r.snapErase = r.snapErase || own
	r.mu.Unlock()
	select {
	case r.snapKick <- struct{}{}:
	default:
	}
}

// snapshotLoop puts a snapshot every SnapshotEvery (±20 %, so nodes do not
// write together) when the replica is caught up and has applied something
// since its last one, and prunes after an erasure (at once, and at start
// for one a crash interrupted). A failed erasure round is retried after
// 0.5 s doubling up to RetryMax (±20 %); a failed periodic one waits for
// the next period.
func (r *Replica) snapshotLoop(ctx context.Context) {
	periodic := time.NewTimer(jitter(r.cfg.SnapshotEvery))
	defer periodic.Stop()
	retry := time.NewTimer(0) // a prune at start
	defer retry.Stop()
	delay := 500 * time.Millisecond
	for {
		take := false
		select {
		case <-ctx.Done():
			return
		case <-periodic.C:
			periodic.Reset(jitter(r.cfg.SnapshotEvery))
			r.mu.Lock()
			take = !r.caughtUp.IsZero() && r.applied >= r.streamLast && r.applied > r.lastSnap
			r.mu.Unlock()
			if !take {
				continue
			}
		case <-r.snapKick:
		case <-retry.C:
		}
		r.mu.Lock()
		own := r.snapErase
		r.snapErase = false
		r.mu.Unlock()
		var err error
		if take || own {
			_, err = r.Snapshot(ctx)
		}
		if perr := r.prune(ctx); perr != nil {
			err = errors.Join(err, perr)
		}
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			delay = 500 * time.Millisecond
		case take && !own:
			r.log.Warn().Err(err).Msg("suppression snapshot not put; next period")
		default:
			r.log.Warn().Err(err).Dur("retry_in_ms", delay).Msg("suppression snapshots not put or pruned yet; retrying")
			r.mu.Lock()
			r.snapErase = r.snapErase || own
			r.mu.Unlock()
			retry.Reset(jitter(delay))
			delay = min(2*delay, r.cfg.RetryMax)
		}
	}
}
