package main

// A campaign spread over the cluster's nodes (issue 13, promises 3 and 4):
// `campaign send` on any node renders and gates the campaign as on a single
// node, then publishes the rendered messages, sealed, in shards
// (campaign/shares); every serving node takes shares through leases,
// enqueues them into its own spool and publishes each message's final
// outcome, so a node taking over a lost node's share skips what was done.

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/campaign/shares"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/queue/cluster"
	"github.com/postwarden/postwarden/suppression/address"
)

// Row fields of a rendered message in a share.
const (
	fieldKey  = "key"  // the campaign's idempotency key of the recipient
	fieldFrom = "from" // envelope sender
	fieldList = "list"
	fieldPool = "pool"
	fieldBody = "body" // the rendered message
)

// sharesQueue is campaign send's queue on a cluster node: the rendered
// messages become share rows, published when the file is read.
type sharesQueue struct {
	mu   sync.Mutex
	rows []shares.Row
}

// Enqueue implements campaign.Queue: every message is taken (duplicates
// are found by Publish, cluster-wide).
func (q *sharesQueue) Enqueue(msgs []campaign.Message) (int, int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, m := range msgs {
		q.rows = append(q.rows, shares.Row{Address: m.To, Fields: map[string]string{
			fieldKey: m.Key, fieldFrom: m.From, fieldList: m.List, fieldPool: m.Pool, fieldBody: string(m.Body)}})
	}
	return len(msgs), 0, nil
}

// coordinator returns the node's share coordinator: the daemon's share
// worker's once it is up, else one of this command's own (creating it
// ensures the share streams: not work for every `campaign status`).
func (e *env) coordinator(ctx context.Context) (*shares.Coordinator, func(), error) {
	if w := e.shares; w != nil {
		select {
		case <-w.ready:
			return w.coord, func() {}, nil
		default:
		}
	}
	js, done, err := e.clusterJS(ctx)
	if err != nil {
		return nil, nil, err
	}
	cc := e.cfg.Cluster
	c, err := shares.New(ctx, js, e.box, shares.Config{Node: cc.Node, Replicas: cc.Replicas, Lease: cc.Lease},
		e.log.With().Str("component", "shares").Logger())
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("cluster: %w", err)
	}
	return c, done, nil
}

// clusterSend is what a campaign send on a cluster node published.
type clusterSend struct {
	Shards    int  `json:"shards"`
	Rows      int  `json:"rows"`
	New       bool `json:"new"` // false: the campaign was in the cluster already; nothing added
	Duplicate int  `json:"duplicate,omitempty"`
}

// sendShared is campaign send on a cluster node: gate and render here,
// publish the messages in shards for every node to deliver.
func (e *env) sendShared(ctx context.Context, spec campaign.Spec, deps campaign.Deps, set campaignSettings, progress func(int, int64)) (campaign.Summary, *clusterSend, error) {
	coord, done, err := e.coordinator(ctx)
	if err != nil {
		return campaign.Summary{}, nil, err
	}
	defer done()
	// Before any shard: a node has the campaign's rate and brakes before
	// it takes a share.
	b, _ := json.Marshal(set)
	if err := coord.SetSettings(ctx, spec.ID, b); err != nil {
		return campaign.Summary{}, nil, err
	}
	q := &sharesQueue{}
	deps.Queue, deps.Dictionary, deps.Backlog = q, nil, nil
	summary, err := campaign.Send(ctx, spec, deps, progress)
	if err != nil {
		return summary, nil, err
	}
	pub, err := coord.Publish(ctx, spec.ID, spec.FileHash, q.rows)
	if err != nil {
		return summary, nil, err
	}
	return summary, &clusterSend{Shards: pub.Manifest.Shards, Rows: pub.Manifest.Rows, New: pub.New, Duplicate: pub.Duplicate}, nil
}

// campaignSettings are what the node that sends a campaign armed it with,
// for every node (shares.SetSettings): the campaign's rate across the
// cluster (msgs/s; 0 unlimited) and its brakes (the file's over that
// node's server defaults).
type campaignSettings struct {
	Rate   float64           `json:"rate,omitempty"`
	Brakes brakes.Thresholds `json:"brakes"`
}

// settingsEvery is how often a node re-applies the campaigns' settings,
// so its share of a campaign's rate follows the nodes that are up.
const settingsEvery = 30 * time.Second

