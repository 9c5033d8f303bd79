// Package campaign turns a campaign spec and its recipients CSV into queued messages.
//
// Contract: Send streams the CSV (memory does not grow with its size), checks every
// row (address, no CR/LF/NUL in any value), asks the suppression store about every
// recipient before anything is written to the queue for that row, renders the message
// with an unsubscribe link and a privacy link, and enqueues in groups of 256; a message
// counts as enqueued only once the queue has committed its group. Message-IDs are
// derived from a secret, the campaign and the address, so a re-run after a crash yields
// the same messages, which the queue deduplicates on (Campaign, Key). A bad row never
// stops the run: it is counted and reported with its file and line. A queue or
// suppression error stops the run; a cancelled context stops it at the next row.
// Logs carry masked addresses only.
package campaign

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/templates"
)

// Spec is one campaign, already parsed from its file by the caller.
type Spec struct {
	ID, List, ListName        string
	From, ReplyTo             string // "Ana Ruiz <ana@example.com>" forms (net/mail parseable)
	Subject                   string // template text, kept for the record
	Templates                 *templates.Set
	Recipients                string // CSV path
	PrivacyURL                string
	Hostname                  string   // Message-ID and List-Id domain
	LegalBasis, LIA, Audience string   // see the legal-basis rules below; all recorded
	LIAHash                   string   // sha256 of the LIA file as the caller read it, recorded
	FileHash                  string   // sha256 of the campaign file, recorded
	LIAHeadings               []string // the LIA's headings as the caller read them, recorded
	ConfigHash                string   // sha256 of the server config file the run used, recorded
	// RequestedBy names who asked for the run ("uid:1000" over the admin
	// socket, "local:alice" without a daemon), recorded beside RunBy (the
	// process's user, the daemon's when it sends).
	RequestedBy  string
	MessageIDKey []byte // secret for deterministic Message-IDs
	Pool         string // sending pool named by the campaign file, recorded

	// ExcludeCountries holds ISO 3166-1 alpha-2 codes (any case; EL and UK
	// are read as GR and GB): a row whose country column names one is
	// skipped as region_excluded. The caller expands groups such as EU.
	ExcludeCountries map[string]bool
	// CountryCode reads a recipient's country column (a code or a name) as an
	// ISO 3166-1 alpha-2 code; required with exclusions (configs.CountryCode).
	CountryCode func(string) (string, bool)
	// UnknownCountry is "exclude" or "include": what becomes of a row whose
	// country is empty, absent or not recognised. "" means exclude when
	// ExcludeCountries is not empty, else include.
	UnknownCountry string
	// FreeMail holds consumer mailbox domains (lower-case ASCII, exact
	// match): under legitimate_interest a row at one is skipped as not_b2b.
	FreeMail map[string]bool
	// MaxAhead bounds how many of the campaign's messages may wait to be
	// sent at once when the queue reports its backlog; 0 means
	// DefaultMaxAhead.
	MaxAhead int
}

// DefaultMaxAhead is the enqueue window: ten seconds and more of delivery at
// the rates measured in docs/performance.md, so workers never run dry, while
// the queue file, its mapped pages and bbolt's freelist stay the size of the
// window instead of growing with the campaign.
const DefaultMaxAhead = 20000

// Legal bases, audiences, unknown-country policies and skip reasons.
//
// A campaign under LegitimateInterest must name its assessment (LIA), have
// the B2B audience and carry the free-mail list (PECR regulation 22 lets a
// sender email corporate subscribers without consent, not individuals); one
// under Consent is mailed only to confirmed consent, which Deps.Suppressions
// decides with the suppressions. Send and Validate refuse a spec that breaks
// these rules. Rows pass, in order: address parsing, region, free-mail
// (legitimate interest only), then the one gate over suppression and consent;
// the first that fails names the skip.
const (
	LegitimateInterest = "legitimate_interest"
	Consent            = "consent"
	AudienceB2B        = "b2b"

	UnknownExclude = "exclude"
	UnknownInclude = "include"

	SkipRegion    = "region_excluded" // the country is excluded, or unknown under UnknownExclude
	SkipNotB2B    = "not_b2b"         // a free-mail address under legitimate interest
	SkipNoConsent = "no_consent"      // no confirmed consent on the list under consent
)

