package mta

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/mtasts"
	"github.com/postwarden/postwarden/mta/providers"
	"github.com/postwarden/postwarden/suppression/address"
)

// envelope is one message on its way to one recipient.
type envelope struct {
	id     string
	from   string // MAIL FROM (after Config.EnvelopeFrom)
	rcpt   address.Address
	body   []byte // as handed to Deliver; msg and head are made from it once the rate allows
	head   []byte // DKIM-Signature fields, sent before msg
	msg    []byte
	saw421 bool   // some host answered 421 during this delivery
	shape  *shape // the provider shaping this delivery, nil when none

	pool, sticky string    // the message's pool, and its source of an earlier attempt
	provider     string    // the recipient's provider, once its MX hosts are known
	src          *egress   // the source chosen (sources.go), nil: the default address
	warmAt       time.Time // when src's warm-up room was reserved
	// remote is the server of the last try, "host[ip]:port" as Postfix
	// writes it; reply is its reply to the final dot once one accepted the
	// message (it may carry the remote's queue id: RemoteQueueID).
	remote, reply string
}

// conn is an SMTP session that may be pooled between messages.
type conn struct {
	c         *smtp.Client
	raw       net.Conn // what to close: the TCP or TLS connection
	key       string   // pool key: TLS policy, server name and dialled ip:port
	tls       *tls.ConnectionState
	verifyErr error // TLS: why the certificate does not verify for the host, nil if it does
	sent      int
	timer     *time.Timer // idle timer while pooled
	// clean: the last transaction ended with DATA accepted, which ends the
	// transaction on the server too (RFC 5321 §4.1.1.4), so the next MAIL
	// needs no RSET first; any other ending leaves it false.
	clean     bool
	slot      *gate     // the provider connection slot held while open, nil when none
	max       int       // the provider's messages per connection, 0 when none
	idleSince time.Time // when it was last pooled
}

// route is how one delivery goes: hosts in order and the TLS they need.
type route struct {
	hosts      []string       // host:port
	implicit   bool           // the domain itself, for want of MX records
	policy     string         // effective TLS policy
	sts        *mtasts.Policy // the domain's MTA-STS policy in force, nil if none
	stsTesting bool           // sts is in testing mode: report violations only
	mx         []string       // MX host names (or the domain, implicit MX) when from DNS: the provider's key
}

// deliverSMTP sends e through relay, route or MX hosts, trying each host (and
// each of its addresses) in turn until one takes the session; a 421 moves on
// to the next host as well (RFC 5321 §5.1).
func (s *Sender) deliverSMTP(ctx, stop context.Context, e *envelope) *DeliveryError {
	rt, derr := s.route(ctx, e)
	if derr != nil {
		return derr
	}
	if e.shape, derr = s.shapeOf(stop, e, rt); derr != nil {
		s.logRefused(e, derr)
		return derr
	}
	defer s.unshape(e.shape)
	release, err := s.acquire(ctx, stop, e.rcpt.Domain)
	if errors.Is(err, errStopped) {
		return stopped("wait for a session slot for "+e.rcpt.Domain, s.now())
	}
	if err != nil {
		return temporary(StageConnect, "", fmt.Errorf("wait for a session slot for %s: %w", e.rcpt.Domain, err))
	}
	defer release()
	// The rate's token is taken with the session slot held, as near the wire
	// as it gets: deliveries queued for a slot behind a slow receiver would
	// otherwise all go at once when it recovers, each on a token of the past.
	if derr := s.throttle(ctx, stop, e.rcpt.Domain); derr != nil {
		s.logRefused(e, derr)
		return derr
	}
	if derr := s.throttleProvider(ctx, stop, e.shape); derr != nil {
		s.logRefused(e, derr)
		return derr
	}
	e.msg = normalizeCRLF(e.body) // signed only now: a throttled message costs no signature
	var serr error
	if e.head, serr = s.sign(e.msg); serr != nil {
		return permanent(StageSign, serr)
	}

	var last *DeliveryError
	notFound := 0
	for _, hp := range rt.hosts {
		host, port, _ := net.SplitHostPort(hp)
		ips := []string{host}
		if net.ParseIP(host) == nil {
			ips, err = s.cfg.Resolver.LookupHost(ctx, host)
			if err != nil {
				var dnsErr *net.DNSError
				if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
					notFound++
				}
				last = temporary(StageRoute, hp, fmt.Errorf("look up %s: %w", host, err))
				continue
			}
		}
		for _, ip := range ips {
			err := s.attempt(ctx, e, rt, host, net.JoinHostPort(ip, port))
			if err == nil {
				return nil
			}
			last = err
			if err.Code == 421 {
				e.saw421 = true // RFC 5321 §3.8: the server is closing the channel; try the next one
			} else if err.Stage != StageConnect && err.Stage != StageEHLO && err.Stage != StageSTARTTLS {
				return err // the host accepted the session: its answer stands
			}
			if ctx.Err() != nil {
				return err
			}
		}
	}
	if rt.implicit && notFound == len(rt.hosts) {
		// The domain has neither MX nor address records: nothing will ever take the mail.
		return &DeliveryError{Enhanced: "5.1.2", Stage: StageRoute, Message: "domain " + e.rcpt.Domain + " has no MX and no address records", Err: last}
	}
	if last == nil {
		return temporary(StageRoute, "", fmt.Errorf("no destination for %s", e.rcpt.Domain))
	}
	last.Temp = true // no host took the message: RFC 5321 §4.5.4.1, try again later
	return last
}