// applySettings is shares.Worker.Settings: a campaign's brakes as armed,
// and its rate divided among the nodes up (each node's spool sends its
// part; a node down gives its part to the others at the next re-apply).
func (w *shareWorker) applySettings(campaign string, v []byte) {
	var set campaignSettings
	if err := json.Unmarshal(v, &set); err != nil {
		w.log.Warn().Err(err).Str("campaign", campaign).Msg("unreadable campaign settings ignored")
		return
	}
	w.settingsMu.Lock()
	if set.Rate > 0 { // rearm follows the nodes up for rated campaigns only
		w.settings[campaign] = set
	} else {
		delete(w.settings, campaign)
	}
	w.settingsMu.Unlock()
	if w.e.brake != nil {
		if err := w.e.brake.Arm(campaign, set.Brakes); err != nil {
			w.log.Error().Err(err).Str("campaign", campaign).Msg("campaign brakes not armed")
		}
	}
	w.setRate(campaign, set)
}

// setRate sets this node's part of a campaign's rate.
func (w *shareWorker) setRate(campaign string, set campaignSettings) {
	e := w.e
	rate := set.Rate
	if rate > 0 {
		rate /= float64(w.nodesUp())
	}
	if rate == e.queue.CampaignRate(campaign) {
		return
	}
	if err := e.queue.SetCampaignRate(campaign, rate); err != nil {
		w.log.Error().Err(err).Str("campaign", campaign).Msg("campaign rate not set")
		return
	}
	w.log.Info().Str("campaign", campaign).Float64("cluster_rate", set.Rate).Float64("node_rate", rate).Msg("campaign rate set for this node")
}

// nodesUp is how many nodes beat now (at least this one), read at most
// every few seconds: a start hands every campaign's settings at once.
func (w *shareWorker) nodesUp() int {
	e := w.e
	if e.cluster == nil || e.cluster.nats == nil {
		return 1
	}
	w.settingsMu.Lock()
	defer w.settingsMu.Unlock()
	if time.Since(w.upAt) < 5*time.Second {
		return w.up
	}
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	ms, err := cluster.Members(ctx, e.cluster.nats.JetStream())
	if err != nil {
		return max(1, w.up) // what was known last
	}
	up := 0
	for _, m := range ms {
		if m.Up {
			up++
		}
	}
	w.up, w.upAt = max(1, up), time.Now()
	return w.up
}

// rearm re-sets every rated campaign's part of its rate every
// settingsEvery until ctx ends, following the nodes up.
func (w *shareWorker) rearm(ctx context.Context) {
	t := time.NewTicker(settingsEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.settingsMu.Lock()
		all := make(map[string]campaignSettings, len(w.settings))
		for k, v := range w.settings {
			all[k] = v
		}
		w.settingsMu.Unlock()
		for c, set := range all {
			w.setRate(c, set)
		}
	}
}

// shareWorker is serve's part in spreading campaigns: it takes shares,
// enqueues them and publishes final outcomes.
type shareWorker struct {
	e     *env
	coord *shares.Coordinator
	log   zerolog.Logger
	out   chan finalOutcome
	// unpublished counts the outcomes handed to final and not yet in the
	// cluster: the runner counts them as in flight (RunnerConfig.Unpublished).
	unpublished atomic.Int64
	// publishing is when the batch being published was first tried (unix
	// ns), 0 while none is.
	publishing atomic.Int64
	wg         sync.WaitGroup
	stop       context.CancelFunc
	ready      chan struct{}   // closed once coord is set
	checked    atomic.Bool     // the spool was checked against the leases at start
	ctx        context.Context // ends when the worker stops
	// pauses are campaign pauses and resumes made on this node, the newest
	// per campaign, until the cluster has them (flushPauses).
	pausesMu sync.Mutex
	pauses   map[string]shares.Pause
	kick     chan struct{}
	// settings are the rated campaigns' settings as the cluster holds them.
	settingsMu sync.Mutex
	settings   map[string]campaignSettings
	up         int       // nodes up when last read (nodesUp)
	upAt       time.Time // when
}

// finalOutcome is a message's final outcome on its way to the cluster.
type finalOutcome struct {
	campaign, key string
	outcome       shares.Outcome
}

