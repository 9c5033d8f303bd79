// Package brakes pauses a campaign whose complaints or hard bounces show that
// it hurts the sender's reputation, before it does more harm.
//
// Two brakes, each judged only once its sample is large enough:
//
//   - complaint_rate: complaints / delivered, once delivered ≥ min_sample;
//   - hard_bounce_rate: hard bounces / attempted, once attempted ≥ min_sample
//     (attempted: messages a server gave a final answer to, delivered or bounced).
//
// A brake trips when its rate is strictly over its threshold (Decide, a pure
// function). Tripping pauses the campaign through the Pauser the wiring
// provides: no new attempt, every message kept, and the pause holds across
// restarts until a resume. The trip is audited before the pause is made, and
// logged at warn with the figures that tripped it.
//
// Re-arming: a resume (Brake.Resume) records the campaign's figures at that
// moment as the brake's base. From then on the brake judges only what came
// after the resume (figures minus base) and only once min_sample more messages
// were attempted (delivered, for complaints) since it. A rate still over its
// threshold on that new sample trips the brake again; what happened before the
// resume, which the operator has seen and accepted, never does.
//
// The package knows nothing of the queue: it reads counts through Counter,
// pauses through Pauser, keeps its per-campaign state through Store and
// records through Auditor, all declared here and satisfied by the wiring.
// On a cluster node the Counter is a Cluster: the campaign's figures on
// every node, so a campaign spread over n nodes is judged on its whole
// sample, not on each node's 1/n of it.
package brakes

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Brake names, as in the campaign file and in trips.
const (
	ComplaintRate  = "complaint_rate"
	HardBounceRate = "hard_bounce_rate"
)

// Thresholds are a campaign's brakes. A rate is a fraction (0.003 is 0.3 %);
// 0 turns that brake off.
type Thresholds struct {
	ComplaintRate  float64 `json:"complaint_rate"`
	HardBounceRate float64 `json:"hard_bounce_rate"`
	// MinSample is how many messages (delivered for complaints, attempted for
	// hard bounces) a rate needs before it is judged.
	MinSample int `json:"min_sample"`
}

// Defaults are the server-wide brakes (delivery.brakes) unless configured.
// Gmail and Yahoo's bulk-sender requirements (February 2024: Gmail "Email
// sender guidelines", support.google.com/a/answer/81126; Yahoo "Sender Best
// Practices", senders.yahooinc.com/best-practices) ask senders to keep the
// user-reported spam rate below 0.3 %; a list with 5 % or more dead
// addresses is one that was not kept clean (the providers read a high
// unknown-user rate as list harvesting or a bought list). 500 messages keep
// one or two early complaints from stopping a campaign.
var Defaults = Thresholds{ComplaintRate: 0.003, HardBounceRate: 0.05, MinSample: 500}

// Check reports what is wrong with th, or nil.
func (th Thresholds) Check() error {
	var errs []error
	for _, r := range []struct {
		name string
		v    float64
	}{{ComplaintRate, th.ComplaintRate}, {HardBounceRate, th.HardBounceRate}} {
		if math.IsNaN(r.v) || r.v < 0 || r.v > 1 {
			errs = append(errs, fmt.Errorf("%s %v: want a percentage from 0%% to 100%%", r.name, r.v))
		}
	}
	if th.MinSample < 1 {
		errs = append(errs, fmt.Errorf("min_sample %d: want at least 1", th.MinSample))
	}
	return errors.Join(errs...)
}

// ParsePercent reads a rate written as a percentage ("0.3%", "5 %") into a
// fraction (0.003, 0.05); the sign is required and the value is 0 to 100.
func ParsePercent(s string) (float64, error) {
	num, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	if !ok {
		return 0, fmt.Errorf("%q: want a percentage such as 0.3%%", s)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q: want a percentage such as 0.3%%", s)
	}
	if v < 0 || v > 100 {
		return 0, fmt.Errorf("%q: want a percentage from 0%% to 100%%", s)
	}
	return v / 100, nil
}

