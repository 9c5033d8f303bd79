// Package inbound is postwarden's SMTP listener for what comes back:
// bounces, spam complaints and mailto unsubscribes, all addressed to the
// bounce domain.
//
// Contract:
//   - It never relays. RCPT for any other domain gets 550 5.7.1. On the
//     bounce domain it takes only bounce+TOKEN (a VERP address naming a
//     queued message), unsubscribe+TOKEN (a mailto unsubscribe token),
//     postmaster and abuse; a token we did not mint gets 550 5.1.1 at RCPT
//     and so matches nothing.
//   - A bounce or complaint acts on the message its VERP address names: the
//     address suppressed is that message's recipient from the queue, never an
//     address taken from the report's text (reports can lie). Reports sent to
//     postmaster or abuse act only through a VERP address of ours found in
//     them; others are logged and dropped.
//   - A report counts once: a DSN listing many recipients acts on the
//     message its VERP address names through the one group about that
//     message's recipient (bounce.About), and a campaign counts each outcome
//     once per person (Events), so a repeated report changes nothing.
//   - The final 250 to DATA is sent only after every store write it caused
//     has returned (they fsync). If one fails the reply is 451 4.3.0 and the
//     sender retries; the writes are idempotent.
//   - Each client address may hold MaxConnsPerIP connections and start
//     MessageRate messages per second (burst MessageBurst); beyond that it
//     gets 421 4.7.0. All clients together may hold MaxConns connections
//     (then 421 4.7.0 at the greeting) and MaxBytesInFlight bytes of
//     message data in memory (then 452 4.3.1 after the data): memory stays
//     bounded, and every refusal is a 4yz, so the sender retries. A message
//     past its first 64 KiB (or its declared SIZE) reserves MaxMessageBytes
//     at once, so a flood of big messages takes as many as fit and refuses
//     the rest, rather than refusing all of them part-way.
//   - A transient failure answers 4yz (RFC 5321 §4.2.5): a data timeout is
//     421 4.4.2 and closes the connection, a read error 451 4.3.0. No reply
//     carries an error's text (socket addresses).
//   - The bare RCPT TO:<postmaster> is accepted (RFC 5321 §4.5.1), as
//     postmaster@Domain.
//   - Addresses are masked in logs.
//   - In a cluster (Deps.Handover set) a VERP token names the node whose
//     spool holds its queue id (queue ids are unique per node only). A
//     report about another node's message is handed to that node
//     (Handover.Hand) and the 250 waits for the hand-over to be stored;
//     that node applies it with Local.Apply, the path this listener takes.
//     A token that names no node acts here, as on a single node.
package inbound

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// Config configures the listener. Zero fields take the defaults noted.
type Config struct {
	Listen          string        // host:port; required
	Domain          string        // the bounce domain, the only one accepted; required
	Hostname        string        // name in the greeting; default Domain
	MaxMessageBytes int64         // default 10 MiB; larger messages get 552
	MaxRecipients   int           // per message; default 10
	ReadTimeout     time.Duration // default 5m (RFC 5321 §4.5.3.2.7)
	WriteTimeout    time.Duration // default 1m
	MaxConnsPerIP   int           // concurrent connections per client address; default 10
	MaxConns        int           // concurrent connections in all; default 100
	// MaxBytesInFlight caps the message bytes all sessions hold in memory
	// at once; a message that would pass it gets 452 4.3.1. Default 128 MiB.
	MaxBytesInFlight int64
	// MaxLineLength is the longest line taken, in commands and in message
	// data; default 64 KiB (RFC 5321 §4.5.3.1.6 asks senders for 1000,
	// §4.5.3.1 receivers for as few limits as possible).
	MaxLineLength int
	MessageRate   float64 // new messages per second per client address; default 10
	MessageBurst  int     // default 20
}

// Defaults.
const (
	DefaultMaxMessageBytes  = 10 << 20
	DefaultMaxRecipients    = 10
	DefaultReadTimeout      = 5 * time.Minute
	DefaultWriteTimeout     = time.Minute
	DefaultMaxConnsPerIP    = 10
	DefaultMaxConns         = 100
	DefaultMaxBytesInFlight = 128 << 20
	DefaultMaxLineLength    = 64 << 10
	DefaultMessageRate      = 10
	DefaultMessageBurst     = 20
)

// VERPDecoder returns the queue id named by a bounce+TOKEN address and the
// tag of the node that minted it ("" if it names none); *verp.Codec
// satisfies it.
type VERPDecoder interface {
	Route(addr string) (queueID, node string, err error)
}

