package shares

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestRecordBatch: outcomes recorded in batches count in Status and are
// left out when a shard is handed over, like per-recipient ones; a batch
// published again adds no message; a deferred outcome never hides a final
// one; EraseOutcomes leaves no message that names the person, and the
// others' outcomes stand.
func TestRecordBatch(t *testing.T) {
	const campaign = "batch.one"
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	ctx := context.Background()
	c := newCoordinator(t, connect(t, url), box, Config{Node: "mta1", ShardSize: 50})
	pub, err := c.Publish(ctx, campaign, "file", testRows(200))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for s := range pub.Manifest.Shards {
		rows, err := c.readShard(ctx, mustToken(t, campaign), campaign, s)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			keys = append(keys, r.Key)
		}
	}
	if len(keys) != 200 {
		t.Fatalf("%d keys", len(keys))
	}
	var outs []KeyOutcome
	for i, k := range keys[:120] {
		o := Delivered
		if i%10 == 0 {
			o = Bounced
		}
		outs = append(outs, KeyOutcome{k, o})
	}
	outs = append(outs, KeyOutcome{keys[0], Deferred}, KeyOutcome{keys[150], Deferred})
	if err := c.RecordBatch(ctx, campaign, outs); err != nil {
		t.Fatal(err)
	}
	before := streamSeqs(t, connect(t, url))[1]
	if err := c.RecordBatch(ctx, campaign, outs); err != nil { // the same batches again: dropped
		t.Fatal(err)
	}
	if after := streamSeqs(t, connect(t, url))[1]; after != before {
		t.Errorf("recording the same batches again moved the outcome stream from %d to %d", before, after)
	}
	if err := c.Record(ctx, campaign, keys[130], Delivered); err != nil { // the per-recipient form still counts
		t.Fatal(err)
	}
	st, err := c.Status(ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	if st.Outcomes[Delivered] != 109 || st.Outcomes[Bounced] != 12 || st.Outcomes[Deferred] != 1 || st.Pending != 200-121 {
		t.Errorf("status: outcomes %v pending %d", st.Outcomes, st.Pending)
	}
	// A shard handed over leaves out the rows with a final outcome.
	s0 := shardOf(keys[0], pub.Manifest.Shards)
	rows, _ := c.readShard(ctx, mustToken(t, campaign), campaign, s0)
	kept, err := c.dropRecorded(ctx, mustToken(t, campaign), campaign, s0, rows)
	if err != nil {
		t.Fatal(err)
	}
	final := map[string]bool{keys[130]: true}
	for _, o := range outs[:120] {
		final[o.Key] = true
	}
	want := 0
	for _, r := range rows {
		if !final[r.Key] {
			want++
		}
	}
	if len(kept) != want {
		t.Errorf("shard %d: %d rows kept, want %d", s0, len(kept), want)
	}

	// Erasure of keys[0]: no outcome message names them any more.
	n, err := c.EraseOutcomes(ctx, campaign, keys[0])
	if err != nil || n != 1 {
		t.Fatalf("erase outcomes: %d messages, %v", n, err)
	}
	js := connect(t, url)
	stream, err := js.Stream(ctx, OutcomeStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(outcomePrefix+">"))
	if err != nil {
		t.Fatal(err)
	}
	for subj := range info.State.Subjects {
		if strings.Contains(subj, keys[0]) {
			t.Errorf("subject %s names the erased person", subj)
		}
		if parts := strings.Split(subj, "."); parts[5] == batchToken {
			got, _, err := c.readBatch(ctx, subj)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := got[keys[0]]; ok {
				t.Errorf("batch %s still holds the erased person", subj)
			}
		}
	}
	// The whole erasure (EraseIndex) rewrites the batches too.
	if n, err := c.EraseIndex(ctx, keys[1]); err != nil || n != 1 {
		t.Fatalf("EraseIndex: %d rows, %v", n, err)
	}
	rec, err := c.recorded(ctx, outcomePrefix+mustToken(t, campaign)+".>")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rec[keys[1]]; ok {
		t.Error("an outcome batch still holds the person EraseIndex erased")
	}
	st, err = c.Status(ctx, campaign)
	if err != nil {
		t.Fatal(err)
	}
	if st.Outcomes[Delivered]+st.Outcomes[Bounced] != 119 {
		t.Errorf("after the erasures: outcomes %v, want the other 119 final ones", st.Outcomes)
	}
	if err := c.RecordBatch(ctx, campaign, []KeyOutcome{{"person@x.example", Delivered}}); err != ErrBadKey {
		t.Errorf("an address as key: %v", err)
	}
}

func mustToken(t *testing.T, campaign string) string {
	t.Helper()
	tok, err := campaignToken(campaign)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
