package mta

// Provider-aware shaping (issue 12). In mx mode, once a recipient domain's
// MX hosts are known, Config.Providers names its provider (a site when no
// rule matches, so domains behind the same unlisted MX hosts share one) and
// the limits of mail from the source ("" until sources exist) to it:
//
//   - connections: open connections to the provider, idle pooled ones
//     included, at most Limits.Connections; a delivery that needs a new
//     connection while the provider is at its limit closes an idle one of the
//     provider's (for another MX host) or waits for one to close;
//   - rate: messages a second to the provider, waited for when short
//     (≤ maxThrottleWait), else handed back with RetryAt like Config.Rates;
//   - messages per connection: a connection is closed after that many.
//
// These apply on top of the per-domain limits. Connections stay pooled per
// MX host (and TLS policy and address), so one connection carries the mail
// of every domain behind the same MX host.
//
// With Config.Adaptive, every 4yz or 5yz reply of an attempt (greeting, EHLO,
// MAIL, RCPT, DATA) is handed to Engine.Observe for (source, provider) and
// every accepted message to ObserveSuccess; the limits in force are
// Engine.Limits of the shaped ones. A Hold (the pair or the source
// suspended) returns a temporary error with RetryAt at the hold's end before
// any connection: no attempt is spent.

import (
	"context"
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/postwarden/postwarden/mta/adaptive"
	"github.com/postwarden/postwarden/mta/providers"
)

// StageHold is a delivery refused because adaptive throttling suspended
// the source for the provider (or for every provider); see RetryAt.
const StageHold = "hold"

// DefaultSource is the sending source until sources exist: the default address.
const DefaultSource = ""

// shaper is the Sender's per-(source, provider) state; its zero value is ready.
type shaper struct {
	mu    sync.Mutex
	gates map[string]*gate // source + "\x00" + provider → open connections
	rates map[string]*rate.Limiter
}

// shape is what one delivery is shaped by.
type shape struct {
	source, provider string
	limits           providers.Limits // in force (after adaptive)
	gate             *gate
	stop             context.Context
}

// gate counts the open connections of one (source, provider) pair against a
// limit that may change between calls (adaptive factors).
type gate struct {
	refs  int // deliveries shaped by it now; guarded by shaper.mu
	mu    sync.Mutex
	open  int
	wake  chan struct{} // closed and replaced when a connection closes
	limit int           // the limit last asked for
}

// tryTake takes a connection slot when fewer than limit are open.
func (g *gate) tryTake(limit int) (bool, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.limit = limit
	if limit <= 0 || g.open < limit {
		g.open++
		return true, nil
	}
	if g.wake == nil {
		g.wake = make(chan struct{})
	}
	return false, g.wake
}

// give returns a slot and wakes the waiters.
func (g *gate) give() {
	g.mu.Lock()
	g.open--
	g.signalLocked()
	g.mu.Unlock()
}

// signal wakes the waiters: a connection of the pair was pooled, and a
// waiter for its MX host may take it.
func (g *gate) signal() {
	g.mu.Lock()
	g.signalLocked()
	g.mu.Unlock()
}

// signalLocked wakes the waiters; the caller holds g.mu.
func (g *gate) signalLocked() {
	if g.wake != nil {
		close(g.wake)
		g.wake = nil
	}
}