// Handover takes reports about a message another cluster node sent. Mine
// says whether a token's node tag names this node; Hand returns nil only
// once the reports are stored durably (in the cluster, or on this node's
// disk until the cluster takes them), for node to apply.
type Handover interface {
	Mine(node string) bool
	Hand(node, queueID string, reps []bounce.Report) error
}

// MailtoDecoder checks an unsubscribe+TOKEN local part; *unsubscribe.Tokens satisfies it.
type MailtoDecoder interface {
	ParseMailto(localpart string) (unsubscribe.Claim, error)
}

// BounceSink records a report on queued message queueID and returns the
// message's recipient, list and campaign; Recipient returns the recipient
// alone, changing nothing. Both return an error wrapping ErrUnknownMessage
// when there is no such message.
type BounceSink interface {
	Bounce(queueID string, r bounce.Report) (to, list, campaign string, err error)
	Recipient(queueID string) (to string, err error)
}

// Suppressor adds a suppression entry; *suppression.Store satisfies it.
type Suppressor interface {
	SuppressAddress(addr, list, reason, source, note string) error
}

// Unsubscriber records an unsubscribe exactly as the one-click POST does
// (the claim's list, reason unsubscribed, counted once for the claim's
// campaign); *unsubscribe.Recorder does it.
type Unsubscriber interface {
	Unsubscribe(c unsubscribe.Claim, source string) error
}

// Events counts campaign events (complained, bounced_hard, bounced_soft,
// delayed) once per person per campaign; *queue.Store satisfies it.
type Events interface {
	CountCampaignEvent(campaign, addr, kind string) (bool, error)
}

// Deps are the listener's collaborators. Events is optional; Handover is
// set on a cluster node only.
type Deps struct {
	VERP         VERPDecoder
	Mailto       MailtoDecoder
	Bounces      BounceSink
	Suppressor   Suppressor
	Unsubscriber Unsubscriber
	Events       Events
	Handover     Handover
}

// ErrUnknownMessage is what a BounceSink wraps for a queue id it does not know.
var ErrUnknownMessage = errors.New("inbound: unknown message")

// Server is a running listener.
type Server struct {
	cfg  Config
	deps Deps
	log  zerolog.Logger
	srv  *smtp.Server
	ln   *limitListener

	flight budget        // message bytes held by all sessions
	parse  chan struct{} // parse slots: bounds the parser's copies

	mu     sync.Mutex
	closed bool
	busy   sync.WaitGroup // DATA handlers writing to the stores
	rates  map[string]*ipRate
	swept  time.Time
}

// ipRate is one client address's message limiter.
type ipRate struct {
	lim  *rate.Limiter
	seen time.Time
}