// route finds the hosts of e's recipient domain and the TLS they need:
// Config.TLSPolicy, raised to verify by an enforced MTA-STS policy, whose
// mx patterns also filter the MX hosts (RFC 8461 §4, §5).
func (s *Sender) route(ctx context.Context, e *envelope) (*route, *DeliveryError) {
	domain := e.rcpt.Domain
	hosts, implicit, fromMX, derr := s.hosts(ctx, domain)
	if derr != nil {
		return nil, derr
	}
	rt := &route{hosts: hosts, implicit: implicit, policy: s.tlsPolicyOf(domain)}
	if fromMX {
		rt.mx = mxNames(hosts)
	}
	if s.sts == nil || !fromMX {
		return rt, nil
	}
	pol, err := s.sts.Get(ctx, domain)
	if err != nil {
		s.log.Info().Str("domain", domain).Bool("cached", pol != nil).Err(err).Msg("MTA-STS policy not fetched")
	}
	if pol == nil || pol.Mode == mtasts.ModeNone {
		return rt, nil
	}
	rt.sts = pol
	var allowed []string
	for _, hp := range hosts {
		host, _, _ := net.SplitHostPort(hp)
		if pol.Match(host) {
			allowed = append(allowed, hp)
			continue
		}
		ev := s.log.Info() // enforce: the host is skipped
		if pol.Mode == mtasts.ModeTesting {
			ev = s.log.Warn() // testing: a violation to report (RFC 8461 §5)
		}
		ev.Str("queue_id", e.id).Str("domain", domain).Str("mx", host).Str("sts_mode", pol.Mode).
			Str("sts_id", pol.ID).Msg("MTA-STS: MX host not in the policy")
	}
	if pol.Mode == mtasts.ModeTesting {
		rt.stsTesting = true // RFC 8461 §5: report, deliver anyway
		return rt, nil
	}
	if len(allowed) == 0 {
		return nil, temporary(StageRoute, "", fmt.Errorf("MTA-STS policy %s of %s allows none of its MX hosts", pol.ID, domain))
	}
	rt.hosts, rt.implicit, rt.policy = allowed, false, TLSVerify // RFC 8461 §4.2
	return rt, nil
}

// tlsPolicyOf returns the configured TLS policy of a recipient domain.
func (s *Sender) tlsPolicyOf(domain string) string {
	if p, ok := s.tlsPolicy[domain]; ok {
		return p
	}
	return s.tlsPolicy["default"]
}

