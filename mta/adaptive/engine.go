package adaptive

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/address"
)

// AllProviders is the provider of a source-wide state or change (SuspendSource).
const AllProviders = "*"

// maxReply caps the reply text kept with a change, in bytes.
const maxReply = 300

// Config is the engine's settings; zero fields take the defaults below.
type Config struct {
	// Now is the clock (time.Now by default); tests pass a fake one.
	Now func() time.Time
	// RecoverAfter is the clean period (no matching reply) after which a
	// lowered factor steps up once, and again after each further clean period
	// (default 10m). A throttle's own For, when longer, delays the first step.
	RecoverAfter time.Duration
	// RecoverStep multiplies a lowered factor at each step, up to 1 (default 2).
	RecoverStep float64
	// MinFactor is the lowest a factor goes however many throttles stack (default 0.05).
	MinFactor float64
	// Cooldown is how long after lowering a limit (or starting a suspension)
	// further matching replies only extend the hold: a burst of replies to
	// deliveries in flight at once counts as one (default 1m).
	Cooldown time.Duration
	// OnChange, when set, is called with every change after it is made, outside
	// the engine's lock (for Prometheus counters and the event log).
	OnChange func(Change)
}

// Defaults of Config.
const (
	DefaultRecoverAfter = 10 * time.Minute
	DefaultRecoverStep  = 2.0
	DefaultMinFactor    = 0.05
	DefaultCooldown     = time.Minute
)

// Limits are a (source, provider) pair's shaping limits; zero means unlimited.
type Limits struct {
	Rate                  float64 // messages per second
	Connections           int     // concurrent connections
	MessagesPerConnection int     // passed through unchanged
}

// HoldScope says what a Hold suspends.
type HoldScope int

const (
	// NoHold: the pair may send.
	NoHold HoldScope = iota
	// HoldPair: the source is suspended for this provider.
	HoldPair
	// HoldSource: the source is suspended for every provider.
	HoldSource
)

// String returns "none", "pair" or "source".
func (s HoldScope) String() string {
	switch s {
	case HoldPair:
		return "pair"
	case HoldSource:
		return "source"
	}
	return "none"
}

// Hold is a suspension in force: messages wait until Until, no attempt is
// spent, max_age still applies.
type Hold struct {
	Scope HoldScope
	Until time.Time
	Note  string // the rule that caused it
}

// Held reports whether the pair may not send now.
func (h Hold) Held() bool { return h.Scope != NoHold }

// ChangeKind is what a Change did.
type ChangeKind int

const (
	// ChangeThrottle lowered a factor.
	ChangeThrottle ChangeKind = iota + 1
	// ChangeSuspendPair suspended the source for the provider.
	ChangeSuspendPair
	// ChangeSuspendSource suspended the source for every provider.
	ChangeSuspendSource
	// ChangeRecover raised the factors one step after a clean period.
	ChangeRecover
	// ChangeResumePair ended a pair's suspension at its time.
	ChangeResumePair
	// ChangeResumeSource ended a source's suspension at its time.
	ChangeResumeSource
)

// String returns the kind as logged and exported ("throttle", "recover", …).
func (k ChangeKind) String() string {
	switch k {
	case ChangeThrottle:
		return "throttle"
	case ChangeSuspendPair:
		return "suspend_pair"
	case ChangeSuspendSource:
		return "suspend_source"
	case ChangeRecover:
		return "recover"
	case ChangeResumePair:
		return "resume_pair"
	case ChangeResumeSource:
		return "resume_source"
	}
	return "change(" + strconv.Itoa(int(k)) + ")"
}

// Change is one change of a pair's or a source's state, with its cause.
type Change struct {
	Time     time.Time
	Source   string
	Provider string // AllProviders for a source's suspension or resumption
	Kind     ChangeKind
	// RateFactor and ConnFactor are the pair's factors after the change.
	RateFactor, ConnFactor float64
	Until                  time.Time // end of the suspension (suspensions only)
	Note                   string    // the rule's note (recover and resume: the one of the change they undo)
	Reply                  string    // the reply that caused it, addresses masked (likewise)
}

// ChangeKey counts changes by pair and kind (a Prometheus counter's labels).
type ChangeKey struct {
	Source, Provider string
	Kind             ChangeKind
}

// PairState is one row of `providers ls`: a pair's factors and holds, or a
// source's suspension (Provider AllProviders).
type PairState struct {
	Source, Provider       string
	RateFactor, ConnFactor float64
	SuspendedUntil         time.Time // zero when not suspended
	RecoverAt              time.Time // next recovery step; zero when at 1
	Bad                    int       // replies that matched a rule
	Clean                  int       // successes since the last change
	Last                   Change    // the last change and the reply that caused it
}

type pairKey struct{ source, provider string }

