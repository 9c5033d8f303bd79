package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/postwarden/postwarden/suppression"
)

// PublishConsent publishes a consent store op (its JSON, checked by the
// consent store first) for the address whose hex keyed index is indexHex,
// as Publish does a change: it returns once the stream holds it and this
// node's consent store applied it (or, NATS out of reach, once it is kept
// pending and applied here). The error is the consent store's refusal, an
// invalid op or a local failure.
func (r *Replica) PublishConsent(ctx context.Context, indexHex, id string, op json.RawMessage) error {
	return r.Publish(ctx, ConsentOp(indexHex, id, op))
}

// maxBatchPublish bounds the changes of one PublishAll (the client's
// outstanding async publishes).
const maxBatchPublish = 4000

// PublishAll publishes cs (no erasure) asynchronously, waits for every
// ack, then waits until the local store has applied the last of them.
// refused[i] is cs[i]'s refusal by the store. Unlike Publish it keeps
// nothing pending: if NATS cannot be reached, or an ack does not come
// within PublishTimeout, or the local replica does not apply the batch in
// time, it returns an error and the caller publishes the batch again later;
// give each change a stable ID, so a change the stream already holds is
// dropped as a duplicate (within Config.Duplicates) and a re-run is
// harmless either way (an add applied twice writes the same entry).
func (r *Replica) PublishAll(ctx context.Context, cs []Change) (refused []error, err error) {
	if len(cs) == 0 {
		return nil, nil
	}
	if len(cs) > maxBatchPublish {
		return nil, fmt.Errorf("publish %d suppression changes: more than %d in one batch", len(cs), maxBatchPublish)
	}
	type sent struct {
		c   Change
		ack jetstream.PubAckFuture
	}
	if nc := r.js.Conn(); nc == nil || !nc.IsConnected() {
		return nil, fmt.Errorf("publish %d suppression changes: not connected to NATS", len(cs))
	}
	all := make([]sent, 0, len(cs))
	for _, c := range cs {
		if c.Mutation.Op == suppression.OpErase {
			return nil, errors.New("publish suppression changes: an erasure is published alone (Publish)")
		}
		c, err := r.prepare(c)
		if err != nil {
			return nil, fmt.Errorf("publish suppression change %s: %w", c.ID, err)
		}
		subj := r.subject(c)
		data, err := r.seal(subj, c)
		if err != nil {
			return nil, fmt.Errorf("publish suppression change %s: %w", c.ID, err)
		}
		f, err := r.js.PublishMsgAsync(&nats.Msg{Subject: subj, Data: data},
			jetstream.WithMsgID(c.ID), jetstream.WithExpectStream(r.cfg.Stream))
		if err != nil {
			return nil, fmt.Errorf("publish suppression change %s to %s: %w", c.ID, r.cfg.Stream, err)
		}
		all = append(all, sent{c: c, ack: f})
	}
	// Every ack, each within PublishTimeout of the last one sent.
	t := time.NewTimer(r.cfg.PublishTimeout)
	defer t.Stop()
	var last uint64
	for _, s := range all {
		select {
		case a := <-s.ack.Ok():
			last = max(last, a.Sequence)
		case err := <-s.ack.Err():
			return nil, fmt.Errorf("publish suppression change %s to %s: %w", s.c.ID, r.cfg.Stream, err)
		case <-t.C:
			return nil, fmt.Errorf("publish %d suppression changes to %s: no ack within %s", len(all), r.cfg.Stream, r.cfg.PublishTimeout)
		case <-ctx.Done():
			return nil, fmt.Errorf("publish %d suppression changes: %w", len(all), ctx.Err())
		}
	}
	// A large batch takes the local replica a little longer to apply.
	wctx, cancel := context.WithTimeout(ctx, r.cfg.ApplyWait+time.Duration(len(all))*time.Millisecond)
	defer cancel()
	if err := r.waitApplied(wctx, last); err != nil {
		return nil, fmt.Errorf("publish %d suppression changes: in the stream (up to seq %d), not yet applied here: %w", len(all), last, err)
	}
	refused = make([]error, len(all))
	r.mu.Lock()
	for i, s := range all {
		refused[i] = r.refusal(s.c, r.outcomes[s.c.ID])
	}
	r.mu.Unlock()
	return refused, nil
}

// CatchUp reads the stream's last sequence and waits until the local store
// has applied it, for at most MaxLag: a caller then reads the cluster's
// state (an import's run record), not what this node last saw.
func (r *Replica) CatchUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.MaxLag)
	defer cancel()
	if nc := r.js.Conn(); nc == nil || !nc.IsConnected() {
		return errors.New("catch up with the suppression stream: not connected to NATS")
	}
	var last uint64
	st, err := r.js.Stream(ctx, r.cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound): // nothing published yet
	case err != nil:
		return fmt.Errorf("catch up with the suppression stream %s: %w", r.cfg.Stream, err)
	default:
		last = st.CachedInfo().State.LastSeq
	}
	if err := r.waitApplied(ctx, last); err != nil {
		return fmt.Errorf("catch up with the suppression stream %s (up to seq %d): %w", r.cfg.Stream, last, err)
	}
	return nil
}