// Start listens on cfg.Listen and serves until Close.
func Start(cfg Config, deps Deps, log zerolog.Logger) (*Server, error) {
	if cfg.Listen == "" {
		return nil, errors.New("inbound: no listen address")
	}
	d, err := address.NormalizeDomain(cfg.Domain)
	if err != nil {
		return nil, fmt.Errorf("inbound: domain %q: %w", cfg.Domain, err)
	}
	cfg.Domain = d
	if deps.VERP == nil || deps.Mailto == nil || deps.Bounces == nil || deps.Suppressor == nil || deps.Unsubscriber == nil {
		return nil, errors.New("inbound: VERP, Mailto, Bounces, Suppressor and Unsubscriber are required")
	}
	if cfg.Hostname == "" {
		cfg.Hostname = cfg.Domain
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if cfg.MaxRecipients <= 0 {
		cfg.MaxRecipients = DefaultMaxRecipients
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.MaxConnsPerIP <= 0 {
		cfg.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if cfg.MessageRate <= 0 {
		cfg.MessageRate = DefaultMessageRate
	}
	if cfg.MessageBurst <= 0 {
		cfg.MessageBurst = DefaultMessageBurst
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxBytesInFlight <= 0 {
		cfg.MaxBytesInFlight = DefaultMaxBytesInFlight
	}
	if cfg.MaxLineLength <= 0 {
		cfg.MaxLineLength = DefaultMaxLineLength
	}
	if cfg.MaxBytesInFlight < cfg.MaxMessageBytes {
		return nil, fmt.Errorf("inbound: MaxBytesInFlight %d is less than MaxMessageBytes %d: no message that size could ever be taken", cfg.MaxBytesInFlight, cfg.MaxMessageBytes)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("inbound: listen %s: %w", cfg.Listen, err)
	}
	s := &Server{cfg: cfg, deps: deps, log: log, rates: map[string]*ipRate{},
		flight: budget{max: cfg.MaxBytesInFlight}, parse: make(chan struct{}, runtime.GOMAXPROCS(0))}
	s.ln = &limitListener{Listener: ln, max: cfg.MaxConns, perIP: cfg.MaxConnsPerIP, hostname: cfg.Hostname,
		domain: cfg.Domain, idle: cfg.ReadTimeout, peek: cfg.MaxLineLength + 2, n: map[string]int{}, log: log}
	srv := smtp.NewServer(backend{s})
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxLineLength = cfg.MaxLineLength
	srv.MaxRecipients = cfg.MaxRecipients
	srv.ReadTimeout = cfg.ReadTimeout
	srv.WriteTimeout = cfg.WriteTimeout
	srv.ErrorLog = errorLog{log}
	s.srv = srv
	go func() {
		if err := srv.Serve(s.ln); err != nil {
			log.Error().Err(err).Msg("inbound listener stopped")
		}
	}()
	log.Info().Str("listen", ln.Addr().String()).Str("domain", cfg.Domain).Msg("inbound SMTP listening")
	return s, nil
}

// Addr is the listener's address (host:port).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops accepting, closes every connection and waits for DATA
// handlers already writing to the stores; a message whose 250 was not sent
// is retried by its sender.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.ln.mu.Lock()
	s.ln.closing = true // closes from now on are immediate
	s.ln.mu.Unlock()
	err := s.srv.Close()
	s.busy.Wait()
	s.ln.shutdown()
	if errors.Is(err, smtp.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// enter registers a DATA handler about to write; false once closing.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.busy.Add(1)
	return true
}

// allow takes one message token of ip's limiter.
func (s *Server) allow(ip string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.swept) > time.Minute { // forget idle clients
		for k, r := range s.rates {
			if now.Sub(r.seen) > 10*time.Minute {
				delete(s.rates, k)
			}
		}
		s.swept = now
	}
	r := s.rates[ip]
	if r == nil {
		r = &ipRate{lim: rate.NewLimiter(rate.Limit(s.cfg.MessageRate), s.cfg.MessageBurst)}
		s.rates[ip] = r
	}
	r.seen = now
	return r.lim.AllowN(now, 1)
}

// Local applies reports that another node handed over to this node's
// messages, through the listener's own path.
type Local struct{ s *Server }

// NewLocal returns the path for handed-over reports; deps needs Bounces and
// Suppressor (Events optional).
func NewLocal(deps Deps, log zerolog.Logger) (*Local, error) {
	if deps.Bounces == nil || deps.Suppressor == nil {
		return nil, errors.New("inbound: Bounces and Suppressor are required")
	}
	deps.Handover = nil // a handed report acts here or nowhere
	return &Local{s: &Server{deps: deps, log: log}}, nil
}

// Apply acts on this node's message queueID through the report of reps
// about its recipient, exactly as when the listener takes it; a message
// this node does not hold is logged and dropped (nil).
func (l *Local) Apply(queueID string, reps []bounce.Report) error {
	return l.s.applyTo(l.s.log, "", queueID, reps)
}

// applyTo acts on message queueID through the one report of reps about its
// recipient: a DSN lists every recipient the remote held, but the VERP
// address names one message (RFC 3464 §2.3: one group per recipient). A
// message of another node (node) is handed to it.
func (s *Server) applyTo(log zerolog.Logger, node, queueID string, reps []bounce.Report) error {
	if h := s.deps.Handover; h != nil && node != "" && !h.Mine(node) {
		if err := h.Hand(node, queueID, reps); err != nil {
			return fmt.Errorf("hand report on %s to node %s: %w", queueID, node, err)
		}
		log.Info().Str("queue_id", queueID).Str("node_tag", node).Int("reports", len(reps)).Msg("inbound report handed to the node that sent the message")
		return nil
	}
	to, err := s.deps.Bounces.Recipient(queueID)
	if errors.Is(err, ErrUnknownMessage) {
		log.Warn().Str("queue_id", queueID).Msg("inbound report for an unknown message dropped")
		return nil
	}
	if err != nil {
		return fmt.Errorf("read recipient of %s: %w", queueID, err)
	}
	rep, ok := bounce.About(reps, to)
	if !ok {
		return nil
	}
	return s.apply(log, queueID, rep)
}

// apply records one report on message queueID and acts on its kind.
func (s *Server) apply(log zerolog.Logger, queueID string, rep bounce.Report) error {
	switch rep.Action {
	case "delivered", "relayed", "expanded": // RFC 3464 §2.3.3: success notices
		log.Info().Str("queue_id", queueID).Str("action", rep.Action).Msg("inbound success notice ignored")
		return nil
	}
	to, list, campaign, err := s.deps.Bounces.Bounce(queueID, rep)
	if errors.Is(err, ErrUnknownMessage) {
		log.Warn().Str("queue_id", queueID).Msg("inbound report for an unknown message dropped")
		return nil
	}
	if err != nil {
		return fmt.Errorf("record bounce of %s: %w", queueID, err)
	}
	ev := log.Info().Str("queue_id", queueID).Str("rcpt", address.Mask(to)).Str("list", list).Str("campaign", campaign).
		Str("kind", rep.Kind).Str("reason", rep.Reason).Str("status", rep.Status).Str("action", rep.Action)
	event := "" // rep.Kind is bounce.Classify's verdict on this recipient's group, the queue's rule too
	switch rep.Kind {
	case bounce.KindHard:
		note := strings.TrimSpace(rep.Status + " " + rep.Diagnostic)
		if err := s.deps.Suppressor.SuppressAddress(to, "", "hard_bounce", "dsn", note); err != nil {
			return fmt.Errorf("suppress hard-bounced recipient of %s: %w", queueID, err)
		}
		event = "bounced_hard"
	case bounce.KindSoft:
		event = "bounced_soft"
		if rep.Action == "delayed" {
			event = "delayed"
		}
	case bounce.KindComplaint:
		if err := s.deps.Suppressor.SuppressAddress(to, "", "complaint", "arf", rep.FeedbackType); err != nil {
			return fmt.Errorf("suppress complaining recipient of %s: %w", queueID, err)
		}
		event = "complained"
	}
	ev.Msg("inbound report recorded")
	s.count(log, campaign, to, event)
	return nil
}

// report handles mail to postmaster or abuse: each report acts through the
// first VERP address of ours it carries, or is dropped.
func (s *Server) report(log zerolog.Logger, reports []bounce.Report) error {
	type route struct{ id, node string }
	var ids []route
	byID := map[route][]bounce.Report{}
	for _, rep := range reports {
		var id route
		for _, v := range rep.VERP {
			if q, n, err := s.deps.VERP.Route(v); err == nil {
				id = route{q, n}
				break
			}
		}
		if id.id == "" {
			log.Info().Str("kind", rep.Kind).Str("rcpt", address.Mask(rep.Recipient)).Msg("inbound report without a VERP address of ours dropped")
			continue
		}
		if byID[id] == nil {
			ids = append(ids, id)
		}
		byID[id] = append(byID[id], rep)
	}
	var errs error
	for _, id := range ids { // each message once, through its recipient's report
		errs = errors.Join(errs, s.applyTo(log, id.node, id.id, byID[id]))
	}
	return errs
}

// unsubscribe records a mailto unsubscribe (RFC 2369 List-Unsubscribe mailto).
func (s *Server) unsubscribe(log zerolog.Logger, c unsubscribe.Claim) error {
	if err := s.deps.Unsubscriber.Unsubscribe(c, "mailto"); err != nil {
		return fmt.Errorf("record mailto unsubscribe: %w", err)
	}
	log.Info().Str("rcpt", address.Mask(c.Address)).Str("list", c.List).Str("campaign", c.Campaign).Msg("unsubscribed by mail")
	return nil
}

// count adds a campaign event for the person at to, once; a failure is
// logged, not returned: counters are reports.
func (s *Server) count(log zerolog.Logger, campaign, to, kind string) {
	if s.deps.Events == nil || campaign == "" || kind == "" {
		return
	}
	if _, err := s.deps.Events.CountCampaignEvent(campaign, to, kind); err != nil {
		log.Error().Err(err).Str("campaign", campaign).Str("event", kind).Msg("campaign event not counted")
	}
}

// errorLog sends go-smtp's own messages to zerolog.
type errorLog struct{ log zerolog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	e.log.Warn().Str("detail", fmt.Sprintf(format, v...)).Msg("smtp server error")
}

func (e errorLog) Println(v ...any) {
	e.log.Warn().Str("detail", strings.TrimSpace(fmt.Sprintln(v...))).Msg("smtp server error")
}

// budget counts bytes against a cap shared by all sessions.
type budget struct {
	mu             sync.Mutex
	max, used, top int64
}

// reserve takes n bytes if they fit under the cap.
func (b *budget) reserve(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max {
		return false
	}
	b.used += n
	b.top = max(b.top, b.used)
	return true
}

// release gives n bytes back.
func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// Stats are the listener's gauges.
type Stats struct {
	Connections       int   // connections open now
	BytesInFlight     int64 // message bytes held in memory now
	PeakBytesInFlight int64 // the most held at once since Start
}

// Stats returns the listener's gauges.
func (s *Server) Stats() Stats {
	s.ln.mu.Lock()
	conns := s.ln.total
	s.ln.mu.Unlock()
	s.flight.mu.Lock()
	defer s.flight.mu.Unlock()
	return Stats{Connections: conns, BytesInFlight: s.flight.used, PeakBytesInFlight: s.flight.top}
}
