package main

import (
	"context"
	"testing"
	"time"

	"github.com/postwarden/postwarden/campaign/shares"
	"github.com/postwarden/postwarden/queue"
)

// TestRecordLocalOutcomes: a cluster node delivers messages that are no
// cluster campaign's (a `campaign send --test-to`, an opt-in
// confirmation): their outcomes have nowhere to go in the cluster. The
// publisher drops them and goes on, so the outcomes after them are
// published and the runner's window (Unpublished) empties. It used to
// retry them forever: the window stayed full and the node delivered
// nothing more.
func TestRecordLocalOutcomes(t *testing.T) {
	const campaign = "shared"
	w, _ := inProcessWorker(t, time.Minute)
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	rows := shareRows(3)
	if _, err := w.coord.Publish(ctx, campaign, "h", rows); err != nil {
		t.Fatal(err)
	}
	go func() { defer close(done); w.record(ctx) }()
	w.final(queue.Message{Campaign: testCampaign, To: "ops@sender.example"}, queue.StateDelivered)
	w.final(queue.Message{Campaign: "", To: "someone@sender.example"}, queue.StateBounced)
	for _, r := range rows {
		w.final(queue.Message{Campaign: campaign, To: r.Address}, queue.StateDelivered)
	}
	waitUntil(t, 10*time.Second, "the window empty", func() bool { return w.Unpublished() == 0 })
	st, err := w.coord.Status(ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	if st.Outcomes[shares.Delivered] != len(rows) || st.Pending != 0 {
		t.Errorf("cluster outcomes %v, pending %d: want %d delivered", st.Outcomes, st.Pending, len(rows))
	}
}
