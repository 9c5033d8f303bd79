package mta

// Egress sources and pools (issue 12). A source is an address of this host
// that outbound connections bind to, and the name said from it in EHLO. A
// pool is a weighted list of sources; each message names its campaign's pool
// and, after its first attempt, the source it used.
//
// Choice, per message in mx mode once the provider is known: the message's
// own source first (retries keep their source, so a provider sees one
// sender), then the pool's sources in the order of weighted rendezvous
// hashing of the provider's name — so each provider sticks to one source of
// the pool while it has room, and a provider's traffic builds one IP's
// reputation with it; over many providers (every unlisted MX host set is a
// provider of its own) the weights share the traffic. A source is skipped
// while adaptive throttling holds it for the provider or its warm-up cap of
// the day is spent; when every source of the pool is skipped the message
// waits (no attempt) until the first hold ends or the next UTC day.
//
// Relay, routes and capture use the system's default address: sources shape
// traffic to mailbox providers, which only MX delivery reaches.

import (
	"fmt"
	"hash/fnv"
	"math"
	"net"
	"sort"
	"time"

	"github.com/postwarden/postwarden/mta/warmup"
)

// Source is an egress address of this host and the EHLO name said from it.
type Source struct {
	Name    string // referred to by pools, warm-up and logs
	Address string // IPv4 or IPv6 address to bind outbound connections to
	EHLO    string // name said in EHLO from it (default Config.Hostname); its PTR should match
}

// PoolMember is a source of a pool and its weight (0 is taken as 1).
type PoolMember struct {
	Source string
	Weight int
}

// DefaultPool is the pool of messages that name none.
const DefaultPool = "default"

// egress is a configured source, ready to dial from.
type egress struct {
	name, ehlo string
	dialer     net.Dialer
}

// prepareSources checks the sources and pools of cfg and builds their dialers.
func prepareSources(cfg Config) (map[string]*egress, map[string][]PoolMember, error) {
	if len(cfg.Sources) == 0 {
		if len(cfg.Pools) > 0 {
			return nil, nil, fmt.Errorf("mta: pools need sources")
		}
		return nil, nil, nil
	}
	srcs := make(map[string]*egress, len(cfg.Sources))
	all := make([]PoolMember, 0, len(cfg.Sources))
	for i, sc := range cfg.Sources {
		if sc.Name == "" {
			return nil, nil, fmt.Errorf("mta: source %d: no name", i+1)
		}
		if srcs[sc.Name] != nil {
			return nil, nil, fmt.Errorf("mta: source %s: named twice", sc.Name)
		}
		ip := net.ParseIP(sc.Address)
		if ip == nil {
			return nil, nil, fmt.Errorf("mta: source %s: address %q is not an IP address", sc.Name, sc.Address)
		}
		ehlo := sc.EHLO
		if ehlo == "" {
			ehlo = cfg.Hostname
		}
		srcs[sc.Name] = &egress{name: sc.Name, ehlo: ehlo,
			dialer: net.Dialer{Timeout: cfg.DialTimeout, LocalAddr: &net.TCPAddr{IP: ip}}}
		all = append(all, PoolMember{Source: sc.Name, Weight: 1})
	}
	pools := map[string][]PoolMember{}
	for name, members := range cfg.Pools {
		if len(members) == 0 {
			return nil, nil, fmt.Errorf("mta: pool %s: no sources", name)
		}
		for _, m := range members {
			if srcs[m.Source] == nil {
				return nil, nil, fmt.Errorf("mta: pool %s: no source named %q", name, m.Source)
			}
			if m.Weight < 0 {
				return nil, nil, fmt.Errorf("mta: pool %s: source %s: weight %d is negative", name, m.Source, m.Weight)
			}
		}
		pools[name] = members
	}
	if _, ok := pools[DefaultPool]; !ok {
		pools[DefaultPool] = all // no default pool: every source, alike
	}
	for _, name := range cfg.Warmup.Sources() {
		if srcs[name] == nil {
			return nil, nil, fmt.Errorf("mta: warmup: no source named %q", name)
		}
	}
	return srcs, pools, nil
}

// order returns the names of pool's sources in the order they are tried for
// provider: weighted rendezvous hashing (highest -w/ln(u) first), so the
// first is stable for a provider and each source is first for a share of
// providers proportional to its weight.
func order(members []PoolMember, provider string) []string {
	type scored struct {
		name  string
		score float64
	}
	sc := make([]scored, len(members))
	for i, m := range members {
		h := fnv.New64a()
		h.Write([]byte(provider))
		h.Write([]byte{0})
		h.Write([]byte(m.Source))
		u := (float64(mix(h.Sum64())>>11) + 0.5) / (1 << 53) // uniform in (0, 1)
		w := float64(max(m.Weight, 1))
		sc[i] = scored{m.Source, -w / math.Log(u)}
	}
	sort.SliceStable(sc, func(i, j int) bool { return sc[i].score > sc[j].score })
	out := make([]string, len(sc))
	for i, s := range sc {
		out[i] = s.name
	}
	return out
}

// mix is splitmix64's finalizer: FNV's high bits barely change with the
// last byte, and the score needs all 53 of them.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// pickSource chooses e's source for provider (see the top of this file) and
// reserves its warm-up room; without sources it is the default address. A
// pool that may not send returns a StageHold error with RetryAt.
func (s *Sender) pickSource(e *envelope, provider string) *DeliveryError {
	if len(s.sources) == 0 {
		return nil
	}
	pool := e.pool
	if pool == "" {
		pool = DefaultPool
	}
	members, ok := s.pools[pool]
	if !ok {
		if _, seen := s.warned.LoadOrStore("pool\x00"+pool, true); !seen {
			s.log.Warn().Str("pool", pool).Msg("no such pool, sending through the default pool")
		}
		members = s.pools[DefaultPool]
	}
	cands := order(members, provider)
	if s.sources[e.sticky] != nil {
		cands = append([]string{e.sticky}, cands...)
	}
	now := s.now()
	var wait time.Time
	var why string
	for _, name := range cands {
		if eng := s.cfg.Adaptive; eng != nil {
			if h := eng.Pool().Until([]string{name}, provider, now); h.After(now) {
				if wait.IsZero() || h.Before(wait) {
					wait, why = h, "source "+name+" suspended for "+provider
				}
				continue
			}
		}
		if ok, next := s.warm.Take(name, provider, now); !ok {
			if wait.IsZero() || next.Before(wait) {
				wait, why = next, "warm-up cap of source "+name+" for "+provider+" reached for today"
			}
			continue
		}
		e.src = s.sources[name]
		e.warmAt = now
		return nil
	}
	return &DeliveryError{Temp: true, Stage: StageHold, NotBefore: wait,
		Message: fmt.Sprintf("no source of pool %s may send to %s now (%s) until %s", pool, provider, why,
			wait.UTC().Format(time.RFC3339))}
}

// unpick gives back the warm-up room pickSource reserved for a delivery that failed.
func (s *Sender) unpick(e *envelope) {
	if e.src != nil {
		s.warm.Give(e.src.name, e.provider, e.warmAt)
	}
}

// sourceName returns the name of e's source, DefaultSource when none.
func (e *envelope) sourceName() string {
	if e.src == nil {
		return DefaultSource
	}
	return e.src.name
}

// WarmupState returns the warm-up of every scheduled source at now, for `providers ls`.
func (s *Sender) WarmupState() []warmup.SourceState { return s.warm.State(s.now()) }
