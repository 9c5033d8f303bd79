// Package bounce reads bounce messages and spam complaints: RFC 3464
// delivery status notifications, RFC 5965 ARF feedback reports, and the
// plain-text bounces of MTAs that send neither (qmail, Exim, old Sendmail,
// OpenSMTPD, older Exchange, Yahoo).
//
// Every failure gets a reason (the Reason constants, named as Sisimai names
// them) from the one classifier, Classify, whether it is an SMTP reply during
// our session, a DSN group or a text bounce: the enhanced code where it is
// specific, the wording (the wordings table, one row a reason) where it is
// generic or absent. Only ReasonUserUnknown, ReasonHostUnknown,
// ReasonHasMoved and ReasonNotAccept under a 5yz make a failure KindHard,
// the one kind that suppresses the address; blocks, reputation, spam, policy,
// authentication and rate (ReasonBlocked, ReasonSpamDetected,
// ReasonPolicyViolation, ReasonSecurityError, ReasonAuthFailure,
// ReasonRequirePTR, ReasonSpeeding, ReasonTooManyConn) are about our sending
// and stay KindSoft. Auto-replies are ReasonVacation and ARF reports
// ReasonFeedback: neither is a bounce.
//
// Without a Final-Recipient, the recipient comes from X-Failed-Recipients,
// the addresses in the text, or the returned original's header; an ARF
// report's from Original-Rcpt-To, Microsoft's X-HmXmrOriginalRecipient or
// the included message's To. Report.Provider names the provider family of
// the host that answered or reported (ProviderOf).
//
// Contract: Parse never panics and returns an error only when the input
// cannot be read. It returns at least one Report: when nothing is
// recognised, one Report of Kind "unknown". Every Report carries the VERP
// addresses (local part "bounce+…") found in the message's headers and in
// the returned original's Return-Path, because a report's text can be wrong
// or forged: callers should act on the message that the VERP address names,
// and take Recipient as information only.
package bounce

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"strings"

	"github.com/emersion/go-message"
)

// Kinds of report.
const (
	KindHard      = "hard"      // the mailbox or domain will never take mail: suppress the address (see Classify)
	KindSoft      = "soft"      // the message failed or waits, the address may be fine
	KindComplaint = "complaint" // a spam complaint (ARF)
	KindUnknown   = "unknown"   // nothing usable found, or not a failure
)

// Report is one recipient's fate as a bounce or complaint tells it.
type Report struct {
	Recipient  string `json:"recipient,omitempty"`  // as the report names it; may be absent or wrong
	Status     string `json:"status,omitempty"`     // RFC 3463 code "5.1.1"
	Action     string `json:"action,omitempty"`     // failed, delayed, delivered, relayed, expanded
	Diagnostic string `json:"diagnostic,omitempty"` // the remote's reply, type prefix removed
	RemoteMTA  string `json:"remote_mta,omitempty"` // host that gave the reply
	// Provider is the provider family (ProviderMicrosoft, …) of the host that
	// answered or reported, from Remote-MTA, Reporting-MTA or Received host
	// names (ProviderOf); "" when none is recognised.
	Provider string `json:"provider,omitempty"`
	Kind     string `json:"kind"`             // hard, soft, complaint, unknown
	Reason   string `json:"reason,omitempty"` // why, one of the Reason constants (Classify)
	// FeedbackType is the ARF Feedback-Type (abuse, fraud, virus, other, not-spam).
	FeedbackType string `json:"feedback_type,omitempty"`
	// OriginalMailFrom is the envelope sender of the reported message (ARF
	// Original-Mail-From, else the returned original's Return-Path).
	OriginalMailFrom string `json:"original_mail_from,omitempty"`
	// VERP lists the bounce+… addresses found in To, Delivered-To,
	// X-Original-To, Envelope-To, the original's Return-Path, ARF
	// Original-Mail-From and Postfix's X-Postfix-Sender.
	VERP []string `json:"verp,omitempty"`
}

// Limits that keep hostile input cheap.
const (
	maxInput    = 32 << 20 // bytes read from r
	maxPartSize = 4 << 20  // bytes read from one MIME part
	maxParts    = 64       // MIME parts visited
	maxDepth    = 8        // multipart nesting
	maxText     = 64 << 10 // bytes of human-readable text searched
	maxReports  = 100      // reports returned
)

// ErrTooLarge is returned when the input exceeds 32 MiB.
var ErrTooLarge = errors.New("bounce: message larger than 32 MiB")

// parser collects what the walk over a message finds.
type parser struct {
	top      fields   // the message's own header
	dsn      []fields // delivery-status groups, per-message group first
	arf      fields   // the feedback-report fields
	sawARF   bool
	orig     fields // the returned original's header
	texts    []string
	htmls    []string
	parts    int
	verp     []string
	verpSeen map[string]bool
	rawBody  []byte // the top-level body, for the fallback
	mailFrom string
	isMulti  bool
}

// Parse reads one bounce or complaint message and returns what it says
// about each recipient.
func Parse(r io.Reader) ([]Report, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, errors.Join(errors.New("bounce: read message"), err)
	}
	return ParseBytes(data)
}

