// Package gate decides who may be mailed: the one rule over the suppression
// store, the consent store and the purpose of a message, which the campaign
// (at enqueue), the queue (at dequeue), the sign-up form, the subscribers
// import and `suppress check` all call.
//
// The rule, for an address on a list:
//
//   - Only entries that apply are read: the address on every list (global),
//     the address on this list, its @domain globally and on this list. An
//     entry on another list never counts.
//   - A confirmation (double opt-in; the person just asked for it) is
//     stopped by a hard_bounce, complaint or restricted entry, and by any
//     reason this package does not know. It passes an unsubscribed, manual or
//     erased entry: coming back after an unsubscribe or an erasure is
//     possible only through the confirmation. The consent state is not read.
//   - A campaign message is stopped by every entry but an erasure of the
//     address itself (its tombstone), which stops it unless the person's
//     consent state on this very list is confirmed: the consent store takes
//     an erased address back only through double opt-in, so that state is the
//     fresh consent, on that list alone. An "erased" @domain entry stops it
//     like any other. A consent state of unsubscribed on the list (an
//     objection; PECR and GDPR Art. 21 hold it under every legal basis) or
//     erased stops it too. Under the consent basis anything but confirmed
//     stops it (NoConsent); under legitimate interest, or Unchecked (the
//     basis was checked at enqueue), every other state passes.
//
// When several things stop a message the first in the order above is
// reported: entries in lookup order, then the consent state.
package gate

