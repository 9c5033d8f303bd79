package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/suppression/audit"
)

// deferGlobex answers 451 to every recipient at globex.example and 550 5.1.1 to gone@.
func deferGlobex(rcpt string, n int) error {
	switch {
	case strings.HasSuffix(rcpt, "@globex.example"):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, try later"}
	case rcpt == "gone@acme.example":
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}

const adminCSV = `email,first_name,company
ana@acme.example,Ana,Acme
gone@acme.example,Gon,Acme
dave@globex.example,Dave,Globex
erin@globex.example,Erin,Globex
fred@globex.example,Fred,Globex
gina@globex.example,Gina,Globex
zoe@umbrella.example,Zoe,Umbrella
`

// The queue's admin verbs, directly on the store (no daemon) and through the
// admin socket while serve holds it.
func TestQueueAdminVerbs(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemon=%v", daemon), func(t *testing.T) {
			h := newHarness(t, mtatest.Options{Rcpt: deferGlobex})
			h.mustRun(0, "suppress", "add", "bob@acme.example")
			file := h.campaign("admin-1", adminCSV+"bob@acme.example,Bob,Acme\n")
			if daemon {
				h.serve()
			}
			h.mustRun(0, "campaign", "send", file)
			settle := func() {
				t.Helper()
				waitFor(t, "no message due or in flight", func() bool {
					st := jsonLines[statsView](t, h.mustRun(0, "--json", "queue", "stats").stdout)
					return !daemon || st[0].ByState["ready"] == 0 && st[0].ByState["active"] == 0
				})
			}
			settle()
			exerciseQueueVerbs(t, h, daemon, settle)
		})
	}
}

