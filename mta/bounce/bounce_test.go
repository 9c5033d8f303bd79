package bounce

import (
	"bytes"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/bounce/bouncetest"
)

// fixtureVERP is the (fake) VERP address every fixture is addressed to.
const fixtureVERP = bouncetest.VERP

// fixtures lists what each report of bouncetest must parse to: one or more
// per MTA format (RFC 3464 DSNs and the plain-text bounces of those that send
// none), written from each MTA's documented format, and ARF reports.
var fixtures = []struct {
	file                               string
	recipient, status, action, kind    string
	feedbackType, remote, diagContains string
	reason, provider                   string
}{
	// Postfix: multipart/report, Final-Recipient; X-Postfix; for its own verdicts.
	{file: "postfix-5.1.1.eml", recipient: "nobody@example.net", status: "5.1.1", action: "failed", kind: KindHard, remote: "mail.example.net", diagContains: "User unknown in virtual mailbox table", reason: ReasonUserUnknown},
	{file: "postfix-nullmx.eml", recipient: "info@parked.example", status: "5.1.0", action: "failed", kind: KindHard, diagContains: "nullMX", reason: ReasonNotAccept},
	{file: "delayed-4.4.7.eml", recipient: "slow@example.net", status: "4.4.7", action: "delayed", kind: KindSoft, diagContains: "Connection timed out", reason: ReasonExpired},
	{file: "mailbox-full-5.2.2.eml", recipient: "full@example.com", status: "5.2.2", action: "failed", kind: KindSoft, remote: "mx1.example.com", diagContains: "Mailbox full", reason: ReasonMailboxFull},
	// Exim: plain text, X-Failed-Recipients, the address indented under "The following address(es) failed:".
	{file: "exim-550.eml", recipient: "jdoe@example.org", status: "5.1.1", action: "failed", kind: KindHard, remote: "mail.example.org", diagContains: "550 5.1.1", reason: ReasonUserUnknown},
	{file: "exim-retry-timeout.eml", recipient: "tom.wu@example.net", status: "5.4.7", action: "failed", kind: KindSoft, diagContains: "retry timeout exceeded", reason: ReasonExpired},
	// Sendmail, new (8.9+: multipart/report) and old (plain text, "----- Transcript of session follows -----").
	{file: "sendmail-5.1.1.eml", recipient: "old.user@example.net", status: "5.1.1", action: "failed", kind: KindHard, remote: "mx.example.net", diagContains: "User unknown", reason: ReasonUserUnknown},
	{file: "sendmail-old-host-unknown.eml", recipient: "pat@nowhere.example", status: "5.0.0", action: "failed", kind: KindHard, diagContains: "Host unknown", reason: ReasonHostUnknown},
	// qmail: plain text, "<addr>:" then the reason, "(#x.y.z)" for its own.
	{file: "qmail-plain.eml", recipient: "gone@example.org", status: "5.1.1", action: "failed", kind: KindHard, remote: "198.51.100.9", diagContains: "No such user", reason: ReasonUserUnknown},
	{file: "qmail-5.1.2.eml", recipient: "jo@nohost.example", status: "5.1.2", action: "failed", kind: KindHard, diagContains: "couldn't find any host", reason: ReasonHostUnknown},
	// OpenSMTPD: multipart/mixed, "addr: reply" under "the following list of recipients:".
	{file: "opensmtpd-5.7.1.eml", recipient: "hanna@example.net", status: "5.7.1", action: "failed", kind: KindSoft, diagContains: "zen.spamhaus.org", reason: ReasonBlocked},
	// Courier: multipart/report with a generic Status 5.0.0 the diagnostic refines.
	{file: "courier-5.3.4.eml", recipient: "lena.berg@example.org", status: "5.3.4", action: "failed", kind: KindSoft, remote: "mail.example.org", diagContains: "maximum message size", reason: ReasonMesgTooBig},
	// Oracle/Sun Messaging Server: multipart/report, generic 5.0.0, the text ("unknown or illegal alias") decides.
	{file: "sun-messaging-5.0.0.eml", recipient: "m.rossi@example.org", status: "5.0.0", action: "failed", kind: KindHard, remote: "mx.example.org", diagContains: "unknown or illegal alias", reason: ReasonUserUnknown},
	// Exchange 2007–2010: plain-text NDR, "Delivery has failed to these recipients or groups:", "#550 5.2.2 … ##".
	{file: "exchange2010-text-5.2.2.eml", recipient: "kim.novak@corp.example.org", status: "5.2.2", action: "failed", kind: KindSoft, diagContains: "STOREDRV.Deliver: mailbox full", reason: ReasonMailboxFull},
	// Office 365 / Exchange Online: multipart/report with the NDR text.
	{file: "exchange-ndr.eml", recipient: "mailbox@fabrikam.example", status: "5.1.10", action: "failed", kind: KindHard, diagContains: "RESOLVER.ADR.RecipientNotFound", reason: ReasonUserUnknown, provider: ProviderMicrosoft},
	{file: "office365-5.7.509.eml", recipient: "sam.ortiz@contoso.example", status: "5.7.509", action: "failed", kind: KindSoft, diagContains: "DMARC", reason: ReasonAuthFailure, provider: ProviderMicrosoft},
	// Gmail: multipart/report, X-Failed-Recipients; delays with Will-Retry-Until.
	{file: "gmail-5.1.1.eml", recipient: "someone@example.org", status: "5.1.1", action: "failed", kind: KindHard, remote: "mx.example.org", diagContains: "does not exist", reason: ReasonUserUnknown, provider: ProviderGoogle},
	{file: "gmail-4.2.2-delay.eml", recipient: "noor@example.org", status: "4.2.2", action: "delayed", kind: KindSoft, remote: "gmail-smtp-in.l.google.com", diagContains: "out of storage space", reason: ReasonMailboxFull, provider: ProviderGoogle},
	// Yahoo: plain text, qmail-like, "Remote host said:" or its own "delivery error: dd …".
	{file: "yahoo-554.eml", recipient: "user@example.net", status: "5.7.9", action: "failed", kind: KindSoft, diagContains: "policy reasons", reason: ReasonPolicyViolation, provider: ProviderYahoo},
	{file: "yahoo-dd-no-account.eml", recipient: "ola.nord@yahoo.com", status: "5.0.0", action: "failed", kind: KindHard, diagContains: "doesn't have a yahoo.com account", reason: ReasonUserUnknown, provider: ProviderYahoo},
	// ARF: Original-Rcpt-To, the included message's To, Microsoft JMRP's X-HmXmrOriginalRecipient.
	{file: "arf-abuse.eml", recipient: "reader@isp.example", kind: KindComplaint, feedbackType: "abuse", reason: ReasonFeedback},
	{file: "arf-headers-only.eml", recipient: "pat.lee@complaints.example.net", kind: KindComplaint, feedbackType: "abuse", reason: ReasonFeedback},
	{file: "arf-microsoft-jmrp.eml", recipient: "lou.kim@outlook.com", kind: KindComplaint, feedbackType: "abuse", reason: ReasonFeedback, provider: ProviderMicrosoft},
	// Not a bounce.
	{file: "vacation-autoreply.eml", recipient: "rui.costa@example.org", kind: KindUnknown, reason: ReasonVacation},
	{file: "garbage.eml", kind: KindUnknown},
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	return bouncetest.Read(t, name)
}

