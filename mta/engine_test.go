package mta

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// listenSamePort listens on the same free port of each loopback address.
func listenSamePort(t *testing.T, ips ...string) (int, []net.Listener) {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Skipf("cannot listen on %s: %v", ips[0], err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{first}
		for _, ip := range ips[1:] {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == len(ips) {
			return port, lns
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatal("no port free on every address")
	return 0, nil
}

// freePort returns a port that nothing listens on, on any of ips, right now.
func freePort(t *testing.T, ips ...string) int {
	t.Helper()
	port, lns := listenSamePort(t, ips...)
	for _, ln := range lns {
		ln.Close()
	}
	return port
}

func asDeliveryError(t *testing.T, err error) *DeliveryError {
	t.Helper()
	var de *DeliveryError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v, want a *DeliveryError", err)
	}
	return de
}

func TestMXPreferenceAnd421(t *testing.T) {
	port, lns := listenSamePort(t, "127.0.0.2", "127.0.0.3")
	mx1 := serveTest(t, nil, lns[0]) // preferred, answers 421
	mx2 := serveTest(t, nil, lns[1])
	mx1.reply("ana@multi.example", &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "too busy"})
	res := stubResolver{
		mx: map[string][]*net.MX{"multi.example": {
			{Host: "mx2.multi.example.", Pref: 20},
			{Host: "mx1.multi.example.", Pref: 10},
		}},
		// mx1's first address refuses connections: its second is tried.
		hosts: map[string][]string{"mx1.multi.example": {"127.0.0.4", "127.0.0.2"}, "mx2.multi.example": {"127.0.0.3"}},
	}
	s := newSender(t, Config{Mode: ModeMX, SMTPPort: port, Resolver: res}, false)
	for i := range 3 {
		mustDeliver(t, s, fmt.Sprint("q", i), "ana@multi.example", msg)
		if n := int(mx1.rcpts.Load()); n != i+1 {
			t.Fatalf("delivery %d: mx1 saw %d RCPTs, want %d (tried first every time)", i, n, i+1)
		}
	}
	if len(mx1.messages()) != 0 || len(mx2.messages()) != 3 {
		t.Fatalf("mx1 got %d, mx2 %d messages; want 0 and 3", len(mx1.messages()), len(mx2.messages()))
	}
	// The deliveries as a whole succeeded: no circuit opened for the domain.
	s.mu.Lock()
	c := s.circuits["multi.example"]
	s.mu.Unlock()
	if c != nil {
		t.Fatalf("circuit %+v after successful deliveries", c)
	}
}

func TestMXAllDownThenUp(t *testing.T) {
	port := freePort(t, "127.0.0.2", "127.0.0.3")
	res := stubResolver{
		mx:    map[string][]*net.MX{"later.example": {{Host: "a.later.example", Pref: 10}, {Host: "b.later.example", Pref: 20}}},
		hosts: map[string][]string{"a.later.example": {"127.0.0.2"}, "b.later.example": {"127.0.0.3"}},
	}
	s := newSender(t, Config{Mode: ModeMX, SMTPPort: port, Resolver: res}, false)
	err := s.Deliver(context.Background(), "q1", "b@example.com", "ana@later.example", []byte(msg))
	de := asDeliveryError(t, err)
	if !de.Temporary() || de.Stage != StageConnect || de.Outcome() != OutcomeDeferred || !de.RetryAt().IsZero() {
		t.Fatalf("all MX down: %v (temp %v, outcome %s), want deferred at connect, no RetryAt", de, de.Temporary(), de.Outcome())
	}
	// The backup MX comes up.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.3", strconv.Itoa(port)))
	if err != nil {
		t.Skipf("port taken meanwhile: %v", err)
	}
	b := serveTest(t, nil, ln)
	mustDeliver(t, s, "q1", "ana@later.example", msg)
	if len(b.messages()) != 1 {
		t.Fatal("backup MX did not get the message")
	}
	s.Close() // before the server's cleanup: it waits for the pooled connection to end
}

func TestThrottle(t *testing.T) {
	sink, err := mtatest.Start(mtatest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	const rateLimit, n = 5, 15
	s := newSender(t, Config{Mode: ModeMX, Routes: map[string]string{"slow.example": sink.Addr},
		Rates: map[string]float64{"slow.example": rateLimit}}, false)

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			for {
				err := s.Deliver(context.Background(), fmt.Sprint("q", i), "b@example.com", "ana@slow.example", []byte(msg))
				var de *DeliveryError
				if errors.As(err, &de) && !de.RetryAt().IsZero() {
					time.Sleep(time.Until(de.RetryAt())) // what the queue does: not an attempt, wait
					continue
				}
				errs <- err
				return
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var at []time.Time
	for _, m := range sink.Messages() {
		at = append(at, m.Time)
	}
	if len(at) != n {
		t.Fatalf("sink got %d messages, want %d", len(at), n)
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	// Count arrivals in the 1 s window starting at each arrival. The burst
	// (rateLimit at once) may share the first window with a second's worth;
	// windows starting after the burst hold at most rateLimit, plus one for
	// the jitter between the limiter's slot and the arrival at the sink.
	for i := range at {
		inWindow := 0
		for j := i; j < len(at) && at[j].Sub(at[i]) < time.Second; j++ {
			inWindow++
		}
		limit := rateLimit + 1
		if i < rateLimit {
			limit = 2*rateLimit + 1
		}
		if inWindow > limit {
			t.Fatalf("%d arrivals in the second after arrival %d, want at most %d (arrivals %v)", inWindow, i, limit, at)
		}
	}
}

func TestThrottleLongWaitGivesRetryAt(t *testing.T) {
	ts := newTestServer(t, nil)
	s := newSender(t, Config{Mode: ModeMX,
		Routes: map[string]string{"slow.example": ts.Addr, "fast.example": ts.Addr},
		Rates:  map[string]float64{"slow.example": 0.1, "default": 0}}, false)
	mustDeliver(t, s, "q1", "ana@slow.example", msg) // the burst of 1
	var retry []time.Time
	for _, id := range []string{"q2", "q3"} {
		before := time.Now()
		de := asDeliveryError(t, s.Deliver(context.Background(), id, "b@example.com", "ana@slow.example", []byte(msg)))
		if !de.Temporary() || de.Stage != StageThrottle || de.Code != 0 || de.Outcome() != OutcomeDeferred {
			t.Fatalf("%s: %v, want temporary at throttle without a code", id, de)
		}
		if r := de.RetryAt(); r.Before(before.Add(5*time.Second)) || r.After(time.Now().Add(10*time.Second)) {
			t.Fatalf("%s: RetryAt in %v, want about 10s", id, time.Until(r))
		}
		retry = append(retry, de.RetryAt())
	}
	// The refused reservation was given back: q3 is not pushed behind q2.
	if d := retry[1].Sub(retry[0]); d > 5*time.Second {
		t.Fatalf("second refusal %v after the first: the reservation was kept", d)
	}
	if ts.rcpts.Load() != 1 {
		t.Fatal("a throttled message reached the server")
	}
	// Other domains ("default": 0) are not limited.
	for i := range 3 {
		mustDeliver(t, s, fmt.Sprint("f", i), "ana@fast.example", msg)
	}
}

func TestTLSPolicies(t *testing.T) {
	srvTLS, pool := selfSigned(t) // certificate for mx.test and 127.0.0.1
	withTLS := newTestServer(t, srvTLS)
	plain := newTestServer(t, nil)
	if withTLS.Port == plain.Port {
		t.Skip("same port")
	}
	res := stubResolver{
		mx: map[string][]*net.MX{
			"tls.example":   {{Host: "mx.test", Pref: 10}},
			"other.example": {{Host: "other.test", Pref: 10}},
		},
		hosts: map[string][]string{"mx.test": {"127.0.0.1"}, "other.test": {"127.0.0.1"}},
	}
	cases := []struct {
		name    string
		policy  string
		srv     *testServer
		roots   bool   // trust the server's certificate
		rcpt    string // domain tls.example or other.example via MX, else via route
		wantTLS bool
		fail    bool // temporary error at starttls, nothing sent
	}{
		{"verify, untrusted certificate", TLSVerify, withTLS, false, "ana@tls.example", false, true},
		{"verify, trusted", TLSVerify, withTLS, true, "ana@tls.example", true, false},
		{"verify, trusted but for another name", TLSVerify, withTLS, true, "ana@other.example", false, true},
		{"verify, route by IP address", TLSVerify, withTLS, true, "ana@route.example", true, false},
		{"verify, no STARTTLS", TLSVerify, plain, true, "ana@route.example", false, true},
		{"required, untrusted certificate", TLSRequired, withTLS, false, "ana@tls.example", true, false},
		{"required, no STARTTLS", TLSRequired, plain, false, "ana@route.example", false, true},
		{"opportunistic, no STARTTLS", TLSOpportunistic, plain, false, "ana@route.example", false, false},
		{"none, STARTTLS offered", TLSNone, withTLS, true, "ana@tls.example", false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := Config{Mode: ModeMX, SMTPPort: c.srv.Port, Resolver: res,
				Routes:    map[string]string{"route.example": c.srv.Addr},
				TLSPolicy: map[string]string{"default": TLSOpportunistic, "tls.example": c.policy, "other.example": c.policy, "route.example": c.policy}}
			if c.roots {
				cfg.TLS = &tls.Config{RootCAs: pool}
			}
			s := newSender(t, cfg, false)
			before := len(c.srv.messages())
			err := s.Deliver(context.Background(), "q", "b@example.com", c.rcpt, []byte(msg))
			got := c.srv.messages()[before:]
			if c.fail {
				de := asDeliveryError(t, err)
				if !de.Temporary() || de.Stage != StageSTARTTLS || len(got) != 0 {
					t.Fatalf("err = %v (temp %v), %d messages sent; want temporary at starttls, none sent", de, de.Temporary(), len(got))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].TLS != c.wantTLS {
				t.Fatalf("%d messages, TLS %v; want 1, TLS %v", len(got), len(got) == 1 && got[0].TLS, c.wantTLS)
			}
		})
	}
}

// stsServer serves an MTA-STS policy over HTTPS (certificate for
// *.example.com) and returns a client that reaches it for any host.
func stsServer(t *testing.T, policy string) *http.Client {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "mta-sts.example.com" || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, policy)
	}))
	t.Cleanup(srv.Close)
	client := srv.Client()
	tr := client.Transport.(*http.Transport).Clone()
	addr := srv.Listener.Addr().String()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	client.Transport = tr
	return client
}

