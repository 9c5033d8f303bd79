// Package mta hands one message at a time to the next hop: a capture folder,
// a relay, or the recipient domain's MX hosts.
//
// Contract of Deliver: it returns nil only once the next hop owns the message
// (250 after DATA, RFC 5321 §6.1, or the capture file is written, fsynced and
// renamed into place). Every failure is a *DeliveryError, temporary unless it
// says otherwise: 5yz replies, a null MX and unusable input are permanent;
// 4yz replies, network errors, timeouts and dropped connections are temporary.
// A temporary error whose RetryAt is set (rate limit, open circuit) means no
// attempt was made: the message should simply wait until then.
// Before sending, line endings are made CRLF (a lone CR or LF becomes CRLF)
// and the message is DKIM-signed when the Sender has a signer with a key for
// the From domain; without such a key it goes out unsigned after one warning
// per domain.
//
// Destinations (mx mode): Routes, then the MX hosts in preference order, then
// the domain's own address records (RFC 5321 §5.1); every address of every
// host is tried before the delivery is deferred, and a 421 from one host
// moves on to the next. A null MX (RFC 7505) bounces at once.
//
// TLS follows Config.TLSPolicy per recipient domain (none, opportunistic,
// required, verify) and, with Config.MTASTS, the domain's MTA-STS policy
// (RFC 8461): in enforce mode only MX hosts the policy names are used, over
// verified TLS. Opportunistic sessions fall back to plain text when the
// handshake fails; required and verify ones defer instead.
//
// Idle connections are kept per destination address and TLS policy, reused
// (with RSET first only when the last transaction did not end in an accepted
// DATA), and closed after IdleTimeout or MaxMessagesPerConnection
// messages. At most ConcurrencyPerDomain sessions run per recipient domain,
// and at most Rates[domain] messages a second start. A domain that answers
// 421, or fails 5 times running with 4yz or connection errors, has its
// circuit opened: for a backoff (1m doubling to 30m, ±10%) its messages are
// deferred without dialling, then one probe is let through. Logs carry masked
// addresses only, never key material.
package mta

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/postwarden/postwarden/mta/adaptive"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/mtasts"
	"github.com/postwarden/postwarden/mta/providers"
	"github.com/postwarden/postwarden/mta/warmup"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/atomicfile"
)

// Modes of Config.Mode.
const (
	ModeCapture = "capture" // write each message to CaptureDir/<id>.eml
	ModeRelay   = "relay"   // send everything to Config.Relay
	ModeMX      = "mx"      // send to the recipient domain's MX hosts (or Config.Routes)
)

// TLS policies of Config.TLSPolicy, weakest first.
const (
	TLSNone          = "none"          // never STARTTLS
	TLSOpportunistic = "opportunistic" // STARTTLS when offered, unverified; plain text if it fails (RFC 7435)
	TLSRequired      = "required"      // STARTTLS must be offered and succeed, unverified; else defer
	TLSVerify        = "verify"        // STARTTLS with a certificate valid for the host name; else defer
)

// Resolver is the DNS a Sender uses; *net.Resolver satisfies it.
type Resolver interface {
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupHost(ctx context.Context, host string) ([]string, error)
	LookupTXT(ctx context.Context, name string) ([]string, error) // MTA-STS records
}

