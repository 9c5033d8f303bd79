package shares

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// figuresKey is the key of a node's figures of a campaign: CAMPAIGN.f.NODE.
func figuresKey(ctok, node string) string { return ctok + ".f." + node }

// SetFigures records v as this node's figures of a campaign for every node:
// what the node counted of it (the brakes' counts: attempts, deliveries,
// hard bounces, complaints), opaque to this package and never personal, one
// value per campaign and node (key CAMPAIGN.f.NODE). Run hands each other
// node's change, and the values in force as it starts, to Worker.Figures.
// The same value again writes nothing.
func (c *Coordinator) SetFigures(ctx context.Context, campaign string, v []byte) error {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return err
	}
	key := figuresKey(ctok, c.cfg.Node)
	e, err := c.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return fmt.Errorf("shares: read the figures of %s: %w", campaign, err)
	case bytes.Equal(e.Value(), v):
		return nil
	}
	if _, err := c.kv.Put(ctx, key, v); err != nil {
		return fmt.Errorf("shares: publish the figures of %s: %w", campaign, err)
	}
	return nil
}

// observeFigures applies a figures key's entry: Worker.Figures, for another
// node's (this node's own are its spool's, newer than any it published).
func (c *Coordinator) observeFigures(e jetstream.KeyValueEntry, w Worker) bool {
	parts := strings.Split(e.Key(), ".")
	if len(parts) != 3 || parts[1] != "f" {
		return false
	}
	if e.Operation() == jetstream.KeyValuePut && parts[2] != c.cfg.Node && w.Figures != nil {
		w.Figures(campaignFromToken(parts[0]), parts[2], e.Value())
	}
	return true
}