func TestMTASTS(t *testing.T) {
	srvTLS, pool := selfSigned(t) // certificate for mx.test
	const (
		matching = "version: STSv1\nmode: enforce\nmx: mx.test\nmx: *.backup.example.net\nmax_age: 86400\n"
		other    = "version: STSv1\nmode: enforce\nmx: *.example.net\nmax_age: 86400\n"
		testing_ = "version: STSv1\nmode: testing\nmx: *.example.net\nmax_age: 86400\n"
	)
	cases := []struct {
		name    string
		policy  string
		trusted bool
		deliver bool
	}{
		{"enforce, MX not in policy: no connection", other, true, false},
		{"enforce, MX matches, certificate verifies", matching, true, true},
		{"enforce, MX matches, certificate untrusted", matching, false, false},
		{"testing, violations logged, delivered", testing_, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := newTestServer(t, srvTLS)
			res := stubResolver{
				mx:    map[string][]*net.MX{"example.com": {{Host: "mx.test.", Pref: 10}}},
				hosts: map[string][]string{"mx.test": {"127.0.0.1"}},
				txt:   map[string][]string{"_mta-sts.example.com": {"v=STSv1; id=20260101"}},
			}
			cfg := Config{Mode: ModeMX, SMTPPort: ts.Port, Resolver: res, MTASTS: true,
				MTASTSClient: stsServer(t, c.policy), TLSPolicy: map[string]string{"default": TLSOpportunistic}}
			if c.trusted {
				cfg.TLS = &tls.Config{RootCAs: pool}
			}
			s := newSender(t, cfg, false)
			err := s.Deliver(context.Background(), "q", "b@example.com", "ana@example.com", []byte(msg))
			if c.deliver {
				if err != nil {
					t.Fatal(err)
				}
				if got := ts.messages(); len(got) != 1 || !got[0].TLS {
					t.Fatalf("got %+v, want one message over TLS", got)
				}
				return
			}
			de := asDeliveryError(t, err)
			if !de.Temporary() || len(ts.messages()) != 0 {
				t.Fatalf("err = %v, want temporary and nothing sent", de)
			}
			if c.policy == other && (de.Stage != StageRoute || ts.accepts.Load() != 0) {
				t.Fatalf("stage %s, %d connections; want route and none", de.Stage, ts.accepts.Load())
			}
		})
	}
}

