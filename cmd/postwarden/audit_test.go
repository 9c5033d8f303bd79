package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/mta/bounce/bouncetest"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// auditEntries is the audit log as `audit ls --json` prints it.
func (h *harness) auditEntries() []audit.Entry {
	h.t.Helper()
	return jsonLines[audit.Entry](h.t, h.mustRun(0, "--json", "audit", "ls").stdout)
}

// importAddr is the address on line i+2 of importCSV's file.
func importAddr(i int) string { return fmt.Sprintf("imp%06d@acme.example", i) }

// `suppress import` killed with SIGKILL mid-import leaves no suppression
// without its audit record (each batch is audited before it is committed),
// and a re-run of the same file resumes the run: every row ends suppressed,
// every batch of the run is audited exactly once, one summary, and the chain
// verifies.
func TestSuppressImportKilledIsAuditedOnce(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{})
	const n = 30_000
	var csv strings.Builder
	csv.WriteString("email\n")
	for i := 0; i < n; i++ {
		csv.WriteString(importAddr(i) + "\n")
	}
	file := h.write("big.csv", csv.String())
	runBin := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"-c", h.cfgPath}, args...)...).CombinedOutput()
		return string(out), err
	}

	cmd := exec.Command(bin, "-c", h.cfgPath, "suppress", "import", file)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	db := filepath.Join(h.dir, "var", "suppression.db")
	waitFor(t, "the import to write", func() bool {
		fi, err := os.Stat(db)
		return err == nil && fi.Size() >= 4<<20 // a few batches in
	})
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-exited
	if cmd.ProcessState.Success() {
		t.Fatalf("the import finished before the kill; the test proved nothing\n%s", out.String())
	}

	// batches maps run → batch number → its audit entries.
	batches := func() (map[string]map[int][]audit.Entry, []audit.Entry) {
		runs := map[string]map[int][]audit.Entry{}
		var summaries []audit.Entry
		for _, e := range h.auditEntries() {
			switch e.Action {
			case "suppress.import.batch":
				b, _ := strconv.Atoi(e.Details["batch"])
				if runs[e.Details["run"]] == nil {
					runs[e.Details["run"]] = map[int][]audit.Entry{}
				}
				runs[e.Details["run"]][b] = append(runs[e.Details["run"]][b], e)
			case "suppress.import":
				summaries = append(summaries, e)
			}
			if strings.Contains(e.Target+e.Reason+fmt.Sprint(e.Details), "imp0") {
				t.Errorf("audit entry %d names an address: %+v", e.Seq, e)
			}
		}
		return runs, summaries
	}
	// covered reports whether an audited batch's line range holds line.
	covered := func(runs map[string]map[int][]audit.Entry, line int) bool {
		for _, bs := range runs {
			for _, es := range bs {
				var a, b int
				if _, err := fmt.Sscanf(es[0].Details["lines"], "%d-%d", &a, &b); err == nil && a <= line && line <= b {
					return true
				}
			}
		}
		return false
	}
	line := map[string]int{}
	for i := 0; i < n; i++ {
		line[importAddr(i)] = i + 2
	}

	runs, summaries := batches()
	if len(runs) != 1 || len(summaries) != 0 {
		t.Fatalf("after the kill: %d runs audited, %d summaries; want 1 and 0", len(runs), len(summaries))
	}
	ls, err := runBin("--json", "--reveal", "suppress", "ls")
	if err != nil {
		t.Fatalf("suppress ls: %v\n%s", err, ls)
	}
	present := jsonLines[entryView](t, ls)
	if len(present) == 0 || len(present) >= n {
		t.Fatalf("after the kill %d of %d rows are in; want some but not all", len(present), n)
	}
	for _, en := range present {
		if !covered(runs, line[en.Target]) {
			t.Fatalf("%s (line %d) is suppressed but no audited batch covers it", en.Target, line[en.Target])
		}
	}
	t.Logf("killed with %d of %d rows in, %d batches audited", len(present), n, len(runs[firstKey(runs)]))

	if o, err := runBin("--json", "suppress", "import", file); err != nil {
		t.Fatalf("re-run: %v\n%s", err, o)
	} else if !strings.Contains(o, `"resumed_batches"`) {
		t.Errorf("re-run does not say it resumed:\n%s", o)
	}
	ls, err = runBin("--json", "--reveal", "suppress", "ls")
	if err != nil {
		t.Fatalf("suppress ls: %v\n%s", err, ls)
	}
	if got := len(jsonLines[entryView](t, ls)); got != n {
		t.Errorf("after the re-run %d rows suppressed, want %d", got, n)
	}
	runs, summaries = batches()
	if len(runs) != 1 || len(summaries) != 1 || summaries[0].Details["run"] != firstKey(runs) {
		t.Fatalf("after the re-run: %d runs, %d summaries; want the one run resumed and summarised once", len(runs), len(summaries))
	}
	const wantBatches = n / 1000
	for b := 1; b <= wantBatches; b++ {
		if c := len(runs[firstKey(runs)][b]); c != 1 {
			t.Errorf("batch %d audited %d times, want once", b, c)
		}
	}
	if len(runs[firstKey(runs)]) != wantBatches || summaries[0].Details["added"] != strconv.Itoa(n) {
		t.Errorf("%d batches audited, summary %v; want %d batches, %d added", len(runs[firstKey(runs)]), summaries[0].Details, wantBatches, n)
	}
	for i := 0; i < n; i++ {
		if !covered(runs, i+2) {
			t.Fatalf("line %d is in no audited batch", i+2)
		}
	}
	if o, err := runBin("audit", "verify"); err != nil || !strings.Contains(o, "audit log verified") {
		t.Fatalf("audit verify: %v\n%s", err, o)
	}
}

