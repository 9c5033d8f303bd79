package mta

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/mta/bounce"
)

// Stages named in DeliveryError.Stage.
const (
	StageSign     = "sign"               // parsing or signing the message
	StageRoute    = bounce.StageRoute    // recipient, MX or address lookup
	StageCapture  = "capture"            // writing the capture file
	StageConnect  = bounce.StageConnect  // TCP connect, greeting
	StageEHLO     = bounce.StageEHLO     // EHLO
	StageSTARTTLS = bounce.StageSTARTTLS // STARTTLS and TLS handshake
	StageMail     = bounce.StageMail     // RSET, MAIL FROM
	StageRcpt     = bounce.StageRcpt     // RCPT TO
	StageData     = bounce.StageData     // DATA, body, final reply
	StageThrottle = "throttle"           // the destination's rate limit (Config.Rates); see RetryAt
	StageCircuit  = "circuit"            // the destination's circuit is open; see RetryAt
	StageStopped  = "stopped"            // a wait before the session given up: DeliverUntil's stop ended; see RetryAt
)

// Outcomes returned by DeliveryError.Outcome.
const (
	OutcomeDeferred    = "deferred"     // temporary: try again later
	OutcomeBouncedHard = "bounced-hard" // permanent, and bounce.Classify says the mailbox or domain never takes mail
	OutcomeBouncedSoft = "bounced-soft" // permanent for other reasons (5.7.x policy, 5.2.2 full, a reply to MAIL…)
)

// DeliveryError describes a failed delivery attempt; it is temporary unless Temp is false.
type DeliveryError struct {
	Temp     bool   // retry later (4yz, network, timeout); false: permanent (5yz, null MX, bad input)
	Code     int    // SMTP reply code, 0 when the failure is not a reply
	Enhanced string // RFC 3463 enhanced status code ("5.1.1"), "" when none
	Message  string // reply text or error text
	Remote   string // host:port talked to, "" before any
	Stage    string // one of the Stage constants
	Err      error  // underlying error, if any
	// NotBefore, when set, is when the destination may be tried again
	// (throttle, open circuit): no attempt was made.
	NotBefore time.Time
}

// Error formats as "mta: rcpt at mx.example.com:25: 550 5.1.1 no such user".
func (e *DeliveryError) Error() string {
	var b strings.Builder
	b.WriteString("mta: ")
	b.WriteString(e.Stage)
	if e.Remote != "" {
		b.WriteString(" at ")
		b.WriteString(e.Remote)
	}
	b.WriteString(": ")
	if e.Code != 0 {
		b.WriteString(strconv.Itoa(e.Code))
		b.WriteByte(' ')
	}
	if e.Enhanced != "" {
		b.WriteString(e.Enhanced)
		b.WriteByte(' ')
	}
	b.WriteString(e.Message)
	return b.String()
}

// Temporary reports whether the delivery may succeed if tried again later.
func (e *DeliveryError) Temporary() bool { return e.Temp }

// SMTPStatus returns the reply code and the RFC 3463 enhanced code.
func (e *DeliveryError) SMTPStatus() (int, string) { return e.Code, e.Enhanced }

// FailedCommand is the stage whose reply failed ("mail", "rcpt", "data"…):
// a sender problem or a recipient one.
func (e *DeliveryError) FailedCommand() string { return e.Stage }

// RetryAt returns when the message may be tried again when the Sender
// refused it without an attempt (rate limit, open circuit); zero otherwise.
func (e *DeliveryError) RetryAt() time.Time { return e.NotBefore }

// Outcome classifies the error for logs and metrics: OutcomeDeferred when
// temporary, OutcomeBouncedHard when bounce.Classify, the rule the queue
// suppresses by, says hard, else OutcomeBouncedSoft.
func (e *DeliveryError) Outcome() string {
	switch {
	case e.Temp:
		return OutcomeDeferred
	case e.Verdict().Hard():
		return OutcomeBouncedHard
	default:
		return OutcomeBouncedSoft
	}
}

// Verdict is bounce.Classify of the failure: hard or soft, and why.
func (e *DeliveryError) Verdict() bounce.Verdict {
	return bounce.Classify(bounce.Failure{Stage: e.Stage, Code: e.Code, Enhanced: e.Enhanced, Text: e.Message})
}

// HardBounce reports whether the recipient's mailbox or domain will never
// take mail (the queue suppresses the address), and why: bounce.Classify, the
// rule DSNs are read by. A temporary error is never hard.
func (e *DeliveryError) HardBounce() (hard bool, reason string) {
	if e.Temp {
		return false, ""
	}
	v := e.Verdict()
	return v.Hard(), v.Reason
}

// Unwrap returns the underlying error (a *smtp.SMTPError for replies).
func (e *DeliveryError) Unwrap() error { return e.Err }

// classify turns an error from a stage of an SMTP session into a *DeliveryError.
func classify(stage, remote string, err error) *DeliveryError {
	de := &DeliveryError{Temp: true, Message: err.Error(), Remote: remote, Stage: stage, Err: err}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		de.Code = se.Code
		de.Message = se.Message
		de.Temp = se.Code/100 != 5 // RFC 5321 §4.2.1: 4yz transient, 5yz permanent
		if ec := se.EnhancedCode; ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet {
			de.Enhanced = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
		}
	}
	// Anything else (network error, timeout, dropped connection) stays temporary.
	return de
}

// permanent returns a permanent *DeliveryError that is not an SMTP reply.
func permanent(stage string, err error) *DeliveryError {
	return &DeliveryError{Message: err.Error(), Stage: stage, Err: err}
}

// temporary returns a temporary *DeliveryError that is not an SMTP reply.
func temporary(stage, remote string, err error) *DeliveryError {
	return &DeliveryError{Temp: true, Message: err.Error(), Remote: remote, Stage: stage, Err: err}
}

// errStopped is a wait before a delivery ended by DeliverUntil's stop.
var errStopped = errors.New("mta: stopping")

// stopped is the error of a wait before a delivery that DeliverUntil's stop
// ended: not an attempt, the message may go again at once (RetryAt now).
func stopped(what string, now time.Time) *DeliveryError {
	return &DeliveryError{Temp: true, Stage: StageStopped, NotBefore: now, Err: errStopped,
		Message: what + ": given up, stopping"}
}

// isReply reports whether err is an SMTP reply from the server (the connection is still in sync).
func isReply(err error) (*smtp.SMTPError, bool) {
	var se *smtp.SMTPError
	ok := errors.As(err, &se)
	return se, ok
}
