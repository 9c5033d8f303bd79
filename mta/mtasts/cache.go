package mtasts

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// MaxPolicySize is the largest policy file accepted (RFC 8461 §3.3 lets senders limit it).
const MaxPolicySize = 64 << 10

// Resolver looks up TXT records; *net.Resolver satisfies it.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// HostResolver finds a host's addresses; *net.Resolver satisfies it.
type HostResolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Config configures a Cache; zero values take the defaults noted.
type Config struct {
	Resolver Resolver // default net.DefaultResolver
	// HostResolver, when set, finds the policy host's addresses for the
	// default HTTP client, so policy fetches ask the same DNS as the rest of
	// delivery (delivery.resolver); nil: the system's. Not used with HTTPClient.
	HostResolver HostResolver
	HTTPClient   *http.Client     // policy fetches (copied; redirects are never followed); default http.DefaultTransport
	Timeout      time.Duration    // whole policy fetch, when HTTPClient has none (default 30s)
	Recheck      time.Duration    // how often a cached policy's TXT id is looked up again (default 1m)
	NegativeTTL  time.Duration    // how long "no policy" is remembered for a domain (default 5m)
	Now          func() time.Time // clock (default time.Now)
}

// Cache fetches policies on demand and keeps them in memory until max_age;
// safe for concurrent use. Lookups for one domain run one at a time.
type Cache struct {
	cfg    Config
	client *http.Client
	log    zerolog.Logger

	mu      sync.Mutex
	entries map[string]*entry
}

// entry is the state of one domain; lock (a one-slot channel) guards its fields.
type entry struct {
	lock     chan struct{}
	pol      *Policy   // last fetched policy, nil when none
	expires  time.Time // pol is valid before this
	checked  time.Time // when the TXT id was last looked up
	negUntil time.Time // pol == nil: no lookup before this
	negErr   error     // why there is no policy (nil: no TXT record)
}

// pruneAt is the entry count above which stale entries are dropped.
const pruneAt = 4096

// New returns an empty Cache.
func New(cfg Config, log zerolog.Logger) *Cache {
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Recheck <= 0 {
		cfg.Recheck = time.Minute
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 5 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client := &http.Client{}
	if cfg.HostResolver != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DialContext = DialVia(cfg.HostResolver, &net.Dialer{Timeout: cfg.Timeout})
		client.Transport = tr
	}
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		client = &c
	}
	if client.Timeout == 0 {
		client.Timeout = cfg.Timeout
	}
	// RFC 8461 §3.3: HTTP 3xx redirects MUST NOT be followed.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Cache{cfg: cfg, client: client, log: log, entries: map[string]*entry{}}
}

// DialVia returns a DialContext for an http.Transport that finds the host's
// addresses with r and dials them in turn with d, keeping the port. TLS still
// verifies the certificate against the host name of the URL.
func DialVia(r HostResolver, d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("mtasts: dial %s: %w", addr, err)
		}
		ips := []string{host}
		if net.ParseIP(host) == nil {
			if ips, err = r.LookupHost(ctx, host); err != nil {
				return nil, fmt.Errorf("mtasts: look up %s: %w", host, err)
			}
		}
		var errs []error
		for _, ip := range ips {
			c, err := d.DialContext(ctx, network, net.JoinHostPort(ip, port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, fmt.Errorf("mtasts: dial %s: %w", addr, errors.Join(errs...))
	}
}

// Get returns the policy of domain (lower-case ASCII, no trailing dot), or nil
// when it has none. A non-nil error says why no fresh policy could be had
// (lookup or fetch failure) and is for logging: the policy returned with it,
// if any, is a still-valid cached one (RFC 8461 §5), and nil means deliver as
// though the domain had no policy.
func (c *Cache) Get(ctx context.Context, domain string) (*Policy, error) {
	e := c.entry(domain)
	select {
	case e.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-e.lock }()

	now := c.cfg.Now()
	valid := e.pol != nil && now.Before(e.expires)
	if valid && now.Sub(e.checked) < c.cfg.Recheck {
		return e.pol, nil
	}
	if !valid && now.Before(e.negUntil) {
		return nil, e.negErr
	}
	noPolicy := func(err error) (*Policy, error) {
		e.pol, e.negUntil, e.negErr = nil, now.Add(c.cfg.NegativeTTL), err
		return nil, err
	}

	txts, err := c.cfg.Resolver.LookupTXT(ctx, "_mta-sts."+domain)
	var id string
	if err == nil {
		id, err = ParseRecords(txts)
	} else {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			err = ErrNoRecord
		} else {
			err = fmt.Errorf("mtasts: look up _mta-sts.%s: %w", domain, err)
		}
	}
	if err != nil {
		if valid {
			// The cached policy stands until it expires, record or not (RFC 8461 §5.1).
			e.checked = now
			return e.pol, nil
		}
		if errors.Is(err, ErrNoRecord) {
			return noPolicy(nil)
		}
		return noPolicy(err)
	}
	if valid && e.pol.ID == id {
		e.checked = now
		return e.pol, nil
	}
	pol, err := c.fetch(ctx, domain)
	if err != nil {
		if valid {
			e.checked = now
			return e.pol, err
		}
		return noPolicy(err)
	}
	pol.ID = id
	e.pol, e.expires, e.checked, e.negErr = pol, now.Add(pol.MaxAge), now, nil
	c.log.Debug().Str("domain", domain).Str("id", id).Str("mode", pol.Mode).Strs("mx", pol.MX).
		Dur("max_age", pol.MaxAge).Msg("MTA-STS policy fetched")
	return pol, nil
}

// entry returns the entry of domain, creating it (and pruning stale ones).
func (c *Cache) entry(domain string) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[domain]; e != nil {
		return e
	}
	if len(c.entries) >= pruneAt {
		now := c.cfg.Now()
		for d, e := range c.entries {
			select {
			case e.lock <- struct{}{}:
				if (e.pol == nil || !now.Before(e.expires)) && !now.Before(e.negUntil) {
					delete(c.entries, d)
				}
				<-e.lock
			default: // in use
			}
		}
	}
	e := &entry{lock: make(chan struct{}, 1)}
	c.entries[domain] = e
	return e
}

// fetch GETs and parses https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 §3.3).
func (c *Cache) fetch(ctx context.Context, domain string) (*Policy, error) {
	u := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("mtasts: fetch %s: %w", u, err)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mtasts: fetch %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mtasts: fetch %s: HTTP status %s", u, resp.Status)
	}
	// The media type should be text/plain (§3.3) but is not checked: a
	// mislabelled policy is still the domain's word, and ignoring it would
	// only weaken delivery security.
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("mtasts: fetch %s: %w", u, err)
	}
	if len(body) > MaxPolicySize {
		return nil, fmt.Errorf("mtasts: fetch %s: policy larger than %d bytes", u, MaxPolicySize)
	}
	pol, err := Parse(body)
	if err != nil {
		return nil, fmt.Errorf("%w (from %s)", err, u)
	}
	return pol, nil
}
