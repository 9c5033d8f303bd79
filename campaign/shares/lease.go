package shares

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Shard states in a lease value.
const (
	StateFree = "free"
	StateHeld = "held"
	StateDone = "done"
)

// lease is the value of a shard's lease key. Token is the revision of the
// claim; the claim itself is written with Token 0 (its revision is not known
// before the write) and every renewal carries it.
type lease struct {
	State   string    `json:"state"`
	Holder  string    `json:"holder,omitempty"`
	Token   uint64    `json:"token,omitempty"`
	Renewed time.Time `json:"renewed,omitzero"` // holder's clock, for status only
	Prev    string    `json:"prev,omitempty"`   // holder before a takeover or release
}

// tokenOf is the fencing token of a held lease at revision rev.
func (l lease) tokenOf(rev uint64) uint64 {
	if l.Token != 0 {
		return l.Token
	}
	return rev
}

// seenLease is a lease key as this node's watcher last saw it.
type seenLease struct {
	ctok  string
	shard int
	rev   uint64
	val   lease
	since time.Time // when this node first saw rev (monotonic)
}

// holding is a shard this node works on.
type holding struct {
	campaign string
	shard    int
	token    uint64
	rows     int
	pending  map[string]bool // keys handed over without a final outcome yet
	empty    chan struct{}   // closed when pending is empty
	queued   bool            // Enqueue has returned nil
	sent     time.Time       // when the claim was sent: the lease runs from here
}

// Run takes shares until ctx ends: it watches the bucket, claims free shards
// (and shards whose lease it has watched expire) while w.Room allows, hands
// each shard's rows without a final outcome to w.Enqueuer, renews the lease
// every Lease/3, and marks the shard done once Enqueue returned and every row
// has a final outcome. When ctx ends, held shards are neither completed nor
// released: their leases run out (or this node, restarted, takes them back).
func (c *Coordinator) Run(ctx context.Context, w Worker) error {
	if w.Enqueuer == nil {
		return errors.New("shares: Run needs an Enqueuer")
	}
	watcher, err := c.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("shares: watch bucket %s: %w", Bucket, err)
	}
	defer func() { watcher.Stop() }()
	nc := c.js.Conn()
	reconnects := nc.Stats().Reconnects
	leases := map[string]*seenLease{}
	manifests := map[string]Manifest{} // ready manifests by campaign token
	paused := map[string]bool{}        // paused campaigns by token: no free shard is claimed
	tick := time.NewTicker(c.cfg.Lease / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-watcher.Updates():
			if !ok {
				return c.watcherClosed(ctx)
			}
			if e == nil {
				break // initial values done
			}
			if !c.observeCampaign(e, w, paused) {
				c.observe(e, leases, manifests)
			}
			// Drain what is queued before claiming, so one pass sees it all.
			for drained := false; !drained; {
				select {
				case e, ok := <-watcher.Updates():
					if !ok {
						return c.watcherClosed(ctx)
					}
					if e != nil && !c.observeCampaign(e, w, paused) {
						c.observe(e, leases, manifests)
					}
				default:
					drained = true
				}
			}
		case <-tick.C:
			// After a reconnect the server may have lost the watcher's
			// consumer (a server restarted, or one that dropped it during
			// the cut); the client makes it again only after two missed
			// heartbeats, ~10 s. Watch again at once: the replay of every
			// key changes nothing already seen (same revisions).
			if r := nc.Stats().Reconnects; r != reconnects && nc.IsConnected() {
				if nw, err := c.kv.WatchAll(ctx); err == nil {
					watcher.Stop()
					watcher, reconnects = nw, r
					c.log.Info().Msg("watching the share bucket again after a reconnect")
				} else {
					c.log.Debug().Err(err).Msg("share bucket not watched again yet; retrying")
				}
			}
		}
		c.claim(ctx, w, leases, manifests, paused)
	}
}

// watcherClosed is Run's result when the bucket's watcher ends: nil when
// ctx ended (the watcher ends with it), else an error.
func (c *Coordinator) watcherClosed(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("shares: watcher of %s closed", Bucket)
}

