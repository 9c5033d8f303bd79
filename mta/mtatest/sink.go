// Package mtatest runs a real SMTP server (go-smtp) on loopback that records
// what it receives: the peer that end-to-end tests and benchmarks deliver to.
// Replies can be scripted per recipient to exercise retries and bounces.
package mtatest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Received is one message as the sink accepted it.
type Received struct {
	From string
	To   []string
	Data []byte
	Time time.Time // when the message was accepted (after DATA)
	// Started is when its transaction began (MAIL FROM): when the sending
	// node started the delivery, as the receiver sees it.
	Started time.Time
	// Client is the client's IP address, Helo the name it said in EHLO/HELO.
	Client, Helo string
	// QueueID is the id the sink gave the message in its 250 reply to the
	// final dot ("250 2.0.0 Ok: queued as QueueID", as Postfix words it).
	QueueID string
}

// RcptFunc scripts the reply to RCPT TO: nil accepts; an *smtp.SMTPError
// is sent as is. n counts the RCPT commands seen so far for this address,
// starting at 1.
type RcptFunc func(rcpt string, n int) error

// Sink is a loopback SMTP server that records every message.
type Sink struct {
	// Addr is host:port of the listener.
	Addr string

	srv *smtp.Server
	ln  net.Listener

	mu       sync.Mutex
	msgs     []Received
	rcptSeen map[string]int
	sessions int
	rcpt     RcptFunc
	delay    time.Duration
	discard  bool
	count    int
	open     int // TCP connections open now
	maxOpen  int // most open at once since Start or ResetMaxOpen
}

// Options configure a Sink.
type Options struct {
	// Rcpt scripts RCPT replies; nil accepts everyone.
	Rcpt RcptFunc
	// DataDelay is slept before answering the final DATA dot.
	DataDelay time.Duration
	// Discard counts messages without keeping them (benchmarks).
	Discard bool
}

// Start listens on 127.0.0.1 on a free port and serves until Close.
func Start(opt Options) (*Sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Sink{Addr: ln.Addr().String(), ln: ln, rcptSeen: map[string]int{}, rcpt: opt.Rcpt, delay: opt.DataDelay, discard: opt.Discard}
	srv := smtp.NewServer(backend{s})
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 1000
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	s.srv = srv
	go func() { _ = srv.Serve(countingListener{ln, s}) }()
	return s, nil
}

// Close stops the server.
func (s *Sink) Close() error { return s.srv.Close() }

// Port is the listener's port.
func (s *Sink) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Messages returns a copy of what was received so far.
func (s *Sink) Messages() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Received(nil), s.msgs...)
}

// Count is how many messages were accepted.
func (s *Sink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// Sessions is how many SMTP connections were opened.
func (s *Sink) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// ByRecipient counts accepted messages per recipient address.
func (s *Sink) ByRecipient() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]int{}
	for _, r := range s.msgs {
		for _, to := range r.To {
			m[to]++
		}
	}
	return m
}

// Open is how many TCP connections are open now.
func (s *Sink) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// MaxOpen is the most TCP connections open at once since Start or ResetMaxOpen.
func (s *Sink) MaxOpen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxOpen
}

// ResetMaxOpen starts MaxOpen again from the connections open now.
func (s *Sink) ResetMaxOpen() {
	s.mu.Lock()
	s.maxOpen = s.open
	s.mu.Unlock()
}

// countingListener counts the connections it accepts while they are open.
type countingListener struct {
	net.Listener
	s *Sink
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.mu.Lock()
	l.s.open++
	l.s.maxOpen = max(l.s.maxOpen, l.s.open)
	l.s.mu.Unlock()
	return &countedConn{Conn: c, s: l.s}, nil
}

// countedConn gives its count back once when closed.
type countedConn struct {
	net.Conn
	s    *Sink
	once sync.Once
}

// Write marks the connection closed once the server says 221 (RFC 5321
// §4.1.1.10: the answer to QUIT; the session is over): the client may open
// its next connection before the server's Close has run.
func (c *countedConn) Write(b []byte) (int, error) {
	if len(b) >= 4 && string(b[:4]) == "221 " {
		c.done()
	}
	return c.Conn.Write(b)
}

func (c *countedConn) Close() error {
	c.done()
	return c.Conn.Close()
}

func (c *countedConn) done() {
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.open--
		c.s.mu.Unlock()
	})
}

type backend struct{ s *Sink }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	b.s.mu.Lock()
	b.s.sessions++
	b.s.mu.Unlock()
	return &session{s: b.s, c: c}, nil
}

type session struct {
	s       *Sink
	c       *smtp.Conn
	from    string
	to      []string
	started time.Time
}

func (ss *session) AuthMechanisms() []string { return nil }

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	ss.from, ss.started = from, time.Now()
	ss.to = nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.s.mu.Lock()
	ss.s.rcptSeen[to]++
	n := ss.s.rcptSeen[to]
	f := ss.s.rcpt
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(to, n); err != nil {
			return err
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	if len(ss.to) == 0 {
		return errors.New("no valid recipients")
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if ss.s.delay > 0 {
		time.Sleep(ss.s.delay)
	}
	ss.s.mu.Lock()
	ss.s.count++
	qid := fmt.Sprintf("%X", 0x4B1C0000+ss.s.count)
	if !ss.s.discard {
		client, _, _ := net.SplitHostPort(ss.c.Conn().RemoteAddr().String())
		ss.s.msgs = append(ss.s.msgs, Received{From: ss.from, To: append([]string(nil), ss.to...), Data: data,
			Time: time.Now(), Started: ss.started, Client: client, Helo: ss.c.Hostname(), QueueID: qid})
	}
	ss.s.mu.Unlock()
	// go-smtp sends a 250 SMTPError returned by Data as the reply to the dot.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + qid}
}

func (ss *session) Reset()        { ss.from, ss.to = "", nil }
func (ss *session) Logout() error { return nil }