// Suppressions decides whether an address may not be mailed on a list under
// a legal basis (LegitimateInterest or Consent): suppression entries, consent
// and restriction in one rule (suppression/gate satisfies it). reason is a
// suppression reason, or SkipNoConsent when the basis is consent and the
// address has no confirmed consent on the list. It must be safe for
// concurrent use.
type Suppressions interface {
	CheckCampaign(addr, list, legalBasis string) (reason string, suppressed bool, err error)
}

// Message is one rendered message handed to the queue; Key is the idempotency key within Campaign.
type Message struct {
	Campaign, List, Key, From, To string
	Body                          []byte
	Dict                          uint32 // the queue's compression dictionary for Body (Deps.Dictionary); 0: none
	Pool                          string // the sending pool (Spec.Pool): its sources deliver the message
}

// Queue stores messages durably, one commit per call, ignoring (Campaign, Key) pairs it already holds.
// Enqueue must not keep the Body slices after it returns: their memory is reused.
type Queue interface {
	Enqueue(msgs []Message) (added, duplicates int, err error)
}

// QueuedCounter is a Queue that also says how many duplicates are still
// queued (their earlier message not finished): Summary.AlreadyQueued.
type QueuedCounter interface {
	EnqueueCounting(msgs []Message) (added, duplicates, queued int, err error)
}

// Links mints the one-click unsubscribe URL of a recipient; it must be safe for concurrent use.
type Links interface {
	UnsubscribeURL(address, list, campaign string) string
}

// MailtoLinks mints a mailto URI that unsubscribes like the one-click POST,
// listed after the https URL in List-Unsubscribe; "" when there is none. It
// must be safe for concurrent use.
type MailtoLinks interface {
	UnsubscribeMailto(address, list, campaign string) string
}

// Dictionaries keeps a sample message as the compression dictionary of a
// campaign's bodies and returns its id, for Message.Dict. The sample holds
// no personal data.
type Dictionaries interface {
	PutDictionary(sample []byte) (uint32, error)
}

// Backlog says how many of the campaign's messages wait to be sent now
// (ready, or with a worker); deferred and held messages do not count.
type Backlog interface {
	Backlog(campaign string) (int, error)
}

// Records stores the JSON record of a campaign run under its ID.
type Records interface {
	PutCampaign(id string, rec []byte) error
}

// Deps are the stores and services Send works with; Suppressions, Queue and
// Links are required.
type Deps struct {
	Suppressions Suppressions
	Queue        Queue
	Links        Links
	// Mailto, when set, adds a mailto URI to List-Unsubscribe.
	Mailto MailtoLinks
	// Dictionary, when set, stores the campaign's compression dictionary;
	// nil: bodies are queued without one (Message.Dict 0).
	Dictionary Dictionaries
	// Backlog, when set, holds Send off enqueueing while Spec.MaxAhead of the
	// campaign's messages wait: bounded work ahead, back-pressure from
	// delivery down to the CSV reader. Leave it nil when nothing delivers
	// from the queue, or Send would wait for ever.
	Backlog Backlog
	Records Records
	Now     func() time.Time
	Log     zerolog.Logger
}

// TemplateError is a problem of the campaign's templates, as Validate
// reports it, so that a caller can point at the campaign file's template
// line.
type TemplateError struct{ Err error }

func (e TemplateError) Error() string { return e.Err.Error() }
func (e TemplateError) Unwrap() error { return e.Err }

// RowError is a problem with one CSV row.
type RowError struct {
	File  string
	Line  int
	Field string
	Err   error

	rcpt string // the row's raw email value, if known; only ever logged masked
}

// Error returns "file:line: field: problem".
func (e RowError) Error() string {
	return fmt.Sprintf("%s:%d: %s: %v", e.File, e.Line, e.Field, e.Err)
}

// Unwrap returns the underlying problem.
func (e RowError) Unwrap() error { return e.Err }

