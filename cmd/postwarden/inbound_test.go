package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/mta/bounce/bouncetest"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/mta/verp"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// bounceDomain is the harness's bounce_domain when the listener is on.
const bounceDomain = "bounce.example.com"

// fixtureVERP is the fake VERP address in the bouncetest reports.
const fixtureVERP = bouncetest.VERP

// newInboundHarness is the standard harness with smtp_listen and
// bounce_domain added to its config; it returns the listener's address.
func newInboundHarness(t *testing.T) (*harness, string) {
	t.Helper()
	h := newHarness(t, mtatest.Options{})
	listen := listenAddr(t)
	cfg := readFile(t, h.cfgPath)
	h.write("postwarden.yaml", cfg+"smtp_listen: "+listen+"\nbounce_domain: "+bounceDomain+"\n")
	return h, listen
}

// A campaign goes out; a DSN for one recipient comes back to the inbound
// listener at that message's VERP address; the recipient is suppressed
// (hard_bounce) and the message marked bounced, the others untouched.
func TestInboundBounceEndToEnd(t *testing.T) {
	h, listen := newInboundHarness(t)
	h.serve()
	file := h.campaign("bounce-1", "email,first_name,company\nana@acme.example,Ana,Acme\ndave@globex.example,Dave,Globex\n")
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "two messages at the sink", func() bool { return h.sink.Count() == 2 })
	h.waitDelivered("bounce-1", 2)

	// The envelope sender the sink saw is the message's VERP address.
	var id string
	for _, v := range jsonLines[map[string]any](t, h.mustRun(0, "queue", "ls", "--all", "--json", "--reveal", "--campaign", "bounce-1").stdout) {
		if v["rcpt"] == "ana@acme.example" {
			id, _ = v["id"].(string)
		}
	}
	if id == "" {
		t.Fatal("no queue id for ana@acme.example")
	}
	key, err := unsubscribe.LoadOrCreateKey(h.config().TokenKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := verp.New(verpKey(key), h.config().BounceDomain)
	if err != nil {
		t.Fatal(err)
	}
	rcpt := ""
	for _, m := range h.sink.Messages() {
		if len(m.To) == 1 && m.To[0] == "ana@acme.example" {
			rcpt = m.From
		}
	}
	if rcpt != codec.Address(id) {
		t.Fatalf("envelope sender %q, want the VERP address %q", rcpt, codec.Address(id))
	}
	if got, err := codec.Parse(rcpt); err != nil || got != id {
		t.Fatalf("VERP address %s names %q (%v), want %s", rcpt, got, err, id)
	}

	dsn := bytes.ReplaceAll(bouncetest.Read(t, "postfix-5.1.1.eml"), []byte(fixtureVERP), []byte(rcpt))
	if err := sendSMTP(listen, "", rcpt, dsn); err != nil {
		t.Fatalf("send DSN to %s: %v", listen, err)
	}
	// Other domains are refused: the listener never relays.
	err = sendSMTP(listen, "", "dave@globex.example", []byte("Subject: relay\n\nhi\n"))
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 {
		t.Errorf("relay attempt: %v, want 550", err)
	}

	r := h.mustRun(0, "suppress", "check", "ana@acme.example", "--json")
	if !strings.Contains(r.stdout, `"reason":"hard_bounce"`) {
		t.Errorf("suppress check: %s", r.stdout)
	}
	h.mustRun(1, "suppress", "check", "dave@globex.example")
	h.mustRun(1, "suppress", "check", "nobody@example.net") // the address in the report's text is not trusted
	show := jsonLines[map[string]any](t, h.mustRun(0, "queue", "show", id, "--json").stdout)
	if len(show) != 1 || show[0]["state"] != "bounced" {
		t.Errorf("queue show %s: %v", id, show)
	} else if show[0]["envelope_from"] != rcpt {
		t.Errorf("queue show %s: envelope_from %v, want the VERP address the sink saw, %s", id, show[0]["envelope_from"], rcpt)
	}

	// List-Unsubscribe carries a mailto URI after the https one (RFC 2369);
	// mail to it unsubscribes from the list exactly as the one-click POST does.
	var mailto string
	for _, m := range h.sink.Messages() {
		if m.To[0] != "dave@globex.example" {
			continue
		}
		mr, err := mail.CreateReader(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		lu := mr.Header.Get("List-Unsubscribe")
		if i := strings.Index(lu, "<mailto:"); i > 0 && strings.Index(lu, "<http") < i {
			mailto = strings.TrimSuffix(strings.SplitN(lu[i+len("<mailto:"):], ">", 2)[0], "?subject=unsubscribe")
		}
	}
	if !strings.HasPrefix(mailto, "unsubscribe+") || !strings.HasSuffix(mailto, "@"+bounceDomain) {
		t.Fatalf("no mailto URI after the https one in dave's List-Unsubscribe (got %q)", mailto)
	}
	if err := sendSMTP(listen, "dave@globex.example", mailto, []byte("Subject: unsubscribe\r\n\r\nunsubscribe\r\n")); err != nil {
		t.Fatalf("mail to the mailto URI: %v", err)
	}
	h.mustRun(0, "suppress", "check", "dave@globex.example", "--list", "product-news")
	h.mustRun(1, "suppress", "check", "dave@globex.example")
	if al := h.mustRun(0, "--json", "audit", "ls").stdout; !strings.Contains(al, `"who":"inbound"`) {
		t.Errorf("the mailto unsubscribe is not audited like the one-click one:\n%s", al)
	}
}

// sendSMTP runs one plain SMTP transaction (no STARTTLS: the listener is on loopback).
func sendSMTP(addr, from, rcpt string, msg []byte) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("mx.example.net"); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(bytes.ReplaceAll(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// `bounce parse` prints one line per recipient, masked unless --reveal, and
// exits 2 after the others when a file cannot be read.
func TestBounceParseCommand(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	bounceFixtures := filepath.Join(h.dir, "bounces")
	if err := os.Mkdir(bounceFixtures, 0o700); err != nil {
		t.Fatal(err)
	}
	files := bouncetest.WriteDir(t, bounceFixtures)
	if len(files) < 25 {
		t.Fatalf("fixtures: %v", files)
	}
	r := h.mustRun(0, append([]string{"bounce", "parse", "--reveal"}, files...)...) // JSON Lines by default
	type line struct{ File, Recipient, Status, Action, Kind, Reason, Provider string }
	got := map[string]line{}
	for _, l := range jsonLines[line](t, r.stdout) {
		got[filepath.Base(l.File)] = l
	}
	// Every format of bouncetest, each with its recipient, kind and reason.
	want := map[string]line{
		"postfix-5.1.1.eml":             {Recipient: "nobody@example.net", Status: "5.1.1", Action: "failed", Kind: "hard", Reason: "userunknown"},
		"postfix-nullmx.eml":            {Recipient: "info@parked.example", Status: "5.1.0", Action: "failed", Kind: "hard", Reason: "notaccept"},
		"delayed-4.4.7.eml":             {Recipient: "slow@example.net", Status: "4.4.7", Action: "delayed", Kind: "soft", Reason: "expired"},
		"mailbox-full-5.2.2.eml":        {Recipient: "full@example.com", Status: "5.2.2", Action: "failed", Kind: "soft", Reason: "mailboxfull"},
		"exim-550.eml":                  {Recipient: "jdoe@example.org", Status: "5.1.1", Action: "failed", Kind: "hard", Reason: "userunknown"},
		"exim-retry-timeout.eml":        {Recipient: "tom.wu@example.net", Status: "5.4.7", Action: "failed", Kind: "soft", Reason: "expired"},
		"sendmail-5.1.1.eml":            {Recipient: "old.user@example.net", Status: "5.1.1", Action: "failed", Kind: "hard", Reason: "userunknown"},
		"sendmail-old-host-unknown.eml": {Recipient: "pat@nowhere.example", Status: "5.0.0", Action: "failed", Kind: "hard", Reason: "hostunknown"},
		"qmail-plain.eml":               {Recipient: "gone@example.org", Status: "5.1.1", Action: "failed", Kind: "hard", Reason: "userunknown"},
		"qmail-5.1.2.eml":               {Recipient: "jo@nohost.example", Status: "5.1.2", Action: "failed", Kind: "hard", Reason: "hostunknown"},
		"opensmtpd-5.7.1.eml":           {Recipient: "hanna@example.net", Status: "5.7.1", Action: "failed", Kind: "soft", Reason: "blocked"},
		"courier-5.3.4.eml":             {Recipient: "lena.berg@example.org", Status: "5.3.4", Action: "failed", Kind: "soft", Reason: "mesgtoobig"},
		"sun-messaging-5.0.0.eml":       {Recipient: "m.rossi@example.org", Status: "5.0.0", Action: "failed", Kind: "hard", Reason: "userunknown"},
		"exchange2010-text-5.2.2.eml":   {Recipient: "kim.novak@corp.example.org", Status: "5.2.2", Action: "failed", Kind: "soft", Reason: "mailboxfull"},
		"exchange-ndr.eml":              {Recipient: "mailbox@fabrikam.example", Status: "5.1.10", Action: "failed", Kind: "hard", Reason: "userunknown", Provider: "microsoft"},
		"office365-5.7.509.eml":         {Recipient: "sam.ortiz@contoso.example", Status: "5.7.509", Action: "failed", Kind: "soft", Reason: "authfailure", Provider: "microsoft"},
		"gmail-5.1.1.eml":               {Recipient: "someone@example.org", Status: "5.1.1", Action: "failed", Kind: "hard", Reason: "userunknown", Provider: "google"},
		"gmail-4.2.2-delay.eml":         {Recipient: "noor@example.org", Status: "4.2.2", Action: "delayed", Kind: "soft", Reason: "mailboxfull", Provider: "google"},
		"yahoo-554.eml":                 {Recipient: "user@example.net", Status: "5.7.9", Action: "failed", Kind: "soft", Reason: "policyviolation", Provider: "yahoo"},
		"yahoo-dd-no-account.eml":       {Recipient: "ola.nord@yahoo.com", Status: "5.0.0", Action: "failed", Kind: "hard", Reason: "userunknown", Provider: "yahoo"},
		"arf-abuse.eml":                 {Recipient: "reader@isp.example", Kind: "complaint", Reason: "feedback"},
		"arf-headers-only.eml":          {Recipient: "pat.lee@complaints.example.net", Kind: "complaint", Reason: "feedback"},
		"arf-microsoft-jmrp.eml":        {Recipient: "lou.kim@outlook.com", Kind: "complaint", Reason: "feedback", Provider: "microsoft"},
		"vacation-autoreply.eml":        {Recipient: "rui.costa@example.org", Kind: "unknown", Reason: "vacation"},
	}
	if _, ok := got["garbage.eml"]; ok || !strings.Contains(r.stderr, "garbage.eml: no recipient found") {
		t.Errorf("garbage.eml: an object for no recipient, or no note:\n%s", r.stderr)
	}
	for _, f := range files {
		if name := filepath.Base(f); name != "garbage.eml" {
			if _, ok := want[name]; !ok {
				t.Errorf("%s: a fixture this test does not check", name)
			}
		}
	}
	for f, w := range want {
		g, ok := got[f]
		g.File = ""
		if !ok || g != w {
			t.Errorf("%s: %+v, want %+v", f, g, w)
		}
	}
	// The JSON objects carry reason and provider even when empty.
	if !strings.Contains(r.stdout, `"provider":""`) || !strings.Contains(r.stdout, `"reason":"userunknown"`) {
		t.Errorf("reason or provider missing from the JSON:\n%s", r.stdout)
	}

	r = h.mustRun(0, "bounce", "parse", "--table", filepath.Join(bounceFixtures, "gmail-4.2.2-delay.eml"))
	if hdr, row, _ := strings.Cut(r.stdout, "\n"); !strings.Contains(hdr, "REASON") || !strings.Contains(hdr, "PROVIDER") ||
		!strings.Contains(row, "mailboxfull") || !strings.Contains(row, "google") || !strings.Contains(row, "n***@example.org") {
		t.Errorf("table output:\n%s", r.stdout)
	}

	r = h.mustRun(2, "bounce", "parse", filepath.Join(h.dir, "missing.eml"), filepath.Join(bounceFixtures, "postfix-5.1.1.eml"))
	lines := jsonLines[line](t, r.stdout)
	if len(lines) != 1 || lines[0].Recipient != "n***@example.net" {
		t.Errorf("with a missing file: %v (addresses must be masked)", lines)
	}
	if !strings.Contains(r.stderr, "missing.eml") {
		t.Errorf("stderr does not name the missing file: %s", r.stderr)
	}

	r = h.mustRun(0, "bounce", "parse", filepath.Join(bounceFixtures, "qmail-plain.eml"))
	if !strings.Contains(r.stdout, "g***@example.org") || !strings.Contains(r.stdout, "5.1.1") || strings.Contains(r.stdout, "gone@") {
		t.Errorf("table output:\n%s", r.stdout)
	}
}