// pair is the state of a (source, provider) pair, or of a source (provider
// AllProviders), where only the suspension fields are used.
type pair struct {
	rate, conn       float64
	rateLow, connLow time.Time // last lowering of each, for the cooldown
	recoverAt        time.Time
	suspendedUntil   time.Time
	suspendedAt      time.Time
	bad, clean       int
	last             Change
}

// Engine learns from delivery replies which (source, provider) pairs must slow
// down or stop, and gives the limits in force. It is safe for concurrent use.
type Engine struct {
	rules []Rule
	cfg   Config
	log   zerolog.Logger

	mu      sync.Mutex
	pairs   map[pairKey]*pair // provider AllProviders: a source's own state
	changes map[ChangeKey]int
}

// New returns an engine applying rules in order (the first match wins); nil
// rules means DefaultRules. Every invalid rule is reported at once.
func New(rules []Rule, cfg Config, log zerolog.Logger) (*Engine, error) {
	if rules == nil {
		rules = DefaultRules()
	}
	var errs []error
	for i, r := range rules {
		if err := checkRule(r); err != nil {
			errs = append(errs, fmt.Errorf("adaptive: rule %d (%s): %w", i+1, r.Note, err))
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RecoverAfter <= 0 {
		cfg.RecoverAfter = DefaultRecoverAfter
	}
	if cfg.RecoverStep == 0 {
		cfg.RecoverStep = DefaultRecoverStep
	}
	if cfg.MinFactor == 0 {
		cfg.MinFactor = DefaultMinFactor
	}
	if cfg.Cooldown <= 0 {
		cfg.Cooldown = DefaultCooldown
	}
	if !(cfg.RecoverStep > 1) || math.IsInf(cfg.RecoverStep, 0) {
		errs = append(errs, fmt.Errorf("adaptive: recover step %v: want a number above 1", cfg.RecoverStep))
	}
	if !(cfg.MinFactor > 0 && cfg.MinFactor <= 1) {
		errs = append(errs, fmt.Errorf("adaptive: min factor %v: want a number in (0, 1]", cfg.MinFactor))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Engine{
		rules:   append([]Rule(nil), rules...),
		cfg:     cfg,
		log:     log,
		pairs:   map[pairKey]*pair{},
		changes: map[ChangeKey]int{},
	}, nil
}

// checkRule reports what makes a rule unusable.
func checkRule(r Rule) error {
	if r.Code == 0 && r.Enhanced == "" && r.Pattern == nil {
		return errors.New("needs a code, an enhanced code or a pattern")
	}
	if r.Code != 0 && r.Code != 4 && r.Code != 5 && (r.Code < 400 || r.Code > 599) {
		return fmt.Errorf("code %d: want 4, 5 or 400–599", r.Code)
	}
	if r.Action.For <= 0 {
		return fmt.Errorf("%s for %v: want a positive duration", r.Action.Kind, r.Action.For)
	}
	switch r.Action.Kind {
	case Throttle:
		if !(r.Action.Factor > 0 && r.Action.Factor < 1) {
			return fmt.Errorf("throttle factor %v: want a number between 0 and 1", r.Action.Factor)
		}
	case SuspendPair, SuspendSource:
	default:
		return fmt.Errorf("action %s: want throttle, suspend_pair or suspend_source", r.Action.Kind)
	}
	return nil
}

// Observe takes a failed delivery's reply from provider to source and applies
// the first matching rule to the pair; it reports whether a limit or a
// suspension changed. A reply repeated within Cooldown of the change it caused
// changes nothing but keeps the throttle from recovering. Replies outside 4yz
// and 5yz are ignored. enhanced may be "" when the text opens with it.
func (e *Engine) Observe(source, provider string, code int, enhanced, text string) (changed bool) {
	if code < 400 || code > 599 {
		return false
	}
	enhanced = enhancedOf(enhanced, text)
	r := Match(e.rules, provider, code, enhanced, text)
	if r == nil {
		return false
	}
	now := e.cfg.Now()
	reply := replyText(code, enhanced, text)

	e.mu.Lock()
	var out []Change
	p := e.pairLocked(source, provider)
	out = e.settleLocked(source, provider, p, now, out)
	p.bad++
	mk := func(kind ChangeKind, pr string, until time.Time) Change {
		return Change{Time: now, Source: source, Provider: pr, Kind: kind,
			RateFactor: p.rate, ConnFactor: p.conn, Until: until, Note: r.Note, Reply: reply}
	}
	cool := e.cfg.Cooldown
	switch a := r.Action; a.Kind {
	case Throttle:
		lowered := false
		if a.Target != Connections && now.Sub(p.rateLow) >= cool {
			if f := max(e.cfg.MinFactor, p.rate*a.Factor); f < p.rate {
				p.rate, lowered = f, true
			}
			p.rateLow = now
		}
		if a.Target != Rate && now.Sub(p.connLow) >= cool {
			if f := max(e.cfg.MinFactor, p.conn*a.Factor); f < p.conn {
				p.conn, lowered = f, true
			}
			p.connLow = now
		}
		if p.rate < 1 || p.conn < 1 {
			if t := now.Add(max(a.For, e.cfg.RecoverAfter)); t.After(p.recoverAt) {
				p.recoverAt = t
			}
		}
		if lowered {
			out = e.recordLocked(p, mk(ChangeThrottle, provider, time.Time{}), out)
		}
	case SuspendPair:
		if until := now.Add(a.For); suspend(p, now, until, cool) {
			out = e.recordLocked(p, mk(ChangeSuspendPair, provider, until), out)
		}
	case SuspendSource:
		s := e.pairLocked(source, AllProviders)
		out = e.settleLocked(source, AllProviders, s, now, out)
		if until := now.Add(a.For); suspend(s, now, until, cool) {
			c := mk(ChangeSuspendSource, AllProviders, until)
			c.RateFactor, c.ConnFactor = 1, 1
			out = e.recordLocked(s, c, out)
		}
	}
	e.mu.Unlock()

	e.emit(out)
	for _, c := range out {
		if c.Kind == ChangeThrottle || c.Kind == ChangeSuspendPair || c.Kind == ChangeSuspendSource {
			return true
		}
	}
	return false
}

// suspend starts or lengthens p's suspension to until, unless it started
// within cool (a burst of replies in flight); it reports whether it did.
func suspend(p *pair, now, until time.Time, cool time.Duration) bool {
	if p.suspendedUntil.After(now) && now.Sub(p.suspendedAt) < cool {
		return false
	}
	if !until.After(p.suspendedUntil) {
		return false
	}
	p.suspendedUntil, p.suspendedAt = until, now
	return true
}

// ObserveSuccess marks a clean reply (a delivery accepted) for the pair. It
// counts for `providers ls`; recovery itself needs only the absence of
// matching replies, so an idle pair recovers too.
func (e *Engine) ObserveSuccess(source, provider string) {
	now := e.cfg.Now()
	e.mu.Lock()
	p := e.pairs[pairKey{source, provider}]
	if p == nil { // a pair never judged: nothing to keep
		e.mu.Unlock()
		return
	}
	out := e.settleLocked(source, provider, p, now, nil)
	p.clean++
	e.mu.Unlock()
	e.emit(out)
}

// Limits returns the pair's limits in force, base with rate and connections
// scaled by the pair's factors (connections at least 1; zero stays
// unlimited), and the suspension holding the pair, if any (the later of the
// pair's and the source's).
func (e *Engine) Limits(source, provider string, base Limits) (Limits, Hold) {
	now := e.cfg.Now()
	var out []Change
	lim, hold := base, Hold{}
	e.mu.Lock()
	if p := e.pairs[pairKey{source, provider}]; p != nil {
		out = e.settleLocked(source, provider, p, now, out)
		if lim.Rate > 0 {
			lim.Rate *= p.rate
		}
		if lim.Connections > 0 {
			lim.Connections = max(1, int(float64(lim.Connections)*p.conn))
		}
		if p.suspendedUntil.After(now) {
			hold = Hold{Scope: HoldPair, Until: p.suspendedUntil, Note: p.last.Note}
		}
	}
	if s := e.pairs[pairKey{source, AllProviders}]; s != nil {
		out = e.settleLocked(source, AllProviders, s, now, out)
		if s.suspendedUntil.After(now) && s.suspendedUntil.After(hold.Until) {
			hold = Hold{Scope: HoldSource, Until: s.suspendedUntil, Note: s.last.Note}
		}
	}
	e.mu.Unlock()
	e.emit(out)
	return lim, hold
}

// holdAt returns the suspension holding the pair at now, without changing state.
func (e *Engine) holdAt(source, provider string, now time.Time) Hold {
	e.mu.Lock()
	defer e.mu.Unlock()
	var h Hold
	if p := e.pairs[pairKey{source, provider}]; p != nil && p.suspendedUntil.After(now) {
		h = Hold{Scope: HoldPair, Until: p.suspendedUntil, Note: p.last.Note}
	}
	if s := e.pairs[pairKey{source, AllProviders}]; s != nil && s.suspendedUntil.After(now) && s.suspendedUntil.After(h.Until) {
		h = Hold{Scope: HoldSource, Until: s.suspendedUntil, Note: s.last.Note}
	}
	return h
}

// State returns every pair the engine has judged and every source it has
// suspended (Provider AllProviders), by source then provider, for
// `providers ls` and the Prometheus gauges.
func (e *Engine) State() []PairState {
	now := e.cfg.Now()
	var out []Change
	e.mu.Lock()
	rows := make([]PairState, 0, len(e.pairs))
	for k, p := range e.pairs {
		out = e.settleLocked(k.source, k.provider, p, now, out)
		rows = append(rows, PairState{
			Source: k.source, Provider: k.provider,
			RateFactor: p.rate, ConnFactor: p.conn,
			SuspendedUntil: p.suspendedUntil, RecoverAt: p.recoverAt,
			Bad: p.bad, Clean: p.clean, Last: p.last,
		})
	}
	e.mu.Unlock()
	e.emit(out)
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Source != rows[j].Source {
			return rows[i].Source < rows[j].Source
		}
		return rows[i].Provider < rows[j].Provider
	})
	return rows
}

// Changes returns how many changes of each kind each pair has had (a copy).
func (e *Engine) Changes() map[ChangeKey]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := make(map[ChangeKey]int, len(e.changes))
	for k, v := range e.changes {
		m[k] = v
	}
	return m
}

