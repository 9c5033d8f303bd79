package bounce

import (
	"regexp"
	"sort"
	"strings"
)

// The plain-text bounces this reads, by their documented shapes:
//
//	qmail:    "Hi. This is the qmail-send program at …" then "<addr>:" and the
//	          remote's reply ("Remote host said: 550 5.1.1 …"), then
//	          "--- Below this line is a copy of the message."
//	Exim:     "This message was created automatically by mail delivery
//	          software." … "The following address(es) failed:" then the
//	          indented address, "host … [ip]", "SMTP error from remote mail
//	          server after RCPT TO:<addr>:" and the reply; X-Failed-Recipients
//	          in the header; "------ This is a copy of the message, …"
//	Exchange: "The following recipient(s) cannot be reached:" then
//	          "addr on DATE" and "<host #5.1.1 smtp;550 5.1.1 …>"
//	Yahoo:    "Sorry, we were unable to deliver your message to the following
//	          address." then "<addr>:" and "Remote host said: 554 5.7.9 …" or
//	          its own "554: delivery error: dd This user doesn't have a … account"
//	Exchange 2007–2010: "Delivery has failed to these recipients or groups:",
//	          "Diagnostic information for administrators:", the address, then
//	          "#550 5.2.2 STOREDRV.Deliver: mailbox full ##"; "Original message headers:"
//	Sendmail before DSNs: "----- The following addresses had permanent fatal
//	          errors -----", "<addr>", "----- Transcript of session follows -----",
//	          "550 <addr>... Host unknown", "----- Original message follows -----"
//	OpenSMTPD: "An error has occurred while attempting to deliver a message for
//	          the following list of recipients:" then "addr: 550 …", and
//	          "Below is a copy of the original message:" (its own MIME part)
//
// Where the text quotes no code, its wording gives one (textCodes); where it
// names no address, the returned original's header does (originalRecipient).
//
// The search: cut off the returned original, find the addresses in what is
// left (minus the sender's, the reporter's and VERP ones), and look for a
// status code between each address and the next.

// originalRe finds where a returned original message starts in a text bounce.
var originalRe = regexp.MustCompile(`(?im)^[ \t]*-{2,}[ \t]*(?:this is a copy of the message|below this line is a copy of the message|original message|unsent message (?:follows|below)|message headers? follows?|the header of the original message|included (?:is a copy of )?(?:the )?message)` +
	`|^[ \t]*original message headers:` +
	`|\n\n(?:return-path|received|dkim-signature|message-id|x-original-to):`)

// delayRe recognises a delay warning rather than a failure.
var delayRe = regexp.MustCompile(`(?i)delayed mail|\(delay\)|delivery (?:has been |is )?delayed|not yet been delivered|will (?:continue|keep) (?:trying|to try)|still being retried|this is a warning only|warning: message .{0,80} delayed|will be retried until`)

// textCodes give a text bounce that quotes no code one from its wording
// (byText): only wording that is unambiguous about the recipient's mailbox
// or the message's fate is used, never policy or reputation.
var textCodes = map[string]string{
	ReasonUserUnknown: "5.1.1", // "Sorry, no mailbox here by that name", "No such user"
	ReasonHostUnknown: "5.1.2", // "Host unknown", "couldn't find any host named"
	ReasonNotAccept:   "5.1.10",
	ReasonSuspend:     "5.2.1",
	ReasonMailboxFull: "5.2.2",
	ReasonMesgTooBig:  "5.3.4",
	ReasonExpired:     "5.4.7", // Exim's "retry timeout exceeded"
}

// textCodeReasons are the reasons of textCodes, for byText.
var textCodeReasons = func() map[string]bool {
	m := map[string]bool{}
	for r := range textCodes {
		m[r] = true
	}
	return m
}()

// Patterns for the host that gave the reply.
var remoteRes = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\bhost\s+([a-z0-9.-]+\.[a-z]{2,})\.?\s*\[`),                     // Exim, Postfix
	regexp.MustCompile(`(?i)while talking to ([a-z0-9.-]+\.[a-z]{2,})`),                     // sendmail
	regexp.MustCompile(`(?i)<([a-z0-9.-]+\.[a-z]{2,}) #[245]\.`),                            // Exchange
	regexp.MustCompile(`(?i)(?:connected to|giving up on) ([0-9]{1,3}(?:\.[0-9]{1,3}){3})`), // qmail
}

// headerLineRe marks lines naming the sender or the message, whose addresses are not recipients.
var headerLineRe = regexp.MustCompile(`(?i)^[ \t>]*(?:from|sender|return-path|reply-to|message-id|in-reply-to|references|sender address|x-postfix-sender|envelope-from)[ \t]*:`)

// notRecipient lists local parts of reporters, never bounced recipients.
var notRecipient = map[string]bool{"mailer-daemon": true, "postmaster": true, "double-bounce": true, "noreply": true, "no-reply": true, "nobody-bounce": true}

// maxWindow bounds the text searched for one recipient's code.
const maxWindow = 2000

// hit is a recipient's first mention in the text.
type hit struct {
	addr string
	pos  int
}

