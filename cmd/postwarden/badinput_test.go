package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
)

// Each bad input is a clear error naming the file and line, and nothing is
// enqueued for what was bad.
func TestBadInputIsNamedAndNothingBadIsEnqueued(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mkDataDir()
	h.write("templates/nolink.html", `<p>Hello {{.FirstName}} <a href="{{.PrivacyURL}}">privacy</a></p>`)
	h.write("templates/nolink.txt", "Hello {{.FirstName}}\nPrivacy: {{.PrivacyURL}}\n")
	h.write("templates/hidden.html", `<p>Hi {{if .Company}}<a href="{{.UnsubscribeURL}}">unsubscribe</a>{{end}} <a href="{{.PrivacyURL}}">privacy</a></p>`)
	h.write("templates/hidden.txt", "Hi {{if .Company}}{{.UnsubscribeURL}}{{end}} {{.PrivacyURL}}\n")
	good := "email,first_name,company\nana@acme.example,Ana,Acme\n"

	configCases := []struct {
		name string
		edit func(string) string
		want string // regexp over stderr
	}{
		{"unknown-key", func(s string) string { return s + "subjet: typo\n" }, `unknown-key\.yaml:10: .*unknown key "subjet"`},
		{"wrong-type", func(s string) string { return strings.Replace(s, "list: product-news", "list: [a, b]", 1) }, `wrong-type\.yaml:2: .*list`},
		{"missing-template", func(s string) string { return strings.Replace(s, "templates/note", "templates/nope", 1) }, `missing-template\.yaml:5: template: .*nope\.(html|txt)`},
		{"no-unsubscribe-link", func(s string) string { return strings.Replace(s, "templates/note", "templates/nolink", 1) }, `no-unsubscribe-link\.yaml:5: template: .*(?i)unsubscribe`},
		{"hidden-link", func(s string) string { return strings.Replace(s, "templates/note", "templates/hidden", 1) }, `hidden-link\.yaml:5: template: .*(?i)unsubscribe`},
		{"missing-id", func(s string) string { return strings.Replace(s, "id: missing-id\n", "", 1) }, `missing-id\.yaml.*id`},
	}
	for _, tc := range configCases {
		t.Run(tc.name, func(t *testing.T) {
			file := h.campaign(tc.name, good)
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			h.write(tc.name+".yaml", tc.edit(string(b)))
			for _, verb := range []string{"validate", "send"} {
				r := h.run("campaign", verb, file)
				if r.code != 2 {
					t.Errorf("campaign %s: exit %d, want 2\n%s", verb, r.code, r.stderr)
				}
				if !regexp.MustCompile(tc.want).MatchString(r.stderr) {
					t.Errorf("campaign %s: stderr does not match %q:\n%s", verb, tc.want, r.stderr)
				}
			}
			ls := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", tc.name).stdout)
			if len(ls) != 0 {
				t.Errorf("%d messages enqueued for a refused campaign", len(ls))
			}
		})
	}

	// Bad rows: named by line, skipped; the good rows go out.
	csv := "email,first_name,company\n" +
		"ana@acme.example,Ana,Acme\n" + // line 2
		"bob@acme.example,Bob\n" + // line 3: too few fields
		"\"carol@acme.example\r\nBcc: evil@globex.example\",Carol,Acme\n" + // lines 4-5: CRLF in the address
		"dave@globex.example,\"Dave\r\nBcc: evil@globex.example\",Globex\n" + // lines 6-7: CRLF in a header-bound name
		"eve@@acme.example,Eve,Acme\n" + // line 8: malformed address
		"zoe@umbrella.example,Zoë,Umbrella\n" // line 9
	file := h.campaign("rows", csv)
	v := h.run("campaign", "validate", file)
	if v.code != 2 {
		t.Errorf("validate of bad rows: exit %d\n%s", v.code, v.stderr)
	}
	for _, line := range []string{"rows.csv:3", "rows.csv:4", "rows.csv:6", "rows.csv:8"} {
		if !strings.Contains(v.stderr, line) {
			t.Errorf("validate does not name %s:\n%s", line, v.stderr)
		}
	}
	// Invalid rows are never sent, and a send that met them exits 1, saying so.
	r := h.mustRun(1, "campaign", "send", file)
	for _, want := range []string{"invalid rows   4", "enqueued       2", "rows.csv:3", "rows.csv:4", "rows.csv:6", "rows.csv:8"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("send summary lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "4 of 6 rows are invalid and were not sent") || !strings.Contains(r.stderr, "--skip-invalid") {
		t.Errorf("send with invalid rows: stderr %q", r.stderr)
	}
	// --skip-invalid accepts them: exit 0, and nothing is sent twice.
	if r := h.mustRun(0, "campaign", "send", "--skip-invalid", file); !strings.Contains(r.stdout, "already sent   2") {
		t.Errorf("second send with --skip-invalid:\n%s", r.stdout)
	}
	got := h.sink.ByRecipient()
	if len(got) != 2 || got["ana@acme.example"] != 1 || got["zoe@umbrella.example"] != 1 {
		t.Errorf("sink received %v, want only ana@ and zoe@", got)
	}
	for _, m := range h.sink.Messages() {
		if strings.Contains(string(m.Data), "Bcc:") || strings.Contains(string(m.Data), "evil@") {
			t.Errorf("injected header reached a message:\n%s", m.Data)
		}
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// buildBinary builds cmd/postwarden once for the tests that need a real process.
func buildBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pwbin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "postwarden")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// A campaign send killed with SIGKILL mid-delivery loses nobody: the re-run
// delivers every allowed recipient, duplicates are at most the messages in
// flight at the kill, and a further re-run sends nothing.
func TestKillDuringDeliveryLosesNothing(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{DataDelay: 15 * time.Millisecond})
	const n = 200
	file := h.campaign("crash-1", bulkCSV(n))

	cmd := exec.Command(bin, "-c", h.cfgPath, "campaign", "send", file)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "deliveries to start", func() bool { return h.sink.Count() >= 20 })
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = cmd.Wait()
	atKill := h.sink.Count()
	if atKill >= n {
		t.Fatalf("the kill came after every delivery (%d); the test proved nothing\n%s", atKill, out.String())
	}

	h.mustRun(0, "campaign", "send", file)
	got := h.sink.ByRecipient()
	dups := 0
	for i := 0; i < n; i++ {
		rcpt := bulkRecipient(i)
		switch c := got[rcpt]; {
		case c == 0:
			t.Errorf("%s lost: never delivered", rcpt)
		case c > 1:
			dups += c - 1
		}
	}
	// The runner bounds what can be delivered and not yet recorded at the kill:
	// workers hand outcomes to a group commit and go on.
	if inFlight := queue.MaxUnrecorded(h.config().Delivery.Workers); dups > inFlight {
		t.Errorf("%d duplicates, more than the %d messages that can be in flight", dups, inFlight)
	}
	t.Logf("killed after %d deliveries; %d duplicates after restart", atKill, dups)

	before := h.sink.Count()
	r := h.mustRun(0, "campaign", "send", file)
	if !strings.Contains(r.stdout, "enqueued       0") {
		t.Errorf("re-run enqueued something:\n%s", r.stdout)
	}
	if after := h.sink.Count(); after != before {
		t.Errorf("re-run sent %d more messages", after-before)
	}
}

