package mta

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/dkim"
)

const msg = "From: News <news@example.com>\r\n" +
	"To: ana@example.org\r\n" +
	"Subject: Hello\r\n" +
	"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"List-Unsubscribe: <https://example.com/u/abc>\r\n" +
	"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n" +
	"Hello Ana,\r\n.leading dot line\r\nbye\r\n"

var (
	keysOnce sync.Once
	testKeys []*dkim.Key
)

// keys returns an RSA and an Ed25519 key for example.com, made once.
func keys(t *testing.T) []*dkim.Key {
	t.Helper()
	keysOnce.Do(func() {
		for _, kt := range []string{"rsa", "ed25519"} {
			p, err := dkim.Generate(kt)
			if err != nil {
				t.Fatal(err)
			}
			s, err := dkim.ParsePrivateKey(p)
			if err != nil {
				t.Fatal(err)
			}
			testKeys = append(testKeys, &dkim.Key{Domain: "example.com", Selector: kt + "1", Signer: s})
		}
	})
	if len(testKeys) != 2 {
		t.Fatal("no test keys")
	}
	return testKeys
}

// verifyDKIM checks that msg carries want signatures and all of them verify.
func verifyDKIM(t *testing.T, m []byte, want int) {
	t.Helper()
	ks := keys(t)
	lookup := func(name string) ([]string, error) {
		for _, k := range ks {
			if name == k.RecordName() {
				return []string{k.TXTValue()}, nil
			}
		}
		return nil, errors.New("no record " + name)
	}
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(m), &msgdkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != want {
		t.Fatalf("%d signatures, want %d", len(vs), want)
	}
	for _, v := range vs {
		if v.Err != nil {
			t.Fatalf("signature by %s does not verify: %v", v.Domain, v.Err)
		}
	}
}