// textReports reads a plain-text bounce.
func (p *parser) textReports(text string) []Report {
	text = strings.ReplaceAll(text, "\r\n", "\n")
	if len(text) > maxText {
		text = strings.ToValidUTF8(text[:maxText], "")
	}
	region := text
	if loc := originalRe.FindStringIndex(text); loc != nil {
		region = text[:loc[0]]
		p.textOriginal(text[loc[1]:])
	}
	exclude := p.senders()
	hits := p.recipients(region, exclude)
	delayed := delayRe.MatchString(region) || delayRe.MatchString(p.top.get("Subject"))
	action := "failed"
	if delayed {
		action = "delayed"
	}
	var out []Report
	for i, h := range hits {
		end := len(region)
		if i+1 < len(hits) {
			end = hits[i+1].pos
		}
		end = min(end, h.pos+maxWindow)
		r := windowReport(region[h.pos:end], action)
		if r.Status == "" && len(hits) == 1 { // the code may come before the address
			r = windowReport(region, action)
		}
		r.Recipient = h.addr
		out = append(out, r)
	}
	if len(out) == 0 {
		if r := windowReport(region, action); r.Status != "" {
			// No address in the text: the returned original names the one it was for.
			r.Recipient = p.originalRecipient(exclude)
			out = append(out, r)
		}
	}
	return out
}

// windowReport finds the status, diagnostic and remote host in one
// recipient's part of the text.
func windowReport(w, action string) Report {
	r := Report{Action: action}
	code, at := enhancedIn(w, false)
	if code == "" {
		if c, i := basicIn(w); c != "" {
			code, at = c[:1]+".0.0", i
		}
	}
	if code == "" {
		if reason, i := byTextAt(w, textCodeReasons); reason != "" {
			code, at = textCodes[reason], i
		}
	}
	if code != "" {
		r.Status = code
		r.Diagnostic = clean(lineAt(w, at))
	}
	for _, re := range remoteRes {
		if m := re.FindStringSubmatch(w); m != nil {
			r.RemoteMTA = strings.ToLower(m[1])
			break
		}
	}
	if r.Status == "" {
		r.Action = ""
	}
	v := Classify(Failure{Stage: StageReport, Enhanced: r.Status, Text: r.Diagnostic, Action: r.Action})
	r.Kind, r.Reason = v.Kind, v.Reason
	return r
}

// lineAt returns the line of w containing offset i, with the next line if
// it continues it (indented).
func lineAt(w string, i int) string {
	start := strings.LastIndexByte(w[:i], '\n') + 1
	end := strings.IndexByte(w[i:], '\n')
	if end < 0 {
		return w[start:]
	}
	end += i
	line := w[start:end]
	if next := w[end+1:]; len(next) > 0 && (next[0] == ' ' || next[0] == '\t') {
		if j := strings.IndexByte(next, '\n'); j >= 0 {
			next = next[:j]
		}
		if strings.TrimSpace(next) != "" && !addrOnly(next) {
			line += " " + next
		}
	}
	return line
}

// addrOnly reports whether a line holds just an address (the next recipient).
func addrOnly(l string) bool {
	t := strings.Trim(strings.TrimSpace(l), "<>:")
	return t != "" && firstAddress(t) == t
}

// originalRecipient returns the recipient the returned original's header
// names (X-Original-To, Delivered-To, then To) when a field names exactly
// one that is not a sender, else "".
func (p *parser) originalRecipient(exclude map[string]bool) string {
	for _, k := range []string{"X-Original-To", "Delivered-To", "To"} {
		as := findAddresses(p.orig.get(k))
		if len(as) == 1 && !exclude[strings.ToLower(as[0])] && !hasPrefixFold(as[0], "bounce+") {
			return as[0]
		}
	}
	return ""
}

// textOriginal reads the header of an original returned inline.
func (p *parser) textOriginal(s string) {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:] // the rest of the marker line
	}
	s = strings.TrimLeft(s, "\n \t")
	if len(p.orig) == 0 {
		p.original([]byte(s))
	}
}

// senders returns the addresses that are not recipients: the reporter's,
// the bounce's addressee's (the original's sender), the original's sender's
// and the envelope sender's (lower-cased).
func (p *parser) senders() map[string]bool {
	ex := map[string]bool{}
	for _, v := range []string{p.top.get("From"), p.top.get("Sender"), p.top.get("Reply-To"), p.top.get("To"),
		p.top.get("Delivered-To"), p.top.get("X-Original-To"), p.top.get("Envelope-To"),
		p.orig.get("From"), p.orig.get("Sender"), p.orig.get("Return-Path"), p.mailFrom} {
		for _, a := range findAddresses(v) {
			ex[strings.ToLower(a)] = true
		}
	}
	return ex
}

// recipients finds the bounced addresses in region, each once, in order of
// first mention. X-Failed-Recipients (Exim, Gmail), when present, names them.
func (p *parser) recipients(region string, exclude map[string]bool) []hit {
	lower := strings.ToLower(region)
	var hits []hit
	seen := map[string]bool{}
	add := func(a string, pos int) {
		k := strings.ToLower(a)
		if seen[k] || len(hits) >= maxReports {
			return
		}
		seen[k] = true
		hits = append(hits, hit{addr: a, pos: pos})
	}
	for _, v := range p.top.all("X-Failed-Recipients") {
		for _, a := range findAddresses(v) {
			pos := strings.Index(lower, strings.ToLower(a))
			add(a, max(pos, 0))
		}
	}
	if len(hits) == 0 {
		for _, m := range addrRe.FindAllStringIndex(region, 256) {
			a := strings.TrimLeft(region[m[0]:m[1]], ".")
			k := strings.ToLower(a)
			local := k[:strings.LastIndexByte(k, '@')]
			if exclude[k] || notRecipient[local] || hasPrefixFold(local, "bounce+") || hasPrefixFold(local, "unsubscribe+") {
				continue
			}
			if headerLineRe.MatchString(lineAt(region, m[0])) {
				continue
			}
			add(a, m[0])
		}
	}
	sort.SliceStable(hits, func(i, j int) bool { return hits[i].pos < hits[j].pos })
	return hits
}