func TestFixtures(t *testing.T) {
	files := bouncetest.Names()
	if len(files) != len(fixtures) {
		t.Fatalf("%d fixture files, %d in the table", len(files), len(fixtures))
	}
	for _, f := range fixtures {
		t.Run(f.file, func(t *testing.T) {
			reps, err := Parse(bytes.NewReader(readFixture(t, f.file)))
			if err != nil {
				t.Fatal(err)
			}
			if len(reps) != 1 {
				t.Fatalf("%d reports: %+v", len(reps), reps)
			}
			r := reps[0]
			if r.Recipient != f.recipient || r.Status != f.status || r.Action != f.action || r.Kind != f.kind || r.FeedbackType != f.feedbackType {
				t.Errorf("got recipient %q status %q action %q kind %q feedback %q\nwant %q %q %q %q %q",
					r.Recipient, r.Status, r.Action, r.Kind, r.FeedbackType, f.recipient, f.status, f.action, f.kind, f.feedbackType)
			}
			if r.Reason != f.reason {
				t.Errorf("reason %q, want %q", r.Reason, f.reason)
			}
			if r.Provider != f.provider {
				t.Errorf("provider %q, want %q", r.Provider, f.provider)
			}
			if r.RemoteMTA != f.remote {
				t.Errorf("remote MTA %q, want %q", r.RemoteMTA, f.remote)
			}
			if !strings.Contains(r.Diagnostic, f.diagContains) {
				t.Errorf("diagnostic %q lacks %q", r.Diagnostic, f.diagContains)
			}
			if len(r.VERP) != 1 || r.VERP[0] != fixtureVERP {
				t.Errorf("VERP %v, want [%s]", r.VERP, fixtureVERP)
			}
		})
	}
}

