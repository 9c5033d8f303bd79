package mta

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// received is one message as the test server saw it.
type received struct {
	From, To string
	Size     int64 // MAIL FROM's SIZE= (RFC 1870), 0 if absent
	Body     []byte
	TLS      bool
}

// testServer is a real go-smtp server on 127.0.0.1:0 that records what it gets
// and answers per recipient as scripted.
type testServer struct {
	t       *testing.T
	srv     *smtp.Server
	Addr    string // 127.0.0.1:port
	Port    int
	accepts atomic.Int32
	rcpts   atomic.Int32 // RCPT commands seen
	live    atomic.Int32 // connections not yet closed by the server
	rsets   atomic.Int32 // RSET commands read from clients

	mu      sync.Mutex
	msgs    []received
	replies map[string]*smtp.SMTPError // rcpt → error reply (nil: 250)
	drop    map[string]bool            // rcpt → drop the connection at RCPT
	conns   []*smtp.Conn
	logouts int

	// block, when set, makes Data wait on it; entered gets a value on each wait.
	block     chan struct{}
	entered   chan struct{}
	active    int
	maxAct    int
	loggedOut chan struct{}
}

// countingListener counts accepted connections, and those still open in live.
type countingListener struct {
	net.Listener
	n     *atomic.Int32
	live  *atomic.Int32
	rsets *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.n.Add(1)
	l.live.Add(1)
	return &trackedConn{Conn: c, live: l.live, rsets: l.rsets}, nil
}

// trackedConn decrements live when first closed and counts the RSET
// commands it reads (the client flushes each command whole; test bodies
// never hold the word).
type trackedConn struct {
	net.Conn
	once  sync.Once
	live  *atomic.Int32
	rsets *atomic.Int32
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if k := bytes.Count(bytes.ToUpper(p[:n]), []byte("RSET\r\n")); k > 0 {
		c.rsets.Add(int32(k))
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.live.Add(-1) })
	return c.Conn.Close()
}

func newTestServer(t *testing.T, tlsCfg *tls.Config) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveTest(t, tlsCfg, ln)
}

// serveTest runs a testServer on ln until the test ends.
func serveTest(t *testing.T, tlsCfg *tls.Config, ln net.Listener) *testServer {
	t.Helper()
	ts := &testServer{t: t, replies: map[string]*smtp.SMTPError{}, drop: map[string]bool{},
		loggedOut: make(chan struct{}, 1000)}
	ts.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		ts.mu.Lock()
		ts.conns = append(ts.conns, c)
		ts.mu.Unlock()
		return &session{ts: ts, conn: c}, nil
	}))
	ts.srv.Domain = "mx.test"
	ts.srv.TLSConfig = tlsCfg
	ts.srv.ErrorLog = discardLogger{}
	ts.Addr = ln.Addr().String()
	ts.Port = ln.Addr().(*net.TCPAddr).Port
	go ts.srv.Serve(countingListener{ln, &ts.accepts, &ts.live, &ts.rsets})
	t.Cleanup(func() {
		// go-smtp's Conn.Close reads the connection that handleStartTLS
		// replaces without a lock: let the sessions the client has ended
		// wind down before closing the server from here.
		for deadline := time.Now().Add(2 * time.Second); ts.live.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		ts.srv.Close()
	})
	return ts
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

func (ts *testServer) reply(rcpt string, e *smtp.SMTPError) {
	ts.mu.Lock()
	ts.replies[rcpt] = e
	ts.mu.Unlock()
}

func (ts *testServer) messages() []received {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]received(nil), ts.msgs...)
}

// closeAll closes every connection the server has, from the server side.
func (ts *testServer) closeAll() {
	ts.mu.Lock()
	conns := ts.conns
	ts.conns = nil
	ts.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type session struct {
	ts       *testServer
	conn     *smtp.Conn
	from, to string
	size     int64
}

func (s *session) Reset()        { s.from, s.to, s.size = "", "", 0 }
func (s *session) Logout() error { s.ts.loggedOut <- struct{}{}; return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.from = from
	if opts != nil {
		s.size = opts.Size
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.ts.rcpts.Add(1)
	s.ts.mu.Lock()
	e, drop := s.ts.replies[to], s.ts.drop[to]
	s.ts.mu.Unlock()
	if drop {
		s.conn.Close()
		return &smtp.SMTPError{Code: 421, Message: "gone"}
	}
	if e != nil {
		return e
	}
	s.to = to
	return nil
}

func (s *session) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ts := s.ts
	if ts.block != nil {
		ts.mu.Lock()
		ts.active++
		ts.maxAct = max(ts.maxAct, ts.active)
		ts.mu.Unlock()
		ts.entered <- struct{}{}
		<-ts.block
		ts.mu.Lock()
		ts.active--
		ts.mu.Unlock()
	}
	_, isTLS := s.conn.TLSConnectionState()
	ts.mu.Lock()
	ts.msgs = append(ts.msgs, received{From: s.from, To: s.to, Size: s.size, Body: body, TLS: isTLS})
	ts.mu.Unlock()
	return nil
}

// selfSigned returns a server TLS config for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"mx.test"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

// portString is the test server's port as text.
func (ts *testServer) portString() string { return strconv.Itoa(ts.Port) }
