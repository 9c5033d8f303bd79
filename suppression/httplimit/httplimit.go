// Package httplimit says who sent a request to the recipient pages and keeps
// the token buckets their rate limits draw from.
//
// Contract:
//   - The client address is the TCP peer, unless the peer is a trusted proxy:
//     then X-Forwarded-For is walked from the right, skipping trusted proxies,
//     and the first address that is not one is the client. A header from an
//     untrusted peer is never read, so a client cannot choose its own key.
//   - Buckets hold one token bucket per key in bounded memory: a bucket that
//     is full again (idle) is the same as a fresh one and is dropped; past
//     MaxKeys an arbitrary bucket goes, so a flood of distinct keys cannot
//     grow the map.
//   - TakeAll draws one token from each of several buckets or from none: a
//     refused request spends nothing, so a flood cannot drain a bucket it was
//     refused by on behalf of another key.
package httplimit

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Proxies are the networks of reverse proxies whose X-Forwarded-For is
// believed (the server config's http_trusted_proxies, parsed by configs).
type Proxies []netip.Prefix

// trusted reports whether a is one of the proxies.
func (p Proxies) trusted(a netip.Addr) bool {
	for _, n := range p {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// ClientIP returns the address of whoever sent r, in canonical form. Only a
// trusted peer's X-Forwarded-For is read, from the right; the first entry
// that is not a trusted proxy is the client (when every entry is trusted,
// the leftmost is). An entry that does not parse ends the walk at the hop
// that reported it.
func (p Proxies) ClientIP(r *http.Request) string {
	peer, ok := parseHost(r.RemoteAddr)
	if !ok {
		return r.RemoteAddr
	}
	if len(p) == 0 || !p.trusted(peer) {
		return peer.String()
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		h := strings.TrimSpace(hops[i])
		if h == "" {
			continue
		}
		a, ok := parseHost(h)
		if !ok {
			break
		}
		client = a
		if !p.trusted(a) {
			break
		}
	}
	return client.String()
}

// PeerIP returns the IP of a connection's peer address in canonical form,
// as ClientIP does for an untrusted peer (SMTP has no proxies to believe);
// the address's text when it is not an IP, "" for none.
func PeerIP(a net.Addr) string {
	if a == nil {
		return ""
	}
	if ip, ok := parseHost(a.String()); ok {
		return ip.String()
	}
	return a.String()
}

// parseHost reads "ip", "ip:port" or "[ipv6]:port".
func parseHost(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}

// Network returns the /24 (IPv4) or /64 (IPv6) around ip, the unit one
// customer usually holds; ip itself when it does not parse.
func Network(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	bits := 64
	if a.Unmap().Is4() {
		a, bits = a.Unmap(), 24
	}
	p, _ := a.Prefix(bits)
	return p.String()
}

// Rate is one limit: Burst tokens at most, refilled at Limit per second.
// Limit 0 or rate.Inf means no limit; a Burst below 1 refuses everything.
type Rate struct {
	Limit rate.Limit
	Burst int
}

// Per returns n events per d with a burst of burst.
func Per(n float64, d time.Duration, burst int) Rate {
	return Rate{Limit: rate.Limit(n / d.Seconds()), Burst: burst}
}

// PerSecond returns perSecond events a second with a burst of burst; 0 is
// no limit (the server config's "rate: 0").
func PerSecond(perSecond float64, burst int) Rate {
	if perSecond == 0 {
		return Rate{Limit: rate.Inf, Burst: burst}
	}
	return Rate{Limit: rate.Limit(perSecond), Burst: burst}
}

// DefaultMaxKeys bounds a Buckets' map when MaxKeys is 0.
const DefaultMaxKeys = 100_000

// sweepEvery is how often idle buckets are looked for.
const sweepEvery = time.Minute

// Buckets keeps one token bucket per key; safe for concurrent use.
type Buckets struct {
	rate    Rate
	maxKeys int
	mu      sync.Mutex
	m       map[string]*rate.Limiter
	swept   time.Time
}

// NewBuckets returns buckets of rate r holding at most maxKeys keys
// (0: DefaultMaxKeys).
func NewBuckets(r Rate, maxKeys int) *Buckets {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	return &Buckets{rate: r, maxKeys: maxKeys, m: map[string]*rate.Limiter{}}
}

// Len is the number of keys held.
func (b *Buckets) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

// Has reports whether key has a bucket that is not full: it was drawn on
// lately.
func (b *Buckets) Has(key string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.m[key]
	return ok && l.TokensAt(now) < float64(b.rate.Burst)
}

// Allow takes one token for key at now; when there is none, wait is how
// long until there is.
func (b *Buckets) Allow(key string, now time.Time) (ok bool, wait time.Duration) {
	ok, wait, _ = TakeAll(now, Take{B: b, Key: key})
	return ok, wait
}

// limiter returns key's bucket, creating it; b.mu is held.
func (b *Buckets) limiter(key string, now time.Time) *rate.Limiter {
	// A full map is swept at most once a second: under a flood of new keys
	// the arbitrary drop below keeps each request O(1).
	if since := now.Sub(b.swept); since > sweepEvery || len(b.m) >= b.maxKeys && since > time.Second {
		for k, l := range b.m {
			if l.TokensAt(now) >= float64(b.rate.Burst) {
				delete(b.m, k) // full again: the same as a fresh one
			}
		}
		b.swept = now
	}
	l, ok := b.m[key]
	if !ok {
		for k := range b.m {
			if len(b.m) < b.maxKeys {
				break
			}
			delete(b.m, k) // still too many busy keys: drop arbitrary ones
		}
		l = rate.NewLimiter(b.rate.Limit, b.rate.Burst)
		b.m[key] = l
	}
	return l
}

// Take names one bucket of a TakeAll.
type Take struct {
	B    *Buckets // nil or unlimited: always allowed
	Key  string
	Name string // what the limit is, for logs ("mailbox")
}

// TakeAll takes one token from every named bucket, or none: when one is
// empty, the tokens already taken are given back, wait is how long until
// that bucket has one again and by is its Take's Name.
func TakeAll(now time.Time, takes ...Take) (ok bool, wait time.Duration, by string) {
	var done []*rate.Reservation
	undo := func() {
		for _, res := range done {
			res.CancelAt(now)
		}
	}
	for _, t := range takes {
		if t.B == nil || t.B.rate.Limit == 0 || t.B.rate.Limit == rate.Inf {
			continue
		}
		t.B.mu.Lock()
		l := t.B.limiter(t.Key, now)
		res := l.ReserveN(now, 1)
		var d time.Duration
		if !res.OK() {
			d = time.Duration(math.MaxInt64)
		} else if d = res.DelayFrom(now); d > 0 {
			res.CancelAt(now)
		}
		t.B.mu.Unlock()
		if d > 0 {
			undo()
			return false, d, t.Name
		}
		done = append(done, res)
	}
	return true, 0, ""
}

// RetryAfter writes a wait as whole seconds for a Retry-After header
// (RFC 9110 §10.2.3), at least 1 and at most a day.
func RetryAfter(wait time.Duration) string {
	s := int64(math.Ceil(wait.Seconds()))
	switch {
	case s < 1:
		s = 1
	case s > 86400:
		s = 86400
	}
	return fmt.Sprint(s)
}