// Text bounces beyond the fixtures: the shapes other MTAs use, and traps.
func TestTextVariants(t *testing.T) {
	hdr := "From: MAILER-DAEMON@mx.example.org\nTo: " + fixtureVERP + "\nSubject: failure notice\n\n"
	cases := []struct {
		name, msg string
		want      []Report // Recipient, Status, Action, Kind compared
	}{
		{"older Exchange", hdr + `Your message did not reach some or all of the intended recipients.

      Subject:	A note about Example
      Sent:	20.1.2010 14:03

The following recipient(s) cannot be reached:

      mailbox@fabrikam.example on 20.1.2010 14:03
            The e-mail address you entered couldn't be found.
            <mail.fabrikam.example #5.1.1 smtp;550 5.1.1 RESOLVER.ADR.RecipNotFound; not found>
`, []Report{{Recipient: "mailbox@fabrikam.example", Status: "5.1.1", Action: "failed", Kind: KindHard}}},
		{"qmail, two recipients", hdr + `Hi. This is the qmail-send program at mail.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<a@example.org>:
Remote host said: 550 5.1.1 <a@example.org>... No such user

<b@example.net>:
Connected to 192.0.2.4 but sender was rejected.
Remote host said: 552 5.2.2 Mailbox over quota

--- Below this line is a copy of the message.

Return-Path: <` + fixtureVERP + `>
From: Ana <ana@example.com>
To: a@example.org, b@example.net
`, []Report{
			{Recipient: "a@example.org", Status: "5.1.1", Action: "failed", Kind: KindHard},
			{Recipient: "b@example.net", Status: "5.2.2", Action: "failed", Kind: KindSoft},
		}},
		{"Exim delay warning", strings.Replace(hdr, "failure notice", "Warning: message 1taXyZ-000Abc-1q delayed 24 hours", 1) + `This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 24 hours on the queue on mx1.example.org.

The message identifier is:     1taXyZ-000Abc-1q

The address to which the message has not yet been delivered is:

  late@example.net
    host mx.example.net [192.0.2.30]
    Delay reason: SMTP error from remote mail server after RCPT TO:<late@example.net>:
    451 4.7.1 Greylisted, try again later

No action is required on your part.
`, []Report{{Recipient: "late@example.net", Status: "4.7.1", Action: "delayed", Kind: KindSoft}}},
		{"basic code only", hdr + "<x@example.com>:\nRemote host said: 550 Requested action not taken: mailbox unavailable\n",
			[]Report{{Recipient: "x@example.com", Status: "5.0.0", Action: "failed", Kind: KindSoft}}},
		{"no code, clear wording", hdr + "Your message wasn't delivered to gone@example.com because the address couldn't be found.\n",
			[]Report{{Recipient: "gone@example.com", Status: "5.1.1", Action: "failed", Kind: KindHard}}},
		{"IP and version numbers are not codes", hdr + "Delivery to <y@example.com> failed.\nhost 10.4.5.6 (Exim 4.96.2) said nothing useful\n",
			[]Report{{Recipient: "y@example.com", Kind: KindUnknown}}},
		{"code without an address", hdr + "Remote host said: 550 5.1.1 no such mailbox here\n",
			[]Report{{Status: "5.1.1", Action: "failed", Kind: KindHard}}},
		{"recipient only in the returned original", hdr + `Your message could not be delivered to one of its recipients.
Reason: 550 5.1.1 mailbox unavailable: no such user

------ This is a copy of the message, including all the headers. ------

Return-Path: <` + fixtureVERP + `>
From: Ana <ana@example.com>
To: Lee <lee@example.net>
`, []Report{{Recipient: "lee@example.net", Status: "5.1.1", Action: "failed", Kind: KindHard}}},
		{"could not be delivered to", hdr + `Your message could not be delivered to the following recipients:

    Lee <lee@example.net>
    Reason: 550 5.2.1 The email account that you tried to reach is disabled.
`, []Report{{Recipient: "lee@example.net", Status: "5.2.1", Action: "failed", Kind: KindSoft}}},
		{"nothing at all", hdr + "Thank you for your message. I am out of the office.\n",
			[]Report{{Kind: KindUnknown}}},
		{"sender's own address is no recipient", "From: MAILER-DAEMON@mx.example.org\nTo: ana@example.com\n\nYour message from ana@example.com to c@example.net failed: 550 5.1.1 unknown\n",
			[]Report{{Recipient: "c@example.net", Status: "5.1.1", Action: "failed", Kind: KindHard}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, crlf := range []bool{false, true} {
				msg := c.msg
				if crlf {
					msg = strings.ReplaceAll(msg, "\n", "\r\n")
				}
				reps, err := Parse(strings.NewReader(msg))
				if err != nil {
					t.Fatal(err)
				}
				if len(reps) != len(c.want) {
					t.Fatalf("crlf=%v: %d reports %+v, want %d", crlf, len(reps), reps, len(c.want))
				}
				for i, w := range c.want {
					g := reps[i]
					if g.Recipient != w.Recipient || g.Status != w.Status || g.Action != w.Action || g.Kind != w.Kind {
						t.Errorf("crlf=%v report %d: %q %q %q %q, want %q %q %q %q", crlf, i,
							g.Recipient, g.Status, g.Action, g.Kind, w.Recipient, w.Status, w.Action, w.Kind)
					}
				}
			}
		})
	}
}

