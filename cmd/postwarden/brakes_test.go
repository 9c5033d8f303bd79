package main

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/mta/bounce/bouncetest"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/audit"
)

// status is `campaign status ID --json`.
func (h *harness) status(id string) campaignStatus {
	h.t.Helper()
	sts := jsonLines[campaignStatus](h.t, h.mustRun(0, "--json", "campaign", "status", id).stdout)
	if len(sts) != 1 || sts[0].Brake == nil {
		h.t.Fatalf("campaign status %s: %+v, want one with its brake", id, sts)
	}
	return sts[0]
}

// auditOf returns the audit entries of action on campaign id.
func (h *harness) auditOf(action, id string) []audit.Entry {
	h.t.Helper()
	var got []audit.Entry
	for _, e := range h.auditEntries() {
		if e.Action == action && e.Target == "campaign:"+id {
			got = append(got, e)
		}
	}
	return got
}

// A real server rejects 10 % of the recipients with 550 5.1.1: the campaign,
// with hard_bounce_rate 5% and a sample of 100, is paused once it has its
// sample (no further attempt; the rest of its messages kept), audited as
// "mta", shown in campaign status with the figures; campaign resume
// continues it to the end.
func TestBrakeHardBouncesPauseAndResume(t *testing.T) {
	var rejecting atomic.Bool
	rejecting.Store(true)
	h := newHarness(t, mtatest.Options{Rcpt: func(to string, _ int) error {
		var i int
		if _, err := fmt.Sscanf(to, "rcpt%d@", &i); err == nil && i%10 == 0 && rejecting.Load() {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
		}
		return nil
	}})
	h.serve()
	const n, id = 600, "brake-hb"
	file := h.campaign(id, bulkCSV(n))
	// The rate spreads the campaign out, so most of it is still queued when the brake trips.
	if err := os.WriteFile(file, []byte(readFile(t, file)+"rate: 300/s\nbrakes: {hard_bounce_rate: 5%, min_sample: 100}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "the brake to pause the campaign", func() bool { return h.status(id).Brake.Paused })
	// What was in flight settles; nothing is attempted after that.
	waitFor(t, "no message ready or in flight", func() bool {
		st := h.status(id)
		return st.Queue[queue.StateReady]+st.Queue[queue.StateActive] == 0
	})
	st := h.status(id)
	p := st.Brake.Pause
	if p == nil || p.Trip == nil || p.By != "mta" || p.Trip.Brake != brakes.HardBounceRate || p.Trip.Sample < 100 ||
		p.Trip.Rate <= 0.05 || p.Trip.Threshold != 0.05 || !strings.HasPrefix(p.Reason, "brake: hard_bounce_rate ") ||
		!strings.HasSuffix(p.Reason, fmt.Sprintf("> 5%% after %d attempted", p.Trip.Sample)) {
		t.Fatalf("pause %+v trip %+v", p, p.Trip)
	}
	if st.Pending == 0 || st.Pending != st.Deferred || st.Delivered+st.Bounced+st.Pending != n {
		t.Errorf("paused campaign: %d pending (%d deferred), %d delivered, %d bounced; want the rest kept, deferred", st.Pending, st.Deferred, st.Delivered, st.Bounced)
	}
	if got := h.sink.Count(); got != st.Delivered {
		t.Errorf("sink received %d, queue delivered %d", got, st.Delivered)
	}
	for _, v := range jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", id, "--state", "deferred").stdout) {
		if !strings.HasPrefix(v.LastReply, "suspended: brake: hard_bounce_rate") || v.Attempts != 0 {
			t.Fatalf("held message %+v: want no attempt, held by the brake", v)
		}
	}
	if a := h.auditOf("brake.trip", id); len(a) != 1 || a[0].Who != "mta" || a[0].Reason != p.Reason || a[0].Details["brake"] != "hard_bounce_rate" {
		t.Errorf("brake.trip audit entries %+v", a)
	}
	text := h.mustRun(0, "campaign", "status", id).stdout
	for _, want := range []string{"brakes         complaint_rate 0.3%, hard_bounce_rate 5%, min_sample 100", "paused         yes: " + p.Reason + " (by mta,"} {
		if !strings.Contains(text, want) {
			t.Errorf("campaign status lacks %q:\n%s", want, text)
		}
	}

	// The list is cleaned: resume continues the campaign to its end.
	rejecting.Store(false)
	h.mustRun(0, "campaign", "resume", id, "--reason", "list cleaned")
	h.mustRun(1, "campaign", "resume", id) // not paused any more
	defer func() {
		if t.Failed() {
			t.Logf("last status: %+v brake %+v", st, st.Brake)
		}
	}()
	waitFor(t, "the whole campaign to finish", func() bool {
		st = h.status(id)
		return st.Delivered+st.Bounced == n
	})
	st = h.status(id)
	if st.Brake.Paused || st.Brake.Judged.HardBounces != 0 {
		t.Errorf("after resume: %+v", st.Brake)
	}
	if a := h.auditOf("campaign.resume", id); len(a) != 1 || a[0].Who != fmt.Sprintf("uid:%d", os.Getuid()) || a[0].Reason != "list cleaned" {
		t.Errorf("campaign.resume audit entries %+v", a)
	}
}

// ARF complaints arriving at the inbound listener pause a campaign whose
// complaint rate passes its brake; new messages of a paused campaign wait
// unattempted; resume sends them. A pause by hand is audited as the uid.
func TestBrakeComplaintsPause(t *testing.T) {
	h, listen := newInboundHarness(t)
	h.serve()
	const id = "brake-arf"
	brakesLine := "brakes: {complaint_rate: 5%, min_sample: 20}\n"
	file := h.campaign(id, bulkCSV(40))
	if err := os.WriteFile(file, []byte(readFile(t, file)+brakesLine), 0o644); err != nil {
		t.Fatal(err)
	}
	h.mustRun(0, "campaign", "send", file)
	h.waitDelivered(id, 40)
	verpOf := map[string]string{}
	for _, m := range h.sink.Messages() {
		verpOf[m.To[0]] = m.From
	}
	complain := func(i int) {
		t.Helper()
		v := verpOf[bulkRecipient(i)]
		arf := strings.ReplaceAll(string(bouncetest.Read(t, "arf-abuse.eml")), fixtureVERP, v)
		if err := sendSMTP(listen, "", v, []byte(arf)); err != nil {
			t.Fatalf("complaint: %v", err)
		}
	}
	complain(1)
	complain(2)
	complain(2) // the same person again counts once
	if st := h.status(id); st.Brake.Paused || st.Complained != 2 {
		t.Fatalf("2 complaints of 40 delivered (5%%, not over): %+v complained %d", st.Brake, st.Complained)
	}
	complain(3)
	st := h.status(id)
	p := st.Brake.Pause
	if !st.Brake.Paused || p == nil || p.By != "inbound" || p.Reason != "brake: complaint_rate 7.5% > 5% after 40 delivered" {
		t.Fatalf("after 3 complaints of 40: %+v %+v", st.Brake, p)
	}
	if a := h.auditOf("brake.trip", id); len(a) != 1 || a[0].Who != "inbound" {
		t.Errorf("brake.trip audit entries %+v", a)
	}

	// Ten more rows: a paused campaign's new messages are kept, not attempted.
	h.write(id+".csv", bulkCSV(50))
	r := h.mustRun(0, "campaign", "send", file)
	if !strings.Contains(r.stdout+r.stderr, "campaign "+id+" is paused") {
		t.Errorf("campaign send of a paused campaign says nothing of it:\n%s\n%s", r.stdout, r.stderr)
	}
	if st := h.status(id); st.Deferred != 10 || st.Delivered != 40 || h.sink.Count() != 40 {
		t.Fatalf("new messages of a paused campaign: %d deferred, %d delivered, sink %d", st.Deferred, st.Delivered, h.sink.Count())
	}
	h.mustRun(0, "campaign", "resume", id)
	h.waitDelivered(id, 50)

	// By hand: the reason is required, the campaign must exist, a pause is audited.
	h.mustRun(2, "campaign", "pause", id)
	h.mustRun(1, "campaign", "pause", "no-such-campaign", "--reason", "x")
	h.mustRun(0, "campaign", "pause", id, "--reason", "legal review")
	h.mustRun(1, "campaign", "pause", id, "--reason", "again")
	uid := fmt.Sprintf("uid:%d", os.Getuid())
	if st := h.status(id); !st.Brake.Paused || st.Brake.Pause.By != uid || st.Brake.Pause.Reason != "paused: legal review" {
		t.Errorf("paused by hand: %+v", st.Brake.Pause)
	}
	if a := h.auditOf("campaign.pause", id); len(a) != 1 || a[0].Who != uid || a[0].Reason != "paused: legal review" {
		t.Errorf("campaign.pause audit entries %+v", a)
	}
	h.mustRun(0, "campaign", "resume", id)
	if st := h.status(id); st.Brake.Paused {
		t.Error("still paused after resume")
	}
}

// A pause is kept in the queue file: every CLI run without a daemon opens
// the stores anew, and a paused campaign's send delivers nothing, its
// messages waiting unattempted, until campaign resume; the next send
// delivers them.
func TestCampaignPauseSurvivesRestart(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	const id = "brake-restart"
	file := h.campaign(id, bulkCSV(5))
	h.mustRun(0, "campaign", "send", "--no-wait", file)
	h.mustRun(0, "campaign", "pause", id, "--reason", "check the copy")
	r := h.mustRun(0, "campaign", "send", file)
	if !strings.Contains(r.stdout+r.stderr, "is paused") {
		t.Errorf("send of a paused campaign: %s %s", r.stdout, r.stderr)
	}
	st := h.status(id)
	if !st.Brake.Paused || st.Brake.Pause.By != localUser() || st.Deferred != 5 || h.sink.Count() != 0 {
		t.Fatalf("paused campaign after a send: %+v, %d deferred, sink %d", st.Brake.Pause, st.Deferred, h.sink.Count())
	}
	if text := h.mustRun(0, "queue", "suspend", "ls").stdout; !strings.Contains(text, "campaign "+id+" suspended until ") || !strings.Contains(text, "paused: check the copy") {
		t.Errorf("queue suspend ls: %s", text)
	}
	h.mustRun(0, "campaign", "resume", id)
	h.mustRun(0, "campaign", "send", file)
	if st := h.status(id); st.Brake.Paused || st.Delivered != 5 || h.sink.Count() != 5 {
		t.Errorf("after resume and send: paused %v, %d delivered, sink %d", st.Brake.Paused, st.Delivered, h.sink.Count())
	}
}
