package main

// Consent writes on a cluster node (issue 13, promise 1): every write a
// campaign's gate or a subject export reads (sign-up, confirmation,
// unsubscribe, import) is checked by the local consent store, published on
// the suppression stream and applied by every node's replica to its own
// consent store (replica Config.Consent). Erasure goes its own way (the
// stream's tombstone and OnErase).

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/replica"
	"github.com/postwarden/postwarden/suppression/subscribers"
	"github.com/postwarden/postwarden/suppression/subscribers/importer"
)

// consentWriter is what the binary hands to the code that writes consent:
// the consent store on a single node, replicatedConsent on a cluster node.
type consentWriter interface {
	optin.Store
	importer.Store
	Unsubscribe(addr, list, source string) error
}

var (
	_ consentWriter = (*subscribers.Store)(nil)
	_ consentWriter = replicatedConsent{}
)

// consent is this env's consent writer.
func (e *env) consent() consentWriter {
	if e.rep != nil {
		return replicatedConsent{Store: e.subs, rep: e.rep}
	}
	return e.subs
}

// replicatedConsent reads the local consent store (a replica of the
// stream's consent ops) and writes through the stream.
type replicatedConsent struct {
	*subscribers.Store
	rep *replica.Replica
}

// publish checks op here (a refusal is returned before anything is
// published) and publishes it; it returns once the stream holds it and this
// node applied it.
func (c replicatedConsent) publish(op subscribers.Op) error {
	op, idx, err := c.Store.CheckOp(op)
	if err != nil {
		return err
	}
	j, err := json.Marshal(op)
	if err != nil {
		return fmt.Errorf("consent op %s: %w", op.Kind, err)
	}
	return c.rep.PublishConsent(context.Background(), idx, op.ID, j)
}

// latest returns addr's latest event on list, as the store's own write returns it.
func (c replicatedConsent) latest(addr, list string) (subscribers.Event, error) {
	hs, err := c.Store.History(addr)
	if err != nil {
		return subscribers.Event{}, err
	}
	for _, h := range hs {
		if h.List == list && len(h.Events) > 0 {
			return h.Events[len(h.Events)-1], nil
		}
	}
	return subscribers.Event{}, subscribers.ErrNotFound
}

// Subscribe publishes a sign-up.
func (c replicatedConsent) Subscribe(sub subscribers.Subscription) (subscribers.Event, error) {
	if err := c.publish(subscribers.SubscribeOp(sub)); err != nil {
		return subscribers.Event{}, err
	}
	return c.latest(sub.Address, sub.List)
}

// Confirm publishes a double opt-in confirmation.
func (c replicatedConsent) Confirm(addr, list, ip, ua string) (subscribers.Event, error) {
	if err := c.publish(subscribers.ConfirmOp(addr, list, ip, ua)); err != nil {
		return subscribers.Event{}, err
	}
	return c.latest(addr, list)
}

// Unsubscribe publishes an unsubscribe.
func (c replicatedConsent) Unsubscribe(addr, list, source string) error {
	return c.publish(subscribers.UnsubscribeOp(addr, list, source))
}

// Import publishes a batch of contacts in one PublishAll: each is checked
// here first (its refusal is its result), the rest go to the stream
// together, and a refusal found when applying them (the same address twice
// in the batch) is theirs.
func (c replicatedConsent) Import(cands []subscribers.Candidate) ([]subscribers.ImportResult, error) {
	res := make([]subscribers.ImportResult, len(cands))
	var (
		changes []replica.Change
		at      []int
	)
	for i, cand := range cands {
		op, idx, err := c.Store.CheckOp(subscribers.ImportOp(cand))
		if err != nil {
			res[i].Err = err
			continue
		}
		j, err := json.Marshal(op)
		if err != nil {
			return nil, fmt.Errorf("import consent op: %w", err)
		}
		changes, at = append(changes, replica.ConsentOp(idx, op.ID, j)), append(at, i)
		kind := subscribers.KindConfirmed
		if cand.ConsentedAt.IsZero() {
			kind = subscribers.KindImportedLegitimate
		}
		res[i].Event = subscribers.Event{Kind: kind, Time: cand.ConsentedAt, Recorded: op.Time, Source: op.Candidate.Source, SubscriberID: op.Person}
	}
	for len(changes) > 0 { // PublishAll takes up to 4000 at once
		n := min(len(changes), 1000)
		refused, err := c.rep.PublishAll(context.Background(), changes[:n])
		if err != nil {
			return nil, fmt.Errorf("import %d contacts: %w", len(cands), err)
		}
		for j, r := range refused {
			if r != nil {
				res[at[j]] = subscribers.ImportResult{Err: r}
			}
		}
		changes, at = changes[n:], at[n:]
	}
	return res, nil
}
