package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/postwarden/postwarden/campaign/report"
	"github.com/postwarden/postwarden/queue"
)

// reportQueue gives campaign/report the queue: messages without their
// recipient, states as plain names.
type reportQueue struct{ q *queue.Store }

func (a reportQueue) CampaignRecord(id string) ([]byte, error) {
	raw, err := a.q.GetCampaign(id)
	if errors.Is(err, queue.ErrNotFound) {
		return nil, nil
	}
	return raw, err
}

func (a reportQueue) CampaignStates(id string) (map[string]int, error) {
	counts, err := a.q.CampaignCounts(id)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int, len(counts))
	for st, n := range counts {
		out[string(st)] = n
	}
	return out, nil
}

func (a reportQueue) CampaignEvents(id string) (map[string]int, error) { return a.q.CampaignEvents(id) }

func (a reportQueue) CampaignMessages(id string, fn func(report.Message) error) error {
	return a.q.List(queue.Filter{Campaign: id}, func(m queue.Message) error {
		rm := report.Message{State: string(m.State), Provider: m.Provider, Counted: m.Counted,
			History: make([]report.Attempt, 0, len(m.History))}
		for _, h := range m.History {
			rm.History = append(rm.History, report.Attempt{Time: h.Time, Outcome: h.Outcome, Reason: h.Reason})
		}
		return fn(rm)
	})
}

func (a reportQueue) CampaignTimings(id, kind string) ([]report.Timing, error) {
	ts, err := a.q.CampaignTimings(id, kind)
	if err != nil {
		return nil, err
	}
	out := make([]report.Timing, 0, len(ts))
	for _, t := range ts {
		out = append(out, report.Timing{At: t.At, Took: t.Took})
	}
	return out, nil
}

type campaignReportArgs struct {
	ID string `json:"id"`
}

// opCampaignReport builds a campaign's compliance report, audited first:
// who looked at the campaign's figures, and when.
func opCampaignReport(ctx context.Context, e *env, req request, o *out) error {
	var a campaignReportArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	if ok, err := campaignKnown(e.queue, a.ID); err != nil {
		return err
	} else if !ok {
		// A cluster node that took no share of it holds no part of its report.
		if cs, err := e.clusterCampaignStatus(ctx, a.ID); err == nil && cs != nil {
			return no("campaign %q: this node took no part in it; make its report on a node that did (%s)", a.ID, strings.Join(partNodes(cs), ", "))
		}
		return no("campaign %q not found", a.ID)
	}
	if err := e.record(req, "campaign.report", "campaign:"+a.ID, "", nil); err != nil {
		return err
	}
	r, err := report.Build(report.Config{Queue: reportQueue{e.queue}, Audit: e.audit, Brakes: e.brake,
		Log: e.log.With().Str("component", "report").Logger()}, a.ID, req.Who)
	if errors.Is(err, report.ErrNotFound) {
		return no("campaign %q not found", a.ID)
	}
	if err != nil {
		return err
	}
	cs, err := e.clusterCampaignStatus(ctx, a.ID)
	if err != nil {
		return fmt.Errorf("campaign report %s: the cluster's figures: %w", a.ID, err)
	}
	if cs != nil {
		r.Cluster = &report.Cluster{Node: e.cfg.Cluster.Node, Recipients: cs.Recipients, Pending: cs.Pending,
			Outcomes: make(map[string]int, len(cs.Outcomes)), Shares: cs.Shares, DoneBy: cs.DoneBy}
		for o, n := range cs.Outcomes {
			r.Cluster.Outcomes[string(o)] = n
		}
	}
	return o.Record(r)
}

// partNodes are the nodes that held or finished shares of a campaign, sorted.
func partNodes(cs *clusterCampaign) []string {
	seen := map[string]bool{}
	for n := range cs.Holders {
		seen[n] = true
	}
	for n := range cs.DoneBy {
		seen[n] = true
	}
	return slices.Sorted(maps.Keys(seen))
}

// writeReport renders the report's record as its HTML page into path
// ("-": stdout), whole or not at all: a temp file renamed into place.
func (c *cli) writeReport(raw json.RawMessage, path string) error {
	var r report.Report
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("read the report of the daemon: %w", err)
	}
	var page bytes.Buffer
	if err := r.WriteHTML(&page); err != nil {
		return err
	}
	if path == "-" {
		_, err := c.stdout.Write(page.Bytes())
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*.html")
	if err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // gone once renamed; left only on failure
	if _, err := tmp.Write(page.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("write report %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil { // no personal data: readable as any document
		tmp.Close()
		return fmt.Errorf("write report %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	fmt.Fprintf(c.stdout, "report of campaign %s written to %s\n", r.Campaign, path)
	return nil
}
