package inbound_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/mta/bounce/bouncetest"
	"github.com/postwarden/postwarden/mta/inbound"
	"github.com/postwarden/postwarden/mta/verp"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

const domain = "bounce.example.com"

// fixtureVERP is the fake VERP address in the bouncetest reports; tests replace
// it with a real one.
const fixtureVERP = bouncetest.VERP

// queueSink records reports on the real queue, as cmd/postwarden wires it.
type queueSink struct{ q *queue.Store }

func (s queueSink) Bounce(id string, r bounce.Report) (string, string, string, error) {
	m, err := s.q.RecordBounce(id, queue.BounceRecord{Recipient: r.Recipient, Status: r.Status, Action: r.Action,
		Diagnostic: r.Diagnostic, RemoteMTA: r.RemoteMTA, Kind: r.Kind})
	if errors.Is(err, queue.ErrNotFound) {
		return "", "", "", errors.Join(inbound.ErrUnknownMessage, err)
	}
	return m.To, m.List, m.Campaign, err
}

func (s queueSink) Recipient(id string) (string, error) {
	m, err := s.q.Get(id)
	if errors.Is(err, queue.ErrNotFound) {
		return "", errors.Join(inbound.ErrUnknownMessage, err)
	}
	return m.To, err
}

// storeUnsub records an unsubscribe like the one-click POST, through the
// same Recorder.
type storeUnsub struct{ rec *unsubscribe.Recorder }

func (u storeUnsub) Unsubscribe(c unsubscribe.Claim, source string) error {
	_, err := u.rec.Record(c, suppression.Entry{Target: c.Address, List: c.List, Reason: suppression.Unsubscribed, Source: source}, nil)
	return err
}

// okDeliverer accepts everything, so messages end delivered.
type okDeliverer struct{}

func (okDeliverer) DeliverVia(_, _ context.Context, _, _, _ string, _ []byte, _, _ string) (string, string, string, string, error) {
	return "", "", "", "", nil
}

// world is a real queue and suppression store with delivered messages and a listener.
type world struct {
	t      *testing.T
	q      *queue.Store
	supp   *suppression.Store
	codec  *verp.Codec
	tokens *unsubscribe.Tokens
	srv    *inbound.Server
	ids    map[string]string // recipient → queue id
}

var recipients = []string{"ana@acme.example", "bob@acme.example", "carol@initech.example", "dave@globex.example", "erin@acme.example"}

func newWorld(t *testing.T, cfg inbound.Config) *world {
	t.Helper()
	return newClusterWorld(t, cfg, nil)
}