// startShares runs the node's share worker until the env stops; nil on a
// single node. The coordinator comes up in the background: JetStream may
// still be electing its leaders when serve starts.
func (e *env) startShares(ctx context.Context) (*shareWorker, error) {
	if e.cfg.Cluster == nil {
		return nil, nil
	}
	wctx, stop := context.WithCancel(context.Background())
	// The runner holds claimed and unpublished messages together within
	// queue.MaxUnsettled(workers), so out never fills and a lost node's
	// duplicates stay within that bound (docs/cluster.md).
	w := &shareWorker{e: e, log: e.log.With().Str("component", "shares").Logger(),
		out: make(chan finalOutcome, queue.MaxUnsettled(max(1, e.cfg.Delivery.Workers))), stop: stop, ready: make(chan struct{}), ctx: wctx,
		pauses: map[string]shares.Pause{}, kick: make(chan struct{}, 1), settings: map[string]campaignSettings{}}
	// Campaign messages already in the spool may belong to shares another
	// node took over while this one was down: deliveries wait for the check.
	stale, err := pendingCampaigns(e.queue)
	if err != nil {
		stop()
		return nil, err
	}
	w.checked.Store(len(stale) == 0)
	for _, c := range stale { // what this node counted before a restart, published again
		e.figures.touch(c)
	}
	e.shares = w // before the goroutines that read it
	var done func()
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		for delay := 500 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
			coord, d, err := e.coordinator(wctx)
			if err == nil {
				w.coord, done = coord, d
				close(w.ready)
				break
			}
			if wctx.Err() != nil {
				return
			}
			w.log.Warn().Err(err).Dur("retry_in_ms", delay).Msg("share coordinator not up yet")
			select {
			case <-wctx.Done():
				return
			case <-time.After(delay):
			}
		}
		for delay := 500 * time.Millisecond; !w.checked.Load(); delay = min(2*delay, 10*time.Second) {
			err := w.withdrawStale(wctx, stale)
			if err == nil {
				w.checked.Store(true)
				e.queue.Kick()
				break
			}
			w.log.Warn().Err(err).Dur("retry_in_ms", delay).Msg("spool check against the leases failed")
			select {
			case <-wctx.Done():
				return
			case <-time.After(delay):
			}
		}
		if err := w.coord.Run(wctx, shares.Worker{Enqueuer: w, Room: w.room, Lost: w.lost, Paused: w.applyPause,
			Settings: w.applySettings, Figures: w.applyFigures}); err != nil {
			w.log.Error().Err(err).Msg("share worker stopped")
		}
	}()
	go func() { defer w.wg.Done(); w.record(wctx) }()
	w.wg.Add(3)
	go func() { defer w.wg.Done(); w.flushPauses(wctx) }()
	go func() { defer w.wg.Done(); w.rearm(wctx) }()
	go func() { defer w.wg.Done(); w.publishFigures(wctx) }()
	if e.cluster != nil {
		e.cluster.heart.AddReporter(cluster.ReporterFunc(func(h *cluster.Health) {
			select {
			case <-w.ready:
				h.SharesUp = true
			default:
			}
		}))
	}
	e.closers = append(e.closers, func() {
		stop()
		w.wg.Wait()
		if done != nil {
			done()
		}
	})
	return w, nil
}

// pauseToCluster is the brakes' Pauser hook on a cluster node: a pause or
// resume made here (by hand or by a brake) is told to every node. It only
// queues it: the pause holds this node's spool already, and flushPauses
// publishes it, retrying while NATS is out of reach.
func (e *env) pauseToCluster(campaign string, paused bool, reason string) {
	w := e.shares
	if w == nil {
		return
	}
	w.pausesMu.Lock()
	w.pauses[campaign] = shares.Pause{Campaign: campaign, Paused: paused, Reason: reason,
		Node: e.cfg.Cluster.Node, At: time.Now().UTC()}
	w.pausesMu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// flushPauses publishes the queued pauses and resumes until ctx ends, each
// campaign's newest only, retrying every few seconds.
func (w *shareWorker) flushPauses(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-w.ready:
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		w.pausesMu.Lock()
		todo := make([]shares.Pause, 0, len(w.pauses))
		for _, p := range w.pauses {
			todo = append(todo, p)
		}
		w.pausesMu.Unlock()
		for _, p := range todo {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := w.coord.SetPause(pctx, p)
			cancel()
			if err != nil {
				w.log.Warn().Err(err).Str("campaign", p.Campaign).Bool("paused", p.Paused).Msg("campaign pause not yet told to the cluster; retrying")
				continue
			}
			w.pausesMu.Lock()
			if q, ok := w.pauses[p.Campaign]; ok && q.At.Equal(p.At) && q.Paused == p.Paused {
				delete(w.pauses, p.Campaign)
			}
			w.pausesMu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-tick.C:
		}
	}
}

