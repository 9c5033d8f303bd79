package providers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

// Defaults of ResolverConfig.
const (
	// DefaultMinTTL keeps a record with a tiny TTL from being asked for
	// every message.
	DefaultMinTTL = time.Minute
	// DefaultMaxTTL bounds how long a changed MX goes unseen.
	DefaultMaxTTL = 6 * time.Hour
	// DefaultTimeout bounds one query (and its TCP retry).
	DefaultTimeout = 5 * time.Second
	// maxCached is where expired entries are swept out of the cache.
	maxCached = 100_000
)

// ErrNoDomain is wrapped by Resolve's error when the domain does not exist
// (NXDOMAIN, RFC 1035 §4.1.1 RCODE 3).
var ErrNoDomain = errors.New("providers: no such domain")

// ResolverConfig says where MX lookups go and how long answers are kept.
type ResolverConfig struct {
	// Server is host:port of the DNS server to ask (delivery.resolver);
	// "" takes the first nameserver of /etc/resolv.conf.
	Server string
	// MinTTL and MaxTTL clamp a record's TTL into how long it is cached.
	MinTTL, MaxTTL time.Duration
	// Timeout bounds one query.
	Timeout time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// MX is one mail exchanger of a domain.
type MX struct {
	Host string `json:"host"` // lower case, no trailing dot
	Pref uint16 `json:"pref"`
}

// Destination is what a domain's MX lookup says: its hosts and provider.
type Destination struct {
	Domain   string
	MX       []MX          // by preference, then host name
	NullMX   bool          // RFC 7505 "MX 0 .": the domain takes no mail; Provider is zero
	Implicit bool          // no MX record: the domain itself is the host (RFC 5321 §5.1)
	TTL      time.Duration // the smallest TTL served (for no MX: the SOA's negative TTL)
	Expires  time.Time     // when the cached answer goes, TTL clamped to [MinTTL, MaxTTL]
	Cached   bool          // this answer came from the cache
	Provider Provider
}

// Resolver looks up a domain's MX hosts, caching each answer for its TTL,
// and matches them to a provider of its Table. It is safe for concurrent use.
type Resolver struct {
	cfg   ResolverConfig
	table *Table
	log   zerolog.Logger

	mu       sync.Mutex
	cache    map[string]Destination // domain → answer, Expires set
	inflight map[string]*lookupCall // domain → the lookup under way
}

// lookupCall is one lookup that callers asking for the same domain share.
type lookupCall struct {
	done chan struct{}
	d    Destination
	err  error
}

// NewResolver returns a Resolver that asks cfg.Server and matches with t.
func NewResolver(cfg ResolverConfig, t *Table, log zerolog.Logger) (*Resolver, error) {
	if t == nil {
		return nil, errors.New("providers: resolver needs a table")
	}
	if cfg.Server == "" {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(cc.Servers) == 0 {
			return nil, fmt.Errorf("providers: no DNS server: set delivery.resolver (read /etc/resolv.conf: %v)", err)
		}
		cfg.Server = net.JoinHostPort(cc.Servers[0], cc.Port)
	}
	if _, port, err := net.SplitHostPort(cfg.Server); err != nil || port == "" {
		return nil, fmt.Errorf("providers: DNS server %q is not host:port", cfg.Server)
	}
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = DefaultMinTTL
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	if cfg.MaxTTL < cfg.MinTTL {
		return nil, fmt.Errorf("providers: max TTL %v is below min TTL %v", cfg.MaxTTL, cfg.MinTTL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Resolver{cfg: cfg, table: t, log: log, cache: map[string]Destination{}, inflight: map[string]*lookupCall{}}, nil
}

// Server returns the host:port the resolver asks.
func (r *Resolver) Server() string { return r.cfg.Server }

// Table returns the resolver's table.
func (r *Resolver) Table() *Table { return r.table }

// Resolve returns domain's MX hosts and provider, from the cache while the
// answer's TTL lasts. Concurrent calls for one domain share one query.
// Errors (timeouts, SERVFAIL, NXDOMAIN) are not cached.
func (r *Resolver) Resolve(ctx context.Context, domain string) (Destination, error) {
	domain = normHost(domain)
	if domain == "" {
		return Destination{}, errors.New("providers: empty domain")
	}
	now := r.cfg.Now()
	r.mu.Lock()
	if d, ok := r.cache[domain]; ok && now.Before(d.Expires) {
		r.mu.Unlock()
		d.Cached = true
		d.MX = append([]MX(nil), d.MX...)
		return d, nil
	}
	// One query per domain at a time: the others wait for its answer.
	if c, ok := r.inflight[domain]; ok {
		r.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return Destination{}, fmt.Errorf("providers: look up MX %s: %w", domain, ctx.Err())
		}
		if c.err != nil && ctx.Err() == nil && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
			return r.Resolve(ctx, domain) // the caller that asked gave up, not this one
		}
		if c.err != nil {
			return Destination{}, c.err
		}
		d := c.d
		d.Cached = true
		d.MX = append([]MX(nil), d.MX...)
		return d, nil
	}
	c := &lookupCall{done: make(chan struct{})}
	r.inflight[domain] = c
	r.mu.Unlock()

	d, err := r.lookup(ctx, domain)
	if err == nil {
		d.Expires = now.Add(min(max(d.TTL, r.cfg.MinTTL), r.cfg.MaxTTL))
	}
	r.mu.Lock()
	delete(r.inflight, domain)
	if err == nil {
		if len(r.cache) >= maxCached {
			for k, e := range r.cache {
				if !now.Before(e.Expires) {
					delete(r.cache, k)
				}
			}
		}
		r.cache[domain] = d
	}
	r.mu.Unlock()
	c.d, c.err = d, err
	close(c.done)
	if err != nil {
		return Destination{}, err
	}
	r.log.Debug().Str("domain", domain).Str("provider", d.Provider.Name).Dur("ttl_ms", d.TTL).Msg("mx looked up")
	d.MX = append([]MX(nil), d.MX...)
	return d, nil
}

// lookup asks the server for domain's MX records, over TCP when the UDP
// answer is truncated (RFC 7766 §5).
func (r *Resolver) lookup(ctx context.Context, domain string) (Destination, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(domain), dns.TypeMX)
	q.SetEdns0(1232, false) // RFC 9715's safe UDP size
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	c := &dns.Client{Net: "udp", Timeout: r.cfg.Timeout}
	in, _, err := c.ExchangeContext(ctx, q, r.cfg.Server)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, q, r.cfg.Server)
	}
	if err != nil {
		return Destination{}, fmt.Errorf("providers: look up MX %s at %s: %w", domain, r.cfg.Server, err)
	}
	switch in.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return Destination{}, fmt.Errorf("look up MX %s at %s: %w", domain, r.cfg.Server, ErrNoDomain)
	default:
		return Destination{}, fmt.Errorf("providers: look up MX %s at %s: %s", domain, r.cfg.Server, dns.RcodeToString[in.Rcode])
	}
	d := Destination{Domain: domain}
	first := true
	for _, rr := range in.Answer {
		mx, ok := rr.(*dns.MX)
		if !ok {
			continue // a CNAME on the way to the MX records
		}
		d.MX = append(d.MX, MX{Host: normHost(mx.Mx), Pref: mx.Preference})
		if ttl := time.Duration(mx.Hdr.Ttl) * time.Second; first || ttl < d.TTL {
			d.TTL, first = ttl, false
		}
	}
	if len(d.MX) == 0 {
		// RFC 5321 §5.1: no MX, the domain is its own host, implicit
		// preference 0. RFC 2308 §5: the negative answer lives for the
		// SOA's TTL, capped by its MINIMUM.
		d.Implicit = true
		d.MX = []MX{{Host: domain}}
		for _, rr := range in.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				d.TTL = time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
			}
		}
	}
	sort.SliceStable(d.MX, func(i, j int) bool {
		if d.MX[i].Pref != d.MX[j].Pref {
			return d.MX[i].Pref < d.MX[j].Pref
		}
		return d.MX[i].Host < d.MX[j].Host
	})
	if len(d.MX) == 1 && d.MX[0].Host == "" { // RFC 7505 §3: "MX 0 ."
		d.NullMX = true
		return d, nil
	}
	hosts := make([]string, len(d.MX))
	for i, m := range d.MX {
		hosts[i] = m.Host
	}
	d.Provider = r.table.Match(hosts)
	return d, nil
}

// Hosts returns the MX host names of d, most preferred first.
func (d Destination) Hosts() []string {
	out := make([]string, len(d.MX))
	for i, m := range d.MX {
		out[i] = m.Host
	}
	return out
}

// String names d's hosts and provider, for logs.
func (d Destination) String() string {
	if d.NullMX {
		return d.Domain + ": null MX"
	}
	return d.Domain + " → " + strings.Join(d.Hosts(), ",") + " → " + d.Provider.Name
}