// fakeClock is a settable clock for circuits.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) set(t time.Time)     { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *fakeClock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestCircuitOn421(t *testing.T) {
	ts := newTestServer(t, nil)
	const rcpt = "ana@circuit.example"
	ts.reply(rcpt, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "slow down"})
	s := newSender(t, Config{Mode: ModeMX, Routes: map[string]string{"circuit.example": ts.Addr, "other.example": ts.Addr}}, false)
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	s.now = clk.now
	deliver := func() error {
		return s.Deliver(context.Background(), "q", "b@example.com", rcpt, []byte(msg))
	}

	if de := asDeliveryError(t, deliver()); de.Code != 421 || !de.Temporary() || !de.RetryAt().IsZero() {
		t.Fatalf("first delivery: %v, want the 421 itself", de)
	}
	conns, rcpts := ts.accepts.Load(), ts.rcpts.Load()

	// Open: refused at once, no connection, RetryAt about a minute on.
	de := asDeliveryError(t, deliver())
	if de.Stage != StageCircuit || !de.Temporary() || de.Code != 0 {
		t.Fatalf("while open: %v, want temporary at circuit", de)
	}
	if d := de.RetryAt().Sub(clk.now()); d < 54*time.Second || d > 66*time.Second {
		t.Fatalf("RetryAt %v ahead, want 1m ±10%%", d)
	}
	if ts.accepts.Load() != conns || ts.rcpts.Load() != rcpts {
		t.Fatal("an open circuit dialled the server")
	}
	// Other domains are not affected.
	mustDeliver(t, s, "q", "ana@other.example", msg)

	// After the backoff one probe goes through; it fails: open again, backoff doubled.
	clk.set(de.RetryAt())
	if de := asDeliveryError(t, deliver()); de.Code != 421 {
		t.Fatalf("probe: %v, want the 421", de)
	}
	if ts.rcpts.Load() != rcpts+2 { // the other domain's and the probe's
		t.Fatal("the probe did not reach the server")
	}
	de = asDeliveryError(t, deliver())
	if d := de.RetryAt().Sub(clk.now()); de.Stage != StageCircuit || d < 108*time.Second || d > 132*time.Second {
		t.Fatalf("after a failed probe: %v, RetryAt %v ahead; want 2m ±10%%", de, d)
	}

	// The server recovers: the next probe closes the circuit.
	ts.reply(rcpt, nil)
	clk.set(de.RetryAt().Add(time.Second))
	if err := deliver(); err != nil {
		t.Fatal(err)
	}
	if err := deliver(); err != nil {
		t.Fatalf("after a successful probe: %v", err)
	}
}

