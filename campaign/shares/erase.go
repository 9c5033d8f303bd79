package shares

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// maxEraseTries bounds the rewrites of one shard lost to concurrent ones.
const maxEraseTries = 20

// EraseIndex erases one person, by the hex keyed index of their address,
// from every campaign in the cluster (issue 13, promise 5): in each
// campaign's shard that holds their row, a rewritten sealed shard without
// the row is published (with the subject's expected last sequence, so two
// erasures of the same shard never undo each other) and every older
// message of that subject is overwritten on disk (SecureDeleteMsg); the
// manifest's row counts drop by one; their outcome messages are purged.
// It returns how many rows it removed. Idempotent: run again, it removes
// nothing more but still deletes older shard messages a crash left. One
// run per cluster is enough: the streams are shared. The suppression
// tombstone, not this, keeps the person out of a re-run of the campaign.
func (c *Coordinator) EraseIndex(ctx context.Context, indexHex string) (int, error) {
	key := strings.ToLower(strings.TrimSpace(indexHex))
	if !validKey(key) {
		return 0, ErrBadKey
	}
	// From the stream's state (keys): a KV lister can wait forever while
	// another node's PruneFinished purges under it.
	mkeys, err := c.keys(ctx, "*.m")
	if err != nil {
		return 0, fmt.Errorf("shares: erase: list campaigns: %w", err)
	}
	removed := 0
	for _, mk := range mkeys {
		ctok := strings.TrimSuffix(mk, ".m")
		n, err := c.eraseFromCampaign(ctx, ctok, key)
		if err != nil {
			return removed, err
		}
		removed += n
		// Their outcomes recorded in batches (RecordBatch): rewritten without them.
		if _, err := c.EraseOutcomes(ctx, campaignFromToken(ctok), key); err != nil {
			return removed, err
		}
	}
	c.Forget(key)
	if err := c.purgeOutcomes(ctx, key); err != nil {
		return removed, err
	}
	c.log.Info().Str("index", key[:12]).Int("rows", removed).Msg("person erased from campaign shares")
	return removed, nil
}

// eraseFromCampaign removes key's row from its shard of one campaign.
func (c *Coordinator) eraseFromCampaign(ctx context.Context, ctok, key string) (int, error) {
	campaign := campaignFromToken(ctok)
	e, err := c.kv.Get(ctx, manifestKey(ctok))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("shares: erase: read manifest of %s: %w", campaign, err)
	}
	var m Manifest
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return 0, fmt.Errorf("shares: erase: read manifest of %s: %w", campaign, err)
	}
	if m.Shards == 0 {
		return 0, nil
	}
	s := shardOf(key, m.Shards)
	subj := dataSubject(ctok, s)
	for try := 0; ; try++ {
		raw, err := c.data.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) && m.State == ManifestReady {
			return c.eraseFromFinished(ctx, ctok, key, s)
		}
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, nil // not published (yet): nothing of theirs here
		}
		if err != nil {
			return 0, fmt.Errorf("shares: erase: fetch shard %d of %s: %w", s, campaign, err)
		}
		rows, err := c.openShard(raw.Data, campaign, s)
		if err != nil {
			return 0, err
		}
		kept := rows[:0:0]
		for _, r := range rows {
			if r.Key != key {
				kept = append(kept, r)
			}
		}
		newest := raw.Sequence
		if len(kept) < len(rows) {
			seq, err := c.rewriteShard(ctx, subj, campaign, s, raw, kept)
			if errors.Is(err, errShardMoved) && try < maxEraseTries {
				continue // another rewrite came first: start from it
			}
			if err != nil {
				return 0, err
			}
			newest = seq
		}
		// Older copies (this rewrite's, or one a crash left) go for good.
		if err := c.wipeBefore(ctx, subj, campaign, s, newest); err != nil {
			return 0, err
		}
		n := len(rows) - len(kept)
		if n > 0 {
			if err := c.dropManifestRows(ctx, ctok, s, n); err != nil {
				return n, err
			}
		}
		return n, nil
	}
}

