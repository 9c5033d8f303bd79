package shares

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Pause is a campaign's pause as the cluster knows it: one value per
// campaign in the bucket (key CAMPAIGN.p), last writer wins. Every node's
// Run hands each change, and the value in force when it starts, to
// Worker.Paused, so a pause made on one node (by hand or by a brake) holds
// every node's deliveries of the campaign, and a resume anywhere lifts it.
type Pause struct {
	Campaign string    `json:"campaign"`
	Paused   bool      `json:"paused"`
	Reason   string    `json:"reason,omitempty"`
	By       string    `json:"by,omitempty"`   // who paused or resumed it on Node
	Node     string    `json:"node,omitempty"` // the node where it was done
	At       time.Time `json:"at"`
}

// pauseKey is the key of a campaign's pause.
func pauseKey(ctok string) string { return ctok + ".p" }

// SetPause records p as its campaign's pause for every node, unless the
// bucket holds that state already (so a node applying a pause it was told
// of writes nothing back). Node and At are filled in.
func (c *Coordinator) SetPause(ctx context.Context, p Pause) error {
	ctok, err := campaignToken(p.Campaign)
	if err != nil {
		return err
	}
	key := pauseKey(ctok)
	e, err := c.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if !p.Paused {
			return nil // never paused: nothing to lift
		}
	case err != nil:
		return fmt.Errorf("shares: read the pause of %s: %w", p.Campaign, err)
	default:
		var old Pause
		if json.Unmarshal(e.Value(), &old) == nil && old.Paused == p.Paused {
			return nil
		}
	}
	if p.Node == "" {
		p.Node = c.cfg.Node
	}
	if p.At.IsZero() {
		p.At = time.Now().UTC()
	}
	b, _ := json.Marshal(p)
	if _, err := c.kv.Put(ctx, key, b); err != nil {
		return fmt.Errorf("shares: publish the pause of %s: %w", p.Campaign, err)
	}
	return nil
}

// observePause applies a pause key's entry: the local view (no shard of a
// paused campaign is claimed) and Worker.Paused.
func (c *Coordinator) observePause(e jetstream.KeyValueEntry, w Worker, paused map[string]bool) bool {
	key := e.Key()
	if !strings.HasSuffix(key, ".p") || e.Operation() != jetstream.KeyValuePut {
		return false
	}
	var p Pause
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		c.log.Warn().Str("key", key).Err(err).Msg("unreadable pause value ignored")
		return true
	}
	paused[strings.TrimSuffix(key, ".p")] = p.Paused
	if w.Paused != nil {
		w.Paused(p)
	}
	return true
}

// settingsKey is the key of a campaign's settings.
func settingsKey(ctok string) string { return ctok + ".a" }

// SetSettings records v as the campaign's settings for every node: what
// the publishing node armed it with (its rate and brakes), opaque to this
// package, one value per campaign (key CAMPAIGN.a), last writer wins. Run
// hands each change, and the value in force as it starts, to
// Worker.Settings. Written before the campaign's shards, a node has them
// before it takes a share. The same value again writes nothing.
func (c *Coordinator) SetSettings(ctx context.Context, campaign string, v []byte) error {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return err
	}
	key := settingsKey(ctok)
	e, err := c.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return fmt.Errorf("shares: read the settings of %s: %w", campaign, err)
	case bytes.Equal(e.Value(), v):
		return nil
	}
	if _, err := c.kv.Put(ctx, key, v); err != nil {
		return fmt.Errorf("shares: publish the settings of %s: %w", campaign, err)
	}
	return nil
}

// observeSettings applies a settings key's entry: Worker.Settings.
func (c *Coordinator) observeSettings(e jetstream.KeyValueEntry, w Worker) bool {
	key := e.Key()
	if !strings.HasSuffix(key, ".a") || e.Operation() != jetstream.KeyValuePut {
		return false
	}
	if w.Settings != nil {
		w.Settings(campaignFromToken(strings.TrimSuffix(key, ".a")), e.Value())
	}
	return true
}

// observeCampaign applies a campaign-wide key (pause, settings, a node's
// figures); it reports whether key was one. Figures first: a node named p
// or a would end its key as a pause's or settings' does.
func (c *Coordinator) observeCampaign(e jetstream.KeyValueEntry, w Worker, paused map[string]bool) bool {
	return c.observeFigures(e, w) || c.observePause(e, w, paused) || c.observeSettings(e, w)
}