// FormatPercent writes a fraction as a percentage rounded to 0.01 % ("10.2%").
func FormatPercent(f float64) string {
	return strconv.FormatFloat(math.Round(f*10000)/100, 'f', -1, 64) + "%"
}

// Figures are the counts the brakes judge.
type Figures struct {
	Attempted   int `json:"attempted"` // messages a server gave a final answer to: delivered or bounced
	Delivered   int `json:"delivered"`
	HardBounces int `json:"hard_bounces"` // people, once each
	Complaints  int `json:"complaints"`   // people, once each
}

// Since is f minus base, each count at least 0: what happened after base was taken.
func (f Figures) Since(base Figures) Figures {
	sub := func(a, b int) int { return max(0, a-b) }
	return Figures{Attempted: sub(f.Attempted, base.Attempted), Delivered: sub(f.Delivered, base.Delivered),
		HardBounces: sub(f.HardBounces, base.HardBounces), Complaints: sub(f.Complaints, base.Complaints)}
}

// Trip is the figures that tripped a brake.
type Trip struct {
	Brake     string  `json:"brake"` // ComplaintRate or HardBounceRate
	Rate      float64 `json:"rate"`
	Threshold float64 `json:"threshold"`
	Count     int     `json:"count"`  // complaints or hard bounces
	Sample    int     `json:"sample"` // delivered or attempted
}

// String is the reason a tripped campaign is paused with:
// "brake: hard_bounce_rate 10.2% > 5% after 520 attempted".
func (t Trip) String() string {
	unit := "attempted"
	if t.Brake == ComplaintRate {
		unit = "delivered"
	}
	return fmt.Sprintf("brake: %s %s > %s after %d %s", t.Brake, FormatPercent(t.Rate), FormatPercent(t.Threshold), t.Sample, unit)
}

// Decide reports whether f trips one of th's brakes, and the figures. The
// complaint rate is judged first: it is what mailbox providers weigh most.
func Decide(th Thresholds, f Figures) (Trip, bool) {
	judge := []struct {
		name          string
		limit         float64
		count, sample int
	}{
		{ComplaintRate, th.ComplaintRate, f.Complaints, f.Delivered},
		{HardBounceRate, th.HardBounceRate, f.HardBounces, f.Attempted},
	}
	for _, j := range judge {
		if j.limit <= 0 || j.sample <= 0 || j.sample < th.MinSample {
			continue
		}
		r := float64(j.count) / float64(j.sample)
		if r > j.limit {
			return Trip{Brake: j.name, Rate: r, Threshold: j.limit, Count: j.count, Sample: j.sample}, true
		}
	}
	return Trip{}, false
}

// Counter reads a campaign's figures.
type Counter interface {
	Figures(campaign string) (Figures, error)
}

// Pauser holds a campaign's messages (no new attempt, none lost) until
// Resume, across restarts.
type Pauser interface {
	Pause(campaign, reason string) error
	// Resume ends the pause; it reports whether one was in force.
	Resume(campaign string) (bool, error)
	// Paused reports whether campaign is paused now.
	Paused(campaign string) bool
}

// Store keeps each campaign's brake state, an opaque value (durable when
// SaveBrake returns).
type Store interface {
	LoadBrake(campaign string) ([]byte, error) // nil, nil when there is none
	SaveBrake(campaign string, state []byte) error
}

// Auditor records an action (brake.trip, campaign.pause, campaign.resume)
// durably before it is done.
type Auditor interface {
	Audit(who, action, campaign, reason string, details map[string]string) error
}

// Config wires a Brake. All fields but Defaults are required.
type Config struct {
	Defaults Thresholds // for campaigns that never armed their own; zero: Defaults
	Counter  Counter
	Pauser   Pauser
	Store    Store
	Auditor  Auditor
}

// State is what the brake keeps per campaign.
type State struct {
	// Thresholds are the campaign file's brakes as of its last send; nil:
	// the server's defaults.
	Thresholds *Thresholds `json:"thresholds,omitempty"`
	// Base is the campaign's figures at its last resume: the brake judges
	// only what came after.
	Base Figures `json:"base"`
	// Pause is the last pause, kept for campaign status while it holds.
	Pause *Pause `json:"pause,omitempty"`
}