func firstKey[V any](m map[string]V) string {
	for k := range m {
		return k
	}
	return ""
}

// A hard bounce at SMTP time (550 5.1.1 at RCPT from a real server)
// suppresses the address and audits it first, who "mta", naming the person
// by index.
func TestHardBounceAtSMTPTimeIsAudited(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: func(to string, _ int) error {
		if to == "gone@acme.example" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
		}
		return nil
	}})
	file := h.campaign("hb-audit", "email,first_name,company\ngone@acme.example,Gone,Acme\nana@acme.example,Ana,Acme\n")
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "the suppression", func() bool { return h.run("suppress", "check", "gone@acme.example").code == 0 })
	ref := "subject:" + h.indexOf("gone@acme.example")
	var got []audit.Entry
	for _, e := range h.auditEntries() {
		if e.Action == "suppress.add" && e.Target == ref {
			got = append(got, e)
		}
	}
	if len(got) != 1 || got[0].Who != "mta" || got[0].Reason != "hard_bounce" {
		t.Fatalf("audit entries for the hard bounce: %+v; want one suppress.add by mta", got)
	}
}

// indexOf is the keyed index the audit log names addr by.
func (h *harness) indexOf(addr string) string {
	h.t.Helper()
	key, err := sealed.LoadOrCreateKey(h.config().DataKeyFile)
	if err != nil {
		h.t.Fatal(err)
	}
	box, err := sealed.New(key)
	if err != nil {
		h.t.Fatal(err)
	}
	a, err := address.Parse(addr)
	if err != nil {
		h.t.Fatal(err)
	}
	return box.IndexHex(a.Key())
}