// observe applies one watcher entry to the local view.
func (c *Coordinator) observe(e jetstream.KeyValueEntry, leases map[string]*seenLease, manifests map[string]Manifest) {
	key := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(leases, key)
		// Only PruneFinished removes a lease: the campaign goes.
		if ctok, _, ok := parseLeaseKey(key); ok {
			delete(manifests, ctok)
			c.mu.Lock()
			delete(c.manifests, campaignFromToken(ctok))
			c.mu.Unlock()
		}
		return
	}
	if ctok, s, ok := parseLeaseKey(key); ok {
		var v lease
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			c.log.Warn().Str("key", key).Err(err).Msg("unreadable lease value ignored")
			return
		}
		if old := leases[key]; old != nil && old.rev == e.Revision() {
			return
		}
		leases[key] = &seenLease{ctok: ctok, shard: s, rev: e.Revision(), val: v, since: time.Now()}
		return
	}
	if len(key) > 2 && key[len(key)-2:] == ".m" {
		var m Manifest
		if err := json.Unmarshal(e.Value(), &m); err == nil && m.State == ManifestReady {
			manifests[key[:len(key)-2]] = m
			c.mu.Lock()
			c.manifests[m.Campaign] = m
			c.mu.Unlock()
		}
	}
}

// claim takes the shards this node may take now.
func (c *Coordinator) claim(ctx context.Context, w Worker, leases map[string]*seenLease, manifests map[string]Manifest, paused map[string]bool) {
	now := time.Now()
	var cands []*seenLease
	c.mu.Lock()
	nheld, unqueued := len(c.held), 0
	for _, h := range c.held {
		if !h.queued {
			unqueued += h.rows
		}
	}
	for key, l := range leases {
		if _, ok := manifests[l.ctok]; !ok {
			continue
		}
		if _, mine := c.held[key]; mine {
			continue
		}
		switch {
		case l.val.State == StateFree && paused[l.ctok]:
			continue // a paused campaign's rows stay in the cluster, not in a spool
		case l.val.State == StateFree:
		case l.val.State == StateHeld && l.val.Holder == c.cfg.Node:
			// Ours from before a restart: take it back at once.
		case l.val.State == StateHeld && now.Sub(l.since) >= c.cfg.Lease:
			// Watched unchanged for a whole lease: its holder stopped renewing.
		default:
			continue
		}
		cands = append(cands, l)
	}
	c.mu.Unlock()
	if len(cands) == 0 {
		return
	}
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	room := int(^uint(0) >> 1)
	if w.Room != nil {
		room = w.Room() - unqueued
	}
	for _, l := range cands {
		if room <= 0 || ctx.Err() != nil {
			return
		}
		m := manifests[l.ctok]
		rows := 0
		if l.shard < len(m.ShardRows) {
			rows = m.ShardRows[l.shard]
		}
		if rows > room && nheld > 0 {
			continue
		}
		h, rev, err := c.tryClaim(ctx, l, m.Campaign, rows)
		if err != nil {
			if !isConflict(err) {
				c.log.Warn().Str("campaign", m.Campaign).Int("shard", l.shard).Err(err).Msg("claim failed")
			}
			continue
		}
		room -= rows
		nheld++
		go c.hold(ctx, w, l.ctok, h, rev)
	}
}

// tryClaim writes the claim with a compare-and-set on the revision seen.
func (c *Coordinator) tryClaim(ctx context.Context, l *seenLease, campaign string, rows int) (*holding, uint64, error) {
	sent := time.Now()
	v := lease{State: StateHeld, Holder: c.cfg.Node, Renewed: sent.UTC()}
	if l.val.Holder != "" {
		v.Prev = l.val.Holder
	}
	b, _ := json.Marshal(v)
	rev, err := c.kv.Update(ctx, leaseKey(l.ctok, l.shard), b, l.rev)
	if err != nil {
		return nil, 0, err
	}
	h := &holding{campaign: campaign, shard: l.shard, token: rev, rows: rows, empty: make(chan struct{}), sent: sent}
	c.mu.Lock()
	c.held[leaseKey(l.ctok, l.shard)] = h
	c.mu.Unlock()
	ev := c.log.Info().Str("campaign", campaign).Int("shard", l.shard).Uint64("token", rev)
	if l.val.State == StateHeld {
		ev = ev.Str("from", l.val.Holder)
	}
	ev.Msg("shard claimed")
	return h, rev, nil
}