func TestCircuitHalfOpenLetsOneProbe(t *testing.T) {
	s := newSender(t, Config{Mode: ModeMX}, false)
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	s.now = clk.now
	s.mu.Lock()
	s.circuits["d.example"] = &circuit{open: true, until: clk.now().Add(-time.Second), backoff: time.Minute}
	s.mu.Unlock()
	if probe, derr := s.admit("d.example"); !probe || derr != nil {
		t.Fatalf("first after backoff: probe %v, %v; want the probe", probe, derr)
	}
	probe, derr := s.admit("d.example")
	if probe || derr == nil || derr.Stage != StageCircuit || !derr.RetryAt().After(clk.now()) {
		t.Fatalf("during the probe: probe %v, %v; want refused with RetryAt", probe, derr)
	}
}

func TestCircuitAfterConsecutiveFailures(t *testing.T) {
	ts := newTestServer(t, nil)
	const rcpt = "ana@flaky.example"
	busy := &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	s := newSender(t, Config{Mode: ModeMX, Routes: map[string]string{"flaky.example": ts.Addr}}, false)
	s.now = (&fakeClock{t: time.Unix(1_800_000_000, 0)}).now
	deliver := func() *DeliveryError {
		err := s.Deliver(context.Background(), "q", "b@example.com", rcpt, []byte(msg))
		if err == nil {
			return nil
		}
		return asDeliveryError(t, err)
	}
	ts.reply(rcpt, busy)
	for range circuitThreshold - 1 {
		if de := deliver(); de == nil || de.Code != 451 {
			t.Fatalf("got %v, want 451", de)
		}
	}
	ts.reply(rcpt, nil)
	if de := deliver(); de != nil { // a success resets the count
		t.Fatal(de)
	}
	ts.reply(rcpt, busy)
	for range circuitThreshold {
		if de := deliver(); de == nil || de.Code != 451 {
			t.Fatalf("got %v, want 451 (the circuit opened too early)", de)
		}
	}
	rcpts := ts.rcpts.Load()
	if de := deliver(); de == nil || de.Stage != StageCircuit || de.RetryAt().IsZero() {
		t.Fatalf("after %d failures in a row: %v, want the circuit open", circuitThreshold, de)
	}
	if ts.rcpts.Load() != rcpts {
		t.Fatal("an open circuit reached the server")
	}
}

