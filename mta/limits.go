package mta

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"

	"github.com/postwarden/postwarden/suppression/address"
)

// maxThrottleWait is the longest a Deliver call waits for its destination's
// rate limit; beyond it the message is handed back with RetryAt.
const maxThrottleWait = 2 * time.Second

// limiterPruneAt is the limiter count above which idle (full) limiters are dropped.
const limiterPruneAt = 4096

// limiter returns the rate limiter of a recipient domain, or nil when unlimited.
func (s *Sender) limiter(domain string) *rate.Limiter {
	r, ok := s.rates[domain]
	if !ok {
		r = s.rates["default"]
	}
	if r <= 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.limiters[domain]; l != nil {
		return l
	}
	now := s.now()
	if len(s.limiters) >= limiterPruneAt {
		for d, l := range s.limiters {
			if l.TokensAt(now) >= float64(l.Burst()) { // idle: a fresh limiter is the same
				delete(s.limiters, d)
			}
		}
	}
	l := rate.NewLimiter(rate.Limit(r), max(1, int(math.Ceil(r))))
	s.limiters[domain] = l
	return l
}

// throttle waits for the domain's rate limit when the wait is short
// (≤ maxThrottleWait); a longer wait is not taken: the reservation is given
// back and the error carries RetryAt, so no worker sits on a slow domain.
// A wait that stop ends gives the reservation back as well: nothing was sent.
func (s *Sender) throttle(ctx, stop context.Context, domain string) *DeliveryError {
	return s.waitLimiter(ctx, stop, s.limiter(domain), domain)
}

// waitLimiter is throttle's wait on l (nil: unlimited) for what (a domain, a provider).
func (s *Sender) waitLimiter(ctx, stop context.Context, l *rate.Limiter, domain string) *DeliveryError {
	if l == nil {
		return nil
	}
	now := s.now()
	r := l.ReserveN(now, 1) // burst ≥ 1: always OK
	d := r.DelayFrom(now)
	if d <= 0 {
		return nil
	}
	if d > maxThrottleWait {
		r.CancelAt(now)
		return &DeliveryError{Temp: true, Stage: StageThrottle, NotBefore: now.Add(d),
			Message: fmt.Sprintf("rate limit of %s (%g/s): next slot in %v", domain, float64(l.Limit()), d.Round(time.Millisecond))}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.CancelAt(s.now())
		return temporary(StageThrottle, "", fmt.Errorf("wait for the rate limit of %s: %w", domain, ctx.Err()))
	case <-stop.Done():
		now := s.now()
		r.CancelAt(now)
		if ctx.Err() != nil { // both ended: the context's error wins
			return temporary(StageThrottle, "", fmt.Errorf("wait for the rate limit of %s: %w", domain, ctx.Err()))
		}
		return stopped("wait for the rate limit of "+domain, now)
	}
}

// Circuit breaker per recipient domain. A domain's circuit opens when a
// delivery to it fails with 421 (RFC 5321 §3.8: the server is closing the
// channel, typically overloaded or rate limiting us), or after
// circuitThreshold deliveries in a row fail with 4yz or connection errors.
// While open, deliveries are deferred without dialling until the backoff
// ends: 1m the first time, doubled at each re-open up to 30m, ±10% jitter so
// that the domains opened together don't all probe together. Then one probe
// delivery goes through (half-open): success, or any 5yz answer (the server
// is up, it just refused that message), closes the circuit; another failure
// re-opens it with the doubled backoff. A delivery that succeeds, or is
// answered with 5yz, resets the count of failures.
const (
	circuitThreshold = 5
	circuitBase      = time.Minute
	circuitMax       = 30 * time.Minute
	circuitProbeWait = 30 * time.Second // RetryAt given while a probe is in flight
)

