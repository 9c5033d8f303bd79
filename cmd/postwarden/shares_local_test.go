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

// TestRecordFlushesAtStop: a node stopping (SIGTERM) publishes the
// outcomes it still holds before it closes, rather than leave their
// recipients for another node to send again. It used to drop them: the
// batch still lingering when the worker stopped was published with the
// stopped context.
func TestRecordFlushesAtStop(t *testing.T) {
	const campaign = "stopping"
	w, _ := inProcessWorker(t, time.Minute)
	rows := shareRows(5)
	if _, err := w.coord.Publish(w.ctx, campaign, "h", rows); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.record(ctx) }()
	for _, r := range rows {
		w.final(queue.Message{Campaign: campaign, To: r.Address}, queue.StateDelivered)
	}
	cancel() // within outcomeLinger: the batch is still being gathered
	<-done
	st, err := w.coord.Status(w.ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	if st.Outcomes[shares.Delivered] != len(rows) || w.Unpublished() != 0 {
		t.Errorf("after the stop: cluster outcomes %v, %d unpublished; want %d delivered, none unpublished",
			st.Outcomes, w.Unpublished(), len(rows))
	}
}

// TestUnpublishedWhileStalled: while a batch waits for its acknowledgement
// past outcomeStall (NATS gone), the runner is told MaxUnpublished more
// unpublished outcomes, so it falls back to its strict window and a node cut
// off sends little that another node will send again.
func TestUnpublishedWhileStalled(t *testing.T) {
	const campaign = "stalled"
	w, _, srv := inProcessWorkerServer(t, time.Minute)
	rows := shareRows(3)
	if _, err := w.coord.Publish(w.ctx, campaign, "h", rows); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	go func() { defer close(done); w.record(ctx) }()
	w.final(queue.Message{Campaign: campaign, To: rows[0].Address}, queue.StateDelivered)
	waitUntil(t, 10*time.Second, "the first outcome published", func() bool { return w.Unpublished() == 0 })
	if w.Unpublished() != 0 {
		t.Fatalf("published: Unpublished %d, want 0", w.Unpublished())
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	w.final(queue.Message{Campaign: campaign, To: rows[1].Address}, queue.StateDelivered)
	waitUntil(t, 10*time.Second, "the stalled publisher counted", func() bool { return w.Unpublished() >= queue.MaxUnpublished })
	if got := w.Unpublished(); got != 1+queue.MaxUnpublished {
		t.Errorf("stalled: Unpublished %d, want 1 + MaxUnpublished = %d", got, 1+queue.MaxUnpublished)
	}
}
