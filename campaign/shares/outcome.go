package shares

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Outcome is what became of one recipient of a campaign.
type Outcome string

// Outcomes. All but Deferred are final: a recipient with a final outcome is
// never handed to an Enqueuer again.
const (
	Delivered Outcome = "delivered" // accepted by the receiving server
	Bounced   Outcome = "bounced"   // refused permanently
	Failed    Outcome = "failed"    // given up (retries exhausted, expired)
	Skipped   Outcome = "skipped"   // not sent: suppressed, no consent, excluded
	Deferred  Outcome = "deferred"  // tried and will be retried; not final
)

// Final reports whether o ends a recipient's part in the campaign.
func (o Outcome) Final() bool {
	switch o {
	case Delivered, Bounced, Failed, Skipped:
		return true
	}
	return false
}

// valid reports whether o is one of the outcomes above.
func (o Outcome) valid() bool { return o.Final() || o == Deferred }

// outcomeSubject is pw.shares.out.CAMPAIGN.SHARD.KEY.OUTCOME.
func outcomeSubject(ctok string, shard int, key string, o Outcome) string {
	return outcomePrefix + ctok + "." + strconv.Itoa(shard) + "." + key + "." + string(o)
}

// Record publishes a recipient's outcome and returns once the stream has
// acknowledged it; key is the row's keyed index (Row.Key), never the
// address. A final outcome also counts towards completing the shard if this
// node holds it. Recording the same outcome again adds nothing. A caller must
// not record Deferred after a final outcome of the same recipient.
func (c *Coordinator) Record(ctx context.Context, campaign, key string, o Outcome) error {
	if !validKey(key) {
		return ErrBadKey
	}
	if !o.valid() {
		return fmt.Errorf("%w %q", ErrBadOutcome, o)
	}
	ctok, m, err := c.outcomeTarget(ctx, campaign)
	if err != nil {
		return err
	}
	shard := shardOf(key, m.Shards)
	msg := &nats.Msg{Subject: outcomeSubject(ctok, shard, key, o), Header: nats.Header{}}
	msg.Header.Set("Pw-Node", c.cfg.Node)
	msg.Header.Set("Pw-Time", time.Now().UTC().Format(time.RFC3339Nano))
	if _, err := c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(ctok+":"+key+":"+string(o))); err != nil {
		return fmt.Errorf("shares: record %s for shard %d of %s: %w", o, shard, campaign, err)
	}
	if o.Final() {
		c.mu.Lock()
		c.held[leaseKey(ctok, shard)].done(key)
		c.mu.Unlock()
	}
	return nil
}

// done drops key from the rows the holding waits on, closing empty once
// none is left; a nil holding (a shard not held here) is left alone.
// c.mu is held.
func (h *holding) done(key string) {
	if h == nil || !h.pending[key] {
		return
	}
	delete(h.pending, key)
	if len(h.pending) == 0 {
		close(h.empty)
	}
}

// outcomeTarget is the subject token and ready manifest of a campaign
// outcomes are recorded for; one without recipients is ErrNoCampaign.
func (c *Coordinator) outcomeTarget(ctx context.Context, campaign string) (string, Manifest, error) {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return "", Manifest{}, err
	}
	m, err := c.manifest(ctx, campaign)
	if err != nil {
		return "", Manifest{}, err
	}
	if m.Shards == 0 {
		return "", Manifest{}, fmt.Errorf("%w: %s has no recipients", ErrNoCampaign, campaign)
	}
	return ctok, m, nil
}

// recorded returns, per recipient key of the filter's subjects, its outcome:
// a final one if any was recorded, else Deferred. It reads subject counts
// from the stream's state, and the messages of RecordBatch's batches.
func (c *Coordinator) recorded(ctx context.Context, filter string) (map[string]Outcome, error) {
	info, err := c.outcomes.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("shares: read outcomes %s: %w", filter, err)
	}
	out := make(map[string]Outcome, len(info.State.Subjects))
	add := func(key string, o Outcome) {
		if prev, ok := out[key]; !ok || !prev.Final() {
			out[key] = o
		}
	}
	for subj := range info.State.Subjects {
		parts := strings.Split(subj, ".")
		if len(parts) != 7 {
			continue
		}
		if parts[5] == batchToken { // RecordBatch's: read the message
			keys, _, err := c.readBatch(ctx, subj)
			if err != nil {
				return nil, err
			}
			for k, o := range keys {
				add(k, o)
			}
			continue
		}
		add(parts[5], Outcome(parts[6]))
	}
	return out, nil
}