// Config configures a Sender; zero values take the defaults noted.
type Config struct {
	Hostname             string            // EHLO name (default: os.Hostname)
	Mode                 string            // "capture", "relay" or "mx"
	CaptureDir           string            // capture mode: folder of <id>.eml files
	Relay                string            // relay mode: "smtp://host:port" (port default 25)
	Routes               map[string]string // mx mode: recipient domain → "host:port", checked before MX lookup
	ConcurrencyPerDomain int               // sessions at once per recipient domain (default 4)
	SMTPPort             int               // port of MX hosts (default 25)
	DialTimeout          time.Duration     // TCP connect (default 30s)
	CommandTimeout       time.Duration     // each SMTP command (default 5m)
	IdleTimeout          time.Duration     // idle pooled connections are closed after it (default 30s)
	TLS                  *tls.Config       // base STARTTLS config (RootCAs for verify, client certificates, versions)
	Resolver             Resolver          // default net.DefaultResolver, or DNSServer's
	DNSServer            string            // host:port of the DNS server to ask when Resolver is nil ("": the system's)

	MaxMessagesPerConnection int // then the connection is closed (default 100)
	// TLSPolicy is the STARTTLS policy by recipient domain (TLSNone,
	// TLSOpportunistic, TLSRequired, TLSVerify); key "default" applies to the
	// others (default TLSOpportunistic). Verification uses TLS.RootCAs, or the
	// system roots, and the host name of the MX, route or relay.
	TLSPolicy map[string]string
	// MTASTS looks up, caches and applies recipient domains' MTA-STS
	// policies (RFC 8461) in mx mode (not to routes or the relay).
	MTASTS       bool
	MTASTSClient *http.Client // MTA-STS policy fetches (default: a client resolving through Resolver; redirects are never followed)
	// Rates is messages per second by recipient domain; key "default"
	// applies to the others; 0 or absent is unlimited. Bursts of up to
	// ceil(rate) are allowed.
	Rates map[string]float64
	// EnvelopeFrom, when set, gives the MAIL FROM address of message id sent
	// by from (VERP, for instance); it is not called for the null
	// reverse-path, which stays null (RFC 5321 §4.5.5).
	EnvelopeFrom func(id, from string) string
	// Providers, when set, shapes mx-mode mail by the recipient's provider
	// found from its MX hosts (connections, rate, messages per connection;
	// see shaping.go); nil: per-domain limits only.
	Providers *providers.Table
	// Adaptive, when set with Providers, learns from replies and lowers or
	// suspends the limits of (source, provider) pairs.
	Adaptive *adaptive.Engine
	// MXResolver, when set, answers mx mode's MX lookups from its cache for
	// the records' TTL (the provider table's resolver); nil: Resolver, uncached.
	MXResolver *providers.Resolver
	// Sources are the egress addresses mx-mode mail binds to, Pools the
	// weighted lists of them a message's pool names (see sources.go); none:
	// the system's default address.
	Sources []Source
	Pools   map[string][]PoolMember
	// Warmup, when set, caps the daily messages of its scheduled sources per
	// provider; the caller restores it from what the queue kept.
	Warmup *warmup.Tracker
}

// Sender delivers messages; safe for concurrent use.
type Sender struct {
	cfg    Config
	signer *dkim.Signer
	log    zerolog.Logger
	relay  string            // relay mode: host:port
	routes map[string]string // normalised domain → host:port
	dialer net.Dialer

	mu     sync.Mutex
	idle   map[string][]*conn // server name and dialled address → idle connections
	sems   map[string]*sem    // recipient domain → session slots
	closed bool

	warned sync.Map // domains already warned about for a missing DKIM key

	tlsPolicy map[string]string  // normalised domain or "default" → policy
	rates     map[string]float64 // normalised domain or "default" → messages/s
	sts       *mtasts.Cache      // nil unless Config.MTASTS
	now       func() time.Time   // clock of circuits and rate limits (tests replace it)
	limiters  map[string]*rate.Limiter
	circuits  map[string]*circuit     // domains with recent failures; guarded by mu
	shaper    shaper                  // per (source, provider) connections and rates
	sources   map[string]*egress      // by name; nil without Config.Sources
	pools     map[string][]PoolMember // by name, DefaultPool always there with sources
	warm      *warmup.Tracker         // nil: no warm-up caps
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// Defaults of Config; the server config (configs) takes the same.
const (
	DefaultConcurrencyPerDomain     = 4
	DefaultSMTPPort                 = 25 // RFC 5321 §4.5.4.2
	DefaultMaxMessagesPerConnection = 100
)

// New checks cfg, applies defaults and returns a Sender; signer may be nil (no signing).
func New(cfg Config, signer *dkim.Signer, log zerolog.Logger) (*Sender, error) {
	if cfg.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("mta: hostname not set and os.Hostname failed: %w", err)
		}
		cfg.Hostname = h
	}
	cfg = withDefaults(cfg)
	resolver, err := resolverFor(cfg.Resolver, cfg.DNSServer)
	if err != nil {
		return nil, err
	}
	cfg.Resolver = resolver
	s := &Sender{
		cfg:      cfg,
		signer:   signer,
		log:      log,
		dialer:   net.Dialer{Timeout: cfg.DialTimeout},
		idle:     map[string][]*conn{},
		sems:     map[string]*sem{},
		now:      time.Now,
		limiters: map[string]*rate.Limiter{},
		circuits: map[string]*circuit{},
	}
	if s.relay, err = prepareMode(cfg); err != nil {
		return nil, err
	}
	if s.sources, s.pools, err = prepareSources(cfg); err != nil {
		return nil, err
	}
	s.warm = cfg.Warmup
	if s.routes, err = parseRoutes(cfg.Routes); err != nil {
		return nil, err
	}
	if s.tlsPolicy, err = parseTLSPolicies(cfg.TLSPolicy); err != nil {
		return nil, err
	}
	if s.rates, err = parseRates(cfg.Rates); err != nil {
		return nil, err
	}
	if cfg.MTASTS {
		s.sts = mtasts.New(mtasts.Config{Resolver: cfg.Resolver, HostResolver: cfg.Resolver, HTTPClient: cfg.MTASTSClient},
			log.With().Str("subsystem", "mta-sts").Logger())
	}
	return s, nil
}