// waitAudit waits for an audit entry matching ok.
func (h *harness) waitAudit(what string, ok func(audit.Entry) bool) audit.Entry {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, e := range h.auditEntries() {
			if ok(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no audit entry for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The inbound listener's automatic suppressions are audited as "inbound":
// a DSN (hard bounce), an ARF complaint and a mailto unsubscribe, each
// naming the person by index.
func TestInboundSuppressionsAreAudited(t *testing.T) {
	h, listen := newInboundHarness(t)
	h.serve()
	file := h.campaign("inb-audit", "email,first_name,company\nana@acme.example,Ana,Acme\nbob@globex.example,Bob,Globex\ncarol@initech.example,Carol,Initech\n")
	h.mustRun(0, "campaign", "send", file)
	h.waitDelivered("inb-audit", 3)
	verpOf := map[string]string{}
	for _, m := range h.sink.Messages() {
		verpOf[m.To[0]] = m.From
	}
	fixture := func(name, verp string) []byte {
		return []byte(strings.ReplaceAll(string(bouncetest.Read(t, name)), fixtureVERP, verp))
	}
	if err := sendSMTP(listen, "", verpOf["ana@acme.example"], fixture("postfix-5.1.1.eml", verpOf["ana@acme.example"])); err != nil {
		t.Fatalf("DSN: %v", err)
	}
	if err := sendSMTP(listen, "", verpOf["bob@globex.example"], fixture("arf-abuse.eml", verpOf["bob@globex.example"])); err != nil {
		t.Fatalf("complaint: %v", err)
	}
	mailto := h.mailtoOf("carol@initech.example")
	if err := sendSMTP(listen, "carol@initech.example", mailto, []byte("Subject: unsubscribe\r\n\r\nunsubscribe\r\n")); err != nil {
		t.Fatalf("mailto unsubscribe: %v", err)
	}
	for _, c := range []struct{ addr, reason string }{
		{"ana@acme.example", "hard_bounce"},
		{"bob@globex.example", "complaint"},
		{"carol@initech.example", "unsubscribed list product-news via mailto"},
	} {
		ref := "subject:" + h.indexOf(c.addr)
		var got []audit.Entry
		for _, e := range h.auditEntries() {
			if e.Action == "suppress.add" && e.Target == ref {
				got = append(got, e)
			}
		}
		if len(got) != 1 || got[0].Who != "inbound" || got[0].Reason != c.reason {
			t.Errorf("%s: audit entries %+v; want one suppress.add by inbound, reason %q", c.addr, got, c.reason)
		}
	}
}

// mailtoOf is the mailto unsubscribe address in the List-Unsubscribe of the
// last message the sink received for rcpt.
func (h *harness) mailtoOf(rcpt string) string {
	h.t.Helper()
	for _, m := range h.sink.Messages() {
		if m.To[0] != rcpt {
			continue
		}
		s := string(m.Data)
		if i := strings.Index(s, "<mailto:"); i > 0 {
			return strings.TrimSuffix(strings.SplitN(s[i+len("<mailto:"):], ">", 2)[0], "?subject=unsubscribe")
		}
	}
	h.t.Fatalf("no mailto URI in a message to %s", rcpt)
	return ""
}

// Queue hold, release, retry, suspend and resume are audited with who ran
// them: the local user when the CLI opens the stores itself, the peer's uid
// when serve runs them for the admin socket.
func TestQueueVerbsAreAudited(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemon=%v", daemon), func(t *testing.T) {
			h := newHarness(t, mtatest.Options{})
			want := localUser()
			if daemon {
				h.serve()
				want = fmt.Sprintf("uid:%d", os.Getuid())
			}
			// Suspended first, so the messages wait in the queue for the verbs.
			h.mustRun(0, "queue", "suspend", "--domain", "acme.example", "--duration", "1h", "--reason", "maintenance")
			h.mustRun(0, "campaign", "send", "--no-wait", h.campaign("verbs-1", "email,first_name,company\nana@acme.example,Ana,Acme\n"))
			h.mustRun(0, "queue", "hold", "--campaign", "verbs-1")
			h.mustRun(0, "queue", "release", "--campaign", "verbs-1")
			h.mustRun(0, "queue", "retry", "ALL")
			h.mustRun(0, "queue", "resume", "--domain", "acme.example")
			got := map[string]audit.Entry{}
			for _, e := range h.auditEntries() {
				got[e.Action] = e
			}
			for _, action := range []string{"queue.suspend", "queue.hold", "queue.release", "queue.retry", "queue.resume"} {
				e, ok := got[action]
				if !ok || e.Who != want {
					t.Errorf("%s: audit entry %+v (found %v); want one by %s", action, e, ok, want)
				}
			}
			if e := got["queue.hold"]; e.Target != "messages:1" || e.Details["campaign"] != "verbs-1" {
				t.Errorf("queue.hold entry %+v: want the selection and its size", e)
			}
			if e := got["queue.suspend"]; e.Target != "domain acme.example" || e.Reason != "maintenance" {
				t.Errorf("queue.suspend entry %+v", e)
			}
		})
	}
}
