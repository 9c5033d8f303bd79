// Package report builds a campaign's compliance report: who ran it and
// under what (hashes, legal basis, LIA, exclusions, privacy URL), what
// became of every row and message, bounces by reason, outcomes by provider,
// how fast unsubscribes were honoured, brakes, pauses and the campaign's
// audit entries. The model is plain data (JSON as `--json` prints it);
// WriteHTML renders it as one self-contained page with inline SVG charts.
//
// A report names no person: addresses never enter the model (messages are
// read without their recipient, audit entries naming an address are
// withheld), so the page can be handed to a data-protection officer.
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/suppression/audit"
)

// Message is what a report reads of one queued message: no recipient.
type Message struct {
	State    string    // queue state: ready, active, deferred, held, delivered, bounced, expired, cancelled
	Provider string    // mailbox provider the last attempt reported ("" unknown)
	Counted  []string  // campaign events counted for its person (bounced_hard, bounced_soft, …)
	History  []Attempt // attempts and events, oldest first
}

// Attempt is one event of a message's history.
type Attempt struct {
	Time    time.Time
	Outcome string // delivered, deferred, bounced, expired, bounce-hard, …
	Reason  string // a bounce's classified reason, when known
}

// Timing is one timed campaign event: when it was asked and how long it took.
type Timing struct {
	At   time.Time
	Took time.Duration
}

// Queue is what a report reads of the campaign's queue.
type Queue interface {
	// CampaignRecord returns the campaign record's JSON (campaign.Record),
	// or nil when the queue holds none.
	CampaignRecord(id string) ([]byte, error)
	CampaignStates(id string) (map[string]int, error)
	CampaignEvents(id string) (map[string]int, error)
	CampaignMessages(id string, fn func(Message) error) error
	CampaignTimings(id, kind string) ([]Timing, error)
}

// Audit is the audit log a report lists the campaign's entries from
// (*audit.Log satisfies it).
type Audit interface {
	List(since time.Time, fn func(audit.Entry) error) error
}

// Brakes tells a campaign's brakes (*brakes.Brake satisfies it).
type Brakes interface {
	Status(campaign string) (brakes.Status, error)
}

// Config is what Build reads from.
type Config struct {
	Queue  Queue  // required
	Audit  Audit  // required
	Brakes Brakes // nil: no brake section
	Now    func() time.Time
	// MaxBuckets bounds the time buckets of the charts over time; default 24.
	MaxBuckets int
	Log        zerolog.Logger
}

// ErrNotFound is a campaign the queue knows nothing of.
var ErrNotFound = errors.New("report: campaign not found")

// Report is a campaign's compliance report.
type Report struct {
	Campaign    string    `json:"campaign"`
	Generated   time.Time `json:"generated"`
	GeneratedBy string    `json:"generated_by"`
	// Record is what the campaign record kept of its last run; nil when
	// the queue has none (a campaign known only by its messages).
	Record *Provenance `json:"record,omitempty"`
	Counts Counts      `json:"counts"`
	// Bounces are the bounced messages by kind and reason, most first.
	Bounces []Bounce `json:"bounces"`
	// Providers are the messages' states by mailbox provider.
	Providers []ProviderOutcomes `json:"providers"`
	// Deliveries are the delivery attempts over time by outcome.
	Deliveries Series `json:"deliveries"`
	// Unsubscribes are the campaign's timed unsubscribes: when they came
	// and how long each took to be in the suppression store.
	Unsubscribes Unsubscribes   `json:"unsubscribes"`
	Brake        *brakes.Status `json:"brake,omitempty"`
	// Pauses are the pauses, brake trips and resumes, oldest first.
	Pauses []Entry `json:"pauses"`
	// Suspensions are the queue suspensions (a source, provider or domain,
	// every campaign's) since the campaign started.
	Suspensions []Entry `json:"suspensions"`
	// Audit holds every audit entry about the campaign, oldest first.
	Audit []Entry  `json:"audit"`
	Notes []string `json:"notes,omitempty"`
	// Cluster is the campaign across the cluster's nodes, as `campaign
	// status` shows it; nil on a single node. The rest of the report is the
	// node's own part. The wiring fills it in.
	Cluster *Cluster `json:"cluster,omitempty"`
}

// Cluster is a campaign across the cluster: its recipients, their outcomes,
// those without a final one, the shares by state and by the node that
// finished them.
type Cluster struct {
	Node       string         `json:"node"` // the node that made the report
	Recipients int            `json:"recipients"`
	Outcomes   map[string]int `json:"outcomes"`
	Pending    int            `json:"pending"`
	Shares     map[string]int `json:"shares"`
	DoneBy     map[string]int `json:"done_by,omitempty"`
}