// count returns the number of open connections.
func (g *gate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// shapeOf finds the provider of rt's MX hosts and the limits in force from
// source to it; nil when no table is configured or rt is not from MX (relay,
// routes). A hold is returned as a *DeliveryError with RetryAt.
func (s *Sender) shapeOf(stop context.Context, e *envelope, rt *route) (*shape, *DeliveryError) {
	t := s.cfg.Providers
	if len(rt.mx) == 0 {
		return nil, nil // relay or route: the default address, no provider
	}
	var p providers.Provider
	if t != nil {
		p = t.Match(rt.mx)
	}
	e.provider = p.Name
	if derr := s.pickSource(e, p.Name); derr != nil {
		return nil, derr
	}
	if t == nil {
		return nil, nil
	}
	source := e.sourceName()
	base := t.Shaping(e.rcpt.Domain, p)
	lim := base
	if eng := s.cfg.Adaptive; eng != nil {
		al, hold := eng.Limits(source, p.Name, adaptive.Limits{Rate: base.Rate, Connections: base.Connections,
			MessagesPerConnection: base.MessagesPerConnection})
		if hold.Held() {
			return nil, &DeliveryError{Temp: true, Stage: StageHold, NotBefore: hold.Until,
				Message: fmt.Sprintf("adaptive: sending to %s suspended (%s) until %s: %s", p.Name, hold.Scope,
					hold.Until.UTC().Format(time.RFC3339), hold.Note)}
		}
		lim = providers.Limits{Rate: al.Rate, Connections: al.Connections, MessagesPerConnection: al.MessagesPerConnection}
	}
	key := source + "\x00" + p.Name
	s.shaper.mu.Lock()
	if s.shaper.gates == nil {
		s.shaper.gates, s.shaper.rates = map[string]*gate{}, map[string]*rate.Limiter{}
	}
	g := s.shaper.gates[key]
	if g == nil {
		s.pruneShaperLocked()
		g = &gate{}
		s.shaper.gates[key] = g
	}
	g.refs++
	s.shaper.mu.Unlock()
	return &shape{source: source, provider: p.Name, limits: lim, gate: g, stop: stop}, nil
}

// unshape ends a delivery's use of its shape.
func (s *Sender) unshape(sh *shape) {
	if sh == nil {
		return
	}
	s.shaper.mu.Lock()
	sh.gate.refs--
	s.shaper.mu.Unlock()
}

// pruneShaperLocked drops, once there are many, the gates no delivery and
// no connection holds and the rate limiters that are full (a fresh one is
// the same); the caller holds shaper.mu.
func (s *Sender) pruneShaperLocked() {
	if len(s.shaper.gates) >= limiterPruneAt {
		for k, g := range s.shaper.gates {
			if g.refs == 0 && g.count() == 0 {
				delete(s.shaper.gates, k)
			}
		}
	}
	if len(s.shaper.rates) >= limiterPruneAt {
		now := s.now()
		for k, l := range s.shaper.rates {
			if l.TokensAt(now) >= float64(l.Burst()) {
				delete(s.shaper.rates, k)
			}
		}
	}
}

// providerLimiter returns the pair's rate limiter set to r, or nil when r is unlimited.
func (s *Sender) providerLimiter(sh *shape) *rate.Limiter {
	r := sh.limits.Rate
	if r <= 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		return nil
	}
	key := sh.source + "\x00" + sh.provider
	s.shaper.mu.Lock()
	defer s.shaper.mu.Unlock()
	l := s.shaper.rates[key]
	if l == nil {
		s.pruneShaperLocked()
		l = rate.NewLimiter(rate.Limit(r), max(1, int(math.Ceil(r))))
		s.shaper.rates[key] = l
	} else if float64(l.Limit()) != r {
		now := s.now()
		l.SetLimitAt(now, rate.Limit(r))
		l.SetBurstAt(now, max(1, int(math.Ceil(r))))
	}
	return l
}

// throttleProvider waits for the pair's rate like throttle does for a domain's.
func (s *Sender) throttleProvider(ctx, stop context.Context, sh *shape) *DeliveryError {
	if sh == nil {
		return nil
	}
	return s.waitLimiter(ctx, stop, s.providerLimiter(sh), "provider "+sh.provider)
}