// newSender builds a Sender over cfg with the test keys and a test logger.
func newSender(t *testing.T, cfg Config, sign bool) *Sender {
	t.Helper()
	if cfg.Hostname == "" {
		cfg.Hostname = "out.example.com"
	}
	var signer *dkim.Signer
	if sign {
		signer = dkim.NewSigner(keys(t))
	}
	s, err := New(cfg, signer, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func relayTo(ts *testServer) Config {
	return Config{Mode: ModeRelay, Relay: "smtp://" + ts.Addr}
}

func mustDeliver(t *testing.T, s *Sender, id, to string, body string) {
	t.Helper()
	if err := s.Deliver(context.Background(), id, "bounce@example.com", to, []byte(body)); err != nil {
		t.Fatalf("deliver %s: %v", id, err)
	}
}

func TestRelayDeliversSigned(t *testing.T) {
	ts := newTestServer(t, nil)
	s := newSender(t, relayTo(ts), true)
	mustDeliver(t, s, "q1", "ana@example.org", msg)
	got := ts.messages()
	if len(got) != 1 {
		t.Fatalf("%d messages at the server, want 1", len(got))
	}
	m := got[0]
	if m.From != "bounce@example.com" || m.To != "ana@example.org" {
		t.Fatalf("envelope %q → %q", m.From, m.To)
	}
	if !bytes.HasPrefix(m.Body, []byte("DKIM-Signature:")) || !bytes.HasSuffix(m.Body, []byte(msg)) {
		t.Fatalf("body not the signed message byte for byte:\n%s", m.Body)
	}
	if m.Size != int64(len(m.Body)) { // the signatures are counted in SIZE=
		t.Fatalf("SIZE=%d, message is %d bytes", m.Size, len(m.Body))
	}
	verifyDKIM(t, m.Body, 2)
}

func TestNormalisesLineEndings(t *testing.T) {
	ts := newTestServer(t, nil)
	s := newSender(t, relayTo(ts), false)
	in := "From: a@example.com\nTo: b@example.org\r\nSubject: x\n\nline1\nline2\rline3\r\r\nlast"
	want := "From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n\r\nline1\r\nline2\r\nline3\r\n\r\nlast\r\n"
	mustDeliver(t, s, "q1", "b@example.org", in)
	got := ts.messages()
	if len(got) != 1 || string(got[0].Body) != want {
		t.Fatalf("got %+v, want body %q", got, want)
	}
}

func TestNormalizeCRLF(t *testing.T) {
	cases := map[string]string{
		"":               "\r\n",
		"a\r\n":          "a\r\n",
		"a\nb":           "a\r\nb\r\n",
		"a\rb\r":         "a\r\nb\r\n",
		"a\n.\nb\r\n":    "a\r\n.\r\nb\r\n",
		"a\r\n.\rb\r\n":  "a\r\n.\r\nb\r\n",
		"\n\r\r\n\n\r":   "\r\n\r\n\r\n\r\n\r\n",
		"x\r\n\r\n.\r\n": "x\r\n\r\n.\r\n",
		"a\r\r\n":        "a\r\n\r\n",
		"\r\na\r\n":      "\r\na\r\n",
		"\na\r\n":        "\r\na\r\n",
		"a\r\nb\rc\r\n":  "a\r\nb\r\nc\r\n",
	}
	for in, want := range cases {
		if got := string(normalizeCRLF([]byte(in))); got != want {
			t.Errorf("normalizeCRLF(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReplies(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.reply("busy@example.org", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"})
	ts.reply("nobody@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	s := newSender(t, relayTo(ts), true)

	cases := []struct {
		rcpt     string
		temp     bool
		code     int
		enhanced string
	}{
		{"busy@example.org", true, 451, "4.3.0"},
		{"nobody@example.org", false, 550, "5.1.1"},
	}
	for _, c := range cases {
		err := s.Deliver(context.Background(), "q", "bounce@example.com", c.rcpt, []byte(msg))
		var de *DeliveryError
		if !errors.As(err, &de) {
			t.Fatalf("%s: err = %v, want *DeliveryError", c.rcpt, err)
		}
		code, enh := de.SMTPStatus()
		if de.Temporary() != c.temp || code != c.code || enh != c.enhanced || de.Stage != StageRcpt || de.Remote != ts.Addr {
			t.Fatalf("%s: got temp=%v %d %s stage=%s remote=%s", c.rcpt, de.Temporary(), code, enh, de.Stage, de.Remote)
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != c.code {
			t.Fatalf("%s: Unwrap does not reach the *smtp.SMTPError", c.rcpt)
		}
		if !strings.Contains(err.Error(), enh) {
			t.Fatalf("error text %q lacks %s", err, enh)
		}
	}
	// The rejections left the connection usable: a good delivery reuses it.
	mustDeliver(t, s, "q3", "ana@example.org", msg)
	if n := ts.accepts.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
	if len(ts.messages()) != 1 {
		t.Fatal("want exactly the accepted message at the server")
	}
}

func TestDroppedConnectionIsTemporary(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.drop["drop@example.org"] = true
	s := newSender(t, relayTo(ts), false)
	err := s.Deliver(context.Background(), "q", "bounce@example.com", "drop@example.org", []byte(msg))
	var de *DeliveryError
	if !errors.As(err, &de) || !de.Temporary() || de.Stage != StageRcpt {
		t.Fatalf("err = %#v, want temporary at rcpt", err)
	}
}

func TestConnectionRefusedIsTemporary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := newSender(t, Config{Mode: ModeRelay, Relay: "smtp://" + addr}, false)
	err = s.Deliver(context.Background(), "q", "", "ana@example.org", []byte(msg))
	var de *DeliveryError
	if !errors.As(err, &de) || !de.Temporary() || de.Stage != StageConnect {
		t.Fatalf("err = %v, want temporary at connect", err)
	}
}

func TestConnectionReuse(t *testing.T) {
	ts := newTestServer(t, nil)
	s := newSender(t, Config{Mode: ModeMX, Routes: map[string]string{"example.org": ts.Addr}}, true)
	for i := range 5 {
		mustDeliver(t, s, "q"+string(rune('a'+i)), "ana@example.org", msg)
	}
	if n := ts.accepts.Load(); n != 1 {
		t.Fatalf("%d connections for 5 messages, want 1", n)
	}
	if len(ts.messages()) != 5 {
		t.Fatalf("%d messages, want 5", len(ts.messages()))
	}
	// Each accepted DATA ended its transaction: no RSET before the next MAIL.
	if n := ts.rsets.Load(); n != 0 {
		t.Fatalf("%d RSETs after clean transactions, want 0", n)
	}
	// A refused recipient leaves the transaction open: RSET before the next.
	ts.reply("gone@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	if err := s.Deliver(context.Background(), "qf", "", "gone@example.org", []byte(msg)); err == nil {
		t.Fatal("delivery to a refused recipient succeeded")
	}
	mustDeliver(t, s, "qg", "ana@example.org", msg)
	if n, c := ts.rsets.Load(), ts.accepts.Load(); n != 1 || c != 1 {
		t.Fatalf("after a refused recipient: %d RSETs on %d connections, want 1 on 1", n, c)
	}
}

func TestConnectionLimitPerConn(t *testing.T) {
	ts := newTestServer(t, nil)
	cfg := relayTo(ts)
	cfg.MaxMessagesPerConnection = 3
	s := newSender(t, cfg, false)
	for range 7 {
		mustDeliver(t, s, "q", "ana@example.org", msg)
	}
	if n := ts.accepts.Load(); n != 3 {
		t.Fatalf("%d connections for 7 messages at 3 a connection, want 3", n)
	}
}

func TestDeadPooledConnectionRedialled(t *testing.T) {
	ts := newTestServer(t, nil)
	s := newSender(t, relayTo(ts), false)
	mustDeliver(t, s, "q1", "ana@example.org", msg)
	ts.closeAll() // the server hangs up while the connection is idle
	mustDeliver(t, s, "q2", "ana@example.org", msg)
	if n := ts.accepts.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

func TestIdleTimeoutClosesConnection(t *testing.T) {
	ts := newTestServer(t, nil)
	cfg := relayTo(ts)
	cfg.IdleTimeout = 1 // 1ns: closed as soon as it is pooled
	s := newSender(t, cfg, false)
	mustDeliver(t, s, "q1", "ana@example.org", msg)
	<-ts.loggedOut // the idle connection was QUIT by the Sender
	mustDeliver(t, s, "q2", "ana@example.org", msg)
	if n := ts.accepts.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

func TestConcurrencyPerDomain(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.block = make(chan struct{})
	ts.entered = make(chan struct{}, 16)
	cfg := relayTo(ts)
	cfg.ConcurrencyPerDomain = 2
	s := newSender(t, cfg, false)

	const n = 6
	errs := make(chan error, n)
	for range n {
		go func() {
			errs <- s.Deliver(context.Background(), "q", "b@example.com", "ana@example.org", []byte(msg))
		}()
	}
	// Let one session finish each time one more enters: at most 2 should ever be inside.
	<-ts.entered
	<-ts.entered
	for i := range n {
		ts.block <- struct{}{}
		if i < n-2 {
			<-ts.entered
		}
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ts.mu.Lock()
	maxAct := ts.maxAct
	ts.mu.Unlock()
	if maxAct != 2 {
		t.Fatalf("at most %d sessions at once, want 2", maxAct)
	}
	if a := ts.accepts.Load(); a > 2 {
		t.Fatalf("%d connections, want at most 2", a)
	}
}

func TestConcurrencyWaitHonoursContext(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.block = make(chan struct{})
	ts.entered = make(chan struct{}, 4)
	cfg := relayTo(ts)
	cfg.ConcurrencyPerDomain = 1
	s := newSender(t, cfg, false)
	done := make(chan error, 1)
	go func() {
		done <- s.Deliver(context.Background(), "q1", "b@example.com", "ana@example.org", []byte(msg))
	}()
	<-ts.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Deliver(ctx, "q2", "b@example.com", "ana@example.org", []byte(msg))
	var de *DeliveryError
	if !errors.As(err, &de) || !de.Temporary() || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want temporary context.Canceled", err)
	}
	ts.block <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// stubResolver answers from maps; a missing entry is "not found".
type stubResolver struct {
	mx    map[string][]*net.MX
	hosts map[string][]string
	txt   map[string][]string
}

func (r stubResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	if v, ok := r.txt[name]; ok {
		return v, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (r stubResolver) LookupMX(_ context.Context, name string) ([]*net.MX, error) {
	if mx, ok := r.mx[name]; ok {
		return mx, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (r stubResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	if h, ok := r.hosts[host]; ok {
		return h, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestMXMode(t *testing.T) {
	ts := newTestServer(t, nil)
	res := stubResolver{
		mx: map[string][]*net.MX{
			// mx1 (preferred) refuses connections: nothing listens on 127.0.0.2.
			"two.example":  {{Host: "mx2.two.example.", Pref: 20}, {Host: "mx1.two.example.", Pref: 10}},
			"null.example": {{Host: ".", Pref: 0}},
		},
		hosts: map[string][]string{
			"mx1.two.example": {"127.0.0.2"},
			"mx2.two.example": {"127.0.0.1"},
			"bare.example":    {"127.0.0.1"}, // no MX: implicit MX, the A record
		},
	}
	s := newSender(t, Config{Mode: ModeMX, SMTPPort: ts.Port, Resolver: res}, true)

	mustDeliver(t, s, "q1", "ana@two.example", msg)
	mustDeliver(t, s, "q2", "ana@bare.example", msg)
	got := ts.messages()
	if len(got) != 2 || got[0].To != "ana@two.example" || got[1].To != "ana@bare.example" {
		t.Fatalf("server got %+v", got)
	}
	verifyDKIM(t, got[0].Body, 2)

	err := s.Deliver(context.Background(), "q3", "b@example.com", "ana@null.example", []byte(msg))
	var de *DeliveryError
	if !errors.As(err, &de) || de.Temporary() || de.Code != 556 || de.Enhanced != "5.1.10" {
		t.Fatalf("null MX: err = %v, want permanent 556 5.1.10", err)
	}

	err = s.Deliver(context.Background(), "q4", "b@example.com", "ana@nowhere.example", []byte(msg))
	if !errors.As(err, &de) || de.Temporary() || de.Enhanced != "5.1.2" {
		t.Fatalf("no MX, no A: err = %v, want permanent 5.1.2", err)
	}
}

func TestMXAllDownIsTemporary(t *testing.T) {
	ts := newTestServer(t, nil)
	res := stubResolver{
		mx:    map[string][]*net.MX{"down.example": {{Host: "a.down.example", Pref: 10}, {Host: "b.down.example", Pref: 20}}},
		hosts: map[string][]string{"a.down.example": {"127.0.0.2"}, "b.down.example": {"127.0.0.3"}},
	}
	s := newSender(t, Config{Mode: ModeMX, SMTPPort: ts.Port, Resolver: res}, false)
	err := s.Deliver(context.Background(), "q", "", "ana@down.example", []byte(msg))
	var de *DeliveryError
	if !errors.As(err, &de) || !de.Temporary() || de.Stage != StageConnect {
		t.Fatalf("err = %v, want temporary at connect", err)
	}
}

func TestStartTLS(t *testing.T) {
	srvTLS, pool := selfSigned(t)
	cases := []struct {
		name    string
		tls     *tls.Config
		wantTLS bool
		conns   int32
	}{
		{"trusted", &tls.Config{RootCAs: pool}, true, 1},
		{"opportunistic", nil, true, 1},
		{"untrusted certificate, opportunistic: TLS unverified", &tls.Config{RootCAs: x509.NewCertPool()}, true, 1},
		// The server speaks at most TLS 1.2, the client at least 1.3.
		{"handshake fails, plain text", &tls.Config{MinVersion: tls.VersionTLS13}, false, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sc := srvTLS.Clone()
			sc.MaxVersion = tls.VersionTLS12
			ts := newTestServer(t, sc)
			cfg := relayTo(ts)
			cfg.TLS = c.tls
			s := newSender(t, cfg, true)
			mustDeliver(t, s, "q1", "ana@example.org", msg)
			got := ts.messages()
			if len(got) != 1 || got[0].TLS != c.wantTLS {
				t.Fatalf("messages %d, TLS=%v, want TLS=%v", len(got), len(got) > 0 && got[0].TLS, c.wantTLS)
			}
			verifyDKIM(t, got[0].Body, 2)
			if n := ts.accepts.Load(); n != c.conns {
				t.Fatalf("%d connections, want %d", n, c.conns)
			}
			// A second message reuses the (TLS) connection.
			mustDeliver(t, s, "q2", "ana@example.org", msg)
			if n := ts.accepts.Load(); n != c.conns {
				t.Fatalf("after reuse: %d connections, want %d", n, c.conns)
			}
		})
	}
}

func TestCapture(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	s := newSender(t, Config{Mode: ModeCapture, CaptureDir: dir}, true)
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("capture dir: %v %v", fi, err)
	}
	in := strings.ReplaceAll(msg, "\r\n", "\n") // bare LF in, CRLF out
	mustDeliver(t, s, "20260101-abc_1.x", "ana@example.org", in)
	path := s.CapturePath("20260101-abc_1.x")
	if path != filepath.Join(dir, "20260101-abc_1.x.eml") {
		t.Fatalf("CapturePath = %s", path)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, []byte("DKIM-Signature:")) || !bytes.HasSuffix(got, []byte(msg)) {
		t.Fatalf("capture file is not the signed message:\n%s", got)
	}
	verifyDKIM(t, got, 2)
	if fi, _ := os.Stat(path); fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("capture file mode %v readable by others", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d files in the outbox, want 1 (no temp files left)", len(entries))
	}

	for _, id := range []string{"", "../x", "a/b", "a b", "ä"} {
		err := s.Deliver(context.Background(), id, "", "ana@example.org", []byte(msg))
		var de *DeliveryError
		if !errors.As(err, &de) || de.Temporary() || !strings.Contains(err.Error(), "queue id") {
			t.Fatalf("id %q: err = %v, want permanent error about the queue id", id, err)
		}
	}
}

func TestUnsignedWithoutKey(t *testing.T) {
	ts := newTestServer(t, nil)
	s := newSender(t, relayTo(ts), true)
	other := strings.Replace(msg, "news@example.com", "news@other.example", 1)
	mustDeliver(t, s, "q1", "ana@example.org", other)
	mustDeliver(t, s, "q2", "ana@example.org", other)
	for _, m := range ts.messages() {
		if string(m.Body) != other {
			t.Fatalf("want the message unsigned and unchanged, got\n%s", m.Body)
		}
	}
}

func TestBadInput(t *testing.T) {
	ts := newTestServer(t, nil)
	s := newSender(t, relayTo(ts), true)
	cases := []struct{ from, to, body, want string }{
		{"b@example.com", "not-an-address", msg, "recipient"},
		{"b@example.com", "ana@example.org\r\nRCPT TO:<x@y>", msg, "recipient"},
		{"bad sender", "ana@example.org", msg, "sender"},
		{"b@example.com", "ana@example.org", "Subject: no from\r\n\r\nx\r\n", "From"},
	}
	for _, c := range cases {
		err := s.Deliver(context.Background(), "q", c.from, c.to, []byte(c.body))
		var de *DeliveryError
		if !errors.As(err, &de) || de.Temporary() || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%q→%q: err = %v, want permanent error about %s", c.from, c.to, err, c.want)
		}
	}
	if len(ts.messages()) != 0 {
		t.Fatal("bad input reached the server")
	}
}

func TestNewValidates(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{Mode: "smoke"}, "mode"},
		{Config{Mode: ModeCapture}, "capture"},
		{Config{Mode: ModeRelay, Relay: "host:25"}, "relay"},
		{Config{Mode: ModeRelay, Relay: "http://host:25"}, "relay"},
		{Config{Mode: ModeMX, Routes: map[string]string{"example.org": "nohost"}}, "route"},
		{Config{Mode: ModeMX, Routes: map[string]string{"bad domain": "h:25"}}, "route"},
	}
	for _, c := range cases {
		c.cfg.Hostname = "h.example"
		_, err := New(c.cfg, nil, zerolog.Nop())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err = %v, want it to mention %q", c.cfg, err, c.want)
		}
	}
}

func TestCloseTwiceAndAfter(t *testing.T) {
	ts := newTestServer(t, nil)
	s := newSender(t, relayTo(ts), false)
	mustDeliver(t, s, "q1", "ana@example.org", msg)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	<-ts.loggedOut // the pooled connection was QUIT
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	err := s.Deliver(context.Background(), "q2", "", "ana@example.org", []byte(msg))
	var de *DeliveryError
	if !errors.As(err, &de) || !de.Temporary() {
		t.Fatalf("after Close: err = %v, want temporary", err)
	}
}

func TestMaskText(t *testing.T) {
	got := maskText("550 5.1.1 <ana@example.org>: no such user")
	if strings.Contains(got, "ana@") || !strings.Contains(got, "example.org") {
		t.Fatalf("maskText = %q", got)
	}
}
