// Package subject carries out a data subject's requests (GDPR Art. 15, 17,
// 18, 20) across every store that holds them: the queue, the suppression
// and consent stores, the capture outbox and the audit log.
//
// Every procedure takes a Request that names who asks, the address and a
// reason. The audit entry is appended (durable) before anything changes,
// so no request is carried out without its record (write-ahead: the log
// and the stores are separate files). Audit entries name the person by the
// keyed index of the address (Ref), never the address, so an erasure leaves
// nothing readable behind.
//
// Under suppression/ the package may not import queue or mta
// (docs/architecture.md, layering rule 6): it reaches them through the Queue
// and Outbox interfaces it declares, with its own Message type; the binary
// adapts queue.Store to Queue.
package subject

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/retention"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// Message is one queued or finished message as the person sees it.
type Message struct {
	ID       string    `json:"id"`
	Campaign string    `json:"campaign"`
	List     string    `json:"list,omitempty"`
	State    string    `json:"state"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
	Reply    string    `json:"last_reply,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	History  []Attempt `json:"history,omitempty"`
}

// Attempt is one event in a message's history (queue.Attempt).
type Attempt struct {
	Time    time.Time `json:"time"`
	Outcome string    `json:"outcome"`
	Reply   string    `json:"reply,omitempty"`
	Remote  string    `json:"remote,omitempty"`
}

// Erased is what the queue did on an erasure: the ids of the person's
// messages, how many were cancelled (pending) and scrubbed (in flight).
type Erased struct {
	IDs                 []string
	Cancelled, Scrubbed int
}

// Queue is what the procedures need of the queue store.
type Queue interface {
	MessagesFor(addr string) ([]Message, error)
	// EraseRecipientIndex erases the messages of the recipient whose
	// address key has the hex keyed index (queue.Store.EraseRecipientIndex).
	EraseRecipientIndex(indexHex, reason string) (Erased, error)
}

// Suppression is what the procedures need of the suppression store.
type Suppression interface {
	EntriesFor(addr string) ([]suppression.Entry, error)
	Erase(addr, ref string, consents []suppression.ConsentDates) (suppression.Entry, error)
	Restrict(addr, reason string) error
	Unrestrict(addr string) (bool, error)
}

// Subscribers is what the procedures need of the consent store.
type Subscribers interface {
	History(addr string) ([]subscribers.ListHistory, error)
	EraseIndex(indexHex, ref string) (subscribers.Tombstone, error)
}

// Audit is the audit log.
type Audit interface {
	Append(e audit.Entry) (audit.Entry, error)
	List(since time.Time, fn func(audit.Entry) error) error
}

// Outbox is the capture folder (mta.Outbox): files by queue id and by content.
type Outbox interface {
	Mentioning(addr string, fn func(name string, body []byte) error) error
	Remove(id string) (int, error)
	RemoveMentioning(addr string) (int, error)
	// RemoveAddressed removes the files whose header names an address
	// for which match says true.
	RemoveAddressed(match func(addr string) bool) (int, error)
}

// Indexer derives the keyed index of a normalised address (sealed.Box).
type Indexer interface {
	IndexHex(normalised string) string
}

// Deps are the stores a request works on.
type Deps struct {
	Queue       Queue
	Suppression Suppression
	Subscribers Subscribers
	Audit       Audit
	Outbox      Outbox
	Index       Indexer
	// Stores are rewritten after an erasure, so the erased bytes leave the files.
	Stores []retention.Store
	Log    zerolog.Logger
	Now    func() time.Time // nil: time.Now
}

// Request is one data subject request.
type Request struct {
	Who     string // who asks: "local:alice", "admin:bob"
	Address string // the person
	Reason  string // why; the request reference, kept in the audit log
}

// ErrNotRestricted is Unrestrict's answer for an address not restricted.
var ErrNotRestricted = errors.New("subject: not restricted")

// Ref names a person in the audit log: the keyed index of their address
// (the same index the tombstone keeps), never the address.
func Ref(ix Indexer, addr string) (string, error) {
	a, err := address.Parse(addr)
	if err != nil {
		return "", err
	}
	return refPrefix + ix.IndexHex(a.Key()), nil
}

// refPrefix starts a person's audit reference; the hex index follows.
const refPrefix = "subject:"

// check refuses a request without a reason or a valid address, and
// returns the person's audit reference.
func (r Request) check(d Deps, verb string) (string, error) {
	if strings.TrimSpace(r.Reason) == "" {
		return "", fmt.Errorf("subject %s: a reason is required", verb)
	}
	if _, err := address.Parse(r.Address); err != nil {
		return "", fmt.Errorf("subject %s: %w", verb, err)
	}
	return Ref(d.Index, r.Address)
}

// record appends the audit entry of what r does; the action counts as done
// only if this succeeds.
func (d Deps) record(r Request, action, ref string, details map[string]string) error {
	if d.Audit == nil {
		return errors.New("audit log is not open")
	}
	_, err := d.Audit.Append(audit.Entry{Who: r.Who, Action: action, Target: ref, Reason: r.Reason, Details: details})
	if err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	return nil
}

// now is the time of the request.
func (d Deps) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}