// dialShaped dials like dial, holding one of the provider's connection
// slots for the connection's life: at the limit it takes a connection to
// the same destination pooled meanwhile (pooled true), closes an idle
// connection of the provider's to another host, or waits for either.
func (s *Sender) dialShaped(ctx context.Context, e *envelope, host, addr, remote, key, policy string) (c *conn, pooled bool, derr *DeliveryError) {
	sh := e.shape
	if sh == nil {
		c, derr = s.dial(ctx, e.src, e.id, host, addr, remote, key, policy, true)
		return c, false, derr
	}
	for {
		ok, wake := sh.gate.tryTake(sh.limits.Connections)
		if ok {
			break
		}
		if c := s.take(key); c != nil {
			return c, true, nil
		}
		if s.evictIdle(sh.gate) {
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, false, temporary(StageConnect, remote, fmt.Errorf("wait for a connection slot of %s: %w", sh.provider, ctx.Err()))
		case <-sh.stop.Done():
			if ctx.Err() != nil {
				return nil, false, temporary(StageConnect, remote, fmt.Errorf("wait for a connection slot of %s: %w", sh.provider, ctx.Err()))
			}
			return nil, false, stopped("wait for a connection slot of "+sh.provider, s.now())
		}
	}
	c, derr = s.dial(ctx, e.src, e.id, host, addr, remote, key, policy, true)
	if derr != nil {
		sh.gate.give()
		return nil, false, derr
	}
	c.slot = sh.gate
	c.max = sh.limits.MessagesPerConnection
	return c, false, nil
}

// evictIdle closes the longest idle pooled connection holding a slot of g;
// it reports whether there was one.
func (s *Sender) evictIdle(g *gate) bool {
	s.mu.Lock()
	var victim *conn
	for _, list := range s.idle {
		for _, c := range list {
			if c.slot == g && (victim == nil || c.idleSince.Before(victim.idleSince)) {
				victim = c
			}
		}
	}
	if victim == nil {
		s.mu.Unlock()
		return false
	}
	s.unpoolLocked(victim)
	s.mu.Unlock()
	victim.quit()
	return true
}

// unpoolLocked removes c from the idle pool; the caller holds s.mu.
func (s *Sender) unpoolLocked(c *conn) {
	list := s.idle[c.key]
	for i, x := range list {
		if x == c {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.idle, c.key)
	} else {
		s.idle[c.key] = list
	}
	if c.timer != nil {
		c.timer.Stop()
	}
}

// freeSlot gives back the provider connection slot c holds, once.
func (c *conn) freeSlot() {
	if g := c.slot; g != nil {
		c.slot = nil
		g.give()
	}
}

// observe hands a failed attempt's reply to the adaptive engine.
func (s *Sender) observe(e *envelope, derr *DeliveryError) {
	if s.cfg.Adaptive == nil || e.shape == nil || derr == nil || derr.Code < 400 || derr.Code >= 600 {
		return
	}
	s.cfg.Adaptive.Observe(e.shape.source, e.shape.provider, derr.Code, derr.Enhanced, derr.Message)
}

// observeSuccess tells the adaptive engine a message was accepted.
func (s *Sender) observeSuccess(e *envelope) {
	if s.cfg.Adaptive == nil || e.shape == nil {
		return
	}
	s.cfg.Adaptive.ObserveSuccess(e.shape.source, e.shape.provider)
}

// Pair is a sending source and a provider.
type Pair struct{ Source, Provider string }

// ProviderConns returns the open connections (busy and idle) by source and
// provider, for `providers ls`.
func (s *Sender) ProviderConns() map[Pair]int {
	s.shaper.mu.Lock()
	defer s.shaper.mu.Unlock()
	out := map[Pair]int{}
	for k, g := range s.shaper.gates {
		src, name, _ := cut(k)
		if n := g.count(); n > 0 {
			out[Pair{src, name}] += n
		}
	}
	return out
}

// cut splits a pair key into source and provider.
func cut(k string) (string, string, bool) {
	for i := 0; i < len(k); i++ {
		if k[i] == 0 {
			return k[:i], k[i+1:], true
		}
	}
	return "", k, false
}

// mxNames returns the host names of host:port entries.
func mxNames(hosts []string) []string {
	out := make([]string, 0, len(hosts))
	for _, hp := range hosts {
		h, _, err := net.SplitHostPort(hp)
		if err != nil {
			h = hp
		}
		out = append(out, h)
	}
	return out
}
