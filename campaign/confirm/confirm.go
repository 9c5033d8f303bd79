// Package confirm sends the double opt-in confirmation message: the built-in
// templates rendered for one person and list, enqueued like every message
// (queue → DKIM → MTA) through the Queue it declares.
//
// A confirmation goes into the queue as campaign "optin-LIST" under a fresh
// key, so a later sign-up can mail again; its queue list is
// gate.ConfirmationList(LIST), so the gate lets it reach a person who
// unsubscribed or was erased (they are asking back in) and nobody who
// bounced, complained or is restricted. SendConfirmation returns only once
// the queue holds the message (Queue.Enqueue is durable), then wakes the
// delivery.
//
// The message is written in the language SendConfirmation is given (the
// list's, else the one the sign-up form was shown in: see suppression/optin),
// its words taken from the recipient pages' catalogs (suppression/pages/locale);
// its unsubscribe link carries that language, so the page it opens speaks it.
//
// It lives beside campaign, not beneath suppression/, because it renders
// templates (layering rule 6 of docs/architecture.md).
package confirm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/mail"
	"time"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/pages/locale"
	"github.com/postwarden/postwarden/templates"
)

// Message is one confirmation to enqueue.
type Message struct {
	Campaign, List, Key, From, To string
	Body                          []byte
}

// Queue takes the confirmation; cmd wires the queue store through a thin
// adapter. Enqueue returns once the message is durable.
type Queue interface {
	Enqueue(Message) error
	Kick() // wakes the delivery so the message leaves at once
}

// Links mints a message's unsubscribe URIs: the one-click https URL, whose
// page speaks lang, and, when mailto unsubscribes are received, a mailto URI
// ("" when not).
type Links interface {
	UnsubscribeURLIn(addr, list, campaign, lang string) string
	UnsubscribeMailto(addr, list, campaign string) string
}

// Config is what the mailer needs.
type Config struct {
	Queue Queue // required
	Links Links // required
	// HTML, Text and Subject are the confirmation's templates: templates.Data
	// with .Fields ConfirmURL, ListName, SenderName and ValidFor, the
	// language's Lang and Dir, its sentences (Subject, Greeting, Asked,
	// PleaseConfirm, ConfirmLink, Consent, NotYou, NeverAsk, Privacy), and
	// the usual UnsubscribeURL and PrivacyURL.
	HTML, Text []byte
	Subject    string
	// SenderName is the From display name and .Fields.SenderName.
	SenderName string
	// FromDomain is the domain of the From address (noreply@FromDomain); it
	// should be a DKIM domain so the signer signs it. "" means Hostname.
	FromDomain string
	// Hostname is the right side of Message-ID and List-Id.
	Hostname   string
	PrivacyURL string
	// ValidFor is how long a confirmation link stays valid (the opt-in token
	// lifetime), said in the message as days, or hours under two days.
	ValidFor time.Duration
}

// Mailer renders and enqueues confirmations; it satisfies optin.Mailer and
// is safe for concurrent use when its Queue and Links are.
type Mailer struct {
	cfg  Config
	set  *templates.Set
	from *mail.Address
}

// New parses and validates the templates and returns the mailer.
func New(cfg Config) (*Mailer, error) {
	if cfg.Queue == nil || cfg.Links == nil {
		return nil, errors.New("confirm: Queue and Links are required")
	}
	set, err := templates.Parse("configs/templates/confirm", cfg.HTML, cfg.Text, cfg.Subject)
	if err != nil {
		return nil, fmt.Errorf("confirmation templates: %w", err)
	}
	if err := set.Validate(); err != nil {
		return nil, fmt.Errorf("confirmation templates: %w", err)
	}
	domain := cfg.FromDomain
	if domain == "" {
		domain = cfg.Hostname
	}
	from := &mail.Address{Name: cfg.SenderName, Address: "noreply@" + domain}
	return &Mailer{cfg: cfg, set: set, from: from}, nil
}

// Campaign is the queue campaign of the confirmations of list.
func Campaign(list string) string { return "optin-" + list }

// SendConfirmation renders the confirmation of addr's sign-up to list (shown
// as listName) with its confirmURL in language lang (a locale code; English
// when not one) and enqueues it; it satisfies optin.Mailer.
func (m *Mailer) SendConfirmation(ctx context.Context, addr, list, listName, confirmURL, lang string) error {
	a, err := address.Parse(addr)
	if err != nil {
		return fmt.Errorf("confirmation to %s: %w", address.Mask(addr), err)
	}
	camp := Campaign(list)
	body, err := m.render(addr, list, listName, confirmURL, locale.For(lang))
	if err != nil {
		return err
	}
	if err := m.cfg.Queue.Enqueue(Message{
		Campaign: camp, List: gate.ConfirmationList(list),
		Key:  a.Key() + ":" + fmt.Sprint(time.Now().UnixNano()),
		From: m.from.Address, To: addr, Body: body,
	}); err != nil {
		return fmt.Errorf("enqueue confirmation: %w", err)
	}
	m.cfg.Queue.Kick()
	return nil
}

// render builds the whole message: body, Message-ID, List-Id and the
// List-Unsubscribe URIs (https first).
func (m *Mailer) render(addr, list, listName, confirmURL string, l *locale.Locale) ([]byte, error) {
	camp := Campaign(list)
	unsub := m.cfg.Links.UnsubscribeURLIn(addr, list, camp, l.Lang())
	uris := []string{unsub}
	if mt := m.cfg.Links.UnsubscribeMailto(addr, list, camp); mt != "" {
		uris = append(uris, mt)
	}
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	body, err := m.set.Render(templates.Data{
		Email:          addr,
		Fields:         m.fields(l, confirmURL, listName),
		UnsubscribeURL: unsub, PrivacyURL: m.cfg.PrivacyURL,
	}, templates.Envelope{
		From: m.from.String(), To: addr,
		MessageID:   "optin." + hex.EncodeToString(rnd[:]) + "@" + m.cfg.Hostname,
		Date:        time.Now(),
		ListID:      list + "." + m.cfg.Hostname, // RFC 2919 §2
		ListName:    listName,
		Unsubscribe: uris,
	})
	if err != nil {
		return nil, fmt.Errorf("render confirmation: %w", err)
	}
	return body, nil
}

// fields are the templates' .Fields: the message's data and its sentences
// in l's language.
func (m *Mailer) fields(l *locale.Locale, confirmURL, listName string) map[string]string {
	validFor := l.Validity(m.cfg.ValidFor)
	v := locale.Vars{"List": listName, "Sender": m.cfg.SenderName, "Validity": validFor}
	return map[string]string{
		"ConfirmURL": confirmURL, "ListName": listName, "SenderName": m.cfg.SenderName, "ValidFor": validFor,
		"Lang": l.Lang(), "Dir": l.Dir(),
		"Subject":       l.T("MailSubject", v),
		"Greeting":      l.T("MailGreeting", nil),
		"Asked":         l.T("MailAsked", v),
		"PleaseConfirm": l.T("MailPleaseConfirm", nil),
		"ConfirmLink":   l.T("MailConfirmLink", nil),
		"Consent":       l.T("ConfirmConsent", v),
		"NotYou":        l.T("MailNotYou", v),
		"NeverAsk":      l.T("MailNeverAsk", nil),
		"Privacy":       l.T("PrivacyNotice", nil),
	}
}