// figuresEvery is how often a node publishes the figures of the campaigns
// that changed on it: the other nodes' brakes judge them up to this late,
// and a campaign costs at most one bucket write per node per period.
const figuresEvery = time.Second

// publishFigures publishes, every figuresEvery until ctx ends, this node's
// figures of each campaign that changed here (shares.SetFigures), for the
// other nodes' brakes; one not published is retried at the next.
func (w *shareWorker) publishFigures(ctx context.Context) {
	e := w.e
	if e.figures == nil {
		return
	}
	select {
	case <-ctx.Done():
		return
	case <-w.ready:
	}
	t := time.NewTicker(figuresEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range e.figures.take() {
			f, err := brakeQueue{q: e.queue}.Figures(c)
			if err == nil {
				b, _ := json.Marshal(f)
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err = w.coord.SetFigures(pctx, c, b)
				cancel()
			}
			if err != nil {
				e.figures.touch(c)
				w.log.Warn().Err(err).Str("campaign", c).Msg("campaign figures not yet told to the cluster; retrying")
			}
		}
	}
}

// applyFigures is shares.Worker.Figures: another node's figures of a
// campaign join the cluster's the brakes count (brakes.Cluster), and the
// brakes judge the campaign on them: the sample may be complete now
// though no hard bounce or complaint was counted here.
func (w *shareWorker) applyFigures(campaign, node string, v []byte) {
	e := w.e
	var f brakes.Figures
	if err := json.Unmarshal(v, &f); err != nil {
		w.log.Warn().Err(err).Str("campaign", campaign).Str("from", node).Msg("unreadable campaign figures ignored")
		return
	}
	if e.figures == nil {
		return
	}
	e.figures.Observe(campaign, node, f)
	if e.brake == nil {
		return
	}
	if _, _, err := e.brake.Check(campaign, "cluster:"+node); err != nil {
		w.log.Error().Err(err).Str("campaign", campaign).Str("from", node).Msg("campaign brake check failed")
	}
}

// applyPause is shares.Worker.Paused: a pause or resume made on another
// node holds or frees this node's spool through the campaign brakes (so it
// is audited here too, and a resume re-arms the brakes on the cluster's
// figures as this node knows them). One this node made, or the state in force here, changes nothing.
func (w *shareWorker) applyPause(p shares.Pause) {
	e := w.e
	if p.Node == e.cfg.Cluster.Node || e.brake == nil {
		return
	}
	who := "cluster:" + p.Node
	local := (brakeQueue{q: e.queue}).Paused(p.Campaign)
	var err error
	switch {
	case p.Paused && !local:
		reason := strings.TrimPrefix(p.Reason, "paused: ")
		if strings.TrimSpace(reason) == "" {
			reason = "paused on node " + p.Node
		}
		err = e.brake.Pause(p.Campaign, who, reason)
	case !p.Paused && local:
		_, err = e.brake.Resume(p.Campaign, who, "resumed on node "+p.Node)
	default:
		return
	}
	if err != nil {
		w.log.Error().Err(err).Str("campaign", p.Campaign).Bool("paused", p.Paused).Str("from", p.Node).Msg("cluster pause not applied")
		return
	}
	w.log.Info().Str("campaign", p.Campaign).Bool("paused", p.Paused).Str("from", p.Node).Msg("cluster pause applied")
}