// withDefaults is cfg with each unset (zero or negative) limit and timeout
// set to its default.
func withDefaults(cfg Config) Config {
	if cfg.ConcurrencyPerDomain <= 0 {
		cfg.ConcurrencyPerDomain = DefaultConcurrencyPerDomain
	}
	if cfg.SMTPPort <= 0 {
		cfg.SMTPPort = DefaultSMTPPort
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = 5 * time.Minute // RFC 5321 §4.5.3.2
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.MaxMessagesPerConnection <= 0 {
		cfg.MaxMessagesPerConnection = DefaultMaxMessagesPerConnection
	}
	return cfg
}

// resolverFor is r when set, else a resolver that asks dnsServer (host:port)
// when that is set, else the system's.
func resolverFor(r Resolver, dnsServer string) (Resolver, error) {
	if r != nil {
		return r, nil
	}
	if dnsServer == "" {
		return net.DefaultResolver, nil
	}
	if _, port, err := net.SplitHostPort(dnsServer); err != nil || port == "" {
		return nil, fmt.Errorf("mta: DNS server %q is not host:port", dnsServer)
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsServer)
	}}, nil
}

// prepareMode checks cfg's mode: capture makes its folder, relay returns the
// relay's host:port.
func prepareMode(cfg Config) (relay string, err error) {
	switch cfg.Mode {
	case ModeCapture:
		if cfg.CaptureDir == "" {
			return "", errors.New("mta: capture mode needs capture_dir")
		}
		if err := os.MkdirAll(cfg.CaptureDir, 0o700); err != nil {
			return "", fmt.Errorf("mta: create capture dir %s: %w", cfg.CaptureDir, err)
		}
		return "", nil
	case ModeRelay:
		return relayAddr(cfg.Relay)
	case ModeMX:
		return "", nil
	default:
		return "", fmt.Errorf("mta: unknown mode %q (want capture, relay or mx)", cfg.Mode)
	}
}

