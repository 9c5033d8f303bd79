package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/audit"
)

// brakeNote is the queue note that holds a campaign's brake state.
const brakeNote = "brake"

// brakeQueue gives campaign/brakes the queue: figures from the campaign's
// counters, pauses as campaign suspensions, state as a campaign note. On a
// cluster node a pause or resume is also handed to the share worker
// (toCluster), which tells every node (shares.SetPause).
type brakeQueue struct {
	q         *queue.Store
	toCluster func(campaign string, paused bool, reason string)
}

func (a brakeQueue) Figures(c string) (brakes.Figures, error) {
	counts, err := a.q.CampaignCounts(c)
	if err != nil {
		return brakes.Figures{}, err
	}
	events, err := a.q.CampaignEvents(c)
	if err != nil {
		return brakes.Figures{}, err
	}
	return brakes.FiguresOf(counts[queue.StateDelivered], counts[queue.StateBounced], events), nil
}

func (a brakeQueue) Pause(c, reason string) error {
	if err := a.q.PauseCampaign(c, reason); err != nil {
		return err
	}
	if a.toCluster != nil {
		a.toCluster(c, true, reason)
	}
	return nil
}

func (a brakeQueue) Resume(c string) (bool, error) {
	ok, err := a.q.ResumeCampaign(c)
	if err == nil && a.toCluster != nil {
		a.toCluster(c, false, "")
	}
	return ok, err
}

func (a brakeQueue) Paused(c string) bool { return a.q.CampaignPaused(c) }

func (a brakeQueue) LoadBrake(c string) ([]byte, error) { return a.q.CampaignNote(c, brakeNote) }

func (a brakeQueue) SaveBrake(c string, v []byte) error { return a.q.PutCampaignNote(c, brakeNote, v) }

// clusterFigures is the brakes' Counter on a cluster node (the campaign's
// figures on every node) and the campaigns whose figures changed here
// since the share worker last published them (publishFigures).
type clusterFigures struct {
	*brakes.Cluster
	mu      sync.Mutex
	changed map[string]bool
}

// touch notes that campaign's figures changed on this node; nil on a
// single node does nothing.
func (c *clusterFigures) touch(campaign string) {
	if c == nil || campaign == "" {
		return
	}
	c.mu.Lock()
	c.changed[campaign] = true
	c.mu.Unlock()
}

// take returns the campaigns touched since the last take.
func (c *clusterFigures) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.changed))
	for k := range c.changed {
		out = append(out, k)
	}
	clear(c.changed)
	return out
}

// brakeAuditor writes the brakes' actions to the audit log.
type brakeAuditor struct{ log *audit.Log }

func (a brakeAuditor) Audit(who, action, c, reason string, details map[string]string) error {
	if _, err := a.log.Append(audit.Entry{Who: who, Action: action, Target: "campaign:" + c, Reason: reason, Details: details}); err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	return nil
}

// newBrake wires the campaign brakes to e's queue and audit log. On a
// cluster node they count the cluster's figures: this node's queue's plus
// the other nodes' as the share worker hears of them (applyFigures).
func (e *env) newBrake() (*brakes.Brake, error) {
	var counter brakes.Counter = brakeQueue{q: e.queue}
	if e.cfg.Cluster != nil {
		e.figures = &clusterFigures{Cluster: brakes.NewCluster(counter), changed: map[string]bool{}}
		counter = e.figures
	}
	return brakes.New(brakes.Config{
		Defaults: e.cfg.Delivery.Brakes,
		Counter:  counter,
		Pauser:   brakeQueue{q: e.queue, toCluster: e.pauseToCluster},
		Store:    brakeQueue{q: e.queue},
		Auditor:  brakeAuditor{e.audit},
	}, e.log.With().Str("component", "brakes").Logger())
}

// onCampaignEvent is the queue's OnCampaignEvent: a hard bounce (counted by
// the runner, "mta") or a complaint (counted by the inbound listener) has the
// campaign's brakes judge it.
func (e *env) onCampaignEvent(campaign, kind string) {
	who, ok := brakes.CheckedBy(kind)
	if !ok {
		return
	}
	e.figures.touch(campaign) // a complaint after the delivery, too
	if e.brake == nil {
		return
	}
	if _, _, err := e.brake.Check(campaign, who); err != nil {
		e.log.Error().Err(err).Str("campaign", campaign).Msg("campaign brake check failed")
	}
}

type campaignPauseArgs struct {
	ID     string `json:"id"`
	Reason string `json:"reason,omitempty"`
}

// campaignKnown reports whether the queue knows campaign id.
func campaignKnown(q *queue.Store, id string) (bool, error) {
	if _, err := q.GetCampaign(id); err == nil {
		return true, nil
	} else if !errors.Is(err, queue.ErrNotFound) {
		return false, err
	}
	counts, err := q.CampaignCounts(id)
	return len(counts) > 0, err
}

func opCampaignPause(ctx context.Context, e *env, req request, o *out) error {
	var a campaignPauseArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	if strings.TrimSpace(a.Reason) == "" {
		return errors.New("campaign pause: --reason is required")
	}
	if ok, err := campaignKnown(e.queue, a.ID); err != nil {
		return err
	} else if !ok {
		return no("campaign %q not found", a.ID)
	}
	if (brakeQueue{q: e.queue}).Paused(a.ID) {
		return no("campaign %s is paused already", a.ID)
	}
	if err := e.brake.Pause(a.ID, req.Who, a.Reason); err != nil {
		return err
	}
	return o.Record(map[string]any{"paused": a.ID, "reason": a.Reason})
}

func opCampaignResume(ctx context.Context, e *env, req request, o *out) error {
	var a campaignPauseArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	ok, err := e.brake.Resume(a.ID, req.Who, a.Reason)
	if err != nil {
		return err
	}
	if !ok {
		return no("campaign %s is not paused", a.ID)
	}
	return o.Record(map[string]any{"resumed": a.ID})
}

// printBrake writes a campaign's brake lines of `campaign status`.
func printBrake(w interface{ Write([]byte) (int, error) }, b *brakes.Status) {
	if b == nil {
		return
	}
	th, j := b.Thresholds, b.Judged
	rate := func(n, of int) string {
		if of == 0 {
			return "-"
		}
		return brakes.FormatPercent(float64(n) / float64(of))
	}
	fmt.Fprintf(w, "  brakes         complaint_rate %s, hard_bounce_rate %s, min_sample %d\n",
		brakes.FormatPercent(th.ComplaintRate), brakes.FormatPercent(th.HardBounceRate), th.MinSample)
	fmt.Fprintf(w, "  judged         %d attempted, %d hard bounces (%s); %d delivered, %d complaints (%s)\n",
		j.Attempted, j.HardBounces, rate(j.HardBounces, j.Attempted), j.Delivered, j.Complaints, rate(j.Complaints, j.Delivered))
	if !b.Paused {
		fmt.Fprintf(w, "  paused         no\n")
		return
	}
	p := b.Pause
	fmt.Fprintf(w, "  paused         yes: %s", p.Reason)
	if p.By != "" {
		fmt.Fprintf(w, " (by %s, %s)", p.By, p.At.Local().Format(time.DateTime))
	}
	fmt.Fprintln(w)
}