// hosts returns the host:port list to try for domain, in order; implicit is
// true when it is the domain itself for want of MX records; fromMX when the
// list comes from DNS (not the relay or a route).
func (s *Sender) hosts(ctx context.Context, domain string) (hosts []string, implicit, fromMX bool, derr *DeliveryError) {
	if s.cfg.Mode == ModeRelay {
		return []string{s.relay}, false, false, nil
	}
	if hp, ok := s.routes[domain]; ok {
		return []string{hp}, false, false, nil
	}
	port := portOf(s.cfg.SMTPPort)
	if r := s.cfg.MXResolver; r != nil {
		return cachedHosts(ctx, r, domain, port)
	}
	mxs, err := s.cfg.Resolver.LookupMX(ctx, domain)
	if err != nil {
		var dnsErr *net.DNSError
		if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			return nil, false, false, temporary(StageRoute, "", fmt.Errorf("look up MX of %s: %w", domain, err))
		}
		mxs = nil
	}
	if len(mxs) == 1 && strings.TrimSuffix(mxs[0].Host, ".") == "" {
		// RFC 7505 §3: a single "MX 0 ." says the domain accepts no mail; §4.2: 556 5.1.10.
		return nil, false, false, &DeliveryError{Code: 556, Enhanced: "5.1.10", Stage: StageRoute,
			Message: "domain " + domain + " accepts no mail (null MX)"}
	}
	if len(mxs) == 0 {
		return []string{net.JoinHostPort(domain, port)}, true, true, nil // RFC 5321 §5.1: implicit MX
	}
	mxs = slices.Clone(mxs)
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref }) // RFC 5321 §5.1
	var out []string
	for _, mx := range mxs {
		if h := strings.TrimSuffix(mx.Host, "."); h != "" {
			out = append(out, net.JoinHostPort(h, port))
		}
	}
	return out, false, true, nil
}

// cachedHosts is hosts through the providers' resolver, which keeps each
// answer for its TTL: a campaign to one domain asks once, not per message.
func cachedHosts(ctx context.Context, r *providers.Resolver, domain, port string) (hosts []string, implicit, fromMX bool, derr *DeliveryError) {
	d, err := r.Resolve(ctx, domain)
	switch {
	case errors.Is(err, providers.ErrNoDomain):
		d = providers.Destination{Implicit: true} // the address lookup says so for good (5.1.2)
	case err != nil:
		return nil, false, false, temporary(StageRoute, "", fmt.Errorf("look up MX of %s: %w", domain, err))
	case d.NullMX:
		// RFC 7505 §3, §4.2, as in hosts.
		return nil, false, false, &DeliveryError{Code: 556, Enhanced: "5.1.10", Stage: StageRoute,
			Message: "domain " + domain + " accepts no mail (null MX)"}
	}
	if d.Implicit {
		return []string{net.JoinHostPort(domain, port)}, true, true, nil // RFC 5321 §5.1
	}
	out := make([]string, 0, len(d.MX))
	for _, m := range d.MX { // by preference already (RFC 5321 §5.1)
		out = append(out, net.JoinHostPort(m.Host, port))
	}
	return out, false, true, nil
}