// pairLocked returns the state of (source, provider), made at factor 1.
func (e *Engine) pairLocked(source, provider string) *pair {
	k := pairKey{source, provider}
	p := e.pairs[k]
	if p == nil {
		p = &pair{rate: 1, conn: 1}
		e.pairs[k] = p
	}
	return p
}

// settleLocked brings p to now: a suspension past its end ends, and a lowered
// factor steps up by RecoverStep for each clean period passed since recoverAt,
// each step its own change at the time it fell due.
func (e *Engine) settleLocked(source, provider string, p *pair, now time.Time, out []Change) []Change {
	if !p.suspendedUntil.IsZero() && !now.Before(p.suspendedUntil) {
		kind := ChangeResumePair
		if provider == AllProviders {
			kind = ChangeResumeSource
		}
		c := Change{Time: p.suspendedUntil, Source: source, Provider: provider, Kind: kind,
			RateFactor: p.rate, ConnFactor: p.conn}
		p.suspendedUntil, p.suspendedAt = time.Time{}, time.Time{}
		out = e.recordLocked(p, c, out)
	}
	for (p.rate < 1 || p.conn < 1) && !p.recoverAt.IsZero() && !now.Before(p.recoverAt) {
		p.rate = min(1, p.rate*e.cfg.RecoverStep)
		p.conn = min(1, p.conn*e.cfg.RecoverStep)
		c := Change{Time: p.recoverAt, Source: source, Provider: provider, Kind: ChangeRecover,
			RateFactor: p.rate, ConnFactor: p.conn}
		p.recoverAt = p.recoverAt.Add(e.cfg.RecoverAfter)
		out = e.recordLocked(p, c, out)
	}
	if p.rate >= 1 && p.conn >= 1 {
		p.recoverAt = time.Time{}
	}
	return out
}