// Pause says who paused a campaign, when and why.
type Pause struct {
	At     time.Time `json:"at"`
	By     string    `json:"by"`
	Reason string    `json:"reason"`
	Trip   *Trip     `json:"trip,omitempty"` // set when a brake paused it
}

// Status is a campaign's brake as `campaign status` shows it.
type Status struct {
	Thresholds Thresholds `json:"thresholds"`
	Figures    Figures    `json:"figures"`         // the whole campaign
	Judged     Figures    `json:"judged"`          // since the last resume: what the brakes look at
	Paused     bool       `json:"paused"`          // held now
	Pause      *Pause     `json:"pause,omitempty"` // the pause in force, if any
}

// Brake decides and applies a campaign's brakes. Its methods are safe for
// concurrent use; they run one at a time.
type Brake struct {
	cfg Config
	log zerolog.Logger
	mu  sync.Mutex
}

// New returns a Brake.
func New(cfg Config, log zerolog.Logger) (*Brake, error) {
	if cfg.Counter == nil || cfg.Pauser == nil || cfg.Store == nil || cfg.Auditor == nil {
		return nil, errors.New("brakes: Counter, Pauser, Store and Auditor are required")
	}
	if cfg.Defaults == (Thresholds{}) {
		cfg.Defaults = Defaults
	}
	if err := cfg.Defaults.Check(); err != nil {
		return nil, fmt.Errorf("brakes: defaults: %w", err)
	}
	return &Brake{cfg: cfg, log: log}, nil
}

func (b *Brake) load(campaign string) (State, error) {
	var st State
	raw, err := b.cfg.Store.LoadBrake(campaign)
	if err != nil {
		return st, fmt.Errorf("load brake state of campaign %s: %w", campaign, err)
	}
	if raw != nil {
		if err := json.Unmarshal(raw, &st); err != nil {
			return st, fmt.Errorf("load brake state of campaign %s: %w", campaign, err)
		}
	}
	return st, nil
}

func (b *Brake) save(campaign string, st State) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("save brake state of campaign %s: %w", campaign, err)
	}
	if err := b.cfg.Store.SaveBrake(campaign, raw); err != nil {
		return fmt.Errorf("save brake state of campaign %s: %w", campaign, err)
	}
	return nil
}

func (b *Brake) thresholds(st State) Thresholds {
	if st.Thresholds != nil {
		return *st.Thresholds
	}
	return b.cfg.Defaults
}