// With --no-wait and no daemon nothing delivers, so the enqueue window must
// not hold the send: every row past campaign.DefaultMaxAhead is enqueued and
// none is delivered.
func TestSendNoWaitIgnoresEnqueueWindow(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	n := campaign.DefaultMaxAhead + 300
	r := h.mustRun(0, "campaign", "send", "--no-wait", h.campaign("nowait-1", bulkCSV(n)))
	if want := fmt.Sprintf("enqueued       %d", n); !strings.Contains(r.stdout, want) {
		t.Fatalf("summary lacks %q:\n%s", want, r.stdout)
	}
	if c := h.sink.Count(); c != 0 {
		t.Fatalf("%d messages delivered by a --no-wait send", c)
	}
}

// A campaign whose recipients path is absurdly long (a paste gone wrong) is
// refused by validate and send with an error that quotes ~80 characters of
// it, not all of it.
func TestLongRecipientsPathQuotedShort(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mkDataDir()
	file := h.campaign("long-path", "email,first_name,company\nana@acme.example,Ana,Acme\n")
	long := strings.Repeat("r", 20000) + ".csv"
	h.write("long-path.yaml", strings.Replace(readFile(t, file), "recipients: long-path.csv", "recipients: "+long, 1))
	for _, verb := range []string{"validate", "send"} {
		r := h.run("campaign", verb, file)
		if r.code != 2 || !strings.Contains(r.stderr, "recipients") {
			t.Errorf("campaign %s: exit %d, want 2 naming recipients\n%.500s", verb, r.code, r.stderr)
		}
		for _, l := range strings.Split(r.stderr, "\n") {
			if len(l) > 500 {
				t.Errorf("campaign %s: error line of %d bytes: %.300s…", verb, len(l), l)
			}
		}
	}
}