// Enqueue implements shares.Enqueuer: the rows go into this node's queue in
// one commit; a row the queue holds already (a share taken back) whose
// outcome is final is reported again, so the share can complete.
func (w *shareWorker) Enqueue(ctx context.Context, camp string, rows []shares.Row, token uint64) error {
	// The gate again, on this node's replica: the rows were checked on the
	// node that published them, maybe long ago. A row suppressed or erased
	// since is recorded skipped and never enters this spool (an erased
	// person's sealed row read just before the erasure rewrote the shard
	// included), as the runner would cancel it at dequeue anyway.
	g := w.e.gate()
	msgs := make([]queue.NewMessage, 0, len(rows))
	var skipped []shares.KeyOutcome
	for _, r := range rows {
		f := r.Fields
		if _, sup, err := g.Check(r.Address, f[fieldList]); err != nil {
			return fmt.Errorf("share of %s: suppression check: %w", camp, err)
		} else if sup {
			skipped = append(skipped, shares.KeyOutcome{Key: r.Key, Outcome: shares.Skipped})
			continue
		}
		msgs = append(msgs, queue.NewMessage{Campaign: camp, List: f[fieldList], Key: f[fieldKey], From: f[fieldFrom], To: r.Address,
			Body: []byte(f[fieldBody]), Pool: f[fieldPool]})
	}
	if len(skipped) > 0 {
		if err := w.coord.RecordBatch(ctx, camp, skipped); err != nil {
			return fmt.Errorf("share of %s: record %d suppressed rows: %w", camp, len(skipped), err)
		}
	}
	res, err := w.e.queue.Enqueue(msgs)
	if err != nil {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, shares.ErrLeaseLost) && len(rows) > 0 {
		// Lost while the commit ran: Lost's withdrawal may have come first.
		if m, merr := w.coord.Manifest(ctx, camp); merr == nil {
			shard := m.ShardOf(rows[0].Key)
			if _, werr := w.withdraw(context.WithoutCancel(ctx), camp, func(s int) bool { return s == shard }); werr != nil {
				w.log.Error().Err(werr).Str("campaign", camp).Int("shard", shard).Msg("withdraw after a lost lease")
			}
		}
		return cause
	}
	for i, id := range res.IDs {
		if id != "" {
			continue
		}
		m, found, err := w.e.queue.ByKey(camp, msgs[i].Key)
		if err != nil {
			return err
		}
		if found && m.State.Finished() {
			w.final(m, m.State)
		}
	}
	w.log.Info().Str("campaign", camp).Int("rows", len(rows)).Int("added", res.Added).Uint64("token", token).Msg("share enqueued")
	return nil
}

// room is how many more recipients this node takes now: what keeps its
// workers busy for a while, not the whole campaign.
func (w *shareWorker) room() int {
	st, err := w.e.queue.Stats()
	if err != nil {
		return 0
	}
	waiting := st.ByState[queue.StateReady] + st.ByState[queue.StateActive]
	return max(0, 4*shares.DefaultShardSize-waiting)
}

// withdrawReason is the cancellation reason of spool messages whose share
// another node now holds.
const withdrawReason = "share taken over: lease lost"

// lost withdraws from the spool the messages of a share this node lost
// that are not in flight: the node that takes the share over sends them,
// so a cut-off node sends twice at most what it had in flight
// (docs/cluster.md). It runs on the local spool only: no NATS needed.
func (w *shareWorker) lost(l shares.Lost) {
	n, err := w.withdraw(w.ctx, l.Campaign, func(shard int) bool { return shard == l.Shard })
	ev := w.log.Warn()
	if err != nil {
		ev = w.log.Error().AnErr("withdraw_error", err)
	}
	ev.Str("campaign", l.Campaign).Int("shard", l.Shard).Int("withdrawn", n).Err(l.Err).Msg("share lease lost")
}

// withdraw cancels the spool's not-yet-attempted messages of campaign whose
// recipient's shard gone accepts (queue.Store.Withdraw).
func (w *shareWorker) withdraw(ctx context.Context, camp string, gone func(shard int) bool) (int, error) {
	m, err := w.coord.Manifest(ctx, camp)
	if err != nil {
		return 0, fmt.Errorf("withdraw lost shares of %s: %w", camp, err)
	}
	return w.e.queue.Withdraw(camp, func(ix []byte) bool {
		return gone(m.ShardOf(hex.EncodeToString(ix)))
	}, withdrawReason)
}

