package shares

// Outcomes in batches. One JetStream message per recipient outcome was the
// cluster's whole coordination overhead (docs/performance.md, "Where the
// CPU goes": with replicas 3 every message is appended by three servers
// through raft). RecordBatch publishes a node's final outcomes of one shard
// together: one message on pw.shares.out.CAMPAIGN.SHARD.b.ID whose payload,
// sealed like the shard it belongs to, maps keyed indexes to outcomes. ID
// is a hash of the payload, and the message id the same, so a batch
// published again after a lost ack is dropped by the stream.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// batchToken marks a batch subject where a per-recipient one has the key
// (a key is 64 hex digits, never "b").
const batchToken = "b"

// KeyOutcome is one recipient's outcome, by keyed index (Row.Key).
type KeyOutcome struct {
	Key     string
	Outcome Outcome
}

// batchSubject is pw.shares.out.CAMPAIGN.SHARD.b.ID.
func batchSubject(ctok string, shard int, id string) string {
	return outcomePrefix + ctok + "." + strconv.Itoa(shard) + "." + batchToken + "." + id
}

// batchContext binds a sealed batch to its campaign and shard.
func batchContext(campaign string, shard int) string {
	return "shares:outcomes:" + campaign + ":" + strconv.Itoa(shard)
}

// RecordBatch is Record for many recipients of one campaign: it returns
// once the stream has acknowledged every shard's batch. A key given twice
// keeps its final outcome.
func (c *Coordinator) RecordBatch(ctx context.Context, campaign string, outs []KeyOutcome) error {
	for _, o := range outs {
		if !validKey(o.Key) {
			return ErrBadKey
		}
		if !o.Outcome.valid() {
			return fmt.Errorf("%w %q", ErrBadOutcome, o.Outcome)
		}
	}
	if len(outs) == 0 {
		return nil
	}
	ctok, m, err := c.outcomeTarget(ctx, campaign)
	if err != nil {
		return err
	}
	byShard := map[int]map[string]Outcome{}
	for _, o := range outs {
		s := shardOf(o.Key, m.Shards)
		if byShard[s] == nil {
			byShard[s] = map[string]Outcome{}
		}
		if prev, ok := byShard[s][o.Key]; !ok || !prev.Final() {
			byShard[s][o.Key] = o.Outcome
		}
	}
	shards := make([]int, 0, len(byShard))
	for s := range byShard {
		shards = append(shards, s)
	}
	slices.Sort(shards)
	for _, s := range shards {
		if err := c.publishBatch(ctx, ctok, campaign, s, byShard[s]); err != nil {
			return err
		}
	}
	c.mu.Lock()
	for s, keys := range byShard {
		for k, o := range keys {
			if o.Final() {
				c.held[leaseKey(ctok, s)].done(k)
			}
		}
	}
	c.mu.Unlock()
	return nil
}

// publishBatch publishes one shard's outcomes as one sealed message.
func (c *Coordinator) publishBatch(ctx context.Context, ctok, campaign string, shard int, keys map[string]Outcome) error {
	plain, err := json.Marshal(keys) // map keys sorted: the same outcomes, the same bytes
	if err != nil {
		return fmt.Errorf("shares: encode outcomes of shard %d of %s: %w", shard, campaign, err)
	}
	sum := sha256.Sum256(plain)
	id := hex.EncodeToString(sum[:12])
	msg := &nats.Msg{Subject: batchSubject(ctok, shard, id), Header: nats.Header{}, Data: c.box.Seal(plain, batchContext(campaign, shard))}
	msg.Header.Set("Pw-Node", c.cfg.Node)
	msg.Header.Set("Pw-Time", time.Now().UTC().Format(time.RFC3339Nano))
	msg.Header.Set(hdrRows, strconv.Itoa(len(keys)))
	if _, err := c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(ctok+":b:"+id)); err != nil {
		return fmt.Errorf("shares: record %d outcomes for shard %d of %s: %w", len(keys), shard, campaign, err)
	}
	return nil
}

