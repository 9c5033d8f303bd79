package bounce

import (
	"regexp"
	"strconv"
	"strings"
)

// Stages of a Failure: the SMTP command a reply answered, or where else the
// failure arose. mta's DeliveryError stages use the same names.
const (
	StageReport   = ""         // a DSN or plain-text bounce: about the recipient, after the message left us
	StageConnect  = "connect"  // greeting (RFC 5321 §3.1)
	StageEHLO     = "ehlo"     // EHLO/HELO
	StageSTARTTLS = "starttls" // STARTTLS
	StageMail     = "mail"     // MAIL FROM: about the sender
	StageRcpt     = "rcpt"     // RCPT TO: about the recipient
	StageData     = "data"     // DATA and the final reply (one recipient per transaction)
	StageRoute    = "route"    // our own MX/address lookup of the recipient's domain
)

// Reasons a failure is given, named as Sisimai names them.
const (
	ReasonUserUnknown     = "userunknown"     // the mailbox does not exist (X.1.1, X.1.3)
	ReasonHostUnknown     = "hostunknown"     // the domain or host does not exist (X.1.2)
	ReasonHasMoved        = "hasmoved"        // the mailbox has moved, no forwarding (X.1.6)
	ReasonNotAccept       = "notaccept"       // the domain takes no mail: null MX (X.1.10, 556, 521)
	ReasonSuspend         = "suspend"         // the mailbox exists but is disabled (X.2.1)
	ReasonMailboxFull     = "mailboxfull"     // over quota (X.2.2)
	ReasonMesgTooBig      = "mesgtoobig"      // the message is too big (X.2.3, X.3.4)
	ReasonExceedLimit     = "exceedlimit"     // a limit of the destination: too many recipients (X.5.3)
	ReasonFiltered        = "filtered"        // the recipient's own filter refused it
	ReasonRejected        = "rejected"        // our sender was refused (X.1.7, X.1.8, any reply to MAIL)
	ReasonBlocked         = "blocked"         // our IP or domain is blocked or listed
	ReasonSpamDetected    = "spamdetected"    // the content was judged spam
	ReasonPolicyViolation = "policyviolation" // a local policy refused it
	ReasonSecurityError   = "securityerror"   // security or authorisation (X.7.x otherwise unnamed)
	ReasonAuthFailure     = "authfailure"     // SPF, DKIM or DMARC failed
	ReasonExpired         = "expired"         // delivery time expired (X.4.7)
	ReasonNetworkError    = "networkerror"    // connection, routing (X.4.x)
	ReasonSystemError     = "systemerror"     // the remote system failed (X.3.x)
	ReasonSystemFull      = "systemfull"      // the remote system is out of storage (X.3.1)
	ReasonTooManyConn     = "toomanyconn"     // too many connections from us
	ReasonSpeeding        = "speeding"        // rate limited
	ReasonNoRelaying      = "norelaying"      // relaying denied
	ReasonRequirePTR      = "requireptr"      // our IP needs a reverse DNS name
	ReasonSyntaxError     = "syntaxerror"     // a protocol error (X.5.x)
	ReasonContentError    = "contenterror"    // the content was refused (X.6.x)
	ReasonVacation        = "vacation"        // an auto-reply, not a failure
	ReasonFeedback        = "feedback"        // a spam complaint (ARF)
	ReasonDelivered       = "delivered"       // not a failure (2.x.x, DSN delivered/relayed/expanded)
	ReasonUndefined       = "undefined"       // nothing more can be told
)

// Failure is one delivery failure as a classifier sees it, whether an SMTP
// reply during our session, a DSN's recipient group or a plain-text bounce.
type Failure struct {
	Stage    string // one of the Stage constants; StageReport for DSNs and text bounces
	Code     int    // SMTP basic reply code (550), 0 when unknown
	Enhanced string // RFC 3463 enhanced code ("5.1.1"), "" when none
	Text     string // the reply or diagnostic text
	Action   string // RFC 3464 §2.3.3 Action of a DSN group; "" for SMTP replies
}

// Verdict is what a failure means for the recipient's address.
type Verdict struct {
	Kind   string // KindHard (suppress the address), KindSoft, or KindUnknown (no failure, or nothing to tell)
	Reason string // one of the Reason constants
}

// Hard reports whether the address should be suppressed.
func (v Verdict) Hard() bool { return v.Kind == KindHard }