func exerciseQueueVerbs(t *testing.T, h *harness, daemon bool, settle func()) {
	// ls filters: domain, older-than, state; JSON Lines.
	globex := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--domain", "GLOBEX.example").stdout)
	if len(globex) != 4 {
		t.Fatalf("ls --domain: %d messages, want 4", len(globex))
	}
	for _, v := range globex {
		if v.Domain != "globex.example" || v.State != "deferred" || !strings.HasSuffix(v.Rcpt, "@globex.example") || !strings.Contains(v.Rcpt, "***") {
			t.Errorf("ls --domain entry %+v", v)
		}
	}
	if old := h.mustRun(0, "--json", "queue", "ls", "--all", "--older-than", "1h").stdout; strings.TrimSpace(old) != "" {
		t.Errorf("ls --older-than 1h lists fresh messages:\n%s", old)
	}
	if n := len(jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--older-than", "0s", "--domain", "acme.example").stdout)); n != 2 {
		t.Errorf("ls --older-than 0s --domain acme.example: %d, want 2", n)
	}
	h.mustRun(2, "queue", "ls", "--all", "--older-than", "soon")

	// show: envelope, headers (To masked), attempts with replies, next attempt.
	id := globex[0].ID
	show := h.mustRun(0, "queue", "show", id).stdout
	for _, want := range []string{"id:        " + id, "state:     deferred", "next:", "headers:", "Subject: ", "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
		"To: ", "***@globex.example", "451", "greylisted"} {
		if !strings.Contains(show, want) {
			t.Errorf("queue show lacks %q:\n%s", want, show)
		}
	}
	if regexp.MustCompile(`[a-z]+@globex\.example`).MatchString(show) {
		t.Errorf("queue show reveals an address:\n%s", show)
	}
	if rev := h.mustRun(0, "--reveal", "queue", "show", id).stdout; !regexp.MustCompile(`To: .*[a-z]{4}@globex\.example`).MatchString(rev) {
		t.Errorf("queue show --reveal masks To:\n%s", rev)
	}

	// hold / release by domain (a bulk selection without ALL), retry by ID.
	if out := h.mustRun(0, "--json", "queue", "hold", "--domain", "globex.example").stdout; !strings.Contains(out, `"changed":4`) {
		t.Errorf("hold --domain: %s", out)
	}
	if n := len(jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--state", "held").stdout)); n != 4 {
		t.Errorf("%d held after hold --domain, want 4", n)
	}
	if out := h.mustRun(0, "--json", "queue", "release", "--campaign", "admin-1").stdout; !strings.Contains(out, `"changed":4`) {
		t.Errorf("release --campaign: %s", out)
	}
	settle() // the daemon tries them again at once
	h.mustRun(0, "queue", "hold", id)
	h.mustRun(2, "queue", "hold", "all")
	h.mustRun(2, "queue", "hold", id, "--domain", "globex.example")
	h.mustRun(1, "queue", "retry", "0000000000000000")

	// Destructive verbs need a reason, and record it.
	h.mustRun(2, "queue", "delete", id)
	h.mustRun(2, "queue", "bounce", id)
	h.mustRun(0, "queue", "delete", id, "--reason", "asked by the customer")
	bounceID := globex[1].ID
	h.mustRun(0, "queue", "bounce", bounceID, "--reason", "mailbox known dead")
	if v := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "show", id).stdout)[0]; v.State != "cancelled" || v.Reason != "asked by the customer" {
		t.Errorf("deleted message: %+v", v)
	}
	if v := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "show", bounceID).stdout)[0]; v.State != "bounced" || v.Reason != "admin: mailbox known dead" {
		t.Errorf("bounced message: %+v", v)
	}

	// Suspend, list, resume.
	h.mustRun(2, "queue", "suspend", "--domain", "globex.example", "--duration", "30m")
	sus := h.mustRun(0, "queue", "suspend", "--domain", "globex.example", "--duration", "30m", "--reason", "provider rate-limits us").stdout
	if !strings.Contains(sus, "domain globex.example suspended until") {
		t.Errorf("suspend: %s", sus)
	}
	if ls := h.mustRun(0, "queue", "suspend", "ls").stdout; !strings.Contains(ls, "provider rate-limits us") {
		t.Errorf("suspend ls: %s", ls)
	}
	h.mustRun(0, "queue", "retry", "--domain", "globex.example") // due now, but suspended: moved, no attempt
	if daemon {
		waitFor(t, "the suspension to hold globex", func() bool {
			n := 0
			for _, v := range jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--domain", "globex.example", "--state", "deferred").stdout) {
				if strings.HasPrefix(v.LastReply, "suspended: ") {
					n++
				}
			}
			return n == 2
		})
	}
	st := jsonLines[statsView](t, h.mustRun(0, "--json", "queue", "stats").stdout)[0]
	if len(st.Suspensions) != 1 || st.ByDomain["globex.example"] != 2 || st.Rates["1m"] <= 0 || st.Recent["delivered"] != 2 {
		t.Errorf("stats: %+v", st)
	}
	h.mustRun(0, "queue", "resume", "--domain", "globex.example")
	h.mustRun(1, "queue", "resume", "--domain", "globex.example")
	settle()

	// stats and top, human forms.
	human := h.mustRun(0, "queue", "stats").stdout
	for _, want := range []string{"messages: 7", "delivered/min:", "globex.example", "oldest pending"} {
		if !strings.Contains(human, want) {
			t.Errorf("queue stats lacks %q:\n%s", want, human)
		}
	}
	top := h.mustRun(0, "queue", "top").stdout // not a terminal: one frame
	if !strings.Contains(top, "DOMAIN") || !strings.Contains(top, "globex.example") || strings.Contains(top, "\x1b[") {
		t.Errorf("queue top:\n%s", top)
	}

	// campaign status: queue counts, record summary and events.
	cs := jsonLines[campaignStatus](t, h.mustRun(0, "--json", "campaign", "status", "admin-1").stdout)[0]
	if cs.Enqueued != 7 || cs.Delivered != 2 || cs.Bounced != 2 || cs.BouncedHard != 1 || cs.Cancelled != 1 ||
		cs.Pending != 2 || cs.Suppressed["manual"] != 1 {
		t.Errorf("campaign status: %+v", cs)
	}
	hs := h.mustRun(0, "campaign", "status", "admin-1").stdout
	for _, want := range []string{"enqueued       7", "delivered      2", "bounced        2 (hard 1, soft 0)", "suppressed at enqueue 1 (manual 1)", "complained     0", "unsubscribed   0"} {
		if !strings.Contains(hs, want) {
			t.Errorf("campaign status lacks %q:\n%s", want, hs)
		}
	}
	h.mustRun(1, "campaign", "status", "nope")
}