// Provenance is who ran the campaign and under what.
type Provenance struct {
	List             string   `json:"list"`
	Subject          string   `json:"subject"`
	Recipients       string   `json:"recipients"`
	RunBy            string   `json:"run_by"`
	RequestedBy      string   `json:"requested_by,omitempty"`
	Started          string   `json:"started"`
	Finished         string   `json:"finished,omitempty"`
	FileHash         string   `json:"file_hash"`
	ConfigHash       string   `json:"config_hash,omitempty"`
	TemplateHash     string   `json:"template_hash,omitempty"`
	LegalBasis       string   `json:"legal_basis"`
	Audience         string   `json:"audience,omitempty"`
	LIA              string   `json:"lia,omitempty"`
	LIAHash          string   `json:"lia_hash,omitempty"`
	LIAHeadings      []string `json:"lia_headings,omitempty"`
	ExcludeCountries []string `json:"exclude_countries,omitempty"`
	UnknownCountry   string   `json:"unknown_country,omitempty"`
	PrivacyURL       string   `json:"privacy_url,omitempty"`
	Pool             string   `json:"pool,omitempty"`
}

// Counts are the campaign's figures. The message figures use the names and
// rules of `campaign status --json`; the row figures are the last run's.
type Counts struct {
	Rows         int            `json:"rows"`
	Invalid      int            `json:"invalid"`
	InvalidRows  []string       `json:"invalid_rows,omitempty"` // FILE:LINE: problem, addresses masked
	Suppressed   map[string]int `json:"suppressed_at_enqueue"`
	Skipped      map[string]int `json:"skipped_at_enqueue"`
	AlreadySent  int            `json:"already_sent"`
	Enqueued     int            `json:"enqueued"`
	Delivered    int            `json:"delivered"`
	Pending      int            `json:"pending"`
	Deferred     int            `json:"deferred"`
	Bounced      int            `json:"bounced"`
	BouncedHard  int            `json:"bounced_hard"`
	BouncedSoft  int            `json:"bounced_soft"`
	Expired      int            `json:"expired"`
	Cancelled    int            `json:"cancelled"`
	Complained   int            `json:"complained"`
	Unsubscribed int            `json:"unsubscribed"`
}

// Bounce counts bounced messages of one kind and reason.
type Bounce struct {
	Kind   string `json:"kind"`   // hard, soft, or unknown (bounced by an operator, or before kinds were kept)
	Reason string `json:"reason"` // the classifier's name, or "unclassified"
	Count  int    `json:"count"`
}

// ProviderOutcomes are one provider's messages by state group.
type ProviderOutcomes struct {
	Provider  string `json:"provider"`
	Delivered int    `json:"delivered"`
	Pending   int    `json:"pending"`
	Bounced   int    `json:"bounced"`
	Other     int    `json:"other"` // expired or cancelled
}

// Series is counts per time bucket, one row per named series.
type Series struct {
	Start  time.Time        `json:"start,omitzero"`
	Step   time.Duration    `json:"step"`
	Labels []string         `json:"labels"` // one per bucket: its start, UTC
	Counts map[string][]int `json:"counts"` // series name → count per bucket
	Names  []string         `json:"names"`  // the series, in stacking order
}

// Unsubscribes are the campaign's timed unsubscribes.
type Unsubscribes struct {
	Timed   int           `json:"timed"`
	Median  time.Duration `json:"median"`
	P95     time.Duration `json:"p95"`
	Max     time.Duration `json:"max"`
	Within1 int           `json:"within_1s"` // suppressed within a second of the request
	// Latency counts the unsubscribes per latency bin (LatencyBins).
	Latency []int  `json:"latency"`
	Over    Series `json:"over_time"`
}

// LatencyBins are the upper bounds of the latency histogram's bins; the
// last bin takes everything slower.
var LatencyBins = []time.Duration{10 * time.Millisecond, 100 * time.Millisecond, time.Second, 10 * time.Second, time.Minute}

// Entry is an audit entry as a report shows it: an address found in it is
// withheld (people are named by keyed index only).
type Entry struct {
	Seq     uint64            `json:"seq"`
	Time    time.Time         `json:"time"`
	Who     string            `json:"who"`
	Action  string            `json:"action"`
	Target  string            `json:"target"`
	Reason  string            `json:"reason,omitempty"`
	Details map[string]string `json:"details,omitempty"`
}

// withheld replaces a value that holds an address, masked or not.
const withheld = "(address withheld)"