// Masked is Error with the address masked, for logs, stored records and
// output shown without --reveal.
func (e RowError) Masked() string {
	var ae *address.Error
	if errors.As(e.Err, &ae) {
		return fmt.Sprintf("%s:%d: %s: %s %q: %s", e.File, e.Line, e.Field, ae.Kind, address.Mask(ae.Input), ae.Problem)
	}
	s := e.Error()
	if strings.Contains(e.rcpt, "@") {
		s = strings.ReplaceAll(s, e.rcpt, address.Mask(e.rcpt))
	}
	return s
}

// Summary counts what a run did with the rows of the recipients file.
type Summary struct {
	Campaign     string         `json:"campaign"`
	Rows         int            `json:"rows"` // data rows read (header excluded)
	Invalid      int            `json:"invalid"`
	InvalidRows  []RowError     `json:"-"`                      // the first 100, in line order
	InvalidLines []string       `json:"invalid_rows,omitempty"` // their Masked() strings
	Suppressed   map[string]int `json:"suppressed"`             // by the suppression store's reason
	Skipped      map[string]int `json:"skipped"`                // by legal-basis reason: region_excluded, not_b2b, no_consent
	Enqueued     int            `json:"enqueued"`
	AlreadySent  int            `json:"already_sent"` // duplicates of an earlier run (or of an earlier row)
	// AlreadyQueued is the part of AlreadySent still in the queue (a resumed
	// run: enqueued before, not delivered yet), when the Queue can tell.
	AlreadyQueued int `json:"already_queued"`
}

// Progress is told the rows read and the CSV bytes consumed so far; it is called from one goroutine.
type Progress func(rows int, bytesRead int64)

// Record is the JSON stored through Records at the start and at the end of a run.
type Record struct {
	ID         string `json:"id"`
	List       string `json:"list"`
	Subject    string `json:"subject"`
	Recipients string `json:"recipients"`
	LegalBasis string `json:"legal_basis"`
	LIA        string `json:"lia,omitempty"`
	LIAHash    string `json:"lia_hash,omitempty"` // sha256 hex of the LIA file
	// LIAHeadings, ConfigHash, PrivacyURL and RequestedBy are recorded
	// since the compliance report; older records lack them.
	LIAHeadings []string `json:"lia_headings,omitempty"`
	ConfigHash  string   `json:"config_hash,omitempty"` // sha256 hex of the server config file
	PrivacyURL  string   `json:"privacy_url,omitempty"`
	RequestedBy string   `json:"requested_by,omitempty"`
	Audience    string   `json:"audience,omitempty"`
	Pool        string   `json:"pool,omitempty"` // sending pool (recorded; pools arrive later)
	// ExcludeCountries (sorted) and UnknownCountry as applied.
	ExcludeCountries []string  `json:"exclude_countries,omitempty"`
	UnknownCountry   string    `json:"unknown_country,omitempty"`
	FileHash         string    `json:"file_hash"`
	TemplateHash     string    `json:"template_hash,omitempty"` // Templates.Hash of the bodies sent
	RunBy            string    `json:"run_by"`
	Started          time.Time `json:"started"`
	Finished         time.Time `json:"finished,omitzero"`
	Summary          Summary   `json:"summary,omitzero"`
}

// ErrContentChanged is a re-run of a campaign id whose subject or message
// bodies differ from what its earlier run sent.
var ErrContentChanged = errors.New("the campaign's content changed since its earlier run")

// CheckRerun compares spec with the record of the same campaign's earlier
// run: a changed subject or changed templates would send the rest of the
// list other content than the first part got under the same id, so it is
// an error wrapping ErrContentChanged that says what changed.
func CheckRerun(prev Record, spec Spec) error {
	var changed []string
	if prev.Subject != "" && prev.Subject != spec.Subject {
		changed = append(changed, fmt.Sprintf("subject %q was %q", spec.Subject, prev.Subject))
	}
	if prev.TemplateHash != "" && spec.Templates != nil && prev.TemplateHash != spec.Templates.Hash() {
		changed = append(changed, "the template's bodies differ")
	}
	if len(changed) == 0 {
		return nil
	}
	return fmt.Errorf("campaign %s: %w: %s", spec.ID, ErrContentChanged, strings.Join(changed, "; "))
}