// ParseBytes is Parse of a message already in memory; it does not copy it
// first.
func ParseBytes(data []byte) ([]Report, error) {
	if len(data) > maxInput {
		return nil, ErrTooLarge
	}
	p := &parser{verpSeen: map[string]bool{}}
	p.run(data)
	reps := p.reports()
	if len(reps) == 0 {
		reps = []Report{{Kind: KindUnknown}}
	}
	if len(reps) > maxReports {
		reps = reps[:maxReports]
	}
	msgProvider := p.messageProvider()
	for i := range reps {
		reps[i].VERP = append([]string(nil), p.verp...)
		if reps[i].Provider = ProviderOf(reps[i].RemoteMTA); reps[i].Provider == "" {
			reps[i].Provider = msgProvider
		}
		if reps[i].OriginalMailFrom == "" {
			reps[i].OriginalMailFrom = p.mailFrom
		}
	}
	return reps, nil
}

// About returns the report of reps about rcpt, the one recipient of the
// message a VERP address names: the first whose Recipient is rcpt, else the
// first report (a lone one, or a remote that rewrote the address). A report
// listing many recipients thus counts once, for that message. ok is false
// when reps is empty.
func About(reps []Report, rcpt string) (Report, bool) {
	if len(reps) == 0 {
		return Report{}, false
	}
	rcpt = strings.TrimSpace(rcpt)
	for _, r := range reps {
		if rcpt != "" && strings.EqualFold(strings.TrimSpace(r.Recipient), rcpt) {
			return r, true
		}
	}
	return reps[0], true
}

// run walks the message: its header, then its MIME tree.
func (p *parser) run(data []byte) {
	data = bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
	var body []byte
	p.top, body = readFields(data)
	p.rawBody = body
	for _, k := range []string{"To", "Delivered-To", "X-Original-To", "Envelope-To"} {
		for _, v := range p.top.all(k) {
			p.addVERP(v)
		}
	}
	e, _ := message.Read(bytes.NewReader(data)) // an unknown charset or encoding still gives an entity
	if e == nil {
		return // unreadable header: only the text fallback is left
	}
	p.entity(e, 0)
}

// entity visits one MIME entity.
func (p *parser) entity(e *message.Entity, depth int) {
	p.parts++
	if p.parts > maxParts || depth > maxDepth {
		return
	}
	mt, _, err := e.Header.ContentType()
	if err != nil || mt == "" {
		mt = "text/plain"
	}
	mt = strings.ToLower(mt)
	if strings.HasPrefix(mt, "multipart/") {
		if depth == 0 {
			p.isMulti = true
		}
		mr := e.MultipartReader()
		if mr == nil {
			return
		}
		for {
			part, err := mr.NextPart()
			if err != nil { // io.EOF, or a broken structure: keep what was read
				return
			}
			p.entity(part, depth+1)
			if p.parts > maxParts {
				return
			}
		}
	}
	body, _ := io.ReadAll(io.LimitReader(e.Body, maxPartSize)) // a decoding error keeps what was read
	body = bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))
	switch mt {
	case "message/delivery-status", "message/global-delivery-status": // RFC 3464 §2, RFC 6533
		p.dsn = append(p.dsn, readGroups(body)...)
		for _, g := range p.dsn {
			p.addVERP(g.get("X-Postfix-Sender"))
		}
	case "message/feedback-report": // RFC 5965 §3
		p.sawARF = true
		p.arf, _ = readFields(body)
		p.addVERP(p.arf.get("Original-Mail-From"))
	case "message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers":
		p.original(body)
	case "text/plain":
		p.texts = append(p.texts, string(body))
	case "text/html":
		p.htmls = append(p.htmls, stripTags(string(body)))
	}
}

// original records the returned original message's header.
func (p *parser) original(b []byte) {
	if len(p.orig) > 0 {
		return // the first one is the original; later ones are attachments of it
	}
	p.orig, _ = readFields(b)
	if rp := p.orig.get("Return-Path"); rp != "" {
		p.addVERP(rp)
		if p.mailFrom == "" {
			p.mailFrom = bareAddress(rp)
		}
	}
}

// addVERP records every bounce+… address in a header value.
func (p *parser) addVERP(v string) {
	for _, a := range findAddresses(v) {
		local := a[:strings.LastIndexByte(a, '@')]
		if !hasPrefixFold(local, "bounce+") {
			continue
		}
		k := strings.ToLower(a)
		if p.verpSeen[k] || len(p.verp) >= 16 {
			continue
		}
		p.verpSeen[k] = true
		p.verp = append(p.verp, a)
	}
}