// eraseFromFinished is eraseFromCampaign for a campaign whose shards were
// purged once it finished (PruneDone): its outcomes alone tell whether the
// person was a recipient, so the manifest's counts drop by one when one
// names them, before EraseIndex erases those outcomes. (A crash between the
// two makes a second run drop the counts again: the figures err low by
// one, never show a recipient pending forever.)
func (c *Coordinator) eraseFromFinished(ctx context.Context, ctok, key string, s int) (int, error) {
	named, err := c.outcomesName(ctx, ctok, s, key)
	if err != nil || !named {
		return 0, err
	}
	if err := c.dropManifestRows(ctx, ctok, s, 1); err != nil {
		return 0, err
	}
	return 1, nil
}

// errShardMoved: the shard's subject got a newer message than the one read.
var errShardMoved = errors.New("shares: shard rewritten concurrently")

// rewriteShard publishes rows as the shard's newest message, only if old is
// still the newest; it keeps old's campaign hash header, so a resumed
// Publish of the same file leaves it alone.
func (c *Coordinator) rewriteShard(ctx context.Context, subj, campaign string, s int, old *jetstream.RawStreamMsg, rows []Row) (uint64, error) {
	plain, err := encodeRows(rows)
	if err != nil {
		return 0, fmt.Errorf("shares: erase: encode shard %d of %s: %w", s, campaign, err)
	}
	msg := &nats.Msg{Subject: subj, Header: nats.Header{}, Data: c.box.Seal(plain, sealContext(campaign, s))}
	msg.Header.Set(hdrHash, old.Header.Get(hdrHash))
	msg.Header.Set(hdrRows, strconv.Itoa(len(rows)))
	ack, err := c.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(old.Sequence))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			return 0, errShardMoved
		}
		return 0, fmt.Errorf("shares: erase: publish shard %d of %s: %w", s, campaign, err)
	}
	return ack.Sequence, nil
}

// wipeBefore overwrites every message of subj below seq (SecureDeleteMsg:
// the bytes are overwritten on disk, where a purge only marks them deleted).
func (c *Coordinator) wipeBefore(ctx context.Context, subj, campaign string, s int, seq uint64) error {
	for from := uint64(1); from < seq; {
		m, err := c.data.GetMsg(ctx, from, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("shares: erase: older copies of shard %d of %s: %w", s, campaign, err)
		}
		if m.Sequence >= seq {
			return nil
		}
		if err := c.data.SecureDeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("shares: erase: delete copy %d of shard %d of %s: %w", m.Sequence, s, campaign, err)
		}
		from = m.Sequence + 1
	}
	return nil
}

// dropManifestRows lowers the manifest's counts by n rows of shard s, with
// a compare-and-set, so Status's pending count and claims' sizes stay true.
func (c *Coordinator) dropManifestRows(ctx context.Context, ctok string, s, n int) error {
	campaign := campaignFromToken(ctok)
	for {
		e, err := c.kv.Get(ctx, manifestKey(ctok))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil // pruned meanwhile (PruneFinished): no counts left to lower
		}
		if err != nil {
			return fmt.Errorf("shares: erase: read manifest of %s: %w", campaign, err)
		}
		var m Manifest
		if err := json.Unmarshal(e.Value(), &m); err != nil {
			return fmt.Errorf("shares: erase: read manifest of %s: %w", campaign, err)
		}
		m.Rows = max(0, m.Rows-n)
		if s < len(m.ShardRows) {
			m.ShardRows[s] = max(0, m.ShardRows[s]-n)
		}
		b, _ := json.Marshal(m)
		_, err = c.kv.Update(ctx, manifestKey(ctok), b, e.Revision())
		if isConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("shares: erase: update manifest of %s: %w", campaign, err)
		}
		if m.State == ManifestReady {
			c.mu.Lock()
			c.manifests[campaign] = m
			c.mu.Unlock()
		}
		return nil
	}
}

// purgeOutcomes removes every outcome of key, in every campaign.
func (c *Coordinator) purgeOutcomes(ctx context.Context, key string) error {
	subj := outcomePrefix + "*.*." + key + ".*"
	if err := c.outcomes.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
		return fmt.Errorf("shares: erase: purge outcomes of %s: %w", key[:12], err)
	}
	return nil
}

// Forget drops an erased person from the shards this node holds, so a
// shard waiting for their outcome (which erasure leaves unrecorded) can
// still complete. Every node runs it when it applies an erasure.
func (c *Coordinator) Forget(indexHex string) {
	key := strings.ToLower(strings.TrimSpace(indexHex))
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.held {
		h.done(key)
	}
}
