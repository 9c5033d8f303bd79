// Package campaignq lets the campaign engine enqueue into the queue store.
// campaign declares the Queue it needs and may not depend on queue, nor queue
// on campaign, so the adapter between them lives here, where the binary and
// the benchmark both import it (docs/architecture.md, layering rule 10).
package campaignq

import (
	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/queue"
)

// Adapter is a campaign.Queue over a queue.Store.
type Adapter struct{ Q *queue.Store }

var (
	_ campaign.Queue         = Adapter{}
	_ campaign.QueuedCounter = Adapter{}
)

// Enqueue enqueues msgs in one queue.Store.Enqueue call (one fsynced commit)
// and returns how many were added and how many the queue already held.
func (a Adapter) Enqueue(msgs []campaign.Message) (added, duplicates int, err error) {
	added, duplicates, _, err = a.EnqueueCounting(msgs)
	return added, duplicates, err
}

// EnqueueCounting implements campaign.QueuedCounter.
func (a Adapter) EnqueueCounting(msgs []campaign.Message) (added, duplicates, queued int, err error) {
	nm := make([]queue.NewMessage, len(msgs))
	for i, m := range msgs {
		nm[i] = queue.NewMessage{Campaign: m.Campaign, List: m.List, Key: m.Key, From: m.From, To: m.To, Body: m.Body, Dict: m.Dict, Pool: m.Pool}
	}
	r, err := a.Q.Enqueue(nm)
	return r.Added, r.Duplicates, r.DuplicatesQueued, err
}