// reports turns what the walk found into Reports: from the delivery-status
// part if there is one, else from the feedback report, else from the text.
func (p *parser) reports() []Report {
	if reps := p.dsnReports(); len(reps) > 0 {
		return reps
	}
	if p.sawARF {
		return []Report{p.arfReport()}
	}
	text := strings.Join(p.texts, "\n")
	if strings.TrimSpace(text) == "" {
		text = strings.Join(p.htmls, "\n")
	}
	if strings.TrimSpace(text) == "" && !p.isMulti {
		text = string(p.rawBody)
	}
	reps := p.textReports(text)
	for _, r := range reps {
		if r.Status != "" {
			return reps
		}
	}
	if from := firstAddress(p.top.get("From")); from != "" && p.autoReply() {
		// An auto-reply names no failure: its sender is the recipient, who is there.
		return []Report{{Recipient: from, Kind: KindUnknown, Reason: ReasonVacation}}
	}
	return reps
}

// vacationSubjectRe matches the subjects of common auto-replies.
var vacationSubjectRe = regexp.MustCompile(`(?i)^\s*(?:(?:out of (?:the )?office|auto(?:matic)?[- ]?(?:reply|response|antwort)|autoreply|absence|r[ée]ponse automatique|vacation|on leave)\b|abwesenheit)`)

// bounceSubjectRe matches the subjects of bounces (Exchange, Gmail, Postfix,
// Exim, Sendmail, qmail, Yahoo, Sun, Courier, OpenSMTPD).
var bounceSubjectRe = regexp.MustCompile(`(?i)undeliver|delivery (?:status|failure|has failed|notification)|returned mail|failure notice|mail delivery failed|non-?delivery|delivery status notification|notice: mail delivery status`)

// autoReply reports whether the message is an auto-reply rather than a
// bounce: X-Autoreply or X-Autorespond (vacation programs), Precedence
// auto_reply, Auto-Submitted auto-replied (RFC 3834 §5) or an out-of-office
// subject, from a person rather than a mailer daemon, under a subject that is
// not a bounce's.
func (p *parser) autoReply() bool {
	from := strings.ToLower(firstAddress(p.top.get("From")))
	if i := strings.LastIndexByte(from, '@'); i < 0 || notRecipient[from[:i]] {
		return false
	}
	if bounceSubjectRe.MatchString(p.top.get("Subject")) || len(p.top.all("X-MS-Exchange-Message-Is-Ndr")) > 0 {
		return false // a bounce we could not read is still no auto-reply
	}
	if p.top.get("X-Autoreply") != "" || p.top.get("X-Autorespond") != "" ||
		strings.EqualFold(p.top.get("Precedence"), "auto_reply") {
		return true
	}
	if strings.HasPrefix(strings.ToLower(p.top.get("Auto-Submitted")), "auto-replied") {
		return true
	}
	return vacationSubjectRe.MatchString(p.top.get("Subject"))
}

// dsnReports reads the per-recipient groups of a delivery-status part
// (RFC 3464 §2.3).
func (p *parser) dsnReports() []Report {
	var out []Report
	for _, g := range p.dsn {
		final, orig := g.get("Final-Recipient"), g.get("Original-Recipient")
		action, status := g.get("Action"), g.get("Status")
		if final == "" && orig == "" && action == "" && status == "" {
			continue // the per-message group, or noise
		}
		r := Report{
			Recipient:  pickRecipient(final, orig),
			Action:     firstWord(action),
			Diagnostic: clean(stripType(g.get("Diagnostic-Code"))),
			RemoteMTA:  hostOf(stripType(g.get("Remote-MTA"))),
		}
		r.Status = enhancedCode(status)
		// A generic x.0.0 (or none) is refined by the remote's own reply.
		if d := diagCode(r.Diagnostic); d != "" && (r.Status == "" || (strings.HasSuffix(r.Status, ".0.0") && d[0] == r.Status[0])) {
			r.Status = d
		}
		// The Status field's comment may say what the code does not ("5.4.4 (null MX)").
		v := Classify(Failure{Stage: StageReport, Enhanced: r.Status, Text: strings.TrimSpace(r.Diagnostic + " " + status), Action: r.Action})
		r.Kind, r.Reason = v.Kind, v.Reason
		out = append(out, r)
	}
	return out
}

// arfReport reads a feedback report (RFC 5965 §3.1–3.2).
func (p *parser) arfReport() Report {
	ft := strings.ToLower(firstWord(p.arf.get("Feedback-Type")))
	r := Report{FeedbackType: ft, Kind: KindComplaint, Reason: ReasonFeedback}
	if ft == "not-spam" { // RFC 6430: the opposite of a complaint
		r.Kind, r.Reason = KindUnknown, ReasonUndefined
	}
	for _, k := range []string{"Original-Rcpt-To", "Removal-Recipient"} {
		if a := firstAddress(p.arf.get(k)); a != "" {
			r.Recipient = a
			break
		}
	}
	// Microsoft's JMRP redacts the included message's To and names the
	// recipient in X-HmXmrOriginalRecipient; others leave To as it was.
	for _, k := range []string{"X-HmXmrOriginalRecipient", "To"} {
		if a := firstAddress(p.orig.get(k)); r.Recipient == "" && a != "" {
			r.Recipient = a
		}
	}
	r.OriginalMailFrom = bareAddress(p.arf.get("Original-Mail-From"))
	return r
}