func TestEnvelopeFrom(t *testing.T) {
	ts := newTestServer(t, nil)
	cfg := relayTo(ts)
	cfg.EnvelopeFrom = func(id, from string) string { return "b+" + id + "@bounce.example.com" }
	s := newSender(t, cfg, false)
	mustDeliver(t, s, "q1", "ana@example.org", msg)
	if err := s.Deliver(context.Background(), "q2", "", "ana@example.org", []byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := ts.messages()
	if len(got) != 2 || got[0].From != "b+q1@bounce.example.com" || got[1].From != "" {
		t.Fatalf("MAIL FROM %q and %q, want the EnvelopeFrom address and the null path", got[0].From, got[1].From)
	}

	cfg.EnvelopeFrom = func(string, string) string { return "not an address" }
	s = newSender(t, cfg, false)
	de := asDeliveryError(t, s.Deliver(context.Background(), "q3", "b@example.com", "ana@example.org", []byte(msg)))
	if de.Temporary() || de.Stage != StageMail {
		t.Fatalf("bad EnvelopeFrom: %v, want permanent at mail", de)
	}
}

func TestOutcome(t *testing.T) {
	cases := []struct {
		e    DeliveryError
		want string
	}{
		{DeliveryError{Temp: true, Code: 451, Enhanced: "4.7.1"}, OutcomeDeferred},
		{DeliveryError{Temp: true}, OutcomeDeferred},
		{DeliveryError{Code: 550, Enhanced: "5.1.1"}, OutcomeBouncedHard},
		{DeliveryError{Code: 556, Enhanced: "5.1.10"}, OutcomeBouncedHard},
		{DeliveryError{Code: 550, Enhanced: "5.7.1"}, OutcomeBouncedSoft},
		{DeliveryError{Code: 552, Enhanced: "5.2.2"}, OutcomeBouncedSoft},
		{DeliveryError{Code: 550}, OutcomeBouncedSoft},
		// The queue's rule, from bounce.Classify: the stage and the text count.
		{DeliveryError{Code: 550, Enhanced: "5.1.1", Stage: StageMail}, OutcomeBouncedSoft},
		{DeliveryError{Code: 553, Enhanced: "5.1.8", Stage: StageRcpt}, OutcomeBouncedSoft},
		{DeliveryError{Code: 550, Enhanced: "5.2.1", Stage: StageRcpt}, OutcomeBouncedSoft},
		{DeliveryError{Code: 550, Enhanced: "5.0.0", Stage: StageRcpt, Message: "User unknown"}, OutcomeBouncedHard},
		{DeliveryError{Code: 450, Enhanced: "4.1.1", Stage: StageRcpt, Temp: true}, OutcomeDeferred},
	}
	for _, c := range cases {
		if got := c.e.Outcome(); got != c.want {
			t.Errorf("%+v: Outcome = %s, want %s", c.e, got, c.want)
		}
		if hard, _ := c.e.HardBounce(); hard != (c.want == OutcomeBouncedHard) { // the queue's question, same answer
			t.Errorf("%+v: HardBounce = %v, want %v", c.e, hard, !hard)
		}
	}
}

func TestDNSServer(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s := newSender(t, Config{Mode: ModeMX, DNSServer: pc.LocalAddr().String()}, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.cfg.Resolver.LookupMX(ctx, "example.org")
	buf := make([]byte, 512)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := pc.ReadFrom(buf); err != nil {
		t.Fatalf("no query reached the configured DNS server: %v", err)
	}

	if _, err := New(Config{Mode: ModeMX, Hostname: "h", DNSServer: "no-port"}, nil, zerolog.Nop()); err == nil {
		t.Fatal("DNSServer without a port accepted")
	}
}

func TestNewValidatesPolicies(t *testing.T) {
	for _, cfg := range []Config{
		{TLSPolicy: map[string]string{"default": "strict"}},
		{TLSPolicy: map[string]string{"bad domain": TLSVerify}},
		{Rates: map[string]float64{"default": -1}},
	} {
		cfg.Mode, cfg.Hostname = ModeMX, "h.example"
		if _, err := New(cfg, nil, zerolog.Nop()); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