// Auto-replies are no bounces: their sender is the recipient, the reason
// vacation; a bounce we cannot read is never taken for one.
func TestAutoReply(t *testing.T) {
	cases := []struct {
		name, header string
		recipient    string
		reason       string
	}{
		{"X-Autoreply", "From: Kim <kim@example.org>\nX-Autoreply: yes\nSubject: Re: A note\n", "kim@example.org", ReasonVacation},
		{"Precedence auto_reply", "From: kim@example.org\nPrecedence: auto_reply\nSubject: Re: A note\n", "kim@example.org", ReasonVacation},
		{"RFC 3834 Auto-Submitted", "From: kim@example.org\nAuto-Submitted: auto-replied\nSubject: Re: A note\n", "kim@example.org", ReasonVacation},
		{"subject only", "From: kim@example.org\nSubject: Automatic reply: A note\n", "kim@example.org", ReasonVacation},
		{"German subject", "From: kim@example.org\nSubject: Abwesenheitsnotiz: A note\n", "kim@example.org", ReasonVacation},
		{"from a mailer daemon", "From: MAILER-DAEMON@example.org\nAuto-Submitted: auto-replied\nSubject: Out of office\n", "", ""},
		{"an unreadable bounce", "From: MicrosoftExchange1234@example.org\nAuto-Submitted: auto-replied\nSubject: Undeliverable: A note\n", "", ""},
		{"a plain reply", "From: kim@example.org\nSubject: Re: A note\n", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := c.header + "To: " + fixtureVERP + "\n\nThank you for your message. I am away until Monday.\n"
			reps, err := Parse(strings.NewReader(msg))
			if err != nil || len(reps) != 1 {
				t.Fatalf("%+v, %v", reps, err)
			}
			if r := reps[0]; r.Recipient != c.recipient || r.Reason != c.reason || r.Kind != KindUnknown {
				t.Errorf("got %q %q %q, want %q %q unknown", r.Recipient, r.Reason, r.Kind, c.recipient, c.reason)
			}
		})
	}
}