// relayAddr is the host:port of a relay URL smtp://host[:port], port 25 by default.
func relayAddr(relay string) (string, error) {
	u, err := url.Parse(relay)
	if err != nil || u.Scheme != "smtp" || u.Hostname() == "" || u.Path != "" || u.User != nil {
		return "", fmt.Errorf("mta: relay %q: want smtp://host:port", relay)
	}
	port := u.Port()
	if port == "" {
		port = "25"
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// parseRoutes checks the configured routes (domain → host:port) and keys
// them by normalised domain.
func parseRoutes(routes map[string]string) (map[string]string, error) {
	out := map[string]string{}
	for d, hp := range routes {
		nd, err := address.NormalizeDomain(d)
		if err != nil {
			return nil, fmt.Errorf("mta: route %q: %w", d, err)
		}
		if _, port, err := net.SplitHostPort(hp); err != nil || port == "" {
			return nil, fmt.Errorf("mta: route for %s: %q is not host:port", d, hp)
		}
		out[nd] = hp
	}
	return out, nil
}

// parseTLSPolicies checks the configured TLS policies and keys them by
// domainKey, with "default" opportunistic unless set.
func parseTLSPolicies(policies map[string]string) (map[string]string, error) {
	out := map[string]string{"default": TLSOpportunistic}
	for d, p := range policies {
		switch p {
		case TLSNone, TLSOpportunistic, TLSRequired, TLSVerify:
		default:
			return nil, fmt.Errorf("mta: TLS policy %q for %s: want none, opportunistic, required or verify", p, d)
		}
		nd, err := domainKey(d)
		if err != nil {
			return nil, fmt.Errorf("mta: TLS policy for %q: %w", d, err)
		}
		out[nd] = p
	}
	return out, nil
}

// parseRates checks the configured rates (messages per second, finite and
// not negative) and keys them by domainKey.
func parseRates(rates map[string]float64) (map[string]float64, error) {
	out := map[string]float64{}
	for d, r := range rates {
		if r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
			return nil, fmt.Errorf("mta: rate for %s: %v is not a number of messages per second", d, r)
		}
		nd, err := domainKey(d)
		if err != nil {
			return nil, fmt.Errorf("mta: rate for %q: %w", d, err)
		}
		out[nd] = r
	}
	return out, nil
}

// domainKey normalises a domain key of a per-domain map; "default" stays.
func domainKey(d string) (string, error) {
	if d == "default" {
		return d, nil
	}
	return address.NormalizeDomain(d)
}

// CapturePath returns the file capture mode writes for queue id.
func (s *Sender) CapturePath(id string) string {
	return NewOutbox(s.cfg.CaptureDir).Path(id)
}

// Deliver normalises, signs and hands body to the next hop for the single
// recipient to; from may be "" (null reverse-path). Errors are *DeliveryError.
// body is neither changed nor kept after Deliver returns: the caller may reuse it.
func (s *Sender) Deliver(ctx context.Context, id, from, to string, body []byte) error {
	// No stop of its own: the waits before the session end with ctx alone,
	// so a cancelled Deliver reports ctx's error, never "stopped".
	return s.DeliverUntil(ctx, context.Background(), id, from, to, body)
}

// DeliverVia is DeliverUntil through a source of pool ("" for the default
// pool), preferring source (the one an earlier attempt of the message used,
// "" for none); it returns the source used and the recipient's provider,
// on failure too when they are known ("" when none applies: capture, relay,
// routes, or no provider table), the server last tried ("host[ip]:port",
// "" before any) and, on success, its reply to the final dot.
func (s *Sender) DeliverVia(ctx, stop context.Context, id, from, to string, body []byte, pool, source string) (usedSource, provider, remote, reply string, err error) {
	e, derr := s.deliver(ctx, stop, id, from, to, body, pool, source)
	if e != nil {
		usedSource, provider, remote, reply = e.sourceName(), e.provider, e.remote, e.reply
	}
	if derr != nil {
		return usedSource, provider, remote, "", derr
	}
	return usedSource, provider, remote, reply, nil
}

// DeliverUntil is Deliver whose waits before the delivery starts (the
// domain's rate limit, a session slot) also end with stop: a stopping queue
// starts no delivery, and a wait must not hold its drain up. A wait stop ended
// returns an error with RetryAt set to now (no attempt); once a session is
// under way only ctx bounds it.
func (s *Sender) DeliverUntil(ctx, stop context.Context, id, from, to string, body []byte) error {
	if _, derr := s.deliver(ctx, stop, id, from, to, body, "", ""); derr != nil {
		return derr
	}
	return nil
}

// deliver is DeliverVia; the envelope (nil when the message never got one)
// says which source and provider it went to.
func (s *Sender) deliver(ctx, stop context.Context, id, from, to string, body []byte, pool, sticky string) (*envelope, *DeliveryError) {
	start := time.Now()
	rcpt, err := address.Parse(to)
	if err != nil {
		return nil, permanent(StageRcpt, fmt.Errorf("recipient: %w", err))
	}
	if from != "" {
		if _, err := address.Parse(from); err != nil {
			return nil, permanent(StageMail, fmt.Errorf("sender: %w", err))
		}
	}
	mailFrom := from
	if from != "" && s.cfg.EnvelopeFrom != nil {
		mailFrom = s.cfg.EnvelopeFrom(id, from)
		if _, err := address.Parse(mailFrom); err != nil {
			return nil, permanent(StageMail, fmt.Errorf("envelope sender of %s: %w", id, err))
		}
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, temporary(StageConnect, "", errors.New("sender closed"))
	}
	if s.cfg.Mode == ModeCapture {
		msg := normalizeCRLF(body)
		head, err := s.sign(msg)
		if err != nil {
			return nil, permanent(StageSign, err)
		}
		return nil, s.capture(id, rcpt, append(head, msg...), start)
	}

	e := &envelope{id: id, from: mailFrom, rcpt: rcpt, body: body, pool: pool, sticky: sticky}
	probe, derr := s.admit(rcpt.Domain)
	if derr != nil {
		s.logRefused(e, derr)
		return e, derr
	}
	derr = s.deliverSMTP(ctx, stop, e)
	s.settle(ctx, e, probe, derr)
	if derr != nil {
		s.unpick(e)
	}
	return e, derr
}

// sign returns the DKIM-Signature fields to send before msg (none without a
// signer); a missing key is logged once per domain and not an error. msg is
// not copied: a 22 KB campaign message would be, once per recipient.
func (s *Sender) sign(msg []byte) ([]byte, error) {
	if s.signer == nil {
		return nil, nil
	}
	head, err := s.signer.Signatures(msg)
	if errors.Is(err, dkim.ErrNoKey) {
		d, _ := dkim.FromDomain(msg)
		if _, seen := s.warned.LoadOrStore(d, true); !seen {
			s.log.Warn().Str("from_domain", d).Msg("no DKIM key for From domain, sending unsigned")
		}
		return nil, nil
	}
	return head, err
}

// capture writes msg to CaptureDir/<id>.eml: temp file, fsync, rename, fsync dir.
func (s *Sender) capture(id string, rcpt address.Address, msg []byte, start time.Time) *DeliveryError {
	if !idPattern.MatchString(id) {
		return permanent(StageCapture, fmt.Errorf("queue id %q: want only letters, digits, '.', '_', '-'", id))
	}
	path := s.CapturePath(id)
	if err := atomicfile.WriteFile(path, msg, 0o600); err != nil {
		return temporary(StageCapture, "", fmt.Errorf("write %s: %w", path, err))
	}
	s.log.Info().Str("queue_id", id).Str("rcpt", address.Mask(rcpt.String())).Str("mode", ModeCapture).
		Str("path", path).Int("size", len(msg)).Dur("duration_ms", time.Since(start)).Msg("delivery attempt")
	return nil
}

// normalizeCRLF turns every lone CR and lone LF into CRLF (RFC 5321 §2.3.8)
// and ends the message with CRLF (RFC 5321 §4.1.1.4).
func normalizeCRLF(b []byte) []byte {
	if crlfOnly(b) {
		return b
	}
	out := make([]byte, 0, len(b)+len(b)/16+2)
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(b) && b[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	if len(out) < 2 || out[len(out)-1] != '\n' {
		out = append(out, '\r', '\n')
	}
	return out
}

// sem bounds the sessions of one recipient domain; refs counts holders and waiters.
type sem struct {
	ch   chan struct{}
	refs int
}

// acquire takes a session slot for domain, or fails when ctx or stop ends first.
func (s *Sender) acquire(ctx, stop context.Context, domain string) (func(), error) {
	s.mu.Lock()
	sm := s.sems[domain]
	if sm == nil {
		sm = &sem{ch: make(chan struct{}, s.cfg.ConcurrencyPerDomain)}
		s.sems[domain] = sm
	}
	sm.refs++
	s.mu.Unlock()
	drop := func() {
		s.mu.Lock()
		if sm.refs--; sm.refs == 0 {
			delete(s.sems, domain)
		}
		s.mu.Unlock()
	}
	select {
	case sm.ch <- struct{}{}:
		return func() { <-sm.ch; drop() }, nil
	case <-ctx.Done():
		drop()
		return nil, ctx.Err()
	case <-stop.Done():
		drop()
		if ctx.Err() != nil { // both ended: the context's error wins
			return nil, ctx.Err()
		}
		return nil, errStopped
	}
}

// portOf formats a port number for net.JoinHostPort.
func portOf(p int) string { return strconv.Itoa(p) }

// crlfOnly reports whether b ends with CRLF and every CR and LF in it is part
// of a CRLF pair, with the vectorised bytes functions instead of a byte loop:
// every LF follows a CR, and there are as many CRs as LFs.
func crlfOnly(b []byte) bool {
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		return false
	}
	lfs := 0
	for rest, off := b, 0; ; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		if off+i == 0 || b[off+i-1] != '\r' {
			return false
		}
		lfs++
		rest, off = rest[i+1:], off+i+1
	}
	return bytes.Count(b, []byte{'\r'}) == lfs
}
