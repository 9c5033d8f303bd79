package shares

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PruneFinished purges every cluster record of each campaign whose shards
// are all done and whose last activity is more than olderThan ago
// (retention finished_messages, as queue.Store.PruneFinished for a single
// node's records): its manifest, its lease, pause, settings and figures
// keys, its outcomes and any sealed shard left. Last activity is the newest
// write, by the NATS servers' clock, to any key of the campaign (a shard
// marked done, a node's figures, an erasure's lower counts) or to its
// outcomes. A campaign re-run after that is published anew; suppression
// still applies. An unfinished campaign is kept however old. It returns how
// many campaigns it purged.
//
// Any node's retention pass may run it, several at once: every step is a
// purge, harmless twice. The manifest goes last, so a pass cut short is
// finished by the next one (a ready manifest missing a lease key can only
// be a prune's doing: Publish writes every lease before it marks the
// manifest ready). Two passes at once may both count a campaign.
func (c *Coordinator) PruneFinished(ctx context.Context, olderThan time.Duration) (int, error) {
	if olderThan <= 0 {
		return 0, errors.New("shares: prune finished campaigns: age must be positive")
	}
	cutoff := time.Now().Add(-olderThan)
	mkeys, err := c.keys(ctx, "*.m")
	if err != nil {
		return 0, fmt.Errorf("shares: prune finished campaigns: list campaigns: %w", err)
	}
	n := 0
	for _, mk := range mkeys {
		ctok := strings.TrimSuffix(mk, ".m")
		due, err := c.pruneDue(ctx, ctok, cutoff)
		if err != nil {
			return n, err
		}
		if !due {
			continue
		}
		if err := c.purgeCampaign(ctx, ctok); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// keys lists the keys of the bucket matching filter whose subject holds a
// message, a delete marker's too, from the stream's state: one request,
// where a KV lister's consumer can wait forever for messages another
// node's purge removed under it.
func (c *Coordinator) keys(ctx context.Context, filter string) ([]string, error) {
	info, err := c.kvStream.Info(ctx, jetstream.WithSubjectFilter(kvPrefix+filter))
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		keys = append(keys, strings.TrimPrefix(subj, kvPrefix))
	}
	return keys, nil
}

// pruneDue reports whether a campaign is finished and its last activity
// before cutoff.
func (c *Coordinator) pruneDue(ctx context.Context, ctok string, cutoff time.Time) (bool, error) {
	campaign := campaignFromToken(ctok)
	e, err := c.kv.Get(ctx, manifestKey(ctok))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil // another node purged it meanwhile
	}
	if err != nil {
		return false, fmt.Errorf("shares: prune: read manifest of %s: %w", campaign, err)
	}
	var m Manifest
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return false, fmt.Errorf("shares: prune: read manifest of %s: %w", campaign, err)
	}
	// The manifest's last write is no later than the last activity: a
	// recent one spares reading the rest.
	if m.State != ManifestReady || !e.Created().Before(cutoff) {
		return false, nil
	}
	keys, err := c.keys(ctx, ctok+".>")
	if err != nil {
		return false, fmt.Errorf("shares: prune: list the keys of %s: %w", campaign, err)
	}
	last := e.Created()
	done := map[int]bool{}
	for _, k := range keys {
		e, err := c.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // a delete marker
		}
		if err != nil {
			return false, fmt.Errorf("shares: prune: read key %s: %w", k, err)
		}
		if e.Created().After(last) {
			last = e.Created()
		}
		if _, s, ok := parseLeaseKey(k); ok {
			var v lease
			if err := json.Unmarshal(e.Value(), &v); err != nil {
				return false, fmt.Errorf("shares: prune: read shard %d of %s: %w", s, campaign, err)
			}
			if v.State != StateDone {
				return false, nil
			}
			done[s] = true
		}
	}
	if len(done) < m.Shards {
		// Leases gone under a ready manifest: a prune began and was cut short.
		return true, nil
	}
	if !last.Before(cutoff) {
		return false, nil
	}
	// The newest outcome: one recorded late (a lost node's) counts too.
	msg, err := c.outcomes.GetLastMsgForSubject(ctx, outcomePrefix+ctok+".>")
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("shares: prune: newest outcome of %s: %w", campaign, err)
	}
	return msg.Time.Before(cutoff), nil
}

// purgeCampaign removes every record of a campaign: outcomes and shards,
// then each key but the manifest through the bucket (a purge marker, so
// every node's watcher in Run forgets the key and the campaign), then every
// message left under the campaign's keys, markers and manifest at once,
// through the bucket's stream. A watcher that had not read a marker by then
// (a node cut off) keeps the campaign in memory until it restarts.
func (c *Coordinator) purgeCampaign(ctx context.Context, ctok string) error {
	campaign := campaignFromToken(ctok)
	if err := c.outcomes.Purge(ctx, jetstream.WithPurgeSubject(outcomePrefix+ctok+".>")); err != nil {
		return fmt.Errorf("shares: prune: purge the outcomes of %s: %w", campaign, err)
	}
	if err := c.data.Purge(ctx, jetstream.WithPurgeSubject(dataPrefix+ctok+".>")); err != nil {
		return fmt.Errorf("shares: prune: purge the shards of %s: %w", campaign, err)
	}
	keys, err := c.keys(ctx, ctok+".>")
	if err != nil {
		return fmt.Errorf("shares: prune: list the keys of %s: %w", campaign, err)
	}
	mkey := manifestKey(ctok)
	for _, k := range keys {
		if k == mkey {
			continue
		}
		// A key purged already (its marker) is purged again: harmless.
		if err := c.kv.Purge(ctx, k); err != nil {
			return fmt.Errorf("shares: prune: purge key %s: %w", k, err)
		}
	}
	if err := c.kvStream.Purge(ctx, jetstream.WithPurgeSubject(kvPrefix+ctok+".>")); err != nil {
		return fmt.Errorf("shares: prune: purge the keys of %s: %w", campaign, err)
	}
	c.mu.Lock()
	delete(c.manifests, campaign)
	c.mu.Unlock()
	c.log.Info().Str("campaign", campaign).Msg("finished campaign past retention; its cluster records purged")
	return nil
}