// hardReasons are the reasons that mean the mailbox or domain will never
// accept mail. Nothing else suppresses an address: not 5.2.1 (RFC 3463 §3.3
// X.2.1: disabled "may be ... transient"), not 5.2.2 (full), not 5.7.x (our
// reputation or their policy is no fault of the address).
var hardReasons = map[string]bool{
	ReasonUserUnknown: true, ReasonHostUnknown: true, ReasonHasMoved: true, ReasonNotAccept: true,
}

// recipientStages are those whose failure can be about the recipient's
// mailbox. A reply to MAIL is about our sender; the greeting, EHLO and
// STARTTLS are about the host and our session.
var recipientStages = map[string]bool{StageReport: true, StageRcpt: true, StageData: true, StageRoute: true}

// Classify decides what a failure means for the recipient's address. It is
// the one rule for SMTP-time replies (the queue, mta's logs), DSN groups and
// plain-text bounces:
//
//   - hard only for a 5yz whose reason says the mailbox or domain will never
//     take mail: 5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10 (RFC 3463 §3.2, RFC 7505
//     §4.2), 5.4.4 when its text says the domain or host does not exist or
//     takes no mail, and a generic code (X.0.0, X.1.0, none) whose text says so
//     ("550 5.0.0 User unknown"), or 556/521 (RFC 7504);
//   - never hard at MAIL FROM, the greeting, EHLO or STARTTLS, nor for 5.1.7
//     and 5.1.8 (the sender's address), 5.2.x, 5.7.x, or any 4yz or delay;
//   - a DSN's delivered, relayed or expanded action is no failure (KindUnknown).
func Classify(f Failure) Verdict {
	switch strings.ToLower(strings.TrimSpace(f.Action)) {
	case "delivered", "relayed", "expanded": // RFC 3464 §2.3.3
		return Verdict{Kind: KindUnknown, Reason: ReasonDelivered}
	}
	enh := enhancedCode(f.Enhanced)
	class := 0
	if f.Code >= 200 && f.Code < 600 {
		class = f.Code / 100 // RFC 5321 §4.2.1: the reply code decides whether to retry
	} else if f.Code == 0 && f.Stage == StageReport {
		if c := replyCode(f.Text); c != 0 { // a DSN's Diagnostic-Code "550 …"
			f.Code, class = c, c/100
		}
	}
	if enh != "" {
		if c := int(enh[0] - '0'); class == 0 {
			class = c
		} else if c != class {
			enh = "" // RFC 3463 §2: the class must match the reply's; trust the reply, read the text
		}
	}
	reason := reasonOf(f.Code, enh, f.Text)
	switch {
	case class == 2:
		return Verdict{Kind: KindUnknown, Reason: ReasonDelivered}
	case class != 4 && class != 5:
		return Verdict{Kind: KindUnknown, Reason: reason}
	}
	if f.Stage == StageMail && (hardReasons[reason] || reason == ReasonSuspend || reason == ReasonMailboxFull) {
		reason = ReasonRejected // a reply to MAIL is about our sender, whatever it names
	}
	delayed := strings.EqualFold(strings.TrimSpace(f.Action), "delayed") // RFC 3464 §2.3.3: not a failure yet
	if class == 5 && !delayed && recipientStages[f.Stage] && hardReasons[reason] {
		return Verdict{Kind: KindHard, Reason: reason}
	}
	return Verdict{Kind: KindSoft, Reason: reason}
}