// withdrawStale is the start's check of the spool: a node restarted after
// its shares were taken over (or done by others) withdraws their messages
// before it delivers any (shareWorker.checked holds the runner until then).
// Shards this node still holds stay: it takes them back.
func (w *shareWorker) withdrawStale(ctx context.Context, campaigns []string) error {
	for _, camp := range campaigns {
		st, err := w.coord.Shards(ctx, camp)
		if errors.Is(err, shares.ErrNoCampaign) || errors.Is(err, shares.ErrBadCampaign) {
			continue // not a cluster share: enqueued here before the cluster
		}
		if err != nil {
			return err
		}
		mine := map[int]bool{}
		for _, s := range st {
			if s.State == shares.StateHeld && s.Holder == w.coord.Node() {
				mine[s.Shard] = true
			}
		}
		n, err := w.withdraw(ctx, camp, func(shard int) bool { return !mine[shard] })
		if err != nil {
			return err
		}
		if n > 0 {
			w.log.Warn().Str("campaign", camp).Int("withdrawn", n).Msg("spool messages of shares no longer held here withdrawn")
		}
	}
	return nil
}

// pendingCampaigns are the campaigns with messages waiting in the spool.
func pendingCampaigns(q *queue.Store) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, st := range []queue.State{queue.StateReady, queue.StateDeferred, queue.StateHeld} {
		err := q.List(queue.Filter{State: st}, func(m queue.Message) error {
			if m.Campaign != "" && !seen[m.Campaign] {
				seen[m.Campaign] = true
				out = append(out, m.Campaign)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("spool check: %w", err)
		}
	}
	return out, nil
}

// halt is why deliveries wait for the share worker: the spool holds
// campaign messages not yet checked against the leases; "" otherwise.
func (w *shareWorker) halt() string {
	if w == nil || w.checked.Load() {
		return ""
	}
	return "campaign shares: spool not yet checked against the cluster's leases"
}

// final hands a message's final state to the recorder (queue.RunnerConfig.OnFinal).
func (w *shareWorker) final(m queue.Message, st queue.State) {
	if w == nil {
		return
	}
	w.e.figures.touch(m.Campaign)
	a, err := address.Parse(m.To)
	if err != nil { // erased meanwhile: nothing to name it by
		return
	}
	o := shares.Failed
	switch st {
	case queue.StateDelivered:
		o = shares.Delivered
	case queue.StateBounced:
		o = shares.Bounced
	case queue.StateCancelled:
		o = shares.Skipped
	}
	w.unpublished.Add(1)
	select { // never blocks while the runner keeps the bound (Unpublished)
	case w.out <- finalOutcome{campaign: m.Campaign, key: w.e.box.IndexHex(a.Key()), outcome: o}:
	case <-w.ctx.Done(): // stopping: left unpublished, within the bound
		w.unpublished.Add(-1)
	}
}

// Unpublished is queue.RunnerConfig.Unpublished: final outcomes handed to
// final and not yet in the cluster. While a publish has been waiting for
// its acknowledgement longer than outcomeStall (NATS out of reach, a
// partition), it counts queue.MaxUnpublished more: the runner falls back to
// its strict window, so a node cut off sends little that another node will
// send again, not the room kept for batches.
func (w *shareWorker) Unpublished() int {
	n := int(w.unpublished.Load())
	if since := w.publishing.Load(); since != 0 && time.Since(time.Unix(0, since)) > outcomeStall {
		n += queue.MaxUnpublished
	}
	return n
}

// outcomeLinger is the longest a final outcome waits for others to share
// its batch: it delays only the cluster's record, never a delivery.
const outcomeLinger = 200 * time.Millisecond

// outcomeBatch is the batch size at which the recorder stops lingering:
// half the room the runner leaves unpublished outcomes
// (queue.MaxUnpublished), so a batch being acknowledged never holds up the
// runner.
const outcomeBatch = queue.MaxUnpublished / 2

// outcomeStall is how long a batch may wait for its acknowledgement before
// the runner stops counting on the publisher (Unpublished): loopback and LAN
// acks take milliseconds.
const outcomeStall = 250 * time.Millisecond

// outcomeFlushGrace bounds how long a stopping node keeps publishing the
// outcomes it holds: each one left unpublished is a recipient another node
// may send again if this one does not come back.
const outcomeFlushGrace = 5 * time.Second

// record publishes final outcomes, retrying each batch until it is in.
// A batch gathers the outcomes of up to outcomeLinger (or outcomeBatch) and
// those that arrived while the previous one was being published
// (shares.RecordBatch: one stream message per shard, not per recipient).
// When ctx ends it publishes what it holds, for up to outcomeFlushGrace.
func (w *shareWorker) record(ctx context.Context) {
	select {
	case <-w.ready:
	case <-ctx.Done():
		select {
		case <-w.ready: // stopping already: publish what is held
		default:
			return // no coordinator: nothing can be published
		}
	}
	// Publishing outlives ctx by outcomeFlushGrace at most.
	pubCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(outcomeFlushGrace, cancel) })()
	for {
		var batch []finalOutcome
		select {
		case <-ctx.Done():
		case f := <-w.out:
			batch = append(batch, f)
		}
		if ctx.Err() == nil {
			// Linger for more: each batch is one replicated stream message
			// per shard (a raft append on every replica), the cluster's main
			// cost per campaign message (docs/performance.md).
			linger := time.NewTimer(outcomeLinger)
		collect:
			for len(batch) < outcomeBatch {
				select {
				case f := <-w.out:
					batch = append(batch, f)
				case <-linger.C:
					break collect
				case <-ctx.Done():
					break collect
				}
			}
			linger.Stop()
		}
	drain:
		for len(batch) < cap(w.out) {
			select {
			case f := <-w.out:
				batch = append(batch, f)
			default:
				break drain
			}
		}
		if len(batch) == 0 { // stopping, nothing held
			return
		}
		w.publishOutcomes(pubCtx, batch)
		if pubCtx.Err() != nil {
			w.log.Warn().Int("outcomes", len(batch)+len(w.out)).Msg("stopping with outcomes unpublished: another node may send their recipients again")
			return
		}
	}
}

