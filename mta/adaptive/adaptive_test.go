package adaptive_test

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/adaptive"
)

// clock is a fake clock tests move by hand; safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newEngine returns an engine over rules (nil: the shipped ones) on clk,
// logging into the returned buffer.
func newEngine(t *testing.T, rules []adaptive.Rule, clk *clock) (*adaptive.Engine, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	e, err := adaptive.New(rules, adaptive.Config{Now: clk.Now}, zerolog.New(&lockedWriter{w: &buf}))
	if err != nil {
		t.Fatal(err)
	}
	return e, &buf
}

// lockedWriter serialises log writes from many goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Real replies, as the providers write them.
const (
	gmail42128  = "Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited."
	gmail4210   = "Try again later, closing connection. (EHLO) d9443c01a7336-21c2a1f0c2dsi12345"
	ms4517650   = "4.7.650 The mail server [192.0.2.10] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)"
	ms5507S3150 = "5.7.1 Unfortunately, messages from [192.0.2.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors."
	yahooTSS04  = "4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
	yahooTSS09  = "5.7.2 [TSS09] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes"
)

func TestDefaultRules(t *testing.T) {
	rules := adaptive.DefaultRules()
	for _, tc := range []struct {
		name, provider string
		code           int
		enhanced, text string
		kind           adaptive.Kind // 0: no rule
		target         adaptive.Target
		note           string // part of the rule's note
	}{
		{"gmail 421 4.7.28", "google", 421, "4.7.28", gmail42128, adaptive.Throttle, adaptive.Both, "Gmail: unusual rate"},
		{"gmail 421 4.7.28 in text", "google", 421, "", "4.7.28 [192.0.2.10] " + gmail42128, adaptive.Throttle, adaptive.Both, "Gmail: unusual rate"},
		{"gmail 421 4.7.0", "google", 421, "4.7.0", gmail4210, adaptive.Throttle, adaptive.Both, "Gmail: try again later"},
		{"gmail 550 5.7.1 unsolicited", "google", 550, "5.7.1", "Our system has detected that this message is likely unsolicited mail.", adaptive.Throttle, adaptive.Both, "Gmail: message likely unsolicited"},
		{"microsoft 451 4.7.650", "microsoft", 451, "", ms4517650, adaptive.SuspendPair, 0, "Microsoft: temporarily rate limited"},
		{"microsoft 550 5.7.1 S3150", "microsoft", 550, "", ms5507S3150, adaptive.SuspendPair, 0, "Microsoft: sending IP's network on the block list"},
		{"microsoft provider case", "Microsoft", 550, "5.7.1", ms5507S3150, adaptive.SuspendPair, 0, "Microsoft: sending IP's network"},
		{"microsoft 550 5.7.708", "microsoft", 550, "5.7.708", "Service unavailable. Access denied, traffic not accepted from this IP.", adaptive.SuspendPair, 0, "Microsoft: traffic not accepted"},
		{"yahoo 421 4.7.0 TSS04", "yahoo", 421, "", yahooTSS04, adaptive.Throttle, adaptive.Both, "Yahoo: deferred for unexpected volume"},
		{"yahoo 553 5.7.2 TSS09", "yahoo", 553, "5.7.2", yahooTSS09, adaptive.SuspendPair, 0, "Yahoo: all messages from this IP"},
		{"yahoo 421 without TSS04: generic 421", "yahoo", 421, "4.7.0", "Service not available", adaptive.Throttle, adaptive.Both, "any provider: 421"},
		{"S3150 text at another provider: generic block list", "proofpoint", 550, "5.7.1", ms5507S3150, adaptive.SuspendPair, 0, "any provider: sending IP on a block list"},
		{"spamhaus", "", 554, "5.7.1", "Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org", adaptive.SuspendPair, 0, "block list"},
		{"blacklist without enhanced", "mimecast", 554, "", "Your IP is blacklisted", adaptive.SuspendPair, 0, "block list"},
		{"too many connections", "gmx", 421, "4.7.0", "Too many concurrent connections from your IP", adaptive.Throttle, adaptive.Connections, "too many connections"},
		{"4yz rate limit", "orange", 450, "4.7.1", "Rate limit exceeded, slow down", adaptive.Throttle, adaptive.Both, "4yz naming a rate"},
		{"any 421", "fastmail", 421, "", "mx.example closing connection", adaptive.Throttle, adaptive.Both, "any provider: 421"},
		{"user unknown: no rule", "google", 550, "5.1.1", "The email account that you tried to reach does not exist.", 0, 0, ""},
		{"greylisting: no rule", "", 451, "4.7.1", "Greylisted, please try again in 300 seconds", 0, 0, ""},
		{"gmail 421 4.7.2 is not 4.7.28", "google", 451, "4.7.2", "temporarily deferred", 0, 0, ""},
		{"5yz rate wording is not a throttle", "", 550, "5.7.1", "message rejected, rate of complaints", 0, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := adaptive.Match(rules, tc.provider, tc.code, tc.enhanced, tc.text)
			if tc.kind == 0 {
				if r != nil {
					t.Fatalf("matched %q, want no rule", r.Note)
				}
				return
			}
			if r == nil {
				t.Fatalf("no rule, want %s", tc.kind)
			}
			if r.Action.Kind != tc.kind || r.Action.Target != tc.target || !strings.Contains(r.Note, tc.note) {
				t.Errorf("got %s %s %q, want %s %s %q", r.Action.Kind, r.Action.Target, r.Note, tc.kind, tc.target, tc.note)
			}
			if r.Action.For <= 0 || (r.Action.Kind == adaptive.Throttle && !(r.Action.Factor > 0 && r.Action.Factor < 1)) {
				t.Errorf("bad action %+v", r.Action)
			}
		})
	}
}