// byStatus maps "subject.detail" of RFC 3463 §3 to a reason.
var byStatus = map[string]string{
	"1.1":  ReasonUserUnknown, // bad destination mailbox address
	"1.2":  ReasonHostUnknown, // bad destination system address
	"1.3":  ReasonUserUnknown, // bad destination mailbox address syntax
	"1.4":  ReasonSystemError, // destination mailbox address ambiguous
	"1.5":  ReasonUndefined,   // destination address valid
	"1.6":  ReasonHasMoved,    // destination mailbox has moved, no forwarding address
	"1.7":  ReasonRejected,    // bad sender's mailbox address syntax: about us
	"1.8":  ReasonRejected,    // bad sender's system address: about us
	"1.9":  ReasonUndefined,   // message relayed to non-compliant mailer (RFC 3886)
	"1.10": ReasonNotAccept,   // recipient address has null MX (RFC 7505 §4.2)
	"2.1":  ReasonSuspend,     // mailbox disabled: "may be ... transient" (§3.3)
	"2.2":  ReasonMailboxFull, // mailbox full
	"2.3":  ReasonMesgTooBig,  // message length exceeds administrative limit
	"2.4":  ReasonSystemError, // mailing list expansion problem
	"3.1":  ReasonSystemFull,  // mail system full
	"3.2":  ReasonSystemError, // system not accepting network messages
	"3.3":  ReasonSystemError, // system not capable of selected features
	"3.4":  ReasonMesgTooBig,  // message too big for system
	"3.5":  ReasonSystemError, // system incorrectly configured
	"4.1":  ReasonNetworkError,
	"4.2":  ReasonNetworkError,
	"4.3":  ReasonSystemError,  // directory server failure
	"4.4":  ReasonNetworkError, // unable to route: hard only with a no-host text, see reasonOf
	"4.5":  ReasonSystemError,  // mail system congestion
	"4.6":  ReasonNetworkError, // routing loop
	"4.7":  ReasonExpired,      // delivery time expired
	"5.1":  ReasonSyntaxError,
	"5.2":  ReasonSyntaxError,
	"5.3":  ReasonExceedLimit, // too many recipients
	"5.4":  ReasonSyntaxError,
	"5.5":  ReasonSystemError, // wrong protocol version
	"5.6":  ReasonSyntaxError, // authentication exchange line too long
	"7.13": ReasonSuspend,     // user account disabled (RFC 3463 registry)
	"7.23": ReasonAuthFailure,
	"7.25": ReasonRequirePTR, // reverse DNS validation failed (RFC 7372)
	"7.26": ReasonAuthFailure,
}

// dbebRe is Microsoft 365's Directory-Based Edge Blocking reply, "550 5.4.1
// Recipient address rejected: Access denied. AS(201806281)": Microsoft
// documents it as the recipient not existing in the tenant's directory.
var dbebRe = regexp.MustCompile(`(?i)recipient address rejected: access denied`)

// bySubject is a reason when only the subject is known.
var bySubject = map[byte]string{
	'0': ReasonUndefined, '1': ReasonUndefined, '2': ReasonUndefined, '3': ReasonSystemError,
	'4': ReasonNetworkError, '5': ReasonSyntaxError, '6': ReasonContentError, '7': ReasonSecurityError,
}

// reasonOf reads the enhanced code where it is specific, and the text where
// it is generic (X.0.0, X.1.0, none) or names many things (X.7.x).
func reasonOf(code int, enh, text string) string {
	if enh != "" {
		_, rest, _ := strings.Cut(enh, ".")
		subj, detail, _ := strings.Cut(rest, ".")
		r, known := byStatus[rest]
		switch {
		case rest == "1.10":
			if byText(text, hardReasons) == ReasonUserUnknown {
				return ReasonUserUnknown // Microsoft's RESOLVER.ADR.RecipientNotFound
			}
			return ReasonNotAccept
		case rest == "4.1" && dbebRe.MatchString(text):
			return ReasonUserUnknown
		case rest == "4.4":
			// RFC 3463 §3.5: X.4.4 serves permanent and transient routing failures
			// alike; only a domain or host that does not exist, or takes no mail,
			// is for good (Postfix "Host or domain name not found").
			if t := byText(text, nil); t == ReasonHostUnknown || t == ReasonNotAccept {
				return t
			}
			return r
		case subj == "7":
			// Policy, reputation, authentication: never about the mailbox, so the
			// text may name the reason but never a hard one.
			if t := byText(text, nil); t != "" && !hardReasons[t] {
				return t
			}
		}
		if known && detail != "0" {
			return r
		}
		// Generic or unregistered detail: the text names the reason, a hard one
		// only under X.0.0 or X.1.0 ("550 5.0.0 User unknown").
		if t := byText(text, nil); t != "" && (!hardReasons[t] || detail == "0" && (subj == "0" || subj == "1")) {
			return t
		}
		if known {
			return r
		}
		if subj != "" {
			if s, ok := bySubject[subj[0]]; ok {
				return s
			}
		}
		return ReasonUndefined
	}
	if t := byText(text, nil); t != "" {
		return t
	}
	switch {
	case code == 556, code == 521: // RFC 7504 §3: domain / host does not accept mail
		return ReasonNotAccept
	case code == 552, code == 452: // RFC 5321 §4.2.3: exceeded storage allocation / insufficient system storage
		if code == 552 {
			return ReasonMailboxFull
		}
		return ReasonSystemFull
	case code >= 500 && code <= 504:
		return ReasonSyntaxError
	}
	return ReasonUndefined
}

// byText returns the first reason whose wording is in text, "" when none;
// with only set, it looks only for those reasons.
func byText(text string, only map[string]bool) string {
	r, _ := byTextAt(text, only)
	return r
}