// newClusterWorld is newWorld on a cluster node handing reports to h.
func newClusterWorld(t *testing.T, cfg inbound.Config, h inbound.Handover) *world {
	t.Helper()
	dir := t.TempDir()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	box, err := sealed.New(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(queue.Config{Path: filepath.Join(dir, "queue.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	supp, err := suppression.Open(suppression.Config{Path: filepath.Join(dir, "suppression.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { supp.Close() })
	key := bytes.Repeat([]byte{7}, 32)
	w := &world{t: t, q: q, supp: supp, ids: map[string]string{}}
	if w.codec, err = verp.New(key, domain); err != nil {
		t.Fatal(err)
	}
	if w.tokens, err = unsubscribe.NewTokens(key, "https://mail.example.com"); err != nil {
		t.Fatal(err)
	}
	var msgs []queue.NewMessage
	for _, r := range recipients {
		msgs = append(msgs, queue.NewMessage{Campaign: "c1", List: "news", Key: r, From: "ana@example.com", To: r, Body: []byte("Subject: hi\r\n\r\nhi\r\n")})
	}
	res, err := q.Enqueue(msgs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recipients {
		w.ids[r] = res.IDs[i]
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := q.NewRunner(okDeliverer{}, supp, queue.RunnerConfig{Workers: 2}).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.Domain = "127.0.0.1:0", domain
	w.srv, err = inbound.Start(cfg, inbound.Deps{VERP: w.codec, Mailto: w.tokens, Bounces: queueSink{q},
		Suppressor: supp, Unsubscriber: storeUnsub{unsubscribe.NewRecorder(unsubscribe.Config{Suppressor: supp, Events: q}, log)},
		Events: q, Handover: h}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return w
}

// fixture reads a bouncetest report with the fake VERP address replaced.
func fixture(t *testing.T, name, verpAddr string) []byte {
	t.Helper()
	return bytes.ReplaceAll(bouncetest.Read(t, name), []byte(fixtureVERP), []byte(verpAddr))
}

// send runs one SMTP transaction; it returns the first error and the step that gave it.
func (w *world) send(from, rcpt string, body []byte) (string, error) {
	w.t.Helper()
	c, err := smtp.Dial(w.srv.Addr())
	if err != nil {
		return "dial", err
	}
	defer c.Close()
	if err := c.Hello("mx.example.net"); err != nil {
		return "ehlo", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "mail", err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return "rcpt", err
	}
	wc, err := c.Data()
	if err != nil {
		return "data", err
	}
	if _, err := wc.Write(bytes.ReplaceAll(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))); err != nil {
		return "data", err
	}
	if err := wc.Close(); err != nil {
		return "data", err
	}
	_ = c.Quit()
	return "", nil
}

// code returns the SMTP reply code and enhanced code of err.
func code(err error) (int, smtp.EnhancedCode) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code, se.EnhancedCode
	}
	return 0, smtp.EnhancedCode{}
}

// checkSupp asserts addr's suppression on list.
func (w *world) checkSupp(addr, list, want string) {
	w.t.Helper()
	reason, ok, err := w.supp.Check(addr, list)
	if err != nil {
		w.t.Fatal(err)
	}
	if want == "" && ok {
		w.t.Errorf("%s on %q suppressed (%s), want not", addr, list, reason)
	}
	if want != "" && reason != want {
		w.t.Errorf("%s on %q: suppressed=%v reason %q, want %q", addr, list, ok, reason, want)
	}
}

func (w *world) history(addr string) []queue.Attempt {
	w.t.Helper()
	m, err := w.q.Get(w.ids[addr])
	if err != nil {
		w.t.Fatal(err)
	}
	return m.History
}

func TestBounceAndComplaint(t *testing.T) {
	w := newWorld(t, inbound.Config{})

	// A DSN to ana's VERP address: the report names another address; ana's is suppressed.
	if step, err := w.send("", w.codec.Address(w.ids["ana@acme.example"]), fixture(t, "postfix-5.1.1.eml", w.codec.Address(w.ids["ana@acme.example"]))); err != nil {
		t.Fatalf("DSN: %s: %v", step, err)
	}
	w.checkSupp("ana@acme.example", "", "hard_bounce")
	w.checkSupp("nobody@example.net", "", "")
	m, _ := w.q.Get(w.ids["ana@acme.example"])
	if last := m.History[len(m.History)-1]; m.State != queue.StateBounced || last.Outcome != "bounce-hard" || !strings.HasPrefix(last.Reply, "5.1.1 ") {
		t.Errorf("ana's message: state %s, last event %+v", m.State, last)
	}

	// An ARF report (headers only) to bob's VERP address: complaint, global.
	if step, err := w.send("fbl@complaints.example.net", strings.ToUpper(w.codec.Address(w.ids["bob@acme.example"])), fixture(t, "arf-headers-only.eml", w.codec.Address(w.ids["bob@acme.example"]))); err != nil {
		t.Fatalf("ARF: %s: %v", step, err)
	}
	w.checkSupp("bob@acme.example", "", "complaint")
	if h := w.history("bob@acme.example"); h[len(h)-1].Outcome != "bounce-complaint" {
		t.Errorf("bob's history %+v", h)
	}

	// An ARF report to abuse@: acts through the VERP address in the original's Return-Path.
	if step, err := w.send("feedback@isp.example", "abuse@"+domain, fixture(t, "arf-abuse.eml", w.codec.Address(w.ids["carol@initech.example"]))); err != nil {
		t.Fatalf("ARF to abuse: %s: %v", step, err)
	}
	w.checkSupp("carol@initech.example", "", "complaint")

	// A delay warning: no suppression, no state change.
	if step, err := w.send("", w.codec.Address(w.ids["erin@acme.example"]), fixture(t, "delayed-4.4.7.eml", "x@example.com")); err != nil {
		t.Fatalf("delayed: %s: %v", step, err)
	}
	w.checkSupp("erin@acme.example", "", "")
	if m, _ := w.q.Get(w.ids["erin@acme.example"]); m.State != queue.StateDelivered {
		t.Errorf("erin's message %s after a delay warning", m.State)
	}

	// A report to postmaster without a VERP address of ours is accepted and dropped.
	if step, err := w.send("", "Postmaster@"+domain, fixture(t, "qmail-plain.eml", "someone@example.org")); err != nil {
		t.Fatalf("postmaster: %s: %v", step, err)
	}

	ev, err := w.q.CampaignEvents("c1")
	if err != nil {
		t.Fatal(err)
	}
	if ev["bounced_hard"] != 1 || ev["complained"] != 2 || ev["delayed"] != 1 || len(ev) != 3 {
		t.Errorf("campaign events %v", ev)
	}
}

func TestRefusals(t *testing.T) {
	w := newWorld(t, inbound.Config{MaxMessageBytes: 8 << 10})
	before := len(w.history("dave@globex.example"))

	for _, rcpt := range []string{"ana@acme.example", "bounce+x@example.com", w.codec.Address(w.ids["dave@globex.example"]) + ".example.net", "postmaster@example.org"} {
		step, err := w.send("spammer@example.net", rcpt, []byte("Subject: relay me\n\nhi\n"))
		if c, e := code(err); step != "rcpt" || c != 550 || e != (smtp.EnhancedCode{5, 7, 1}) {
			t.Errorf("RCPT %s: %s %v, want 550 5.7.1 at rcpt", rcpt, step, err)
		}
	}

	other, _ := verp.New(bytes.Repeat([]byte{9}, 32), domain)
	good := w.codec.Address(w.ids["dave@globex.example"])
	for _, rcpt := range []string{other.Address(w.ids["dave@globex.example"]), strings.Replace(good, "bounce+", "bounce+a", 1),
		"bounce+@" + domain, "unsubscribe+abc@" + domain, "info@" + domain} {
		step, err := w.send("", rcpt, fixture(t, "postfix-5.1.1.eml", rcpt))
		if c, e := code(err); step != "rcpt" || c != 550 || e != (smtp.EnhancedCode{5, 1, 1}) {
			t.Errorf("RCPT %s: %s %v, want 550 5.1.1 at rcpt", rcpt, step, err)
		}
	}
	w.checkSupp("dave@globex.example", "", "")
	if after := len(w.history("dave@globex.example")); after != before {
		t.Errorf("forged reports recorded: %d events, was %d", after, before)
	}

	big := append(fixture(t, "postfix-5.1.1.eml", good), bytes.Repeat([]byte("x\n"), 8<<10)...)
	step, err := w.send("", good, big)
	if c, _ := code(err); step != "data" || c != 552 {
		t.Errorf("oversized: %s %v, want 552 at data", step, err)
	}
	w.checkSupp("dave@globex.example", "", "")
}

func TestMailtoUnsubscribe(t *testing.T) {
	w := newWorld(t, inbound.Config{})
	uri := w.tokens.MailtoURI("dave@globex.example", "news", "c1", domain)
	rcpt := strings.TrimSuffix(strings.TrimPrefix(uri, "mailto:"), "?subject=unsubscribe")
	if step, err := w.send("dave@globex.example", rcpt, []byte("From: dave@globex.example\nSubject: unsubscribe\n\n")); err != nil {
		t.Fatalf("mailto: %s: %v", step, err)
	}
	w.checkSupp("dave@globex.example", "news", "unsubscribed")
	w.checkSupp("dave@globex.example", "", "")
	w.checkSupp("dave@globex.example", "other-list", "")
	if ev, _ := w.q.CampaignEvents("c1"); ev["unsubscribed"] != 1 {
		t.Errorf("events %v", ev)
	}
}

// failingSink fails every write, like a full disk.
type failingSink struct{}

func (failingSink) Bounce(string, bounce.Report) (string, string, string, error) {
	return "", "", "", errors.New("disk full")
}

func (failingSink) Recipient(string) (string, error) { return "", errors.New("disk full") }

// A store error answers 451 4.3.0 so the sender retries.
func TestStoreErrorIsTemporary(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	codec, _ := verp.New(key, domain)
	tokens, _ := unsubscribe.NewTokens(key, "https://mail.example.com")
	srv, err := inbound.Start(inbound.Config{Listen: "127.0.0.1:0", Domain: domain},
		inbound.Deps{VERP: codec, Mailto: tokens, Bounces: failingSink{}, Suppressor: nopSupp{}, Unsubscriber: nopUnsub{}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	w := &world{t: t, srv: srv}
	step, err := w.send("", codec.Address("0190d4c3a1b2c3d4"), []byte("Subject: x\n\nRemote host said: 550 5.1.1 gone\n"))
	if c, e := code(err); step != "data" || c != 451 || e != (smtp.EnhancedCode{4, 3, 0}) {
		t.Errorf("%s %v, want 451 4.3.0 at data", step, err)
	}
}

type nopSupp struct{}

func (nopSupp) SuppressAddress(string, string, string, string, string) error { return nil }

type nopUnsub struct{}

func (nopUnsub) Unsubscribe(unsubscribe.Claim, string) error { return nil }

// Per-address limits: connections beyond MaxConnsPerIP and messages beyond
// the rate get 421 4.7.0.
func TestLimits(t *testing.T) {
	w := newWorld(t, inbound.Config{MaxConnsPerIP: 2, MessageRate: 1e-6, MessageBurst: 2})
	var open []*smtp.Client
	for range 2 {
		c, err := smtp.Dial(w.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	// Connections are accepted in order, so the first two hold their slots.
	third, err := smtp.Dial(w.srv.Addr())
	if err == nil {
		err = third.Hello("mx.example.net") // reads the greeting
		third.Close()
	}
	if n, e := code(err); n != 421 || e != (smtp.EnhancedCode{4, 7, 0}) {
		t.Errorf("third connection: %v, want 421 4.7.0", err)
	}
	for _, c := range open {
		c.Close()
	}

	cl, err := dialEventually(w.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var last error
	for i := range 3 {
		last = cl.Mail("", nil)
		if i < 2 && last != nil {
			t.Fatalf("MAIL %d: %v", i+1, last)
		}
		_ = cl.Reset()
	}
	if n, e := code(last); n != 421 || e != (smtp.EnhancedCode{4, 7, 0}) {
		t.Errorf("third MAIL: %v, want 421 4.7.0", last)
	}
}

// dialEventually dials and greets until a connection slot is free again
// (closed connections are released when the server notices them).
func dialEventually(addr string) (*smtp.Client, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := smtp.Dial(addr)
		if err == nil {
			if err = c.Hello("mx.example.net"); err == nil {
				return c, nil
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// multiGroupDSN is a DSN to verpAddr with n per-recipient groups: group
// hard (0-based) fails 5.1.1 for rcpt, every other one fails 5.2.2 for
// another address (RFC 3464 §2.3: one group per recipient).
func multiGroupDSN(verpAddr, rcpt string, n, hard int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: MAILER-DAEMON@mx.example.net\nTo: %s\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"+
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\n"+
		"--B\nContent-Type: text/plain\n\nSome messages could not be delivered.\n\n"+
		"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n", verpAddr)
	for i := range n {
		if i == hard {
			fmt.Fprintf(&b, "\nFinal-Recipient: rfc822; %s\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 no such user\n", rcpt)
			continue
		}
		fmt.Fprintf(&b, "\nFinal-Recipient: rfc822; other%d@example.net\nAction: failed\nStatus: 5.2.2\nDiagnostic-Code: smtp; 552 5.2.2 mailbox full\n", i)
	}
	b.WriteString("\n--B--\n")
	return []byte(b.String())
}

// A DSN with 500 recipient groups sent to one VERP address acts once, on
// that message, through the group naming its recipient: one history event,
// one bounced_hard, nothing soft, nobody else touched. Sent again it changes
// nothing.
func TestMultiGroupDSNActsOnceOnItsMessage(t *testing.T) {
	w := newWorld(t, inbound.Config{})
	ana := w.codec.Address(w.ids["ana@acme.example"])
	before, bobBefore := len(w.history("ana@acme.example")), len(w.history("bob@acme.example"))
	dsn := multiGroupDSN(ana, "ana@acme.example", 500, 40)
	for i := range 2 {
		if step, err := w.send("", ana, dsn); err != nil {
			t.Fatalf("DSN %d: %s: %v", i+1, step, err)
		}
		h := w.history("ana@acme.example")
		if len(h) != before+1 || h[len(h)-1].Outcome != "bounce-hard" {
			t.Fatalf("after DSN %d: ana's history %+v, want one bounce-hard event added", i+1, h[before:])
		}
		ev, err := w.q.CampaignEvents("c1")
		if err != nil {
			t.Fatal(err)
		}
		if ev["bounced_hard"] != 1 || ev["bounced_soft"] != 0 || len(ev) != 1 {
			t.Fatalf("after DSN %d: campaign events %v, want bounced_hard 1 alone", i+1, ev)
		}
	}
	if m, _ := w.q.Get(w.ids["ana@acme.example"]); m.State != queue.StateBounced {
		t.Errorf("ana's message %s, want bounced", m.State)
	}
	w.checkSupp("ana@acme.example", "", "hard_bounce")
	w.checkSupp("bob@acme.example", "", "")
	if n := len(w.history("bob@acme.example")); n != bobBefore {
		t.Errorf("bob's message gained %d events", n-bobBefore)
	}
}

// The same DSN twice and the same ARF report twice count once each: one
// history event, one campaign event, per person.
func TestRepeatedReportsCountOnce(t *testing.T) {
	w := newWorld(t, inbound.Config{})
	ana, bob := w.codec.Address(w.ids["ana@acme.example"]), w.codec.Address(w.ids["bob@acme.example"])
	for i := range 2 {
		if step, err := w.send("", ana, fixture(t, "postfix-5.1.1.eml", ana)); err != nil {
			t.Fatalf("DSN %d: %s: %v", i+1, step, err)
		}
		if step, err := w.send("fbl@complaints.example.net", bob, fixture(t, "arf-headers-only.eml", bob)); err != nil {
			t.Fatalf("ARF %d: %s: %v", i+1, step, err)
		}
	}
	ev, err := w.q.CampaignEvents("c1")
	if err != nil {
		t.Fatal(err)
	}
	if ev["bounced_hard"] != 1 || ev["complained"] != 1 || len(ev) != 2 {
		t.Errorf("campaign events %v, want bounced_hard 1 and complained 1", ev)
	}
	for addr, outcome := range map[string]string{"ana@acme.example": "bounce-hard", "bob@acme.example": "bounce-complaint"} {
		n := 0
		for _, a := range w.history(addr) {
			if a.Outcome == outcome {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d %s events, want 1", addr, n, outcome)
		}
	}
}

// A mailto unsubscribe sent twice counts once.
func TestRepeatedMailtoUnsubscribeCountsOnce(t *testing.T) {
	w := newWorld(t, inbound.Config{})
	uri := w.tokens.MailtoURI("dave@globex.example", "news", "c1", domain)
	rcpt := strings.TrimSuffix(strings.TrimPrefix(uri, "mailto:"), "?subject=unsubscribe")
	for i := range 2 {
		if step, err := w.send("dave@globex.example", rcpt, []byte("From: dave@globex.example\nSubject: unsubscribe\n\n")); err != nil {
			t.Fatalf("mailto %d: %s: %v", i+1, step, err)
		}
	}
	w.checkSupp("dave@globex.example", "news", "unsubscribed")
	if ev, _ := w.q.CampaignEvents("c1"); ev["unsubscribed"] != 1 || len(ev) != 1 {
		t.Errorf("events %v, want unsubscribed 1", ev)
	}
}

// A DSN group is judged by bounce.Classify, the rule the queue suppresses by
// at RCPT time: 5.2.1 (disabled) and 5.1.8 (our sender) stay soft, a 5.4.4
// saying the host does not exist and a generic code saying "User unknown"
// are hard.
func TestDSNGroupsJudgedByTheOneRule(t *testing.T) {
	for _, c := range []struct {
		status, diag string
		hard         bool
	}{
		{"5.2.1", "550 5.2.1 mailbox disabled", false},
		{"5.1.8", "553 5.1.8 Sender address rejected: Domain not found", false},
		{"5.4.4", "Host or domain name not found. Name service error for name=acme.example type=A: Host not found", true},
		{"5.0.0", "550 User unknown", true},
	} {
		t.Run(c.status, func(t *testing.T) {
			w := newWorld(t, inbound.Config{})
			ana := w.codec.Address(w.ids["ana@acme.example"])
			dsn := fmt.Sprintf("From: MAILER-DAEMON@mx.example.net\nTo: %s\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"+
				"Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\n"+
				"--B\nContent-Type: text/plain\n\nNot delivered.\n\n"+
				"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"+
				"Final-Recipient: rfc822; ana@acme.example\nAction: failed\nStatus: %s\nDiagnostic-Code: smtp; %s\n\n--B--\n",
				ana, c.status, c.diag)
			if step, err := w.send("", ana, []byte(dsn)); err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			want, supp := "bounce-soft", ""
			if c.hard {
				want, supp = "bounce-hard", "hard_bounce"
			}
			if h := w.history("ana@acme.example"); len(h) == 0 || h[len(h)-1].Outcome != want {
				t.Fatalf("history %+v, want %s last", h, want)
			}
			w.checkSupp("ana@acme.example", "", supp)
		})
	}
}