// recordLocked makes c p's last change, counts it and queues it for emit.
func (e *Engine) recordLocked(p *pair, c Change, out []Change) []Change {
	if c.Note == "" && c.Reply == "" { // recover and resume name the cause they undo
		c.Note, c.Reply = p.last.Note, p.last.Reply
	}
	p.last = c
	p.clean = 0
	e.changes[ChangeKey{c.Source, c.Provider, c.Kind}]++
	return append(out, c)
}

// emit logs each change (warn for a suspension, info otherwise) and hands it
// to OnChange; it runs outside the lock.
func (e *Engine) emit(out []Change) {
	for _, c := range out {
		ev := e.log.Info()
		if c.Kind == ChangeSuspendPair || c.Kind == ChangeSuspendSource {
			ev = e.log.Warn()
		}
		ev = ev.Str("source", c.Source).Str("provider", c.Provider).Str("change", c.Kind.String()).
			Float64("rate_factor", c.RateFactor).Float64("conn_factor", c.ConnFactor)
		if !c.Until.IsZero() {
			ev = ev.Time("until", c.Until)
		}
		ev.Str("rule", c.Note).Str("reply", c.Reply).Msg("adaptive limits changed")
		if e.cfg.OnChange != nil {
			e.cfg.OnChange(c)
		}
	}
}

// replyText writes a reply as one line for logs and `providers ls`: code,
// enhanced code (unless the text opens with it), text; addresses masked,
// at most maxReply bytes.
func replyText(code int, enhanced, text string) string {
	text = strings.Join(strings.Fields(text), " ")
	s := strconv.Itoa(code)
	if strings.HasPrefix(text, s) {
		s = ""
	}
	if enhanced != "" && !strings.Contains(text, enhanced) {
		s = strings.TrimSpace(s + " " + enhanced)
	}
	s = address.MaskText(strings.TrimSpace(s + " " + text))
	if len(s) > maxReply {
		cut := maxReply
		for cut > 0 && s[cut]&0xC0 == 0x80 { // not inside a UTF-8 sequence
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