// attempt delivers e over a pooled or new connection to addr; host names the
// server (TLS server name, logs). A dead pooled connection is redialled once.
func (s *Sender) attempt(ctx context.Context, e *envelope, rt *route, host, addr string) *DeliveryError {
	remote := net.JoinHostPort(host, portFromAddr(addr))
	if ip, port, err := net.SplitHostPort(addr); err == nil {
		e.remote = host + "[" + ip + "]:" + port
	} else {
		e.remote = remote
	}
	// A connection made under one TLS policy, or verified for one name, is
	// not reused for another.
	key := e.sourceName() + " " + rt.policy + " " + host + " " + addr
	c := s.take(key)
	reused := c != nil
	for {
		start := time.Now()
		if c == nil {
			var derr *DeliveryError
			c, reused, derr = s.dialShaped(ctx, e, host, addr, remote, key, rt.policy)
			if derr != nil {
				s.observe(e, derr)
				s.logAttempt(e, rt, remote, addr, nil, false, start, "", derr)
				return derr
			}
			if !reused && rt.stsTesting && (c.tls == nil || c.verifyErr != nil) {
				reason := "no TLS"
				if c.verifyErr != nil {
					reason = c.verifyErr.Error()
				}
				s.log.Warn().Str("queue_id", e.id).Str("domain", e.rcpt.Domain).Str("remote", remote).
					Str("sts_id", rt.sts.ID).Str("reason", reason).Msg("MTA-STS testing: TLS not verified, delivering anyway")
			}
		}
		reply, stage, err := s.transact(ctx, c, e, reused)
		if err == nil {
			c.sent++
			e.reply = reply
			s.observeSuccess(e)
			s.logAttempt(e, rt, remote, addr, c, reused, start, reply, nil)
			s.put(c)
			return nil
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		se, isRep := isReply(err)
		if reused && ctx.Err() == nil && (stage == "rset" || stage == StageMail) && (!isRep || se.Code == 421) {
			// The pooled connection died while idle: redial once, transparently.
			s.log.Debug().Str("queue_id", e.id).Str("remote", remote).Err(err).Msg("pooled connection dead, redialling")
			c.close()
			c, reused = nil, false
			continue
		}
		if stage == "rset" {
			stage = StageMail
		}
		derr := classify(stage, remote, err)
		s.observe(e, derr)
		s.logAttempt(e, rt, remote, addr, c, reused, start, "", derr)
		if isRep && se.Code != 421 && ctx.Err() == nil {
			s.put(c) // still in step with the server: RSET before the next use (not clean)
		} else {
			c.close()
		}
		return derr
	}
}

// dial connects to addr, says EHLO and upgrades with STARTTLS as policy says
// (and useTLS): none never; opportunistic when offered, retrying once in
// plain text when the handshake fails (RFC 7435 §3); required and verify
// demand it, verify also a certificate valid for host (RFC 3207 §4.1 leaves
// the choice to the client), and fail temporarily otherwise.
func (s *Sender) dial(ctx context.Context, src *egress, id, host, addr, remote, key, policy string, useTLS bool) (*conn, *DeliveryError) {
	dialer, ehlo := &s.dialer, s.cfg.Hostname
	if src != nil {
		dialer, ehlo = &src.dialer, src.ehlo
	}
	nc, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, temporary(StageConnect, remote, err)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	c := s.newClient(nc)
	if err := c.Hello(ehlo); err != nil { // greeting, then EHLO (RFC 5321 §4.1.1.1)
		nc.Close()
		return nil, classify(StageEHLO, remote, err)
	}
	pc := &conn{c: c, raw: nc, key: key}
	if policy == TLSNone || !useTLS {
		return pc, nil
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		if policy == TLSOpportunistic {
			return pc, nil
		}
		nc.Close()
		return nil, temporary(StageSTARTTLS, remote, fmt.Errorf("STARTTLS not offered, TLS policy %s", policy))
	}
	tc, err := s.startTLS(ctx, nc, host)
	if err != nil {
		nc.Close()
		if ctx.Err() != nil || policy != TLSOpportunistic {
			return nil, temporary(StageSTARTTLS, remote, err)
		}
		// Opportunistic TLS (RFC 7435 §3): a failed upgrade falls back to plain text.
		s.log.Info().Str("queue_id", id).Str("remote", remote).Str("addr", addr).Err(err).Msg("STARTTLS failed, retrying without TLS")
		return s.dial(ctx, src, id, host, addr, remote, key, policy, false)
	}
	st := tc.ConnectionState()
	verr := s.verifyPeer(st, host)
	if verr != nil && policy == TLSVerify {
		tc.Close()
		return nil, temporary(StageSTARTTLS, remote, fmt.Errorf("certificate not valid for %s (TLS policy verify): %w", host, verr))
	}
	c = s.newClient(&greetedConn{Conn: tc, greeting: strings.NewReader("220 post-STARTTLS\r\n")})
	if err := c.Hello(ehlo); err != nil { // RFC 3207 §4.2: EHLO again over TLS
		tc.Close()
		return nil, classify(StageEHLO, remote, err)
	}
	return &conn{c: c, raw: tc, key: key, tls: &st, verifyErr: verr}, nil
}

// verifyPeer checks the server's certificate chain against Config.TLS.RootCAs
// (nil: the system roots) and host, the name the client was sent to: the MX,
// route or relay host (RFC 8461 §4.2 for MTA-STS).
func (s *Sender) verifyPeer(st tls.ConnectionState, host string) error {
	if len(st.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	opts := x509.VerifyOptions{DNSName: host, Intermediates: x509.NewCertPool()}
	if b := s.cfg.TLS; b != nil {
		opts.Roots = b.RootCAs
		if b.Time != nil {
			opts.CurrentTime = b.Time()
		}
	}
	for _, ic := range st.PeerCertificates[1:] {
		opts.Intermediates.AddCert(ic)
	}
	_, err := st.PeerCertificates[0].Verify(opts)
	return err
}

// newClient wraps nc in a go-smtp client with the configured timeouts.
func (s *Sender) newClient(nc net.Conn) *smtp.Client {
	c := smtp.NewClient(&writeCoalescer{Conn: nc})
	c.CommandTimeout = s.cfg.CommandTimeout
	return c
}

// startTLS sends STARTTLS on nc (after EHLO) and performs the TLS handshake.
// go-smtp's client cannot issue STARTTLS after a custom EHLO name, so it is done here.
func (s *Sender) startTLS(ctx context.Context, nc net.Conn, host string) (*tls.Conn, error) {
	nc.SetDeadline(time.Now().Add(s.cfg.CommandTimeout))
	defer nc.SetDeadline(time.Time{})
	if _, err := io.WriteString(nc, "STARTTLS\r\n"); err != nil {
		return nil, err
	}
	// The server sends nothing after its 220 until our ClientHello, so this
	// reader cannot swallow TLS bytes.
	if _, _, err := textproto.NewReader(bufio.NewReader(nc)).ReadResponse(220); err != nil { // RFC 3207 §4
		return nil, err
	}
	cfg := &tls.Config{}
	if s.cfg.TLS != nil {
		cfg = s.cfg.TLS.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	// The handshake never fails on the certificate: verifyPeer judges it
	// afterwards, so the policy decides and the logs can say whether it verified.
	cfg.InsecureSkipVerify = true
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// greetedConn replays a 220 greeting before the TLS stream: go-smtp's client
// waits for a greeting, but none follows STARTTLS (RFC 3207 §4.2).
type greetedConn struct {
	net.Conn
	greeting *strings.Reader
}

// Read returns the synthetic greeting first, then the connection's data.
func (g *greetedConn) Read(p []byte) (int, error) {
	if g.greeting.Len() > 0 {
		return g.greeting.Read(p)
	}
	return g.Conn.Read(p)
}

// transact runs one mail transaction; stage says where it failed ("rset" for a reused connection's RSET).
func (s *Sender) transact(ctx context.Context, c *conn, e *envelope, reused bool) (string, string, error) {
	stop := context.AfterFunc(ctx, func() { c.raw.Close() })
	defer stop()
	if reused && !c.clean {
		if err := c.c.Reset(); err != nil { // RFC 5321 §4.1.1.5
			return "", "rset", err
		}
	}
	c.clean = false
	// No PIPELINING (RFC 2920): go-smtp's client waits for each reply before
	// the next command and does not implement it; we don't hand-roll SMTP to
	// save the round trips.
	rcpt := e.rcpt.String()
	opts := &smtp.MailOptions{Size: int64(len(e.head) + len(e.msg))} // RFC 1870
	if !isASCII(e.from) || !isASCII(rcpt) {
		if ok, _ := c.c.Extension("SMTPUTF8"); !ok {
			return "", StageMail, &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
				Message: "non-ASCII address and the server lacks SMTPUTF8 (RFC 6531 §3.2)"}
		}
		opts.UTF8 = true
	}
	if err := c.c.Mail(e.from, opts); err != nil {
		return "", StageMail, err
	}
	if err := c.c.Rcpt(rcpt, nil); err != nil {
		return "", StageRcpt, err
	}
	w, err := c.c.Data()
	if err != nil {
		return "", StageData, err
	}
	if _, err := w.Write(e.head); err != nil {
		return "", StageData, err
	}
	if _, err := w.Write(e.msg); err != nil {
		return "", StageData, err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", StageData, err
	}
	c.clean = true
	return resp.StatusText, "", nil
}

// maskText masks every address in a server reply before it is logged.
func maskText(s string) string { return address.MaskText(s) }

// logAttempt writes the one Info line of a delivery attempt.
func (s *Sender) logAttempt(e *envelope, rt *route, remote, addr string, c *conn, reused bool, start time.Time, reply string, derr *DeliveryError) {
	ev := s.log.Info().Str("queue_id", e.id).Str("rcpt", address.Mask(e.rcpt.String())).Str("mode", s.cfg.Mode).
		Str("remote", remote).Str("addr", addr).Bool("reused", reused).Str("tls_policy", rt.policy)
	if rt.sts != nil {
		ev = ev.Str("sts_mode", rt.sts.Mode).Str("sts_id", rt.sts.ID)
	}
	if c != nil && c.tls != nil {
		ev = ev.Str("tls_version", tls.VersionName(c.tls.Version)).Str("tls_cipher", tls.CipherSuiteName(c.tls.CipherSuite)).
			Bool("tls_verified", c.verifyErr == nil)
	}
	ev = outcome(ev, reply, derr)
	ev.Dur("duration_ms", time.Since(start)).Msg("delivery attempt")
}

// outcome adds the result fields to a log event.
func outcome(ev *zerolog.Event, reply string, derr *DeliveryError) *zerolog.Event {
	if derr == nil {
		return ev.Str("outcome", "delivered").Int("reply_code", 250).Str("reply", maskText(reply))
	}
	return ev.Str("outcome", derr.Outcome()).Str("reason", derr.Verdict().Reason).Str("stage", derr.Stage).
		Int("reply_code", derr.Code).Str("enhanced", derr.Enhanced).Str("reply", maskText(derr.Message))
}

// take removes and returns an idle connection under key, or nil.
func (s *Sender) take(key string) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.idle[key]
	if len(list) == 0 {
		return nil
	}
	c := list[len(list)-1]
	if len(list) == 1 {
		delete(s.idle, key)
	} else {
		s.idle[key] = list[:len(list)-1]
	}
	c.timer.Stop()
	return c
}

// put pools c for reuse, or closes it when it has carried
// MaxMessagesPerConnection messages or the Sender is closed.
func (s *Sender) put(c *conn) {
	s.mu.Lock()
	if s.closed || c.sent >= s.cfg.MaxMessagesPerConnection || (c.max > 0 && c.sent >= c.max) {
		s.mu.Unlock()
		c.quit()
		return
	}
	c.idleSince = time.Now()
	s.idle[c.key] = append(s.idle[c.key], c)
	c.timer = time.AfterFunc(s.cfg.IdleTimeout, func() { s.expire(c) })
	slot := c.slot
	s.mu.Unlock()
	if slot != nil {
		slot.signal() // a delivery waiting for a slot may take c
	}
}

// expire closes c if it is still idle in the pool.
func (s *Sender) expire(c *conn) {
	s.mu.Lock()
	list := s.idle[c.key]
	i := slices.Index(list, c)
	if i < 0 {
		s.mu.Unlock()
		return
	}
	if list = slices.Delete(list, i, i+1); len(list) == 0 {
		delete(s.idle, c.key)
	} else {
		s.idle[c.key] = list
	}
	s.mu.Unlock()
	c.quit()
}

// quit says QUIT (briefly) and closes the connection.
func (c *conn) quit() {
	c.c.CommandTimeout = 5 * time.Second
	c.c.Quit()
	c.close()
}

// close closes the connection without QUIT.
func (c *conn) close() { c.raw.Close(); c.freeSlot() }

// Close QUITs and closes every idle connection; later Deliver calls fail
// temporarily. Safe to call more than once.
func (s *Sender) Close() error {
	s.mu.Lock()
	s.closed = true
	var all []*conn
	for addr, list := range s.idle {
		for _, c := range list {
			c.timer.Stop()
		}
		all = append(all, list...)
		delete(s.idle, addr)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Go(c.quit)
	}
	wg.Wait()
	return nil
}

// portFromAddr returns the port of a host:port.
func portFromAddr(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// isASCII reports whether s has only ASCII bytes.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