// An ARF report's recipient: Original-Rcpt-To, Microsoft's
// X-HmXmrOriginalRecipient, the included message's To, or none (the VERP
// address alone then names the message).
func TestARFRecipient(t *testing.T) {
	arf := func(report, included string) string {
		return "From: fbl@isp.example\nTo: fbl@example.com\nContent-Type: multipart/report; report-type=feedback-report; boundary=XX\n\n" +
			"--XX\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nVersion: 1\nOriginal-Mail-From: <" + fixtureVERP + ">\n" + report +
			"\n--XX\nContent-Type: text/rfc822-headers\n\nFrom: ana@example.com\n" + included + "Subject: A note\n\n--XX--\n"
	}
	cases := []struct{ name, msg, want string }{
		{"Original-Rcpt-To", arf("Original-Rcpt-To: <one@isp.example>\n", "To: two@isp.example\n"), "one@isp.example"},
		{"JMRP", arf("", "X-HmXmrOriginalRecipient: <three@outlook.com>\nTo: redacted@redacted.invalid\n"), "three@outlook.com"},
		{"included To", arf("", "To: Two <two@isp.example>\n"), "two@isp.example"},
		{"VERP only", arf("", "To: undisclosed-recipients:;\n"), ""},
	}
	for _, c := range cases {
		reps, err := Parse(strings.NewReader(c.msg))
		if err != nil || len(reps) != 1 {
			t.Fatalf("%s: %+v, %v", c.name, reps, err)
		}
		r := reps[0]
		if r.Recipient != c.want || r.Kind != KindComplaint || r.Reason != ReasonFeedback || len(r.VERP) != 1 || r.VERP[0] != fixtureVERP {
			t.Errorf("%s: %+v, want recipient %q, a complaint with the VERP address", c.name, r, c.want)
		}
	}
}

// DSN details: several recipients, generic status refined by the
// diagnostic, non-rfc822 recipient types, success actions, not-spam ARF.
func TestReportDetails(t *testing.T) {
	dsn := func(groups string) string {
		return "To: " + fixtureVERP + "\nMIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=XX\n\n" +
			"--XX\nContent-Type: text/plain\n\nsee below\n--XX\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n" +
			groups + "\n--XX--\n"
	}
	reps, err := Parse(strings.NewReader(dsn(`Final-Recipient: rfc822; one@example.com
Action: failed
Status: 5.0.0
Diagnostic-Code: smtp; 550-5.1.1 gone

Final-Recipient: x400; /c=US/o=Example/s=Two/
Original-Recipient: rfc822;two@example.com
Action: failed (permanent)
Status: 5.1.8
Diagnostic-Code: smtp; 553 5.1.8 Sender address rejected: Domain not found

Final-Recipient: rfc822; three@example.com
Action: relayed
Status: 2.0.0

Final-Recipient: rfc822; four@example.com
Action: failed
Status: 5.4.4 (unroutable: null MX)
`)))
	if err != nil {
		t.Fatal(err)
	}
	want := []Report{
		{Recipient: "one@example.com", Status: "5.1.1", Action: "failed", Kind: KindHard},
		{Recipient: "two@example.com", Status: "5.1.8", Action: "failed", Kind: KindSoft},
		{Recipient: "three@example.com", Status: "2.0.0", Action: "relayed", Kind: KindUnknown},
		{Recipient: "four@example.com", Status: "5.4.4", Action: "failed", Kind: KindHard},
	}
	if len(reps) != len(want) {
		t.Fatalf("%d reports: %+v", len(reps), reps)
	}
	for i, w := range want {
		g := reps[i]
		if g.Recipient != w.Recipient || g.Status != w.Status || g.Action != w.Action || g.Kind != w.Kind {
			t.Errorf("report %d: %q %q %q %q, want %q %q %q %q", i, g.Recipient, g.Status, g.Action, g.Kind, w.Recipient, w.Status, w.Action, w.Kind)
		}
	}

	arf := strings.Replace(string(readFixture(t, "arf-abuse.eml")), "Feedback-Type: abuse", "Feedback-Type: not-spam", 1)
	reps, err = Parse(strings.NewReader(arf))
	if err != nil || len(reps) != 1 || reps[0].Kind != KindUnknown || reps[0].FeedbackType != "not-spam" {
		t.Errorf("not-spam report: %+v, %v", reps, err)
	}
}