// circuit is the failure state of one recipient domain; guarded by Sender.mu.
type circuit struct {
	fails   int           // consecutive failures while closed
	open    bool          // open or half-open
	until   time.Time     // open: refuse before this
	backoff time.Duration // of the current opening
	probing bool          // half-open: the probe is in flight
}

// admit checks the domain's circuit: an error while it is open; probe is
// true when this delivery is the half-open probe and must be settled.
func (s *Sender) admit(domain string) (probe bool, derr *DeliveryError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.circuits[domain]
	if c == nil || !c.open {
		return false, nil
	}
	now := s.now()
	switch {
	case now.Before(c.until):
		return false, circuitOpen(domain, c.until)
	case c.probing:
		return false, circuitOpen(domain, now.Add(circuitProbeWait))
	}
	c.probing = true
	return true, nil
}

// circuitOpen is the error of a delivery refused by an open circuit.
func circuitOpen(domain string, until time.Time) *DeliveryError {
	return &DeliveryError{Temp: true, Stage: StageCircuit, NotBefore: until,
		Message: "circuit open for " + domain + " after failures; next try at " + until.UTC().Format(time.RFC3339)}
}

// settle records the result of a delivery in the domain's circuit.
func (s *Sender) settle(ctx context.Context, e *envelope, probe bool, derr *DeliveryError) {
	domain := e.rcpt.Domain
	failed, reason := false, ""
	switch {
	case derr == nil:
	case !derr.Temp && isSessionStage(derr.Stage):
		// A 5yz: the destination is up and answering.
	case derr.Temp && isSessionStage(derr.Stage) && ctx.Err() == nil:
		failed = true
		if e.saw421 || derr.Code == 421 {
			reason = "421"
		}
	default:
		// Neither success nor the destination's failure: our own
		// refusal, cancellation, DNS or bad input. A probe is handed back.
		if probe {
			s.mu.Lock()
			if c := s.circuits[domain]; c != nil {
				c.probing = false
			}
			s.mu.Unlock()
		}
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.circuits[domain]
	if !failed {
		if c != nil {
			delete(s.circuits, domain)
			if c.open {
				s.log.Warn().Str("domain", domain).Str("reason", "delivery succeeded").Msg("circuit closed")
			}
		}
		return
	}
	if c == nil {
		c = &circuit{}
		s.circuits[domain] = c
	}
	switch {
	case probe:
		c.probing = false
		s.openCircuit(domain, c, min(2*c.backoff, circuitMax), "probe failed: "+derr.Error())
	case c.open:
		// Started before the circuit opened; it is open already.
	default:
		c.fails++
		if reason == "421" {
			s.openCircuit(domain, c, circuitBase, "421 from the destination: "+derr.Error())
		} else if c.fails >= circuitThreshold {
			s.openCircuit(domain, c, circuitBase, fmt.Sprintf("%d failures in a row, last: %s", c.fails, derr.Error()))
		}
	}
}

// openCircuit opens c for backoff ±10%; the caller holds s.mu.
func (s *Sender) openCircuit(domain string, c *circuit, backoff time.Duration, reason string) {
	c.open, c.fails, c.backoff = true, 0, backoff
	jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(backoff))
	c.until = s.now().Add(backoff + jitter)
	s.log.Warn().Str("domain", domain).Str("reason", maskText(reason)).Time("until", c.until).
		Dur("backoff", backoff).Msg("circuit open")
}

// isSessionStage reports whether stage is part of talking to the destination.
func isSessionStage(stage string) bool {
	switch stage {
	case StageConnect, StageEHLO, StageSTARTTLS, StageMail, StageRcpt, StageData:
		return true
	}
	return false
}

// logRefused logs a delivery the Sender refused without an attempt.
func (s *Sender) logRefused(e *envelope, derr *DeliveryError) {
	s.log.Debug().Str("queue_id", e.id).Str("rcpt", address.Mask(e.rcpt.String())).Str("stage", derr.Stage).
		Time("retry_at", derr.NotBefore).Msg("delivery refused for now")
}
