package inbound

import (
	"errors"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/httplimit"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// backend makes sessions.
type backend struct{ s *Server }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: b.s, ip: httplimit.PeerIP(c.Conn().RemoteAddr())}, nil
}

// target is one accepted recipient.
type target struct {
	kind    int // tBounce, tUnsub, tReport
	queueID string
	node    string // tag of the node whose spool holds queueID ("" if the token names none)
	claim   unsubscribe.Claim
}

const (
	tBounce = iota // bounce+TOKEN
	tUnsub         // unsubscribe+TOKEN
	tReport        // postmaster, abuse
)

// session is one SMTP connection's state.
type session struct {
	s       *Server
	ip      string
	from    string
	size    int64 // the SIZE the client declared (RFC 1870), 0 if none
	targets []target
}

// SMTP replies.
var (
	errRate     = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many messages from your address, try again later"}
	errRelay    = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied"}
	errNoUser   = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	errSyntax   = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	errTempFail = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Could not record the report, try again later"}
	errClosing  = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Shutting down, try again later"}
	// RFC 5321 §4.2.5 and RFC 3463 X.3.1: too much mail in memory at once.
	errBusy = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Too much mail in progress, try again later"}
	// RFC 5321 §4.5.3.2.7: the server gave up waiting; 421 because it closes.
	errDataTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timeout waiting for message data, closing connection"}
	errDataRead    = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Error reading message data, try again later"}
	// RFC 5321 §4.5.3.1.9: "500 Line too long"; the same bytes fail again,
	// so it is not a transient failure.
	errLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Line too long"}
)

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if !ss.s.allow(ss.ip, time.Now()) {
		ss.s.log.Warn().Str("ip", ss.ip).Msg("inbound message rate exceeded")
		return errRate
	}
	ss.from, ss.targets, ss.size = from, nil, 0
	if opts != nil && opts.Size > 0 && opts.Size <= ss.s.cfg.MaxMessageBytes {
		ss.size = opts.Size
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	t, err := ss.s.classify(to)
	if err != nil {
		ss.s.log.Info().Str("ip", ss.ip).Str("rcpt", address.Mask(to)).Str("reply", err.Error()).Msg("inbound recipient refused")
		return err
	}
	ss.targets = append(ss.targets, t)
	return nil
}

// classify decides whether to take mail for to.
func (s *Server) classify(to string) (target, error) {
	at := strings.LastIndexByte(to, '@')
	if at <= 0 || at == len(to)-1 || strings.ContainsAny(to, "\r\n\x00 ") {
		return target{}, errSyntax
	}
	local, dom := to[:at], to[at+1:]
	d, err := address.NormalizeDomain(dom)
	if err != nil {
		return target{}, errSyntax
	}
	if d != s.cfg.Domain { // RFC 5321 §3.6.2: no open relay
		return target{}, errRelay
	}
	l := strings.ToLower(local)
	switch {
	case l == "postmaster" || l == "abuse": // RFC 2142
		return target{kind: tReport}, nil
	case strings.HasPrefix(l, "bounce+"):
		id, node, err := s.deps.VERP.Route(to)
		if err != nil {
			return target{}, errNoUser
		}
		return target{kind: tBounce, queueID: id, node: node}, nil
	case strings.HasPrefix(l, unsubscribe.MailtoPrefix):
		c, err := s.deps.Mailto.ParseMailto(local)
		if err != nil {
			return target{}, errNoUser
		}
		return target{kind: tUnsub, claim: c}, nil
	}
	return target{}, errNoUser
}