// Build gathers campaign id's report; by names who asked for it.
func Build(cfg Config, id, by string) (*Report, error) {
	if cfg.Queue == nil || cfg.Audit == nil {
		return nil, errors.New("report: Queue and Audit are required")
	}
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	maxBuckets := cfg.MaxBuckets
	if maxBuckets <= 0 {
		maxBuckets = 24
	}
	raw, err := cfg.Queue.CampaignRecord(id)
	if err != nil {
		return nil, fmt.Errorf("report of campaign %s: read its record: %w", id, err)
	}
	states, err := cfg.Queue.CampaignStates(id)
	if err != nil {
		return nil, fmt.Errorf("report of campaign %s: count its messages: %w", id, err)
	}
	if raw == nil && len(states) == 0 {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	events, err := cfg.Queue.CampaignEvents(id)
	if err != nil {
		return nil, fmt.Errorf("report of campaign %s: read its events: %w", id, err)
	}
	r := &Report{Campaign: id, Generated: now().UTC(), GeneratedBy: by, Counts: CountsOf(states, events)}
	var started time.Time
	if raw != nil {
		var rec campaign.Record
		if err := json.Unmarshal(raw, &rec); err != nil {
			return nil, fmt.Errorf("report of campaign %s: decode its record: %w", id, err)
		}
		r.Record = provenance(rec)
		started = rec.Started
		r.Counts.addSummary(rec.Summary)
		if rec.ConfigHash == "" {
			r.Notes = append(r.Notes, "The campaign record predates the config hash, privacy URL, LIA headings and requester fields; re-run the campaign with this version to record them.")
		}
	}
	var msgs []Message
	if err := cfg.Queue.CampaignMessages(id, func(m Message) error { msgs = append(msgs, m); return nil }); err != nil {
		return nil, fmt.Errorf("report of campaign %s: read its messages: %w", id, err)
	}
	if n := len(msgs); n < r.Counts.Enqueued {
		r.Notes = append(r.Notes, fmt.Sprintf("%d of %d messages are no longer in the queue (erased or pruned): the charts cover the %d left; the counts cover all.", r.Counts.Enqueued-n, r.Counts.Enqueued, n))
	}
	r.Bounces = bouncesOf(msgs)
	r.Providers = providersOf(msgs)
	r.Deliveries = deliveriesOf(msgs, maxBuckets)
	timings, err := cfg.Queue.CampaignTimings(id, "unsubscribe")
	if err != nil {
		return nil, fmt.Errorf("report of campaign %s: read its unsubscribe timings: %w", id, err)
	}
	r.Unsubscribes = unsubscribesOf(timings, maxBuckets)
	if cfg.Brakes != nil {
		st, err := cfg.Brakes.Status(id)
		if err != nil {
			return nil, fmt.Errorf("report of campaign %s: %w", id, err)
		}
		r.Brake = &st
	}
	if err := r.auditEntries(cfg.Audit, started); err != nil {
		return nil, fmt.Errorf("report of campaign %s: read the audit log: %w", id, err)
	}
	cfg.Log.Debug().Str("campaign", id).Int("messages", len(msgs)).Int("audit_entries", len(r.Audit)).Msg("campaign report built")
	return r, nil
}

// CountsOf is the message figures of `campaign status`: the queue's
// messages by state, and the events counted once per person.
func CountsOf(states, events map[string]int) Counts {
	c := Counts{Suppressed: map[string]int{}, Skipped: map[string]int{},
		Delivered: states["delivered"], Deferred: states["deferred"], Bounced: states["bounced"],
		Expired: states["expired"], Cancelled: states["cancelled"],
		BouncedHard: events["bounced_hard"], BouncedSoft: events["bounced_soft"],
		Complained: events["complained"], Unsubscribed: events["unsubscribed"]}
	for st, n := range states {
		c.Enqueued += n
		if !finished(st) {
			c.Pending += n
		}
	}
	return c
}

// finished reports whether a queue state is final (the queue's rule).
func finished(state string) bool {
	switch state {
	case "delivered", "bounced", "expired", "cancelled":
		return true
	}
	return false
}

// addSummary adds the last run's row figures.
func (c *Counts) addSummary(s campaign.Summary) {
	c.Rows, c.Invalid, c.AlreadySent = s.Rows, s.Invalid, s.AlreadySent
	for _, l := range s.InvalidLines {
		c.InvalidRows = append(c.InvalidRows, withholdAddresses(l))
	}
	for k, v := range s.Suppressed {
		c.Suppressed[k] = v
	}
	for k, v := range s.Skipped {
		c.Skipped[k] = v
	}
}

// provenance is what the report shows of a campaign record.
func provenance(rec campaign.Record) *Provenance {
	p := &Provenance{List: rec.List, Subject: rec.Subject, Recipients: rec.Recipients, RunBy: rec.RunBy,
		RequestedBy: rec.RequestedBy, Started: stamp(rec.Started), Finished: stamp(rec.Finished),
		FileHash: rec.FileHash, ConfigHash: rec.ConfigHash, TemplateHash: rec.TemplateHash,
		LegalBasis: rec.LegalBasis, Audience: rec.Audience, LIA: rec.LIA, LIAHash: rec.LIAHash,
		LIAHeadings: rec.LIAHeadings, ExcludeCountries: rec.ExcludeCountries, UnknownCountry: rec.UnknownCountry,
		PrivacyURL: rec.PrivacyURL, Pool: rec.Pool}
	return p
}

// stamp is t in UTC, RFC 3339, or "" for the zero time.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// bouncesOf counts the bounced messages by kind and reason. The kind is
// the event counted for the person; the reason, the last classified
// bounce event's.
func bouncesOf(msgs []Message) []Bounce {
	type key struct{ kind, reason string }
	counts := map[key]int{}
	for _, m := range msgs {
		if m.State != "bounced" {
			continue
		}
		k := key{kind: "unknown", reason: "unclassified"}
		switch {
		case slices.Contains(m.Counted, "bounced_hard"):
			k.kind = "hard"
		case slices.Contains(m.Counted, "bounced_soft"):
			k.kind = "soft"
		}
		for _, a := range slices.Backward(m.History) {
			if a.Outcome != "bounced" && !strings.HasPrefix(a.Outcome, "bounce-") {
				continue
			}
			if k.kind == "unknown" && strings.HasPrefix(a.Outcome, "bounce-") {
				k.kind = strings.TrimPrefix(a.Outcome, "bounce-")
			}
			if a.Reason != "" {
				k.reason = a.Reason
				break
			}
		}
		counts[k]++
	}
	out := make([]Bounce, 0, len(counts))
	for k, n := range counts {
		out = append(out, Bounce{Kind: k.kind, Reason: k.reason, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].Reason < out[j].Reason
	})
	return out
}

// providersOf groups the messages' states by provider, most messages first.
func providersOf(msgs []Message) []ProviderOutcomes {
	by := map[string]*ProviderOutcomes{}
	for _, m := range msgs {
		name := m.Provider
		if name == "" {
			name = "unknown"
		}
		p := by[name]
		if p == nil {
			p = &ProviderOutcomes{Provider: name}
			by[name] = p
		}
		switch {
		case m.State == "delivered":
			p.Delivered++
		case m.State == "bounced":
			p.Bounced++
		case !finished(m.State):
			p.Pending++
		default:
			p.Other++
		}
	}
	out := make([]ProviderOutcomes, 0, len(by))
	for _, p := range by {
		out = append(out, *p)
	}
	total := func(p ProviderOutcomes) int { return p.Delivered + p.Pending + p.Bounced + p.Other }
	sort.Slice(out, func(i, j int) bool {
		if total(out[i]) != total(out[j]) {
			return total(out[i]) > total(out[j])
		}
		return out[i].Provider < out[j].Provider
	})
	return out
}

// attemptOutcomes are the history outcomes the deliveries chart stacks.
var attemptOutcomes = []string{"delivered", "deferred", "bounced", "expired"}

// deliveriesOf buckets the delivery attempts over time by outcome.
func deliveriesOf(msgs []Message, maxBuckets int) Series {
	var times []time.Time
	var names []string
	for _, m := range msgs {
		for _, a := range m.History {
			if slices.Contains(attemptOutcomes, a.Outcome) {
				times = append(times, a.Time)
				names = append(names, a.Outcome)
			}
		}
	}
	return bucket(times, names, attemptOutcomes, maxBuckets)
}

// unsubscribesOf sums up the unsubscribe timings.
func unsubscribesOf(ts []Timing, maxBuckets int) Unsubscribes {
	u := Unsubscribes{Timed: len(ts), Latency: make([]int, len(LatencyBins)+1)}
	if len(ts) == 0 {
		u.Over = bucket(nil, nil, []string{"unsubscribed"}, maxBuckets)
		return u
	}
	took := make([]time.Duration, 0, len(ts))
	times := make([]time.Time, 0, len(ts))
	names := make([]string, 0, len(ts))
	for _, t := range ts {
		took = append(took, t.Took)
		times = append(times, t.At)
		names = append(names, "unsubscribed")
		bin := len(LatencyBins)
		for i, b := range LatencyBins {
			if t.Took <= b {
				bin = i
				break
			}
		}
		u.Latency[bin]++
		if t.Took <= time.Second {
			u.Within1++
		}
	}
	slices.Sort(took)
	u.Median, u.P95, u.Max = quantile(took, 0.5), quantile(took, 0.95), took[len(took)-1]
	u.Over = bucket(times, names, []string{"unsubscribed"}, maxBuckets)
	return u
}

// quantile is the nearest-rank q-quantile of sorted, non-empty ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(ds))+0.999999) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// steps are the bucket widths a series may take, the narrowest that keeps
// the buckets within the maximum wins.
var steps = []time.Duration{time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute,
	5 * time.Minute, 15 * time.Minute, time.Hour, 6 * time.Hour, 24 * time.Hour, 7 * 24 * time.Hour}

// bucket counts times[i] under series names[i], in buckets from the first
// time's step boundary on.
func bucket(times []time.Time, names, series []string, maxBuckets int) Series {
	s := Series{Names: series, Counts: map[string][]int{}, Labels: []string{}}
	for _, n := range series {
		s.Counts[n] = []int{}
	}
	if len(times) == 0 {
		return s
	}
	first, last := times[0], times[0]
	for _, t := range times {
		if t.Before(first) {
			first = t
		}
		if t.After(last) {
			last = t
		}
	}
	s.Step = steps[len(steps)-1]
	for _, st := range steps {
		if int(last.Sub(first.Truncate(st))/st)+1 <= maxBuckets {
			s.Step = st
			break
		}
	}
	s.Start = first.UTC().Truncate(s.Step)
	n := int(last.Sub(s.Start)/s.Step) + 1
	for _, name := range series {
		s.Counts[name] = make([]int, n)
	}
	layout := "15:04:05"
	if s.Step >= 24*time.Hour {
		layout = "2006-01-02"
	} else if last.Sub(first) >= 24*time.Hour {
		layout = "01-02 15:04"
	}
	for i := range n {
		s.Labels = append(s.Labels, s.Start.Add(time.Duration(i)*s.Step).Format(layout))
	}
	for i, t := range times {
		s.Counts[names[i]][int(t.Sub(s.Start)/s.Step)]++
	}
	return s
}

// pauseActions are the audit actions of pauses, brake trips and resumes.
var pauseActions = []string{"campaign.pause", "brake.trip", "campaign.resume"}

// auditEntries lists the campaign's audit entries and, since it started,
// the queue's suspensions.
func (r *Report) auditEntries(log Audit, started time.Time) error {
	target := "campaign:" + r.Campaign
	return log.List(time.Time{}, func(e audit.Entry) error {
		ours := e.Target == target || e.Details["campaign"] == r.Campaign
		suspension := (e.Action == "queue.suspend" || e.Action == "queue.resume") && !started.IsZero() && !e.Time.Before(started)
		if !ours && !suspension {
			return nil
		}
		v := entryOf(e)
		switch {
		case suspension:
			r.Suspensions = append(r.Suspensions, v)
			return nil
		case slices.Contains(pauseActions, e.Action):
			r.Pauses = append(r.Pauses, v)
		}
		r.Audit = append(r.Audit, v)
		return nil
	})
}

// entryOf is e as a report shows it, any address in it withheld.
func entryOf(e audit.Entry) Entry {
	v := Entry{Seq: e.Seq, Time: e.Time.UTC(), Who: clean(e.Who), Action: e.Action, Target: clean(e.Target), Reason: clean(e.Reason)}
	if len(e.Details) > 0 {
		v.Details = make(map[string]string, len(e.Details))
		for k, d := range e.Details {
			v.Details[k] = clean(d)
		}
	}
	return v
}

// addressLike is a word holding an @ beside other characters: an address,
// masked or not, maybe quoted (a lone "@" in a problem's text stays).
var addressLike = regexp.MustCompile(`"?(?:[^\s"]+@[^\s":;,]*|@[^\s":;,]+)"?`)

// withholdAddresses replaces every address in s, keeping the rest (an
// invalid row's file, line and problem).
func withholdAddresses(s string) string {
	return addressLike.ReplaceAllString(s, withheld)
}

// clean withholds a value holding an address: the audit log keeps masked
// addresses in places (a test send's "to"), and a mask still names a domain
// and a first letter.
func clean(s string) string {
	if strings.Contains(s, "@") {
		return withheld
	}
	return s
}
