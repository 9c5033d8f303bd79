package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// `campaign ls` lists every campaign with its state; a campaign with
// deferred messages is "sending", not finished, in ls and in status; one
// with nothing pending is "finished".
func TestCampaignLsAndFinishedState(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: deferGlobex})
	h.mustRun(0, "campaign", "send", h.campaign("ls-a", "email,first_name,company\nana@acme.example,Ana,Acme\n"))
	h.mustRun(0, "campaign", "send", h.campaign("ls-b", "email,first_name,company\nzoe@umbrella.example,Zoe,Umbrella\ndave@globex.example,Dave,Globex\n"))
	got := map[string]campaignListView{}
	for _, v := range jsonLines[campaignListView](t, h.mustRun(0, "--json", "campaign", "ls").stdout) {
		got[v.ID] = v
	}
	a, b := got["ls-a"], got["ls-b"]
	if len(got) != 2 || a.State != "finished" || a.Delivered != 1 || a.Pending != 0 || a.List != "product-news" || a.Started.IsZero() ||
		b.State != "sending" || b.Enqueued != 2 || b.Delivered != 1 || b.Pending != 1 {
		t.Errorf("campaign ls: %+v", got)
	}
	text := h.mustRun(0, "campaign", "ls").stdout
	if lines := strings.Split(strings.TrimSpace(text), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[1], "ls-a") || !strings.Contains(lines[2], "sending") {
		t.Errorf("campaign ls text:\n%s", text)
	}
	if st := h.mustRun(0, "campaign", "status", "ls-b").stdout; !strings.Contains(st, "state          sending, 1 pending") || strings.Contains(st, "finished") {
		t.Errorf("status of a campaign with a deferred message:\n%s", st)
	}
	if st := h.mustRun(0, "campaign", "status", "ls-a").stdout; !strings.Contains(st, "state          finished: nothing pending") {
		t.Errorf("status of a delivered campaign:\n%s", st)
	}
	h.mustRun(0, "campaign", "pause", "ls-b", "--reason", "checking")
	if st := h.mustRun(0, "campaign", "status", "ls-b").stdout; !strings.Contains(st, "state          paused, 1 pending") {
		t.Errorf("status of a paused campaign:\n%s", st)
	}
	if v := jsonLines[campaignListView](t, h.mustRun(0, "--json", "campaign", "ls").stdout); len(v) != 2 || v[1].State != "paused" {
		t.Errorf("campaign ls after pause: %+v", v)
	}
}

// `campaign validate` names every wrong path in one run: the template's
// bodies, the recipients file and the assessment, each at its line.
func TestValidateReportsEveryWrongPathAtOnce(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mkDataDir()
	file := h.campaign("paths-1", "email\n")
	h.write("paths-1.yaml", strings.NewReplacer("template: templates/note", "template: templates/nope",
		"recipients: paths-1.csv", "recipients: missing.csv", "lia: lia.md", "lia: lia-missing.md").Replace(readFile(t, file)))
	r := h.mustRun(2, "campaign", "validate", file)
	for _, want := range []string{"paths-1.yaml:5: template: cannot read the template's body", "nope.html", "nope.txt",
		"paths-1.yaml:6: recipients: cannot read the recipients file", "missing.csv",
		"paths-1.yaml:8: lia: cannot read the legitimate-interest assessment"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("validate lacks %q:\n%s", want, r.stderr)
		}
	}
	// send refuses the same way, before anything is enqueued.
	if r := h.mustRun(2, "campaign", "send", file); !strings.Contains(r.stderr, "missing.csv") || !strings.Contains(r.stderr, "nope.html") {
		t.Errorf("send:\n%s", r.stderr)
	}
}

// `campaign preview FILE --row N` renders that row's message as send
// would (its real unsubscribe link works) and sends nothing; --html gives
// the HTML part alone; addresses are masked unless --reveal.
func TestCampaignPreview(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	file := h.campaign("prev-1", "email,first_name,company\nana@acme.example,Ana,Acme\nnot-an-address,X,Y\ndave@globex.example,Dave,Globex\n")
	full := h.mustRun(0, "campaign", "preview", file, "--row", "3").stdout
	if !strings.Contains(full, "Subject: Dave, a note about Globex") || !strings.Contains(full, "multipart/alternative") ||
		strings.Contains(full, "dave@globex.example") || !strings.Contains(full, "d***@globex.example") {
		t.Errorf("preview row 3:\n%s", full)
	}
	html := h.mustRun(0, "--reveal", "campaign", "preview", file, "--row", "1", "--html").stdout
	if !strings.HasPrefix(html, "<!doctype html>") || !strings.Contains(html, "Hello Ana,") || strings.Contains(html, "Subject:") {
		t.Errorf("preview --html:\n%s", html)
	}
	if r := h.mustRun(2, "campaign", "preview", file, "--row", "2"); !strings.Contains(r.stderr, "prev-1.csv:3") {
		t.Errorf("preview of an invalid row: %q", r.stderr)
	}
	if r := h.mustRun(2, "campaign", "preview", file, "--row", "9"); !strings.Contains(r.stderr, "has 3 data rows, not 9") {
		t.Errorf("preview past the end: %q", r.stderr)
	}
	h.mustRun(2, "campaign", "preview", file)
	if n := h.sink.Count(); n != 0 {
		t.Errorf("preview sent %d messages", n)
	}
	if ls := h.mustRun(0, "--json", "campaign", "ls").stdout; strings.TrimSpace(ls) != "" {
		t.Errorf("preview recorded a campaign: %s", ls)
	}
}

