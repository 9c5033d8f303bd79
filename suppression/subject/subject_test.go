package subject_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/subject"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

const (
	ana  = "marguerite.okonkwo@acme.example"
	dave = "dave@globex.example"
)

// Export returns everything held on a person: consent events, suppression
// entries, queue messages, the audit entries naming them by index and the
// capture files; and it is audited, with the format and counts.
func TestExportHoldsEverything(t *testing.T) {
	f := newFixture(t)
	id := f.person(t, ana, "Marguerite Okonkwo", "c1")
	f.person(t, dave, "Dave Kim", "c2")
	d := f.deps()

	x, err := subject.Export(d, subject.Request{Who: "local:dpo", Address: ana, Reason: "DSAR-1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if x.Subject != ana || len(x.Subscriber) != 1 || x.Subscriber[0].List != "news" || len(x.Subscriber[0].Events) == 0 {
		t.Errorf("consent: %+v", x.Subscriber)
	}
	if len(x.Suppression) != 1 || x.Suppression[0].List != "offers" || x.Suppression[0].Reason != suppression.Unsubscribed {
		t.Errorf("suppression: %+v", x.Suppression)
	}
	if len(x.Messages) != 1 || x.Messages[0].ID != id || x.Messages[0].Campaign != "c1" || x.Messages[0].State != "ready" {
		t.Errorf("messages: %+v", x.Messages)
	}
	ref, _ := subject.Ref(f.box, ana)
	if len(x.Audit) != 1 || x.Audit[0].Target != ref || x.Audit[0].Action != "suppress.add" {
		t.Errorf("audit: %+v", x.Audit)
	}
	if len(x.Captures) != 2 || !strings.Contains(x.Captures[0].Message+x.Captures[1].Message, "Dear Marguerite") {
		t.Errorf("capture files: %+v", x.Captures)
	}
	csv := x.CSV()
	for _, want := range []string{"section,item,time,detail", "consent,news:", "suppression,offers:unsubscribed", "message,c1:" + id, "audit,", "capture," + id + ".eml"} {
		if !strings.Contains(csv, want) {
			t.Errorf("csv lacks %q:\n%s", want, csv)
		}
	}
	all := f.entries(t)
	last := all[len(all)-1]
	if last.Action != "subject.export" || last.Who != "local:dpo" || last.Target != ref || last.Reason != "DSAR-1" ||
		last.Details["format"] != "json" || last.Details["messages"] != "1" || last.Details["suppression"] != "1" {
		t.Errorf("export audit entry: %+v", last)
	}

	// Refused requests change nothing and are not audited.
	for _, c := range []struct {
		r      subject.Request
		format string
	}{
		{subject.Request{Who: "local:dpo", Address: ana, Reason: " "}, "json"},
		{subject.Request{Who: "local:dpo", Address: "not an address", Reason: "DSAR-2"}, "json"},
		{subject.Request{Who: "local:dpo", Address: ana, Reason: "DSAR-2"}, "xml"},
	} {
		if _, err := subject.Export(d, c.r, c.format); err == nil {
			t.Errorf("Export(%+v, %q) succeeded", c.r, c.format)
		}
	}
	if n := len(f.entries(t)); n != len(all) {
		t.Errorf("refused exports audited: %d entries, want %d", n, len(all))
	}
}

// Erase leaves no trace but the tombstone: after it (it compacts) no byte
// of the bbolt files or the capture folder holds the address or the name;
// the other person is untouched; the audit entry names the index only.
func TestEraseLeavesOnlyTheTombstone(t *testing.T) {
	f := newFixture(t)
	f.person(t, ana, "Marguerite Okonkwo", "c1")
	daveID := f.person(t, dave, "Dave Kim", "c2")
	d := f.deps()
	before := map[string]os.FileInfo{}
	for _, st := range d.Stores {
		fi, err := os.Stat(st.Path)
		if err != nil {
			t.Fatal(err)
		}
		before[st.Path] = fi
	}

	res, err := subject.Erase(d, subject.Request{Who: "local:dpo", Address: ana, Reason: "DSAR-2 erasure"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Cancelled != 1 || res.CaptureFiles != 2 || res.Tombstone == "" || len(res.Consents) != 1 || strings.Contains(res.Subject, "okonkwo") {
		t.Errorf("erasure: %+v", res)
	}
	// Freed bbolt pages are not wiped: every store file was rewritten.
	for p, fi := range before {
		if now, err := os.Stat(p); err != nil || os.SameFile(fi, now) {
			t.Errorf("%s not rewritten by the erasure (err %v)", p, err)
		}
	}
	if hits := scan(t, f.dir, ana, "Okonkwo", "Marguerite"); len(hits) > 0 {
		t.Errorf("erased data still in files: %v", hits)
	}
	entries, err := f.supp.EntriesFor(ana)
	if err != nil || len(entries) != 1 || entries[0].Reason != suppression.Erased || entries[0].Target != "" {
		t.Errorf("tombstone: %+v, %v", entries, err)
	}
	if msgs, err := f.q.MessagesFor(ana); err != nil || len(msgs) != 0 {
		t.Errorf("queue after erasure: %d messages, %v", len(msgs), err)
	}
	if msgs, _ := f.q.MessagesFor(dave); len(msgs) != 1 || msgs[0].ID != daveID {
		t.Errorf("dave's messages: %+v", msgs)
	}
	if hits := scan(t, f.outbox, dave); len(hits) != 2 {
		t.Errorf("dave's capture files: %v", hits)
	}
	ref, _ := subject.Ref(f.box, ana)
	all := f.entries(t)
	last := all[len(all)-1]
	if last.Action != "subject.erase" || last.Target != ref || last.Reason != "DSAR-2 erasure" || !strings.HasPrefix(last.Details["request"], "erase-") {
		t.Errorf("erase audit entry: %+v", last)
	}
}

// EraseIndex, as a cluster node runs it for an erasure another node was
// asked for (the suppression tombstone applied from the stream first),
// leaves nothing of the person either, knowing only the index: the queued
// message and its capture file by id, the capture file whose record was
// pruned by its To header, the consent history; audited as the cluster.
// Running it again is harmless.
func TestEraseIndexLeavesOnlyTheTombstone(t *testing.T) {
	f := newFixture(t)
	f.person(t, ana, "Marguerite Okonkwo", "c1")
	daveID := f.person(t, dave, "Dave Kim", "c2")
	d := f.deps()
	ref, _ := subject.Ref(f.box, ana)
	ix := strings.TrimPrefix(ref, "subject:")
	if _, err := f.supp.EraseIndex(ix, "erase-20261206T000000Z", nil); err != nil { // the replica's part
		t.Fatal(err)
	}
	req := subject.IndexRequest{Who: "cluster:n1", Index: ix, Ref: "erase-20261206T000000Z", Reason: "erasure from node n1"}
	res, err := subject.EraseIndex(d, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Cancelled != 1 || res.CaptureFiles != 2 || res.Tombstone != ix || len(res.Consents) != 1 {
		t.Errorf("erasure: %+v", res)
	}
	if hits := scan(t, f.dir, ana, "Okonkwo", "Marguerite"); len(hits) > 0 {
		t.Errorf("erased data still in files: %v", hits)
	}
	if entries, err := f.supp.EntriesFor(ana); err != nil || len(entries) != 1 || entries[0].Reason != suppression.Erased {
		t.Errorf("tombstone: %+v, %v", entries, err)
	}
	if msgs, _ := f.q.MessagesFor(dave); len(msgs) != 1 || msgs[0].ID != daveID {
		t.Errorf("dave's messages: %+v", msgs)
	}
	if hits := scan(t, f.outbox, dave); len(hits) != 2 {
		t.Errorf("dave's capture files: %v", hits)
	}
	all := f.entries(t)
	last := all[len(all)-1]
	if last.Who != "cluster:n1" || last.Action != "subject.erase" || last.Target != ref || last.Details["request"] != req.Ref {
		t.Errorf("erase audit entry: %+v", last)
	}
	if res, err := subject.EraseIndex(d, req); err != nil || res.Cancelled+res.Scrubbed+res.CaptureFiles != 0 {
		t.Errorf("again: %+v, %v", res, err)
	}
	if _, err := subject.EraseIndex(d, subject.IndexRequest{Who: "cluster:n1", Index: "ana@example.com", Ref: "x", Reason: "y"}); err == nil {
		t.Error("an address taken for an index")
	}
}

// EraseIndex with Own, as the erasing node runs it once its tombstone comes
// back from the stream: a consent record applied after its Erase (a
// sign-up published by another node before the tombstone) is erased, the
// stores compacted so no byte of it is left, and the audit log says so;
// with nothing come back it writes and audits nothing.
func TestEraseIndexOwnErasesWhatCameBack(t *testing.T) {
	f := newFixture(t)
	f.person(t, ana, "Marguerite Okonkwo", "c1")
	d := f.deps()
	if _, err := subject.Erase(d, subject.Request{Who: "local:dpo", Address: ana, Reason: "DSAR-3"}); err != nil {
		t.Fatal(err)
	}
	all := f.entries(t)
	reqRef := all[len(all)-1].Details["request"]
	ref, _ := subject.Ref(f.box, ana)
	ix := strings.TrimPrefix(ref, "subject:")
	own := subject.IndexRequest{Who: "cluster:n1", Index: ix, Ref: reqRef, Reason: "erasure " + reqRef + " requested on node n1", Own: true}

	// Nothing came back: nothing written, nothing audited.
	if _, err := subject.EraseIndex(d, own); err != nil {
		t.Fatal(err)
	}
	if n := len(f.entries(t)); n != len(all) {
		t.Errorf("an erasure with nothing come back audited: %d entries, want %d", n, len(all))
	}

	// A sign-up applied after the erasure (double opt-in: allowed after one).
	if _, err := f.subs.Subscribe(subscribers.Subscription{Address: ana, List: "offers", Name: "Marguerite Okonkwo", ViaDoubleOptIn: true}); err != nil {
		t.Fatal(err)
	}
	before := map[string]os.FileInfo{}
	for _, st := range d.Stores {
		fi, err := os.Stat(st.Path)
		if err != nil {
			t.Fatal(err)
		}
		before[st.Path] = fi
	}
	res, err := subject.EraseIndex(d, own)
	if err != nil {
		t.Fatal(err)
	}
	// The consent records are sealed; that the deleted pages left the
	// files shows as every store file rewritten.
	for p, fi := range before {
		if now, err := os.Stat(p); err != nil || os.SameFile(fi, now) {
			t.Errorf("%s not rewritten after what came back was erased (err %v)", p, err)
		}
	}
	if res.Tombstone != ix || len(res.Consents) != 1 || res.Consents[0].List != "offers" {
		t.Errorf("erasure: %+v", res)
	}
	if st, err := f.subs.Status(ana, "offers"); err != nil || st.State != subscribers.StateErased {
		t.Errorf("offers after: %+v, %v", st, err)
	}
	if hits := scan(t, f.dir, ana, "Okonkwo", "Marguerite"); len(hits) > 0 {
		t.Errorf("erased data still in files: %v", hits)
	}
	after := f.entries(t)
	if len(after) != len(all)+1 {
		t.Fatalf("%d audit entries, want %d", len(after), len(all)+1)
	}
	if e := after[len(after)-1]; e.Who != "cluster:n1" || e.Action != "subject.erase" || e.Target != ref || e.Details["request"] != reqRef {
		t.Errorf("audit entry: %+v", e)
	}
}

// The audit entry is written before anything changes: with the audit log
// unwritable the erasure is refused and every store still holds the person.
func TestEraseIsAuditedFirst(t *testing.T) {
	f := newFixture(t)
	f.person(t, ana, "Marguerite Okonkwo", "c1")
	if err := f.audit.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := subject.Erase(f.deps(), subject.Request{Who: "local:dpo", Address: ana, Reason: "DSAR-2"}); err == nil || !strings.Contains(err.Error(), "audit subject.erase") {
		t.Fatalf("Erase with the audit log closed: %v", err)
	}
	if msgs, _ := f.q.MessagesFor(ana); len(msgs) != 1 {
		t.Errorf("queue: %d messages, want 1", len(msgs))
	}
	if h, _ := f.subs.History(ana); len(h) != 1 {
		t.Errorf("consent history: %+v", h)
	}
	if hits := scan(t, f.outbox, ana); len(hits) != 2 {
		t.Errorf("capture files: %v", hits)
	}
}

// Restrict stops campaigns under every basis and keeps the data;
// Unrestrict lifts it; a second Unrestrict says ErrNotRestricted. Each is
// audited.
func TestRestrictStopsCampaigns(t *testing.T) {
	f := newFixture(t)
	if _, err := f.subs.Subscribe(subscribersConfirmed(dave)); err != nil {
		t.Fatal(err)
	}
	d, g := f.deps(), gate.New(f.supp, f.subs)
	mailable := func() bool {
		t.Helper()
		_, suppressed, err := g.CheckCampaign(dave, "news", gate.LegitimateInterest)
		if err != nil {
			t.Fatal(err)
		}
		return !suppressed
	}
	if !mailable() {
		t.Fatal("not mailable before the restriction")
	}
	r := subject.Request{Who: "local:dpo", Address: dave, Reason: "objection pending"}
	if err := subject.Restrict(d, r); err != nil {
		t.Fatal(err)
	}
	if mailable() {
		t.Error("a restricted person is mailable")
	}
	if h, _ := f.subs.History(dave); len(h) != 1 {
		t.Errorf("restriction dropped the consent history: %+v", h)
	}
	if err := subject.Unrestrict(d, r); err != nil {
		t.Fatal(err)
	}
	if !mailable() {
		t.Error("not mailable after unrestrict")
	}
	if err := subject.Unrestrict(d, r); !errors.Is(err, subject.ErrNotRestricted) {
		t.Errorf("second Unrestrict: %v, want ErrNotRestricted", err)
	}
	var actions []string
	for _, e := range f.entries(t) {
		actions = append(actions, e.Action)
	}
	if got := strings.Join(actions, " "); got != "subject.restrict subject.unrestrict subject.unrestrict" {
		t.Errorf("audited %q", got)
	}
}