import (
	"fmt"
	"strings"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// ConfirmationPrefix marks the queue list of a double opt-in confirmation:
// a confirmation for list L is queued on list ConfirmationPrefix+L.
const ConfirmationPrefix = "optin:"

// ConfirmationList is the queue list of a confirmation for list.
func ConfirmationList(list string) string { return ConfirmationPrefix + list }

// SplitQueueList reads a queue list: the list and whether its messages are
// confirmations.
func SplitQueueList(queueList string) (list string, p Purpose) {
	if l, ok := strings.CutPrefix(queueList, ConfirmationPrefix); ok {
		return l, Confirmation
	}
	return queueList, Campaign
}

// Purpose is what a message is for.
type Purpose int

// Purposes.
const (
	Campaign     Purpose = iota // a campaign message
	Confirmation                // a double opt-in confirmation the person asked for
)

func (p Purpose) String() string {
	if p == Confirmation {
		return "confirmation"
	}
	return "campaign"
}

// Legal bases of a campaign (the campaign file's legal_basis).
const (
	Unchecked          = ""                    // checked before (dequeue), or not a sending (imports, checks)
	Consent            = "consent"             // needs confirmed consent on the list
	LegitimateInterest = "legitimate_interest" // needs no consent; an objection still stops it
)

// NoConsent is the reason of a campaign under Consent to someone whose
// consent on the list is not confirmed.
const NoConsent = "no_consent"

// Decision is the gate's answer.
type Decision struct {
	Mailable bool
	// Reason says why not: a suppression reason, or NoConsent.
	Reason string
	// Entry is the suppression entry that stops the message; nil when
	// mailable or when the consent state stops it.
	Entry *suppression.Entry
	// Consent is the consent state on the list when it was read (campaigns
	// to an address); State is "" when it was not.
	Consent subscribers.Status
}

// Suppressions is the suppression store as the gate reads and lifts it;
// *suppression.Store satisfies it.
type Suppressions interface {
	Matches(addr, list string) ([]suppression.Entry, error)
	Remove(target, list string) (bool, error)
}

// Consents is the consent store as the gate reads it;
// *subscribers.Store satisfies it.
type Consents interface {
	Status(addr, list string) (subscribers.Status, error)
}

// Gate decides who may be mailed; safe for concurrent use when its stores are.
type Gate struct {
	sup  Suppressions
	subs Consents
}

// New returns the gate over the suppression and consent stores; both are
// required.
func New(sup Suppressions, subs Consents) *Gate { return &Gate{sup: sup, subs: subs} }

// Decide applies the rule (package comment) to addr on list for a message
// of purpose p under legal basis basis (campaigns only). addr may be
// "@domain" to check a domain alone: then no consent state is read.
func (g *Gate) Decide(addr, list string, p Purpose, basis string) (Decision, error) {
	switch basis {
	case Unchecked, Consent, LegitimateInterest:
	default:
		return Decision{}, fmt.Errorf("gate: legal basis %q: want %s or %s", basis, Consent, LegitimateInterest)
	}
	entries, err := g.sup.Matches(addr, list)
	if err != nil {
		return Decision{}, fmt.Errorf("gate: %w", err)
	}
	var erased *suppression.Entry
	for i := range entries {
		en := &entries[i]
		switch {
		case p == Confirmation && passesConfirmation(en.Reason):
			continue
		case p == Campaign && en.Reason == suppression.Erased && !strings.HasPrefix(en.Target, "@"):
			if erased == nil {
				erased = en
			}
			continue
		}
		return Decision{Reason: string(en.Reason), Entry: en}, nil
	}
	if p == Confirmation {
		return Decision{Mailable: true}, nil
	}
	if strings.HasPrefix(strings.TrimSpace(addr), "@") {
		// A domain holds no consent; only its entries, read above, count.
		return Decision{Mailable: true}, nil
	}
	st, err := g.subs.Status(addr, list)
	if err != nil {
		return Decision{}, fmt.Errorf("gate: consent of %s on %q: %w", address.Mask(addr), list, err)
	}
	d := Decision{Consent: st}
	switch {
	case erased != nil && st.State != subscribers.StateConfirmed:
		d.Reason, d.Entry = string(suppression.Erased), erased
	case st.State == subscribers.StateUnsubscribed:
		d.Reason = string(suppression.Unsubscribed)
	case st.State == subscribers.StateErased:
		d.Reason = string(suppression.Erased)
	case basis == Consent && st.State != subscribers.StateConfirmed:
		d.Reason = NoConsent
	default:
		d.Mailable = true
	}
	return d, nil
}

// passesConfirmation reports whether an entry of reason r lets a
// confirmation through: the person's own opt-out, an erasure, an operator's
// do-not-mail; a dead mailbox, a complaint, a restriction and any reason
// not known here stop it.
func passesConfirmation(r suppression.Reason) bool {
	switch r {
	case suppression.Unsubscribed, suppression.Erased, suppression.Manual:
		return true
	}
	return false
}

// Check decides for a message queued on queueList (the confirmation prefix
// read off it) whose legal basis was checked at enqueue; it satisfies
// queue.Suppressions' check and optin.Suppressions.
func (g *Gate) Check(addr, queueList string) (reason string, suppressed bool, err error) {
	list, p := SplitQueueList(queueList)
	d, err := g.Decide(addr, list, p, Unchecked)
	return d.Reason, !d.Mailable, err
}

// CheckCampaign decides for a campaign message on list under legalBasis;
// reason is a suppression reason or NoConsent. It satisfies
// campaign.Suppressions.
func (g *Gate) CheckCampaign(addr, list, legalBasis string) (reason string, suppressed bool, err error) {
	d, err := g.Decide(addr, list, Campaign, legalBasis)
	return d.Reason, !d.Mailable, err
}

// LiftUnsubscribe removes the person's own earlier "unsubscribed" entry on
// list once they confirmed that list again by double opt-in (optin.Lifter):
// only that entry of this very address on this very list goes; global
// entries, bounces, complaints, erasures and domain entries stay.
func (g *Gate) LiftUnsubscribe(addr, list string) error {
	a, err := address.Parse(addr)
	if err != nil {
		return fmt.Errorf("gate: lift unsubscribe: %w", err)
	}
	entries, err := g.sup.Matches(addr, list)
	if err != nil {
		return fmt.Errorf("gate: lift unsubscribe: %w", err)
	}
	for _, en := range entries {
		if en.List == list && list != "" && en.Reason == suppression.Unsubscribed && en.Target == a.Key() {
			if _, err := g.sup.Remove(addr, list); err != nil {
				return fmt.Errorf("gate: lift unsubscribe of %s on %q: %w", address.Mask(addr), list, err)
			}
			return nil
		}
	}
	return nil
}