// Arm records campaign's own thresholds (from its file, at each send); the
// base and a pause in force are kept.
func (b *Brake) Arm(campaign string, th Thresholds) error {
	if err := th.Check(); err != nil {
		return fmt.Errorf("arm brakes of campaign %s: %w", campaign, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	st, err := b.load(campaign)
	if err != nil {
		return err
	}
	if st.Thresholds != nil && *st.Thresholds == th {
		return nil
	}
	st.Thresholds = &th
	return b.save(campaign, st)
}

// Check judges campaign after one of its hard bounces or complaints was
// counted; who names the part that counted it ("mta", "inbound"). A paused
// campaign is not judged. On a trip the campaign is audited, paused and
// logged, and the trip returned.
func (b *Brake) Check(campaign, who string) (Trip, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cfg.Pauser.Paused(campaign) {
		return Trip{}, false, nil
	}
	f, err := b.cfg.Counter.Figures(campaign)
	if err != nil {
		return Trip{}, false, fmt.Errorf("brake campaign %s: %w", campaign, err)
	}
	st, err := b.load(campaign)
	if err != nil {
		return Trip{}, false, err
	}
	th := b.thresholds(st)
	judged := f.Since(st.Base)
	if max(judged.Attempted, judged.Delivered) < th.MinSample {
		return Trip{}, false, nil // cheap way out until the sample is there
	}
	trip, ok := Decide(th, judged)
	if !ok {
		return Trip{}, false, nil
	}
	reason := trip.String()
	details := map[string]string{"brake": trip.Brake, "rate": FormatPercent(trip.Rate), "threshold": FormatPercent(trip.Threshold),
		"count": strconv.Itoa(trip.Count), "sample": strconv.Itoa(trip.Sample)}
	if err := b.pause(campaign, who, "brake.trip", reason, &trip, details); err != nil {
		return trip, false, err
	}
	b.log.Warn().Str("campaign", campaign).Str("who", who).Str("brake", trip.Brake).
		Str("rate", FormatPercent(trip.Rate)).Str("threshold", FormatPercent(trip.Threshold)).
		Int("count", trip.Count).Int("sample", trip.Sample).Msg("campaign paused by its brake")
	return trip, true, nil
}

// pause audits, records and applies a pause; b.mu is held.
func (b *Brake) pause(campaign, who, action, reason string, trip *Trip, details map[string]string) error {
	if err := b.cfg.Auditor.Audit(who, action, campaign, reason, details); err != nil {
		return fmt.Errorf("pause campaign %s: %w", campaign, err)
	}
	st, err := b.load(campaign)
	if err != nil {
		return err
	}
	st.Pause = &Pause{At: time.Now().UTC(), By: who, Reason: reason, Trip: trip}
	if err := b.save(campaign, st); err != nil {
		return err
	}
	if err := b.cfg.Pauser.Pause(campaign, reason); err != nil {
		return fmt.Errorf("pause campaign %s: %w", campaign, err)
	}
	return nil
}

// Pause pauses campaign by hand (`campaign pause`), audited as who.
func (b *Brake) Pause(campaign, who, reason string) error {
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return fmt.Errorf("pause campaign %s: a reason is required", campaign)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.pause(campaign, who, "campaign.pause", "paused: "+reason, nil, nil); err != nil {
		return err
	}
	b.log.Warn().Str("campaign", campaign).Str("who", who).Str("reason", reason).Msg("campaign paused")
	return nil
}

// Resume ends campaign's pause, audited as who, and re-arms its brakes on
// what comes after (see the package comment). It reports whether the
// campaign was paused; one that was not is left as it is.
func (b *Brake) Resume(campaign, who, reason string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.cfg.Pauser.Paused(campaign) {
		return false, nil
	}
	f, err := b.cfg.Counter.Figures(campaign)
	if err != nil {
		return false, fmt.Errorf("resume campaign %s: %w", campaign, err)
	}
	details := map[string]string{"attempted": strconv.Itoa(f.Attempted), "delivered": strconv.Itoa(f.Delivered),
		"hard_bounces": strconv.Itoa(f.HardBounces), "complaints": strconv.Itoa(f.Complaints)}
	if err := b.cfg.Auditor.Audit(who, "campaign.resume", campaign, strings.TrimSpace(reason), details); err != nil {
		return false, fmt.Errorf("resume campaign %s: %w", campaign, err)
	}
	st, err := b.load(campaign)
	if err != nil {
		return false, err
	}
	st.Base, st.Pause = f, nil
	if err := b.save(campaign, st); err != nil {
		return false, err
	}
	if _, err := b.cfg.Pauser.Resume(campaign); err != nil {
		return false, fmt.Errorf("resume campaign %s: %w", campaign, err)
	}
	b.log.Info().Str("campaign", campaign).Str("who", who).Int("attempted", f.Attempted).Msg("campaign resumed; brakes re-armed")
	return true, nil
}

// Status returns campaign's brakes, figures and pause.
func (b *Brake) Status(campaign string) (Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, err := b.cfg.Counter.Figures(campaign)
	if err != nil {
		return Status{}, fmt.Errorf("brake status of campaign %s: %w", campaign, err)
	}
	st, err := b.load(campaign)
	if err != nil {
		return Status{}, err
	}
	s := Status{Thresholds: b.thresholds(st), Figures: f, Judged: f.Since(st.Base), Paused: b.cfg.Pauser.Paused(campaign)}
	if s.Paused {
		s.Pause = st.Pause
		if s.Pause == nil { // paused by an older process, or its record lost: say so
			s.Pause = &Pause{Reason: "paused"}
		}
	}
	return s, nil
}
