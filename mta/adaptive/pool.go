package adaptive

import "time"

// Pool filters a source pool by the engine's suspensions. Weights and
// stickiness are the queue's: it passes the sources in its order of preference.
type Pool struct{ e *Engine }

// Pool returns the engine's pool filter.
func (e *Engine) Pool() Pool { return Pool{e} }

// Choose returns the first of sources not suspended for provider at now
// (neither the pair nor the source); ok is false when the whole pool is held,
// and then the campaign's messages for that provider wait (Until says how long).
func (p Pool) Choose(sources []string, provider string, now time.Time) (source string, ok bool) {
	for _, s := range sources {
		if !p.e.holdAt(s, provider, now).Held() {
			return s, true
		}
	}
	return "", false
}

// Usable returns the sources of the pool that may send to provider at now, in
// the given order.
func (p Pool) Usable(sources []string, provider string, now time.Time) []string {
	var r []string
	for _, s := range sources {
		if !p.e.holdAt(s, provider, now).Held() {
			r = append(r, s)
		}
	}
	return r
}

// Until returns when the first of the pool's sources may send to provider
// again: now when one may already (or the pool is empty), otherwise the
// earliest end of their suspensions (a retry time for the held messages).
func (p Pool) Until(sources []string, provider string, now time.Time) time.Time {
	var first time.Time
	for _, s := range sources {
		h := p.e.holdAt(s, provider, now)
		if !h.Held() {
			return now
		}
		if first.IsZero() || h.Until.Before(first) {
			first = h.Until
		}
	}
	if first.IsZero() {
		return now
	}
	return first
}