// Metrics on metrics_listen: depth by state, deliveries by outcome and domain,
// attempt latency, bounces.
func TestMetricsEndpoint(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: deferGlobex})
	addr := listenAddr(t)
	h.appendConfig("metrics_listen: " + addr + "\n")
	h.serve()
	file := h.campaign("metrics-1", adminCSV)
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "deliveries", func() bool { return h.sink.Count() == 2 })
	wants := []string{
		`postwarden_deliveries_total{domain="globex.example",outcome="deferred"} 4`,
		`postwarden_deliveries_total{domain="acme.example",outcome="delivered"} 1`,
		`postwarden_deliveries_total{domain="umbrella.example",outcome="delivered"} 1`,
		`postwarden_deliveries_total{domain="acme.example",outcome="bounced"} 1`,
		`postwarden_queue_messages{state="delivered"} 2`,
		`postwarden_queue_messages{state="deferred"} 4`,
		`postwarden_delivery_attempt_seconds_count{outcome="delivered"} 2`,
		`postwarden_bounces_total{kind="hard"} 1`,
		`postwarden_complaints_total 0`,
		`postwarden_unsubscribes_total 0`,
		`postwarden_delivered_per_minute{window="5m"}`,
		`postwarden_queue_scrape_error 0`,
	}
	// The sink counts a message at DATA, before the runner records the
	// outcome: poll until every series is there (or report what is missing).
	var body string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		missing := 0
		for _, want := range wants {
			if !strings.Contains(body, want) {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range wants {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(body, "postwarden_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestMetricsDomainLabelCap(t *testing.T) {
	m := &metrics{domains: map[string]bool{}}
	for i := range maxDomainLabels {
		if got := m.domainLabel(fmt.Sprintf("d%d.example", i)); got != fmt.Sprintf("d%d.example", i) {
			t.Fatalf("domain %d labelled %q", i, got)
		}
	}
	if got := m.domainLabel("late.example"); got != "other" {
		t.Fatalf("domain past the cap labelled %q", got)
	}
	if got := m.domainLabel("d3.example"); got != "d3.example" {
		t.Fatalf("known domain labelled %q", got)
	}
}

// appendConfig adds lines to the harness's server config.
func (h *harness) appendConfig(s string) {
	h.t.Helper()
	cur, err := os.ReadFile(h.cfgPath)
	if err != nil {
		h.t.Fatal(err)
	}
	h.write("postwarden.yaml", string(cur)+s)
}

// A campaign file's rate (20/s: a burst of 20, then 10 spread out) is applied: without a daemon, send
// still delivers everything (waiting for the rate), and status shows the rate.
func TestCampaignRateFromFile(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	var csv strings.Builder
	csv.WriteString("email,first_name,company\n")
	for i := range 30 {
		fmt.Fprintf(&csv, "r%02d@%s,R,Co\n", i, testDomains[i%len(testDomains)])
	}
	file := h.campaign("paced-1", csv.String())
	cur, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	h.write("paced-1.yaml", string(cur)+"rate: 20/s\n")
	r := h.mustRun(0, "campaign", "send", file)
	if !strings.Contains(r.stdout, "delivery: delivered 30") {
		t.Fatalf("send:\n%s", r.stdout)
	}
	cs := jsonLines[campaignStatus](t, h.mustRun(0, "--json", "campaign", "status", "paced-1").stdout)[0]
	if cs.Rate != 20 || cs.Delivered != 30 {
		t.Fatalf("status: %+v", cs)
	}
	for rcpt, n := range h.sink.ByRecipient() {
		if n != 1 {
			t.Errorf("%s received %d", rcpt, n)
		}
	}
}

// `queue ls` lists what is still in the queue, like mailq, with a total
// line; --all and --state reach the finished records; --rcpt finds one
// recipient's messages through the keyed index.
func TestQueueLsPendingByDefault(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: deferGlobex})
	h.mustRun(0, "campaign", "send", h.campaign("ls-1", adminCSV))
	ids := func(args ...string) map[string]string {
		t.Helper()
		got := map[string]string{}
		for _, v := range jsonLines[msgView](t, h.mustRun(0, append([]string{"--json", "queue", "ls"}, args...)...).stdout) {
			got[v.ID] = string(v.State)
		}
		return got
	}
	pending, all := ids(), ids("--all")
	if len(all) != 7 || len(pending) != 4 {
		t.Fatalf("ls: %d pending of %d, want the 4 deferred globex messages of 7: %v", len(pending), len(all), all)
	}
	for id, st := range pending {
		if st != "deferred" {
			t.Errorf("ls lists %s in state %s", id, st)
		}
	}
	if d := ids("--state", "delivered"); len(d) != 2 {
		t.Errorf("ls --state delivered: %v", d)
	}
	text := h.mustRun(0, "queue", "ls").stdout
	if !strings.HasSuffix(text, "-- 4 messages in the queue\n") || strings.Count(text, "\n") != 6 {
		t.Errorf("ls text:\n%s", text)
	}
	if text := h.mustRun(0, "queue", "ls", "--all").stdout; !strings.HasSuffix(text, "-- 7 messages listed\n") {
		t.Errorf("ls --all text:\n%s", text)
	}
	if got := ids("--rcpt", "Dave@GLOBEX.example"); len(got) != 1 {
		t.Errorf("ls --rcpt dave: %v", got)
	}
	if got := ids("--rcpt", "ana@acme.example"); len(got) != 0 {
		t.Errorf("ls --rcpt ana (delivered) lists %v without --all", got)
	}
	if got := ids("--rcpt", "ana@acme.example", "--all"); len(got) != 1 {
		t.Errorf("ls --rcpt ana --all: %v", got)
	}
	if r := h.mustRun(2, "queue", "ls", "--rcpt", "not-an-address"); !strings.Contains(r.stderr, "recipient") {
		t.Errorf("bad --rcpt: %q", r.stderr)
	}
}

// `queue cat` prints a stored message like postcat -q: the header with the
// recipient's address masked (not the sender's, not the Message-Id), no
// body; --reveal the whole message, audited; a
// finished message keeps no body (exit 1).
func TestQueueCat(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: deferGlobex})
	h.mustRun(0, "campaign", "send", h.campaign("cat-1", adminCSV))
	var dave, ana string
	for _, v := range jsonLines[msgView](t, h.mustRun(0, "--json", "--reveal", "queue", "ls", "--all").stdout) {
		switch v.Rcpt {
		case "dave@globex.example":
			dave = v.ID
		case "ana@acme.example":
			ana = v.ID
		}
	}
	if dave == "" || ana == "" {
		t.Fatal("no message for dave or ana")
	}
	masked := h.mustRun(0, "queue", "cat", dave).stdout
	if strings.Contains(masked, "dave@") || strings.Contains(masked, "Hello Dave") || !strings.Contains(masked, "Subject: Dave, a note about Globex") ||
		!strings.Contains(masked, "To: \"Dave\" <d***@globex.example>") || !strings.Contains(masked, "From: \"Ana Ruiz\" <ana@example.com>") ||
		!strings.Contains(masked, "Message-Id: <") || strings.Contains(masked, "Message-Id: <1***@") || !strings.Contains(masked, "[body not shown: --reveal") {
		t.Errorf("queue cat without --reveal:\n%s", masked)
	}
	before := len(h.auditOfAction("reveal"))
	full := h.mustRun(0, "--reveal", "queue", "cat", dave).stdout
	if !strings.Contains(full, "To: Dave") && !strings.Contains(full, "dave@globex.example") || !strings.Contains(full, "Hello Dave") {
		t.Errorf("queue cat --reveal:\n%s", full)
	}
	if got := h.auditOfAction("reveal"); len(got) != before+1 || got[len(got)-1].Target != "op:queue.cat" {
		t.Errorf("reveal audit entries: %+v", got)
	}
	if r := h.mustRun(1, "queue", "cat", ana); !strings.Contains(r.stderr, "not kept") {
		t.Errorf("cat of a delivered message: %q", r.stderr)
	}
	h.mustRun(1, "queue", "cat", "nonexistent")
}

// auditOfAction returns the audit entries of action, in order.
func (h *harness) auditOfAction(action string) []audit.Entry {
	h.t.Helper()
	var got []audit.Entry
	for _, e := range h.auditEntries() {
		if e.Action == action {
			got = append(got, e)
		}
	}
	return got
}