// Hostile input: huge headers, deep nesting, many parts, binary junk.
func TestHostileInput(t *testing.T) {
	var deep strings.Builder
	deep.WriteString("To: " + fixtureVERP + "\n")
	for i := range 50 {
		fmt := "Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n"
		deep.WriteString(strings.NewReplacer("%d", string(rune('a'+i%26))+strings.Repeat("x", i)).Replace(fmt))
	}
	many := "Content-Type: multipart/mixed; boundary=q\n\n" + strings.Repeat("--q\nContent-Type: text/plain\n\nx@example.com 550 5.1.1\n", 500) + "--q--\n"
	for name, in := range map[string]string{
		"deep":       deep.String(),
		"many parts": many,
		"long line":  "Subject: " + strings.Repeat("a", 3<<20) + "\n\nbody\n",
		"no header":  "\x00\x01\x02\xff\xfe",
		"empty":      "",
		"only dsn":   "Content-Type: message/delivery-status\n\nFinal-Recipient\nAction:\n\n\n:::\n",
	} {
		reps, err := Parse(strings.NewReader(in))
		if err != nil || len(reps) == 0 || len(reps) > maxReports {
			t.Errorf("%s: %d reports, %v", name, len(reps), err)
		}
	}
	if _, err := Parse(strings.NewReader(strings.Repeat("a", maxInput+1))); err != ErrTooLarge {
		t.Errorf("oversized input: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, fx := range fixtures {
		f.Add(readFixture(f, fx.file))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		reps, err := Parse(bytes.NewReader(b))
		if err != nil {
			if len(b) <= maxInput {
				t.Fatalf("error on %d bytes: %v", len(b), err)
			}
			return
		}
		if len(reps) == 0 || len(reps) > maxReports {
			t.Fatalf("%d reports", len(reps))
		}
		for _, r := range reps {
			switch r.Kind {
			case KindHard, KindSoft, KindComplaint, KindUnknown:
			default:
				t.Fatalf("kind %q", r.Kind)
			}
			if len(r.Diagnostic) > maxDiag {
				t.Fatalf("diagnostic of %d bytes", len(r.Diagnostic))
			}
		}
	})
}

// About picks the report naming the recipient (any case), else the first;
// nothing from no reports.
func TestAbout(t *testing.T) {
	reps := []Report{{Recipient: "one@example.com", Kind: KindSoft}, {Recipient: "Two@Example.com", Kind: KindHard}}
	if r, ok := About(reps, "two@example.com"); !ok || r.Kind != KindHard {
		t.Errorf("About(two) = %+v, %v", r, ok)
	}
	if r, ok := About(reps, "three@example.com"); !ok || r.Recipient != "one@example.com" {
		t.Errorf("About(three) = %+v, %v; want the first", r, ok)
	}
	if _, ok := About(nil, "one@example.com"); ok {
		t.Error("About(nil) found a report")
	}
}