// readBatch opens the batch stored on subj (pw.shares.out.CTOK.SHARD.b.ID).
func (c *Coordinator) readBatch(ctx context.Context, subj string) (map[string]Outcome, *jetstream.RawStreamMsg, error) {
	parts := strings.Split(subj, ".")
	if len(parts) != 7 || parts[5] != batchToken {
		return nil, nil, fmt.Errorf("shares: %s is not an outcome batch", subj)
	}
	shard, err := strconv.Atoi(parts[4])
	if err != nil {
		return nil, nil, fmt.Errorf("shares: %s is not an outcome batch", subj)
	}
	raw, err := c.outcomes.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		return nil, nil, fmt.Errorf("shares: fetch outcomes %s: %w", subj, err)
	}
	campaign := campaignFromToken(parts[3])
	plain, err := c.box.Open(raw.Data, batchContext(campaign, shard))
	if err != nil {
		return nil, nil, fmt.Errorf("shares: open outcomes of shard %d of %s: %w", shard, campaign, err)
	}
	var keys map[string]Outcome
	if err := json.Unmarshal(plain, &keys); err != nil {
		return nil, nil, fmt.Errorf("shares: decode outcomes of shard %d of %s: %w", shard, campaign, err)
	}
	return keys, raw, nil
}

// outcomesName reports whether an outcome of shard s of the campaign (a
// per-recipient subject or a batch) names key.
func (c *Coordinator) outcomesName(ctx context.Context, ctok string, s int, key string) (bool, error) {
	prefix := outcomePrefix + ctok + "." + strconv.Itoa(s) + "."
	info, err := c.outcomes.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return false, fmt.Errorf("shares: read outcomes of shard %d of %s: %w", s, campaignFromToken(ctok), err)
	}
	for subj := range info.State.Subjects {
		switch parts := strings.Split(subj, "."); {
		case len(parts) == 7 && parts[5] == key:
			return true, nil
		case len(parts) == 7 && parts[5] == batchToken:
			keys, _, err := c.readBatch(ctx, subj)
			if err != nil {
				return false, err
			}
			if _, ok := keys[key]; ok {
				return true, nil
			}
		}
	}
	return false, nil
}

// EraseOutcomes removes a recipient (keyed index, hex) from every outcome
// the stream holds of campaign: their per-recipient subjects are purged,
// and each batch naming them is published again without them before the
// old message is deleted. It reports how many messages named them.
func (c *Coordinator) EraseOutcomes(ctx context.Context, campaign, key string) (int, error) {
	if !validKey(key) {
		return 0, ErrBadKey
	}
	ctok, err := campaignToken(campaign)
	if err != nil {
		return 0, err
	}
	m, err := c.manifest(ctx, campaign)
	if errors.Is(err, ErrNoCampaign) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if m.Shards == 0 {
		return 0, nil
	}
	shard := shardOf(key, m.Shards)
	prefix := outcomePrefix + ctok + "." + strconv.Itoa(shard) + "."
	info, err := c.outcomes.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return 0, fmt.Errorf("shares: read outcomes of shard %d of %s: %w", shard, campaign, err)
	}
	n := 0
	for subj := range info.State.Subjects {
		switch parts := strings.Split(subj, "."); {
		case len(parts) == 7 && parts[5] == key:
			if err := c.outcomes.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
				return n, fmt.Errorf("shares: purge an outcome of shard %d of %s: %w", shard, campaign, err)
			}
			n++
		case len(parts) == 7 && parts[5] == batchToken:
			keys, raw, err := c.readBatch(ctx, subj)
			if err != nil {
				return n, err
			}
			if _, ok := keys[key]; !ok {
				continue
			}
			delete(keys, key)
			if len(keys) > 0 {
				if err := c.publishBatch(ctx, ctok, campaign, shard, keys); err != nil {
					return n, err
				}
			}
			// Purge, not delete: every message of the subject goes (a batch
			// published twice past the dedup window has two).
			if err := c.outcomes.Purge(ctx, jetstream.WithPurgeSubject(raw.Subject)); err != nil {
				return n, fmt.Errorf("shares: purge outcomes of shard %d of %s: %w", shard, campaign, err)
			}
			n++
		}
	}
	return n, nil
}