// byTextAt is byText that also returns where the wording starts in text.
func byTextAt(text string, only map[string]bool) (string, int) {
	if text == "" {
		return "", -1
	}
	for _, w := range wordings {
		if only != nil && !only[w.reason] {
			continue
		}
		if loc := w.re.FindStringIndex(text); loc != nil {
			return w.reason, loc[0]
		}
	}
	return "", -1
}

// wordings map a reply's or diagnostic's text to a reason, one row a
// reason, each with the MTAs' and providers' typical wording it was written
// from. Order matters: what cannot suppress an address (a refused sender,
// relaying, reputation, spam, rate) is looked for before what can, so a
// mixed text stays soft.
var wordings = []struct {
	re     *regexp.Regexp
	reason string
}{
	// Our sender refused: Postfix "Sender address rejected", Exim "sender verify failed".
	{re(`sender (?:address )?(?:rejected|denied|refused|unknown|invalid|not allowed|verify failed)|sender verification failed|from address rejected`), ReasonRejected},
	// Relaying: Postfix "Relay access denied", sendmail "Relaying denied", Exim "relay not permitted".
	{re(`relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)|unable to relay|(?:do|does) not relay|not permitted to relay|no relaying`), ReasonNoRelaying},
	// Reverse DNS: Postfix "cannot find your reverse hostname" / "cannot find your hostname", Gmail 5.7.25 "PTR record".
	{re(`reverse (?:dns|lookup|hostname)|cannot find your hostname|\brdns\b|\bptr\b`), ReasonRequirePTR},
	// SPF, DKIM, DMARC: Gmail 5.7.26/5.7.27 "unauthenticated", Microsoft 5.7.509 "does not pass DMARC verification".
	{re(`\b(?:spf|dkim|dmarc)\b|not authenticated|unauthenticated`), ReasonAuthFailure},
	// Our IP or domain listed or distrusted: Microsoft S3150 "block list", 5.7.708 "Access denied, traffic not
	// accepted from this IP", 4.7.650 "IP reputation"; Spamhaus and other DNSBLs; Yahoo [TSS09] "permanently deferred".
	{re(`block ?list|black ?list|\bblocked\b|listed (?:at|on|in)|\b(?:rbl|dnsbl)\b|spamhaus|spamcop|reputation|access denied|traffic not accepted|permanently deferred`), ReasonBlocked},
	// Content judged spam: Gmail 5.7.1 "likely unsolicited mail", 4.7.28 "unusual rate of unsolicited mail".
	{re(`spam|junk mail|unsolicited|bulk mail`), ReasonSpamDetected},
	// Sessions: Postfix and Exim "too many connections from your host", Microsoft "too many concurrent connections".
	{re(`too many (?:connections|sessions|concurrent)`), ReasonTooManyConn},
	// Rate: Yahoo [TSS04] "temporarily deferred due to unexpected volume", Microsoft 4.7.500 "Server busy. Please try
	// again later", Gmail 4.7.0 "rate limited".
	{re(`rate limit|rate of|throttl|slow down|too many (?:messages|mails|emails)|try (?:again )?later|unexpected volume|temporarily deferred`), ReasonSpeeding},
	// Recipient count: "Too many recipients", Microsoft 5.5.3 "exceeded the maximum number of recipients".
	{re(`too many recipients|recipient limit|maximum number of recipients`), ReasonExceedLimit},
	// Quota: Exchange "STOREDRV.Deliver: mailbox full", Gmail 4.2.2/5.2.2 "over quota", "inbox is out of storage space",
	// Exim "Mailbox quota exceeded", Courier "Mail quota exceeded", Sun "user over quota".
	{re(`mailbox (?:is )?full|over ?quota|quota exceeded|exceeded (?:its|the|their|his|her) (?:storage|quota)|mailbox size limit|full mailbox|(?:inbox|mailbox) is out of (?:storage|space)`), ReasonMailboxFull},
	// Size: sendmail and Courier "Message size exceeds fixed maximum message size", Postfix "exceeds fixed limit",
	// OpenSMTPD "Message is too large".
	{re(`message (?:is )?too (?:big|large)|message size|size limit|exceeds? (?:the )?(?:maximum )?(?:message )?size|exceeds fixed`), ReasonMesgTooBig},
	// Their storage: 452 "Insufficient system storage" (RFC 5321 §4.2.3).
	{re(`insufficient (?:system )?storage|disk (?:is )?full|out of (?:disk|storage) ?space|system (?:is )?full`), ReasonSystemFull},
	// Disabled: Gmail "account that you tried to reach is disabled", Yahoo "This mailbox is disabled (554.30)".
	{re(`(?:account|mailbox|user|address) (?:is |has been )?(?:disabled|suspended|inactive|deactivated|locked|frozen|on hold)|(?:account|mailbox) that you tried to reach (?:is|has been) (?:disabled|suspended|inactive)`), ReasonSuspend},
	// Null MX (RFC 7505): Postfix "Domain X does not accept mail (nullMX)".
	{re(`null ?mx|(?:domain|host|server)(?: \S+)? (?:does not|doesn't) accept (?:e-?)?mail|accepts no mail`), ReasonNotAccept},
	// No such domain: Postfix "Host or domain name not found", sendmail "Host unknown", qmail "couldn't find any host
	// named", Sun "Illegal host/domain name found".
	{re(`host (?:or domain name )?not found|host unknown|domain (?:name )?not found|(?:domain|host)(?: name)? (?:does not|doesn't) exist|unknown (?:domain|host)|no such (?:domain|host)|nxdomain|(?:couldn't|could not) find any host|illegal host/domain`), ReasonHostUnknown},
	// No such mailbox: Postfix "User unknown in … table", qmail "no mailbox here by that name", Gmail "The email account
	// that you tried to reach does not exist", Microsoft "RecipientNotFound"/"RecipNotFound", Yahoo "This user doesn't
	// have a yahoo.com account", Sun "unknown or illegal alias", OpenSMTPD "Invalid recipient".
	{re(`user unknown|unknown user|no such (?:user|mailbox|recipient|account|person)|no mailbox here|(?:address|account|mailbox|recipient|user)\b[^.\n]{0,40}?(?:does not|doesn't|did not) exist|(?:address|account|mailbox|recipient|user) (?:not found|unknown|could(?: not|n't) be found)|unknown (?:recipient|mailbox|local[- ]part|address)|invalid (?:recipient|mailbox)|not a valid (?:mailbox|recipient|user)|recip(?:ient)?notfound|user (?:doesn't|does not) have an? \S+ account|unknown or illegal alias`), ReasonUserUnknown},
	// Moved: "mailbox has moved", 5.1.6.
	{re(`(?:mailbox|user|recipient) has moved|address has changed`), ReasonHasMoved},
	// Gave up: Exim "retry timeout exceeded", "all hosts … have been failing for a long time", sendmail "Cannot send
	// message for 5 days", Postfix "delivery time expired".
	{re(`delivery time expired|message expired|(?:too long|expired) in (?:the )?queue|retry time(?:out)? exceeded|have been failing for a long time|cannot send message for \d+ days?`), ReasonExpired},
	// The network: "Connection timed out", "No route to host".
	{re(`connection (?:timed out|refused|reset|closed)|timed out|network (?:is )?unreachable|no route to host|(?:could not|unable to) connect|lost connection`), ReasonNetworkError},
	// The protocol: 500–504 "Syntax error", "Bad sequence of commands".
	{re(`syntax error|command unrecognized|unrecognized command|bad sequence`), ReasonSyntaxError},
	// Local policy: Yahoo 5.7.9 "not accepted for policy reasons".
	{re(`polic(?:y|ies)`), ReasonPolicyViolation},
	// The recipient's own rules: "content filter", "rejected by filter".
	{re(`filtered|content filter|rejected by (?:a )?(?:filter|rule)`), ReasonFiltered},
	// Auto-replies: "out of the office", "on vacation".
	{re(`auto.?reply|out of (?:the )?office|on vacation`), ReasonVacation},
	// Their system: qmail "This message is looping", Postfix "mail for X loops back to myself".
	{re(`mail loop|routing loop|looping|loops back to myself|too many hops|internal error|local error|system error|configuration error`), ReasonSystemError},
}

// re compiles a case-insensitive wording.
func re(s string) *regexp.Regexp { return regexp.MustCompile(`(?i)` + s) }

// replyCode reads the SMTP reply code that opens a diagnostic ("550 5.1.1 …",
// "550-5.1.1 …"), 0 when none.
func replyCode(s string) int {
	s = strings.TrimSpace(s)
	if len(s) < 3 || s[0] < '2' || s[0] > '5' {
		return 0
	}
	if len(s) > 3 && s[3] != ' ' && s[3] != '-' && s[3] != ':' { // Yahoo: "554: delivery error"
		return 0
	}
	n, err := strconv.Atoi(s[:3])
	if err != nil {
		return 0
	}
	return n
}