// dropRecorded leaves out the rows of a shard that have a final outcome.
func (c *Coordinator) dropRecorded(ctx context.Context, ctok, campaign string, shard int, rows []Row) ([]Row, error) {
	done, err := c.recorded(ctx, outcomePrefix+ctok+"."+strconv.Itoa(shard)+".>")
	if err != nil {
		return nil, err
	}
	kept := rows[:0:0]
	for _, r := range rows {
		if done[r.Key].Final() {
			continue
		}
		kept = append(kept, r)
	}
	if n := len(rows) - len(kept); n > 0 {
		c.log.Info().Str("campaign", campaign).Int("shard", shard).Int("skipped", n).Msg("rows with a recorded outcome left out")
	}
	return kept, nil
}

// ShardStatus is one shard's lease as the bucket holds it.
type ShardStatus struct {
	Shard   int
	Rows    int
	State   string // free, held, done
	Holder  string
	Token   uint64
	Renewed time.Time // holder's clock
}

// Status is a campaign cluster-wide.
type Status struct {
	Manifest Manifest
	Outcomes map[Outcome]int // recipients by outcome (a final one if recorded, else deferred)
	Pending  int             // rows without a final outcome
	States   map[string]int  // shards by state
	Holders  map[string]int  // held shards by node
	Done     map[string]int  // done shards by the node that completed them
	Shards   []ShardStatus
}

// Status aggregates a campaign's outcomes and shards across the cluster.
func (c *Coordinator) Status(ctx context.Context, campaign string) (Status, error) {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return Status{}, err
	}
	// Read, not cached: the operator's view follows a prune made on
	// another node at once.
	m, err := c.readManifest(ctx, campaign)
	if err != nil {
		return Status{}, err
	}
	st := Status{Manifest: m, Outcomes: map[Outcome]int{}, States: map[string]int{},
		Holders: map[string]int{}, Done: map[string]int{}}
	rec, err := c.recorded(ctx, outcomePrefix+ctok+".>")
	if err != nil {
		return st, err
	}
	final := 0
	for _, o := range rec {
		st.Outcomes[o]++
		if o.Final() {
			final++
		}
	}
	st.Pending = max(0, m.Rows-final)
	shards, err := c.shards(ctx, ctok, m)
	if err != nil {
		return st, err
	}
	for _, ss := range shards {
		st.States[ss.State]++
		switch ss.State {
		case StateHeld:
			st.Holders[ss.Holder]++
		case StateDone:
			st.Done[ss.Holder]++
		}
	}
	st.Shards = shards
	return st, nil
}

// Shards returns the leases of a campaign's shards as the bucket holds
// them now, by shard number.
func (c *Coordinator) Shards(ctx context.Context, campaign string) ([]ShardStatus, error) {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return nil, err
	}
	m, err := c.manifest(ctx, campaign)
	if err != nil {
		return nil, err
	}
	return c.shards(ctx, ctok, m)
}

// Manifest returns a ready campaign's manifest (cached once read: a node
// cut off from NATS still has the manifests of the shards it held); the
// error wraps ErrNoCampaign if the cluster does not hold it.
func (c *Coordinator) Manifest(ctx context.Context, campaign string) (Manifest, error) {
	return c.manifest(ctx, campaign)
}

// ShardOf is the shard of m that holds the recipient whose keyed index
// (hex) is key; -1 for a key that is not one, or a campaign with no rows.
func (m Manifest) ShardOf(key string) int {
	if !validKey(key) || m.Shards == 0 {
		return -1
	}
	return shardOf(key, m.Shards)
}

// shards reads every lease key of a campaign.
func (c *Coordinator) shards(ctx context.Context, ctok string, m Manifest) ([]ShardStatus, error) {
	campaign := m.Campaign
	keys, err := c.keys(ctx, ctok+".s.*") // not a KV lister: see keys
	if err != nil {
		return nil, fmt.Errorf("shares: list shards of %s: %w", campaign, err)
	}
	var out []ShardStatus
	for _, k := range keys {
		_, s, ok := parseLeaseKey(k)
		if !ok {
			continue
		}
		e, err := c.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // a delete marker: the campaign is being pruned
		}
		if err != nil {
			return nil, fmt.Errorf("shares: read shard %d of %s: %w", s, campaign, err)
		}
		var v lease
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			return nil, fmt.Errorf("shares: read shard %d of %s: %w", s, campaign, err)
		}
		ss := ShardStatus{Shard: s, State: v.State, Holder: v.Holder, Renewed: v.Renewed}
		if s < len(m.ShardRows) {
			ss.Rows = m.ShardRows[s]
		}
		if v.State != StateFree {
			ss.Token = v.tokenOf(e.Revision())
		}
		out = append(out, ss)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Shard < out[j].Shard })
	return out, nil
}
