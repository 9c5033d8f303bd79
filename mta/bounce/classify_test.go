package bounce

import "testing"

// TestClassify is the one table for the hard/soft rule: SMTP-time replies
// (by stage), DSN groups and text bounces alike.
func TestClassify(t *testing.T) {
	cases := []struct {
		name string
		f    Failure
		kind string
		why  string
	}{
		// 5.1.x: the mailbox or domain, except the sender's own address.
		{"5.1.1 at RCPT", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.1.1", Text: "no such user"}, KindHard, ReasonUserUnknown},
		{"5.1.1 after DATA", Failure{Stage: StageData, Code: 550, Enhanced: "5.1.1"}, KindHard, ReasonUserUnknown},
		{"5.1.1 DSN", Failure{Enhanced: "5.1.1", Action: "failed", Text: "550 5.1.1 unknown"}, KindHard, ReasonUserUnknown},
		{"5.1.2 at RCPT", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.1.2", Text: "no such domain"}, KindHard, ReasonHostUnknown},
		{"5.1.2 our own lookup", Failure{Stage: StageRoute, Enhanced: "5.1.2", Text: "no MX and no address records"}, KindHard, ReasonHostUnknown},
		{"5.1.3 bad syntax", Failure{Stage: StageRcpt, Code: 553, Enhanced: "5.1.3"}, KindHard, ReasonUserUnknown},
		{"5.1.6 moved", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.1.6", Text: "mailbox has moved"}, KindHard, ReasonHasMoved},
		{"5.1.7 our sender syntax", Failure{Stage: StageRcpt, Code: 553, Enhanced: "5.1.7", Text: "bad sender address syntax"}, KindSoft, ReasonRejected},
		{"5.1.8 our sender domain", Failure{Stage: StageRcpt, Code: 553, Enhanced: "5.1.8", Text: "sender domain does not resolve"}, KindSoft, ReasonRejected},
		{"5.1.8 DSN", Failure{Enhanced: "5.1.8", Action: "failed"}, KindSoft, ReasonRejected},
		{"5.1.10 null MX, our lookup", Failure{Stage: StageRoute, Code: 556, Enhanced: "5.1.10", Text: "domain accepts no mail (null MX)"}, KindHard, ReasonNotAccept},
		{"5.1.10 Microsoft recipient not found", Failure{Enhanced: "5.1.10", Action: "failed", Text: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}, KindHard, ReasonUserUnknown},
		{"5.1.0 generic, no wording", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.1.0", Text: "address rejected"}, KindSoft, ReasonUndefined},
		// 5.2.x: the mailbox exists.
		{"5.2.1 disabled at RCPT", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.2.1", Text: "mailbox disabled"}, KindSoft, ReasonSuspend},
		{"5.2.1 DSN", Failure{Enhanced: "5.2.1", Action: "failed", Text: "account disabled"}, KindSoft, ReasonSuspend},
		{"5.2.2 full", Failure{Stage: StageRcpt, Code: 552, Enhanced: "5.2.2", Text: "over quota"}, KindSoft, ReasonMailboxFull},
		{"5.2.3 too big", Failure{Stage: StageData, Code: 552, Enhanced: "5.2.3"}, KindSoft, ReasonMesgTooBig},
		// 5.4.4: hard only when the text says the domain is gone or takes no mail.
		{"5.4.4 host not found", Failure{Enhanced: "5.4.4", Action: "failed", Text: "Host or domain name not found. Name service error for name=gone.example type=A: Host not found"}, KindHard, ReasonHostUnknown},
		{"5.4.4 null MX", Failure{Enhanced: "5.4.4", Action: "failed", Text: "550 5.4.4 domain has null MX"}, KindHard, ReasonNotAccept},
		{"5.4.4 unroutable", Failure{Enhanced: "5.4.4", Action: "failed", Text: "Unrouteable address"}, KindSoft, ReasonNetworkError},
		{"5.4.4 at RCPT, no wording", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.4.4"}, KindSoft, ReasonNetworkError},
		// 5.7.x: policy and reputation never suppress, whatever the text says.
		{"5.7.1 blocked", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.7.1", Text: "IP listed on Spamhaus"}, KindSoft, ReasonBlocked},
		{"5.7.1 spam", Failure{Stage: StageData, Code: 550, Enhanced: "5.7.1", Text: "likely unsolicited mail"}, KindSoft, ReasonSpamDetected},
		{"5.7.1 relay", Failure{Stage: StageRcpt, Code: 554, Enhanced: "5.7.1", Text: "Relay access denied"}, KindSoft, ReasonNoRelaying},
		{"5.7.1 user unknown wording", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.7.1", Text: "user unknown"}, KindSoft, ReasonSecurityError},
		{"5.7.26 auth", Failure{Stage: StageData, Code: 550, Enhanced: "5.7.26", Text: "unauthenticated email"}, KindSoft, ReasonAuthFailure},
		{"5.7.9 DSN", Failure{Enhanced: "5.7.9", Action: "failed", Text: "554 5.7.9 Message not accepted for policy reasons"}, KindSoft, ReasonPolicyViolation},
		// 4.x.x and delays are never hard.
		{"4.1.1 at RCPT", Failure{Stage: StageRcpt, Code: 450, Enhanced: "4.1.1", Text: "user unknown"}, KindSoft, ReasonUserUnknown},
		{"4.2.2 over quota", Failure{Stage: StageRcpt, Code: 452, Enhanced: "4.2.2", Text: "over quota"}, KindSoft, ReasonMailboxFull},
		{"4.7.0 rate", Failure{Stage: StageConnect, Code: 421, Enhanced: "4.7.0", Text: "try again later"}, KindSoft, ReasonSpeeding},
		{"4.4.7 DSN", Failure{Enhanced: "4.4.7", Action: "failed"}, KindSoft, ReasonExpired},
		{"5.1.1 delayed", Failure{Enhanced: "5.1.1", Action: "delayed"}, KindSoft, ReasonUserUnknown},
		{"4.0.0 text user unknown", Failure{Stage: StageRcpt, Code: 450, Text: "User unknown"}, KindSoft, ReasonUserUnknown},
		// MAIL FROM and the session: about us, never the recipient.
		{"5.1.1 at MAIL", Failure{Stage: StageMail, Code: 550, Enhanced: "5.1.1", Text: "sender unknown"}, KindSoft, ReasonRejected},
		{"5.1.2 at MAIL", Failure{Stage: StageMail, Code: 553, Enhanced: "5.1.2"}, KindSoft, ReasonRejected},
		{"5.7.1 at MAIL", Failure{Stage: StageMail, Code: 550, Enhanced: "5.7.1", Text: "blocked"}, KindSoft, ReasonBlocked},
		{"554 greeting", Failure{Stage: StageConnect, Code: 554, Text: "no SMTP service here"}, KindSoft, ReasonUndefined},
		{"521 greeting", Failure{Stage: StageConnect, Code: 521, Text: "mx.example does not accept mail"}, KindSoft, ReasonNotAccept},
		// Generic codes: the text decides.
		{"5.0.0 user unknown", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.0.0", Text: "<ana@example.com>: Recipient address rejected: User unknown in local recipient table"}, KindHard, ReasonUserUnknown},
		{"550 no enhanced, no such user", Failure{Stage: StageRcpt, Code: 550, Text: "No such user here"}, KindHard, ReasonUserUnknown},
		{"550 no enhanced, no wording", Failure{Stage: StageRcpt, Code: 550, Text: "Requested action not taken: mailbox unavailable"}, KindSoft, ReasonUndefined},
		{"5.0.0 spam before user", Failure{Stage: StageData, Code: 554, Enhanced: "5.0.0", Text: "rejected as spam; user unknown"}, KindSoft, ReasonSpamDetected},
		{"5.0.0 sender rejected", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.0.0", Text: "Sender address rejected: User unknown in local recipient table"}, KindSoft, ReasonRejected},
		{"5.0.0 mailbox full", Failure{Enhanced: "5.0.0", Action: "failed", Text: "552 mailbox full"}, KindSoft, ReasonMailboxFull},
		{"556 DSN", Failure{Action: "failed", Text: "556 domain does not accept mail"}, KindHard, ReasonNotAccept},
		{"DSN code only in the diagnostic", Failure{Action: "failed", Text: "550 The email account that you tried to reach does not exist"}, KindHard, ReasonUserUnknown},
		{"class mismatch: the reply wins", Failure{Stage: StageRcpt, Code: 450, Enhanced: "5.1.1", Text: "try later"}, KindSoft, ReasonSpeeding},
		// Wording of the MTAs and providers (the table in wordings), under generic or no codes.
		{"Yahoo dd no account", Failure{Action: "failed", Text: "554: delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0]"}, KindHard, ReasonUserUnknown},
		{"Sun unknown alias", Failure{Enhanced: "5.0.0", Action: "failed", Text: "550 5.0.0 unknown or illegal alias: x@example.org"}, KindHard, ReasonUserUnknown},
		{"qmail no mailbox here", Failure{Enhanced: "5.0.0", Action: "failed", Text: "Sorry, no mailbox here by that name."}, KindHard, ReasonUserUnknown},
		{"sendmail host unknown", Failure{Action: "failed", Text: "550 <x@nowhere.example>... Host unknown (Name server: nowhere.example: host not found)"}, KindHard, ReasonHostUnknown},
		{"Postfix null MX", Failure{Enhanced: "5.1.0", Action: "failed", Text: "Domain parked.example does not accept mail (nullMX)"}, KindHard, ReasonNotAccept},
		{"Microsoft DBEB 5.4.1", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.4.1", Text: "Recipient address rejected: Access denied. AS(201806281)"}, KindHard, ReasonUserUnknown},
		{"5.4.1 other", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.4.1", Text: "no answer from host"}, KindSoft, ReasonNetworkError},
		{"4.2.2 over quota generic text", Failure{Stage: StageRcpt, Code: 452, Enhanced: "4.2.0", Text: "The email account that you tried to reach is over quota"}, KindSoft, ReasonMailboxFull},
		{"Gmail inbox out of storage", Failure{Enhanced: "4.0.0", Action: "delayed", Text: "The recipient's inbox is out of storage space."}, KindSoft, ReasonMailboxFull},
		{"Gmail disabled account", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.0.0", Text: "The email account that you tried to reach is disabled."}, KindSoft, ReasonSuspend},
		{"Microsoft S3150", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.7.1", Text: "Unfortunately, messages from [198.51.100.7] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150)."}, KindSoft, ReasonBlocked},
		{"Microsoft 5.7.708", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.7.708", Text: "Service unavailable. Access denied, traffic not accepted from this IP."}, KindSoft, ReasonBlocked},
		{"Microsoft 4.7.650 reputation", Failure{Stage: StageRcpt, Code: 451, Enhanced: "4.7.650", Text: "The mail server [198.51.100.7] has been temporarily rate limited due to IP reputation."}, KindSoft, ReasonBlocked},
		{"Microsoft 5.7.509 DMARC", Failure{Stage: StageData, Code: 550, Enhanced: "5.7.509", Text: "Access denied, sending domain example.com does not pass DMARC verification"}, KindSoft, ReasonAuthFailure},
		{"Gmail 4.7.28 unsolicited rate", Failure{Stage: StageData, Code: 421, Enhanced: "4.7.28", Text: "Our system has detected an unusual rate of unsolicited mail originating from your IP address."}, KindSoft, ReasonSpamDetected},
		{"Gmail 5.7.25 PTR", Failure{Stage: StageRcpt, Code: 550, Enhanced: "5.7.25", Text: "The IP address sending this message does not have a PTR record setup"}, KindSoft, ReasonRequirePTR},
		{"Yahoo TSS04", Failure{Stage: StageMail, Code: 421, Enhanced: "4.7.0", Text: "[TSS04] Messages from 198.51.100.7 temporarily deferred due to unexpected volume or user complaints"}, KindSoft, ReasonSpeeding},
		{"Yahoo TSS09", Failure{Stage: StageMail, Code: 553, Enhanced: "5.7.2", Text: "[TSS09] All messages from 198.51.100.7 will be permanently deferred; Retrying will NOT succeed."}, KindSoft, ReasonBlocked},
		{"too many connections", Failure{Stage: StageConnect, Code: 421, Enhanced: "4.7.0", Text: "Too many concurrent SMTP connections from this IP address; please try again later"}, KindSoft, ReasonTooManyConn},
		{"Postfix hostname", Failure{Stage: StageRcpt, Code: 450, Enhanced: "4.7.1", Text: "Client host rejected: cannot find your hostname, [198.51.100.7]"}, KindSoft, ReasonRequirePTR},
		{"Exim all hosts failing", Failure{Action: "failed", Enhanced: "5.0.0", Text: "all hosts for 'example.net' have been failing for a long time"}, KindSoft, ReasonExpired},
		{"sendmail cannot send for days", Failure{Action: "failed", Enhanced: "4.4.7", Text: "Cannot send message for 5 days"}, KindSoft, ReasonExpired},
		{"552 size exceeded", Failure{Stage: StageData, Code: 552, Enhanced: "5.3.4", Text: "Message size exceeds fixed limit"}, KindSoft, ReasonMesgTooBig},
		{"452 insufficient storage", Failure{Stage: StageRcpt, Code: 452, Enhanced: "4.3.1", Text: "Insufficient system storage"}, KindSoft, ReasonSystemFull},
		{"5.5.3 too many recipients", Failure{Stage: StageRcpt, Code: 452, Enhanced: "4.5.3", Text: "Too many recipients"}, KindSoft, ReasonExceedLimit},
		{"503 bad sequence", Failure{Stage: StageData, Code: 503, Enhanced: "5.5.1", Text: "Bad sequence of commands"}, KindSoft, ReasonSyntaxError},
		{"qmail loop", Failure{Enhanced: "5.4.6", Action: "failed", Text: "This message is looping: it already has my Delivered-To line."}, KindSoft, ReasonNetworkError},
		{"relay denied 5.0.0", Failure{Stage: StageRcpt, Code: 554, Enhanced: "5.0.0", Text: "Relaying denied"}, KindSoft, ReasonNoRelaying},
		{"content filter", Failure{Stage: StageData, Code: 550, Enhanced: "5.0.0", Text: "Message rejected by filter rule"}, KindSoft, ReasonFiltered},
		// Not failures, or nothing to tell.
		{"delivered", Failure{Enhanced: "2.0.0", Action: "delivered"}, KindUnknown, ReasonDelivered},
		{"relayed", Failure{Enhanced: "5.1.1", Action: "relayed"}, KindUnknown, ReasonDelivered},
		{"no code", Failure{Action: "failed"}, KindUnknown, ReasonUndefined},
		{"not a code", Failure{Enhanced: "9.9.9", Action: "failed"}, KindUnknown, ReasonUndefined},
		{"our own permanent error", Failure{Stage: "sign", Text: "parse message: bad header"}, KindUnknown, ReasonUndefined},
		{"vacation", Failure{Text: "I am out of the office"}, KindUnknown, ReasonVacation},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := Classify(c.f)
			if v.Kind != c.kind || v.Reason != c.why {
				t.Errorf("Classify(%+v) = %+v, want %s %s", c.f, v, c.kind, c.why)
			}
			if v.Hard() != (c.kind == KindHard) {
				t.Errorf("Hard() = %v for %s", v.Hard(), v.Kind)
			}
		})
	}
}

// Only the reasons that mean the mailbox will never take mail are hard, and
// only under a 5yz about the recipient: every registered code and every
// wording, at every stage.
func TestOnlyHardReasonsSuppress(t *testing.T) {
	texts := []string{""}
	for _, w := range wordingSamples {
		texts = append(texts, w.text)
	}
	// One stage of each treatment: DATA and route are as RCPT, EHLO and STARTTLS as the greeting.
	stages := []string{StageReport, StageConnect, StageMail, StageRcpt}
	for rest := range byStatus {
		for _, class := range []string{"4", "5"} {
			for _, st := range stages {
				for _, text := range texts {
					f := Failure{Stage: st, Enhanced: class + "." + rest, Text: text}
					if st == StageReport {
						f.Action = "failed"
					}
					v := Classify(f)
					if v.Hard() && (!hardReasons[v.Reason] || class != "5" || !recipientStages[st]) {
						t.Fatalf("Classify(%+v) = %+v: hard", f, v)
					}
				}
			}
		}
	}
}

// wordingSamples are MTA and provider texts with the reason byText must find
// in each: at least one for every row of wordings.
var wordingSamples = []struct{ text, reason string }{
	{"<ana@example.com>: Sender address rejected: Domain not found", ReasonRejected},
	{"sender verify failed", ReasonRejected},
	{"<x@example.net>: Relay access denied", ReasonNoRelaying},
	{"Client host rejected: cannot find your reverse hostname, [198.51.100.7]", ReasonRequirePTR},
	{"The IP address sending this message does not have a PTR record setup", ReasonRequirePTR},
	{"This mail has been blocked because the sender is unauthenticated.", ReasonAuthFailure},
	{"Access denied, sending domain example.com does not pass DMARC verification", ReasonAuthFailure},
	{"Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org", ReasonBlocked},
	{"part of their network is on our block list (S3150)", ReasonBlocked},
	{"Service unavailable. Access denied, traffic not accepted from this IP.", ReasonBlocked},
	{"temporarily rate limited due to IP reputation", ReasonBlocked},
	{"[TSS09] All messages from 198.51.100.7 will be permanently deferred", ReasonBlocked},
	{"Our system has detected that this message is likely unsolicited mail.", ReasonSpamDetected},
	{"Too many concurrent SMTP connections from this IP address", ReasonTooManyConn},
	{"[TSS04] Messages from 198.51.100.7 temporarily deferred due to unexpected volume or user complaints", ReasonSpeeding},
	{"Server busy. Please try again later from [198.51.100.7].", ReasonSpeeding},
	{"Too many recipients", ReasonExceedLimit},
	{"STOREDRV.Deliver: mailbox full", ReasonMailboxFull},
	{"The email account that you tried to reach is over quota.", ReasonMailboxFull},
	{"The recipient's inbox is out of storage space.", ReasonMailboxFull},
	{"Message size exceeds fixed maximum message size", ReasonMesgTooBig},
	{"Message is too large", ReasonMesgTooBig},
	{"Insufficient system storage", ReasonSystemFull},
	{"The email account that you tried to reach is disabled.", ReasonSuspend},
	{"This mailbox is disabled (554.30)", ReasonSuspend},
	{"Domain parked.example does not accept mail (nullMX)", ReasonNotAccept},
	{"Host or domain name not found. Name service error for name=nowhere.example type=MX", ReasonHostUnknown},
	{"Sorry, I couldn't find any host named nohost.example. (#5.1.2)", ReasonHostUnknown},
	{"Illegal host/domain name found", ReasonHostUnknown},
	{"Recipient address rejected: User unknown in local recipient table", ReasonUserUnknown},
	{"Sorry, no mailbox here by that name. (#5.1.1)", ReasonUserUnknown},
	{"The email account that you tried to reach does not exist.", ReasonUserUnknown},
	{"RESOLVER.ADR.RecipNotFound; not found", ReasonUserUnknown},
	{"delivery error: dd This user doesn't have a yahoo.com account", ReasonUserUnknown},
	{"unknown or illegal alias: m.rossi@example.org", ReasonUserUnknown},
	{"Invalid recipient", ReasonUserUnknown},
	{"The mailbox has moved", ReasonHasMoved},
	{"retry timeout exceeded", ReasonExpired},
	{"all hosts for 'example.net' have been failing for a long time", ReasonExpired},
	{"Cannot send message for 5 days", ReasonExpired},
	{"connect to mx.example.net[192.0.2.20]:25: Connection timed out", ReasonNetworkError},
	{"Syntax error in parameters", ReasonSyntaxError},
	{"Message not accepted for policy reasons", ReasonPolicyViolation},
	{"Message rejected by filter rule", ReasonFiltered},
	{"I am out of the office until Monday", ReasonVacation},
	{"This message is looping: it already has my Delivered-To line.", ReasonSystemError},
	{"mail for example.net loops back to myself", ReasonSystemError},
}

// Every row of wordings has a sample, and every sample finds its reason.
func TestWordings(t *testing.T) {
	covered := map[int]bool{}
	for _, w := range wordingSamples {
		if got := byText(w.text, nil); got != w.reason {
			t.Errorf("byText(%q) = %q, want %q", w.text, got, w.reason)
		}
		for i, row := range wordings {
			if row.reason == w.reason && row.re.MatchString(w.text) {
				covered[i] = true
			}
		}
	}
	for i, row := range wordings {
		if !covered[i] {
			t.Errorf("wordings row %d (%s) has no sample", i, row.reason)
		}
	}
}