// hold works one claimed shard: rows without a final outcome to the
// Enqueuer, renewals, completion.
func (c *Coordinator) hold(ctx context.Context, w Worker, ctok string, h *holding, rev uint64) {
	key := leaseKey(ctok, h.shard)
	defer func() {
		c.mu.Lock()
		delete(c.held, key)
		c.mu.Unlock()
	}()
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lost := func(err error) {
		cancel(err)
		c.log.Warn().Str("campaign", h.campaign).Int("shard", h.shard).Uint64("token", h.token).Err(err).Msg("lease lost")
		if w.Lost != nil {
			w.Lost(Lost{Campaign: h.campaign, Shard: h.shard, Token: h.token, Err: err})
		}
	}

	renewEvery := c.cfg.Lease / 3
	lastSent := h.sent // no other node can see the claim before it was sent
	renew := time.NewTicker(renewEvery)
	defer renew.Stop()
	doRenew := func() bool {
		sent := time.Now()
		b, _ := json.Marshal(lease{State: StateHeld, Holder: c.cfg.Node, Token: h.token, Renewed: sent.UTC()})
		rctx, rcancel := context.WithTimeout(ctx, renewEvery)
		nrev, err := c.kv.Update(rctx, key, b, rev)
		rcancel()
		switch {
		case err == nil:
			rev, lastSent = nrev, sent
			return true
		case isConflict(err):
			// A renewal whose acknowledgement was lost moved the revision
			// on: still ours if the value still names our token.
			if e, gerr := c.kv.Get(ctx, key); gerr == nil {
				var v lease
				if json.Unmarshal(e.Value(), &v) == nil && v.State == StateHeld &&
					v.Holder == c.cfg.Node && v.tokenOf(e.Revision()) == h.token {
					rev = e.Revision()
					return true
				}
			}
			lost(fmt.Errorf("%w: shard %d of %s changed under token %d", ErrLeaseLost, h.shard, h.campaign, h.token))
			return false
		case ctx.Err() != nil:
			return false
		case time.Since(lastSent) >= c.cfg.Lease-renewEvery/2:
			lost(fmt.Errorf("%w: shard %d of %s not renewed within the lease: %w", ErrLeaseLost, h.shard, h.campaign, err))
			return false
		default:
			c.log.Warn().Str("campaign", h.campaign).Int("shard", h.shard).Err(err).Msg("lease renewal failed; retrying")
			return true
		}
	}

	rows, err := c.readShard(hctx, ctok, h.campaign, h.shard)
	if err == nil {
		rows, err = c.dropRecorded(hctx, ctok, h.campaign, h.shard, rows)
	}
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error().Str("campaign", h.campaign).Int("shard", h.shard).Err(err).Msg("cannot read shard; releasing it")
			c.release(ctx, key, h, rev)
		}
		return
	}
	c.mu.Lock()
	h.pending = make(map[string]bool, len(rows))
	for _, r := range rows {
		h.pending[r.Key] = true
	}
	if len(h.pending) == 0 {
		close(h.empty)
	}
	c.mu.Unlock()

	done := make(chan error, 1)
	go func(ch chan<- error) { ch <- w.Enqueuer.Enqueue(hctx, h.campaign, rows, h.token) }(done)
	queued := false
	for {
		var empty <-chan struct{}
		if queued {
			empty = h.empty
		}
		select {
		case <-ctx.Done():
			return // stop renewing; the lease runs out or we take it back after a restart
		case err := <-done:
			done = nil
			if err != nil {
				if errors.Is(context.Cause(hctx), ErrLeaseLost) {
					return
				}
				c.log.Error().Str("campaign", h.campaign).Int("shard", h.shard).Err(err).Msg("enqueue failed; releasing the shard")
				c.release(ctx, key, h, rev)
				return
			}
			queued = true
			c.mu.Lock()
			h.queued = true
			c.mu.Unlock()
			c.log.Info().Str("campaign", h.campaign).Int("shard", h.shard).Int("rows", len(rows)).Msg("shard enqueued")
		case <-empty:
			err := c.Complete(ctx, h.campaign, h.shard, h.token)
			switch {
			case err == nil:
				c.log.Info().Str("campaign", h.campaign).Int("shard", h.shard).Uint64("token", h.token).Msg("shard done")
				return
			case errors.Is(err, ErrLeaseLost):
				lost(err)
				return
			case ctx.Err() != nil:
				return
			}
			c.log.Warn().Str("campaign", h.campaign).Int("shard", h.shard).Err(err).Msg("completion failed; retrying")
			// The entry may have moved on by our own renewal only; retry after a tick.
			select {
			case <-ctx.Done():
				return
			case <-time.After(renewEvery / 4):
			}
			if !doRenew() {
				return
			}
		case <-renew.C:
			if !doRenew() {
				return
			}
		}
	}
}