// publishOutcomes publishes one batch, campaign by campaign, retrying
// until it is in or ctx ends, then frees the runner's slots it held.
func (w *shareWorker) publishOutcomes(ctx context.Context, batch []finalOutcome) {
	byCampaign := map[string][]shares.KeyOutcome{}
	var order []string
	for _, f := range batch {
		if byCampaign[f.campaign] == nil {
			order = append(order, f.campaign)
		}
		byCampaign[f.campaign] = append(byCampaign[f.campaign], shares.KeyOutcome{Key: f.key, Outcome: f.outcome})
	}
	w.publishing.Store(time.Now().UnixNano())
	for _, camp := range order {
		for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
			err := w.coord.RecordBatch(ctx, camp, byCampaign[camp])
			if err == nil || ctx.Err() != nil {
				break
			}
			if errors.Is(err, shares.ErrNoCampaign) || errors.Is(err, shares.ErrBadCampaign) {
				// Not a cluster campaign (a --test-to, a confirmation, one
				// enqueued before the cluster): nothing to publish. Retried,
				// it would hold the window full and stop the runner.
				w.log.Debug().Str("campaign", camp).Int("outcomes", len(byCampaign[camp])).Msg("outcomes of a campaign the cluster does not hold: not published")
				break
			}
			w.log.Warn().Err(err).Str("campaign", camp).Int("outcomes", len(byCampaign[camp])).Msg("outcomes not published; retrying")
			select {
			case <-ctx.Done():
			case <-time.After(delay):
			}
		}
	}
	w.publishing.Store(0)
	w.unpublished.Add(-int64(len(batch)))
	w.e.queue.Kick() // slots the runner held for them are free
}

// clusterCampaign is `campaign status` across the cluster.
type clusterCampaign struct {
	Recipients int                    `json:"recipients"`
	Outcomes   map[shares.Outcome]int `json:"outcomes"` // final ones, and deferred
	Pending    int                    `json:"pending"`  // recipients without a final outcome
	Shares     map[string]int         `json:"shares"`   // by state
	Holders    map[string]int         `json:"holders,omitempty"`
	DoneBy     map[string]int         `json:"done_by,omitempty"`
}

// clusterCampaignStatus is campaign id across the cluster; nil on a single
// node or when the cluster does not hold the campaign.
func (e *env) clusterCampaignStatus(ctx context.Context, id string) (*clusterCampaign, error) {
	if e.cfg.Cluster == nil {
		return nil, nil
	}
	coord, done, err := e.coordinator(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	st, err := coord.Status(ctx, id)
	if errors.Is(err, shares.ErrNoCampaign) || errors.Is(err, shares.ErrBadCampaign) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &clusterCampaign{Recipients: st.Manifest.Rows, Outcomes: st.Outcomes, Pending: st.Pending,
		Shares: st.States, Holders: st.Holders, DoneBy: st.Done}, nil
}