func (ss *session) Data(r io.Reader) error {
	body, held, err := ss.readBody(r)
	defer ss.s.flight.release(held)
	if err != nil {
		return ss.dataError(err)
	}
	if !ss.s.enter() {
		return errClosing
	}
	defer ss.s.busy.Done()
	log := ss.s.log.With().Str("ip", ss.ip).Str("from", address.Mask(ss.from)).Int("bytes", len(body)).Logger()
	var reports []bounce.Report
	for _, t := range ss.targets {
		if t.kind != tUnsub && reports == nil {
			ss.s.parse <- struct{}{} // the parser copies the message: a few at once
			reports, err = bounce.ParseBytes(body)
			<-ss.s.parse
			if err != nil {
				log.Warn().Err(err).Msg("inbound report unreadable; dropped")
				return nil // retrying cannot help
			}
		}
	}
	failed := false
	for _, t := range ss.targets {
		var err error
		switch t.kind {
		case tBounce:
			err = ss.s.applyTo(log, t.node, t.queueID, reports)
		case tUnsub:
			err = ss.s.unsubscribe(log, t.claim)
		case tReport:
			err = ss.s.report(log, reports)
		}
		if err != nil {
			log.Error().Err(err).Msg("inbound report not recorded; asking the sender to retry")
			failed = true
		}
	}
	if failed {
		return errTempFail
	}
	return nil
}

// firstStep is the first buffer of a message without SIZE: most reports
// (DSNs, ARF) fit in it.
const firstStep = 64 << 10

// readBody reads the message data into memory, reserving each growth of
// the buffer from the bytes-in-flight budget first (past firstStep, the
// whole of MaxMessageBytes at once); it returns the body and
// the bytes reserved, which the caller releases. Past the budget it stops
// with errBusy (go-smtp then discards the rest of the data).
func (ss *session) readBody(r io.Reader) ([]byte, int64, error) {
	limit := ss.s.cfg.MaxMessageBytes
	var buf []byte
	var held int64
	for {
		if len(buf) == cap(buf) && int64(cap(buf)) >= limit {
			// Full: only the end of the data may follow (go-smtp's reader
			// stops at MaxMessageBytes with ErrDataTooLarge).
			var one [1]byte
			n, err := r.Read(one[:])
			switch {
			case n > 0:
				return nil, held, smtp.ErrDataTooLarge
			case err == io.EOF:
				return buf, held, nil
			case err == nil:
				continue
			}
			return nil, held, err
		}
		if len(buf) == cap(buf) {
			grow := max(int64(cap(buf)), firstStep)
			if cap(buf) == 0 && ss.size > 0 {
				grow = ss.size + 1 // RFC 1870 SIZE: one buffer of the right size (+1 to see the end)
			}
			grow = min(grow, limit-int64(cap(buf)))
			if need := int64(cap(buf)) + grow; need > held {
				// Past the first step (and past a declared SIZE), the rest of
				// the largest message is reserved at once: a session either
				// holds all it can need, and finishes, or is refused now. Had
				// every session reserved step by step, a flood of big messages
				// would leave each holding a part and all refused, none taken.
				want := need
				if need > firstStep && (ss.size <= 0 || need > ss.size+1) {
					want = limit
				}
				if !ss.s.flight.reserve(want - held) {
					ss.s.log.Warn().Str("ip", ss.ip).Int64("max_bytes_in_flight", ss.s.cfg.MaxBytesInFlight).
						Msg("inbound bytes in flight at the limit; message refused for now")
					return nil, held, errBusy
				}
				held = want
			}
			nb := make([]byte, len(buf), int64(cap(buf))+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, held, nil
		}
		if err != nil {
			return nil, held, err
		}
	}
}

// dataError turns a failure to read the message data into its reply; no
// reply carries the error's own text, which names socket addresses.
func (ss *session) dataError(err error) error {
	var se *smtp.SMTPError
	var ne net.Error
	switch {
	case errors.As(err, &se): // errBusy; go-smtp's ErrDataTooLarge is 552 5.3.4 (RFC 5321 §4.5.3.1.9)
		return se
	case errors.Is(err, smtp.ErrTooLongLine):
		ss.s.log.Info().Str("ip", ss.ip).Int("max_line_length", ss.s.cfg.MaxLineLength).Msg("inbound message line too long")
		return errLineTooLong
	case errors.As(err, &ne) && ne.Timeout():
		ss.s.log.Info().Str("ip", ss.ip).Msg("inbound message data timed out")
		return errDataTimeout
	}
	ss.s.log.Info().Str("ip", ss.ip).Err(err).Msg("inbound message data not read")
	return errDataRead
}

func (ss *session) Reset()        { ss.from, ss.targets, ss.size = "", nil, 0 }
func (ss *session) Logout() error { return nil }