// release gives a held shard back (state free) with a compare-and-set.
func (c *Coordinator) release(ctx context.Context, key string, h *holding, rev uint64) {
	b, _ := json.Marshal(lease{State: StateFree, Prev: c.cfg.Node})
	if _, err := c.kv.Update(ctx, key, b, rev); err != nil {
		c.log.Warn().Str("campaign", h.campaign).Int("shard", h.shard).Err(err).Msg("release failed; the lease will run out")
	}
}

// Complete marks a shard done if token still holds it for this node, with a
// compare-and-set on the lease's current revision. A token that no longer
// holds it (the lease was taken over, released or completed) gives an error
// wrapping ErrLeaseLost.
func (c *Coordinator) Complete(ctx context.Context, campaign string, shard int, token uint64) error {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return err
	}
	key := leaseKey(ctok, shard)
	e, err := c.kv.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("shares: complete shard %d of %s: %w", shard, campaign, err)
	}
	var v lease
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return fmt.Errorf("shares: complete shard %d of %s: %w", shard, campaign, err)
	}
	if v.State != StateHeld || v.Holder != c.cfg.Node || v.tokenOf(e.Revision()) != token {
		return fmt.Errorf("%w: shard %d of %s is %s by %q with token %d, not held with token %d",
			ErrLeaseLost, shard, campaign, v.State, v.Holder, v.tokenOf(e.Revision()), token)
	}
	b, _ := json.Marshal(lease{State: StateDone, Holder: c.cfg.Node, Token: token, Renewed: time.Now().UTC()})
	if _, err := c.kv.Update(ctx, key, b, e.Revision()); err != nil {
		if isConflict(err) {
			return fmt.Errorf("%w: shard %d of %s changed while completing token %d", ErrLeaseLost, shard, campaign, token)
		}
		return fmt.Errorf("shares: complete shard %d of %s: %w", shard, campaign, err)
	}
	c.pruneIfDone(ctx, ctok, campaign)
	return nil
}

// pruneIfDone purges a campaign's sealed shards from PW_SHARE_DATA once
// every shard is done: each row then has its final outcome, nobody reads
// them again (a re-run finds the manifest ready and adds nothing), and
// personal data is kept no longer than it is needed (GDPR Art. 5(1)(e)).
// The manifest, leases and outcomes stay for `campaign status` until
// PruneFinished, past retention. Whichever
// node completes the last shard purges; a purge that fails is logged and
// tried again by the next Complete or PruneDone of the campaign.
func (c *Coordinator) pruneIfDone(ctx context.Context, ctok, campaign string) {
	if _, err := c.PruneDone(ctx, campaign); err != nil {
		c.log.Warn().Str("campaign", campaign).Err(err).Msg("finished campaign's shards not purged")
	}
}

// PruneDone purges campaign's sealed shards if every shard is done, and
// reports whether it did.
func (c *Coordinator) PruneDone(ctx context.Context, campaign string) (bool, error) {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return false, err
	}
	m, err := c.manifest(ctx, campaign)
	if err != nil {
		return false, err
	}
	if m.State != ManifestReady {
		return false, nil
	}
	// Newest shards first: they are claimed last, so an unfinished campaign
	// is usually told after one read, not one per shard.
	for s := m.Shards - 1; s >= 0; s-- {
		e, err := c.kv.Get(ctx, leaseKey(ctok, s))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("shares: read shard %d of %s: %w", s, campaign, err)
		}
		var v lease
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			return false, fmt.Errorf("shares: read shard %d of %s: %w", s, campaign, err)
		}
		if v.State != StateDone {
			return false, nil
		}
	}
	if err := c.data.Purge(ctx, jetstream.WithPurgeSubject(dataPrefix+ctok+".>")); err != nil {
		return false, fmt.Errorf("shares: purge the shards of finished campaign %s: %w", campaign, err)
	}
	c.log.Info().Str("campaign", campaign).Int("shards", m.Shards).Msg("campaign finished; its sealed shards purged")
	return true, nil
}