func TestEnhancedPrefix(t *testing.T) {
	for _, tc := range []struct {
		rule, reply string
		want        bool
	}{
		{"4.7.", "4.7.28", true},
		{"4.7", "4.7.0", true},
		{"4.", "4.2.2", true},
		{"4.7.2", "4.7.28", false},
		{"4.7.28", "4.7.28", true},
		{"4.7.", "5.7.1", false},
		{"4.7.", "", false},
	} {
		r := adaptive.Rule{Enhanced: tc.rule}
		if got := r.Matches("any", 421, tc.reply, ""); got != tc.want {
			t.Errorf("rule %q, reply %q: got %v, want %v", tc.rule, tc.reply, got, tc.want)
		}
	}
}

func TestParseRule(t *testing.T) {
	type in struct{ provider, code, enhanced, pattern, action, factor, dur string }
	for _, tc := range []struct {
		name string
		in   in
		want adaptive.Action
		errs []string // parts of the error, every one expected
	}{
		{"throttle", in{"google", "421", "4.7.28", "", "throttle", "0.5", "15m"},
			adaptive.Action{Kind: adaptive.Throttle, Factor: 0.5, For: 15 * time.Minute}, nil},
		{"throttle connections, class code", in{"", "4xx", "", "too many", "throttle_connections", "0.25", "10m"},
			adaptive.Action{Kind: adaptive.Throttle, Target: adaptive.Connections, Factor: 0.25, For: 10 * time.Minute}, nil},
		{"throttle rate", in{"", "", "4.7.", "", "Throttle_Rate", ".5", "1h"},
			adaptive.Action{Kind: adaptive.Throttle, Target: adaptive.Rate, Factor: 0.5, For: time.Hour}, nil},
		{"suspend pair", in{"yahoo", "553", "5.7.2", `\[TSS09\]`, "suspend_pair", "", "4h"},
			adaptive.Action{Kind: adaptive.SuspendPair, For: 4 * time.Hour}, nil},
		{"suspend source", in{"", "5xx", "", "spamhaus", "suspend_source", "", "2h"},
			adaptive.Action{Kind: adaptive.SuspendSource, For: 2 * time.Hour}, nil},
		{"bad code", in{"", "42", "", "", "throttle", "0.5", "1m"}, adaptive.Action{}, []string{"rule code: \"42\""}},
		{"bad enhanced", in{"", "", "4.x", "", "suspend_pair", "", "1m"}, adaptive.Action{}, []string{"rule enhanced: \"4.x\""}},
		{"class mismatch", in{"", "421", "5.7.1", "", "suspend_pair", "", "1m"}, adaptive.Action{}, []string{"does not fit code"}},
		{"bad pattern", in{"", "421", "", "(", "throttle", "0.5", "1m"}, adaptive.Action{}, []string{"rule pattern: \"(\""}},
		{"matches everything", in{"google", "", "", "", "suspend_pair", "", "1h"}, adaptive.Action{}, []string{"needs a code"}},
		{"throttle without factor", in{"", "421", "", "", "throttle", "", "1m"}, adaptive.Action{}, []string{"needs a factor"}},
		{"factor 1", in{"", "421", "", "", "throttle", "1", "1m"}, adaptive.Action{}, []string{"rule factor: \"1\""}},
		{"factor on suspension", in{"", "421", "", "", "suspend_pair", "0.5", "1m"}, adaptive.Action{}, []string{"only a throttle takes a factor"}},
		{"all at once", in{"", "999", "", "", "slow", "", "soon"}, adaptive.Action{},
			[]string{"rule code", "rule action: \"slow\"", "rule for: \"soon\""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := adaptive.ParseRule(tc.in.provider, tc.in.code, tc.in.enhanced, tc.in.pattern, tc.in.action, tc.in.factor, tc.in.dur)
			if len(tc.errs) > 0 {
				if err == nil {
					t.Fatalf("no error, want %q", tc.errs)
				}
				for _, e := range tc.errs {
					if !strings.Contains(err.Error(), e) {
						t.Errorf("error %q lacks %q", err, e)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Action != tc.want {
				t.Errorf("action %+v, want %+v", r.Action, tc.want)
			}
			if !strings.HasPrefix(r.Note, "config: ") {
				t.Errorf("note %q", r.Note)
			}
			if _, err := adaptive.New([]adaptive.Rule{r}, adaptive.Config{}, zerolog.Nop()); err != nil {
				t.Errorf("New refuses a parsed rule: %v", err)
			}
		})
	}
	// The pattern is matched without case.
	r, err := adaptive.ParseRule("yahoo", "421", "4.7.0", `\[tss04\]`, "throttle", "0.5", "30m")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Matches("yahoo", 421, "4.7.0", yahooTSS04) {
		t.Error("pattern not matched without case")
	}
}

func TestNewRefusesBadRules(t *testing.T) {
	_, err := adaptive.New([]adaptive.Rule{
		{Code: 421, Action: adaptive.Action{Kind: adaptive.Throttle, Factor: 2, For: time.Minute}, Note: "a"},
		{Action: adaptive.Action{Kind: adaptive.SuspendPair, For: time.Minute}, Note: "b"},
		{Code: 421, Action: adaptive.Action{Kind: adaptive.SuspendPair}, Note: "c"},
	}, adaptive.Config{RecoverStep: 0.5}, zerolog.Nop())
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"rule 1 (a)", "rule 2 (b)", "rule 3 (c)", "recover step 0.5"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestThrottleRecovers: a burst of Yahoo 421 [TSS04] lowers the pair once; a burst
// after the cooldown lowers it again; then, with no more such replies, the
// factor comes back one step per clean period until 1.
func TestThrottleRecovers(t *testing.T) {
	clk := newClock()
	e, _ := newEngine(t, nil, clk)
	base := adaptive.Limits{Rate: 20, Connections: 8, MessagesPerConnection: 100}
	burst := func() int {
		changed := 0
		for i := 0; i < 25; i++ {
			if e.Observe("ip1", "yahoo", 421, "", yahooTSS04) {
				changed++
			}
		}
		return changed
	}
	expect := func(step string, rate float64, conns int) {
		t.Helper()
		lim, hold := e.Limits("ip1", "yahoo", base)
		if lim.Rate != rate || lim.Connections != conns || lim.MessagesPerConnection != 100 || hold.Held() {
			t.Errorf("%s: limits %+v hold %+v, want rate %v, %d connections, no hold", step, lim, hold, rate, conns)
		}
	}

	if n := burst(); n != 1 {
		t.Errorf("first burst changed the pair %d times, want 1", n)
	}
	expect("after a burst", 10, 4)
	if lim, _ := e.Limits("ip1", "google", base); lim != base {
		t.Errorf("another provider throttled: %+v", lim)
	}
	if lim, _ := e.Limits("ip2", "yahoo", base); lim != base {
		t.Errorf("another source throttled: %+v", lim)
	}

	clk.Add(2 * time.Minute) // past the cooldown: still rate limited, lower again
	if n := burst(); n != 1 {
		t.Errorf("second burst changed the pair %d times, want 1", n)
	}
	expect("after a second burst", 5, 2)

	// The rule holds 30m; clean replies meanwhile change nothing.
	for i := 0; i < 29; i++ {
		clk.Add(time.Minute)
		e.ObserveSuccess("ip1", "yahoo")
	}
	expect("within the hold", 5, 2)
	clk.Add(time.Minute)
	expect("first step", 10, 4)
	clk.Add(9 * time.Minute)
	e.ObserveSuccess("ip1", "yahoo")
	expect("within the second clean period", 10, 4)
	clk.Add(time.Minute)
	expect("second step", 20, 8)
	clk.Add(time.Hour)
	expect("stays at 1", 20, 8)

	ch := e.Changes()
	if ch[adaptive.ChangeKey{Source: "ip1", Provider: "yahoo", Kind: adaptive.ChangeThrottle}] != 2 ||
		ch[adaptive.ChangeKey{Source: "ip1", Provider: "yahoo", Kind: adaptive.ChangeRecover}] != 2 {
		t.Errorf("changes %v", ch)
	}
	st := e.State()
	if len(st) != 1 || st[0].RateFactor != 1 || st[0].ConnFactor != 1 || !st[0].RecoverAt.IsZero() ||
		st[0].Bad != 50 || st[0].Last.Kind != adaptive.ChangeRecover || !strings.Contains(st[0].Last.Note, "Yahoo") {
		t.Errorf("state %+v", st)
	}
}

// TestBadReplyRestartsRecovery: a matching reply while a lowered factor waits
// to recover (even within the cooldown) restarts the clean period.
func TestBadReplyRestartsRecovery(t *testing.T) {
	clk := newClock()
	e, _ := newEngine(t, nil, clk)
	base := adaptive.Limits{Rate: 8, Connections: 4}
	e.Observe("ip1", "google", 421, "4.7.28", gmail42128) // t0: 0.5, first step at t30
	clk.Add(20 * time.Minute)
	e.Observe("ip1", "google", 421, "4.7.0", gmail4210) // t20: 0.25; its 15m hold ends at t35, after t30
	clk.Add(20 * time.Minute)                           // t40
	if lim, _ := e.Limits("ip1", "google", base); lim.Rate != 4 {
		t.Errorf("rate %v, want 4 (one step at t35)", lim.Rate)
	}
	// t41: lowered again (past the cooldown); the step due at t45 moves to t56.
	clk.Add(time.Minute)
	e.Observe("ip1", "google", 421, "4.7.0", gmail4210)
	if lim, _ := e.Limits("ip1", "google", base); lim.Rate != 2 {
		t.Fatalf("rate %v, want 2", lim.Rate)
	}
	clk.Add(30 * time.Second) // t41:30, a repeat: it holds (step at t56:30) but does not lower
	if e.Observe("ip1", "google", 421, "4.7.0", gmail4210) {
		t.Error("a repeat within the cooldown changed the pair")
	}
	clk.Add(14 * time.Minute) // t55:30
	if lim, _ := e.Limits("ip1", "google", base); lim.Rate != 2 {
		t.Errorf("rate %v, want 2: the repeat restarted the hold", lim.Rate)
	}
	clk.Add(time.Minute)
	if lim, _ := e.Limits("ip1", "google", base); lim.Rate != 4 {
		t.Errorf("rate %v, want 4", lim.Rate)
	}
}

func TestMinFactorAndConnections(t *testing.T) {
	clk := newClock()
	e, _ := newEngine(t, nil, clk)
	for i := 0; i < 10; i++ {
		e.Observe("ip1", "gmx", 421, "4.7.0", "Too many connections from your IP")
		clk.Add(2 * time.Minute)
	}
	lim, _ := e.Limits("ip1", "gmx", adaptive.Limits{Rate: 10, Connections: 10})
	if lim.Rate != 10 {
		t.Errorf("rate %v: a connections throttle lowered the rate", lim.Rate)
	}
	if lim.Connections != 1 {
		t.Errorf("connections %d, want 1 (factor at MinFactor, at least one)", lim.Connections)
	}
	if st := e.State(); st[0].ConnFactor != adaptive.DefaultMinFactor {
		t.Errorf("conn factor %v, want %v", st[0].ConnFactor, adaptive.DefaultMinFactor)
	}
	if lim, _ := e.Limits("ip1", "gmx", adaptive.Limits{}); lim != (adaptive.Limits{}) {
		t.Errorf("unlimited base became %+v", lim)
	}
}

// TestSuspendPair: a block-list reply hides the pair until its end; the
// pool's other sources stay usable; the whole pool held gives ok=false.
func TestSuspendPair(t *testing.T) {
	clk := newClock()
	e, _ := newEngine(t, nil, clk)
	pool := e.Pool()
	sources := []string{"ip1", "ip2"}
	start := clk.Now()

	if !e.Observe("ip1", "microsoft", 550, "5.7.1", ms5507S3150) {
		t.Fatal("no change")
	}
	_, hold := e.Limits("ip1", "microsoft", adaptive.Limits{Rate: 1})
	if hold.Scope != adaptive.HoldPair || !hold.Until.Equal(start.Add(time.Hour)) || !strings.Contains(hold.Note, "S3150") {
		t.Errorf("hold %+v", hold)
	}
	if _, h := e.Limits("ip1", "google", adaptive.Limits{}); h.Held() {
		t.Errorf("ip1 held for gmail: %+v", h)
	}
	if s, ok := pool.Choose(sources, "microsoft", clk.Now()); !ok || s != "ip2" {
		t.Errorf("Choose = %q, %v; want ip2", s, ok)
	}
	if s, ok := pool.Choose(sources, "gmail", clk.Now()); !ok || s != "ip1" {
		t.Errorf("Choose for gmail = %q, %v; want ip1", s, ok)
	}

	clk.Add(10 * time.Minute)
	e.Observe("ip2", "microsoft", 550, "", ms5507S3150)
	if s, ok := pool.Choose(sources, "microsoft", clk.Now()); ok {
		t.Errorf("Choose = %q with the whole pool suspended", s)
	}
	if u := pool.Usable(sources, "microsoft", clk.Now()); len(u) != 0 {
		t.Errorf("usable %v", u)
	}
	if got := pool.Until(sources, "microsoft", clk.Now()); !got.Equal(start.Add(time.Hour)) {
		t.Errorf("Until %v, want %v", got, start.Add(time.Hour))
	}
	// A reply to a delivery in flight when ip2 was suspended neither extends nor logs again.
	clk.Add(20 * time.Second)
	if e.Observe("ip2", "microsoft", 550, "5.7.1", ms5507S3150) {
		t.Error("repeat within the cooldown changed the pair")
	}

	clk.Add(50*time.Minute - 20*time.Second) // ip1's hour is over
	if s, ok := pool.Choose(sources, "microsoft", clk.Now()); !ok || s != "ip1" {
		t.Errorf("Choose after the end = %q, %v; want ip1", s, ok)
	}
	if _, h := e.Limits("ip1", "microsoft", adaptive.Limits{}); h.Held() {
		t.Errorf("still held: %+v", h)
	}
	if n := e.Changes()[adaptive.ChangeKey{Source: "ip1", Provider: "microsoft", Kind: adaptive.ChangeResumePair}]; n != 1 {
		t.Errorf("resume counted %d times", n)
	}
	if got := pool.Until(sources, "microsoft", clk.Now()); !got.Equal(clk.Now()) {
		t.Errorf("Until %v with ip1 free", got)
	}
}

func TestSuspendSource(t *testing.T) {
	clk := newClock()
	var got []adaptive.Change
	var mu sync.Mutex
	rule, err := adaptive.ParseRule("", "5xx", "", "spamhaus", "suspend_source", "", "2h")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	e, err := adaptive.New(append([]adaptive.Rule{rule}, adaptive.DefaultRules()...), adaptive.Config{
		Now:      clk.Now,
		OnChange: func(c adaptive.Change) { mu.Lock(); got = append(got, c); mu.Unlock() },
	}, zerolog.New(&buf))
	if err != nil {
		t.Fatal(err)
	}
	e.Observe("ip1", "gmx", 554, "5.7.1", "<ana.lopez@example.com>: Client host [192.0.2.10] blocked using zen.spamhaus.org")
	for _, prov := range []string{"gmx", "google", "microsoft"} {
		if _, h := e.Limits("ip1", prov, adaptive.Limits{}); h.Scope != adaptive.HoldSource || !h.Until.Equal(clk.Now().Add(2*time.Hour)) {
			t.Errorf("%s: hold %+v", prov, h)
		}
	}
	if s, ok := e.Pool().Choose([]string{"ip1", "ip2"}, "gmail", clk.Now()); !ok || s != "ip2" {
		t.Errorf("Choose = %q, %v", s, ok)
	}
	if len(got) != 1 || got[0].Kind != adaptive.ChangeSuspendSource || got[0].Provider != adaptive.AllProviders {
		t.Fatalf("OnChange got %+v", got)
	}
	if strings.Contains(got[0].Reply, "ana.lopez") || !strings.Contains(got[0].Reply, "@example.com") ||
		!strings.HasPrefix(got[0].Reply, "554 5.7.1 ") {
		t.Errorf("reply %q: want the code first and the address masked", got[0].Reply)
	}
	logged := buf.String()
	if !strings.Contains(logged, `"level":"warn"`) || !strings.Contains(logged, `"change":"suspend_source"`) ||
		!strings.Contains(logged, `"rule":"config: any provider 5xx /spamhaus/"`) || strings.Contains(logged, "ana.lopez") {
		t.Errorf("log %s", logged)
	}
	st := e.State()
	if len(st) != 2 || st[0].Provider != adaptive.AllProviders || st[0].SuspendedUntil.IsZero() || st[0].Last.Reply != got[0].Reply {
		t.Errorf("state %+v", st)
	}

	clk.Add(2 * time.Hour)
	if _, h := e.Limits("ip1", "google", adaptive.Limits{}); h.Held() {
		t.Errorf("held after the end: %+v", h)
	}
	mu.Lock()
	defer mu.Unlock()
	if last := got[len(got)-1]; last.Kind != adaptive.ChangeResumeSource || last.Note != rule.Note {
		t.Errorf("last change %+v", last)
	}
}

func TestThrottleLogsInfo(t *testing.T) {
	clk := newClock()
	e, buf := newEngine(t, nil, clk)
	e.Observe("ip1", "yahoo", 421, "4.7.0", yahooTSS04)
	line := buf.String()
	for _, want := range []string{`"level":"info"`, `"source":"ip1"`, `"provider":"yahoo"`, `"change":"throttle"`,
		`"rate_factor":0.5`, `TSS04`, `"reply":"421 4.7.0 [TSS04] Messages from`} {
		if !strings.Contains(line, want) {
			t.Errorf("log %s lacks %s", line, want)
		}
	}
}

// TestConcurrent runs many delivery goroutines reporting replies while others
// read limits, state and the pool; run with -race.
func TestConcurrent(t *testing.T) {
	clk := newClock()
	e, _ := newEngine(t, nil, clk)
	replies := []struct {
		provider string
		code     int
		text     string
	}{
		{"microsoft", 451, ms4517650}, {"microsoft", 550, ms5507S3150}, {"yahoo", 421, yahooTSS04},
		{"yahoo", 553, yahooTSS09}, {"gmail", 421, "4.7.28 " + gmail42128}, {"gmail", 550, "5.1.1 no such user"},
	}
	sources := []string{"ip1", "ip2", "ip3", "ip4"}
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				src := sources[(g+i)%len(sources)]
				r := replies[(g*7+i)%len(replies)]
				switch i % 5 {
				case 0:
					e.Observe(src, r.provider, r.code, "", r.text)
				case 1:
					e.ObserveSuccess(src, r.provider)
				case 2:
					lim, _ := e.Limits(src, r.provider, adaptive.Limits{Rate: 10, Connections: 5})
					if lim.Connections < 1 || lim.Rate <= 0 || lim.Rate > 10 {
						t.Errorf("limits %+v", lim)
					}
				case 3:
					e.Pool().Choose(sources, r.provider, clk.Now())
				case 4:
					if g == 0 {
						clk.Add(time.Minute)
					}
					_ = e.State()
					_ = e.Changes()
				}
			}
		}(g)
	}
	wg.Wait()
	for _, st := range e.State() {
		if st.RateFactor < adaptive.DefaultMinFactor || st.RateFactor > 1 || st.ConnFactor < adaptive.DefaultMinFactor || st.ConnFactor > 1 {
			t.Errorf("state out of range: %+v", st)
		}
	}
}

func ExampleEngine() {
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	e, _ := adaptive.New(nil, adaptive.Config{Now: func() time.Time { return now }}, zerolog.Nop())
	e.Observe("192.0.2.10", "google", 421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail originating from your IP address.")
	lim, hold := e.Limits("192.0.2.10", "google", adaptive.Limits{Rate: 10, Connections: 4})
	fmt.Println(lim.Rate, lim.Connections, hold.Held())
	// Output: 5 2 false
}