// Re-sending a campaign id whose subject or templates changed says so and
// needs --force; an unchanged re-run goes on as before.
func TestResendChangedContentNeedsForce(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	file := h.campaign("chg-1", "email,first_name,company\nana@acme.example,Ana,Acme\n")
	h.mustRun(0, "campaign", "send", file)
	h.mustRun(0, "campaign", "send", file) // the same content: nothing to say
	h.write("chg-1.csv", "email,first_name,company\nana@acme.example,Ana,Acme\ndave@globex.example,Dave,Globex\n")
	h.write("templates/note.txt", "Hi {{.FirstName}},\n\nA new note for {{.Company}}.\n\nUnsubscribe: {{.UnsubscribeURL}}\nPrivacy: {{.PrivacyURL}}\n")
	r := h.mustRun(2, "campaign", "send", file)
	if !strings.Contains(r.stderr, "content changed") || !strings.Contains(r.stderr, "template's bodies differ") || !strings.Contains(r.stderr, "--force") {
		t.Errorf("changed template: %q", r.stderr)
	}
	h.write("chg-1.yaml", strings.Replace(readFile(t, file), `subject: "{{.FirstName}}, a note about {{.Company}}"`, `subject: "News for {{.Company}}"`, 1))
	if r := h.mustRun(2, "campaign", "send", file); !strings.Contains(r.stderr, `subject "News for {{.Company}}" was "{{.FirstName}}, a note about {{.Company}}"`) {
		t.Errorf("changed subject: %q", r.stderr)
	}
	if n := h.sink.Count(); n != 1 {
		t.Fatalf("refused re-runs sent: sink has %d", n)
	}
	h.mustRun(0, "campaign", "send", "--force", file)
	if got := h.sink.ByRecipient(); got["dave@globex.example"] != 1 || got["ana@acme.example"] != 1 {
		t.Errorf("after --force: %v", got)
	}
}

// `campaign send --test-to ADDR` sends one rendered row to that address
// only: the recipient of the row gets nothing, the campaign is neither
// recorded nor counted, and the test is audited.
func TestSendTestTo(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	file := h.campaign("tt-1", "email,first_name,company\nana@acme.example,Ana,Acme\ndave@globex.example,Dave,Globex\n")
	r := h.mustRun(0, "campaign", "send", "--test-to", "me@umbrella.example", "--test-row", "2", file)
	if !strings.Contains(r.stdout, "test of campaign tt-1 (row 2) for m***@umbrella.example: delivered") {
		t.Errorf("test send:\n%s\n%s", r.stdout, r.stderr)
	}
	got := h.sink.ByRecipient()
	if len(got) != 1 || got["me@umbrella.example"] != 1 {
		t.Fatalf("sink: %v", got)
	}
	body := string(h.sink.Messages()[0].Data)
	if !strings.Contains(body, "Hello Dave,") || !strings.Contains(body, "me@umbrella.example") {
		t.Errorf("test message:\n%s", body)
	}
	if vs := h.verifyDKIM(h.sink.Messages()[0].Data); len(vs) == 0 || vs[0].Err != nil {
		t.Errorf("test message DKIM: %+v", vs)
	}
	if ls := strings.TrimSpace(h.mustRun(0, "--json", "campaign", "ls").stdout); ls != "" {
		t.Errorf("the test recorded a campaign: %s", ls)
	}
	if a := h.auditOfAction("campaign.test"); len(a) != 1 || a[0].Target != "campaign:tt-1" || a[0].Details["row"] != "2" {
		t.Errorf("audit: %+v", a)
	}
	// The real send afterwards mails both recipients: the test took nobody's place.
	h.mustRun(0, "campaign", "send", file)
	if got := h.sink.ByRecipient(); got["ana@acme.example"] != 1 || got["dave@globex.example"] != 1 {
		t.Errorf("after the real send: %v", got)
	}
	h.mustRun(2, "campaign", "send", "--test-to", "not an address", file)
}

// A resumed send says how many recipients an earlier run had finished and
// how many it left queued.
func TestResumedSendSplitsSentAndQueued(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: deferGlobex})
	file := h.campaign("res-1", adminCSV)
	h.mustRun(0, "campaign", "send", file)
	r := h.mustRun(0, "campaign", "send", file)
	if !strings.Contains(r.stdout, "already sent   2\n") || !strings.Contains(r.stdout, "already queued 4 ") {
		t.Errorf("resumed send:\n%s", r.stdout)
	}
	var res sendResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(h.mustRun(0, "--json", "campaign", "send", file).stdout)), &res); err != nil {
		t.Fatal(err)
	}
	if res.Summary.AlreadySent != 6 || res.Summary.AlreadyQueued != 4 {
		t.Errorf("JSON summary: already_sent %d, already_queued %d; want 6 and 4 (gone@ bounced: suppressed now)", res.Summary.AlreadySent, res.Summary.AlreadyQueued)
	}
}
