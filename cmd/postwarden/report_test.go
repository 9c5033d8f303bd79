package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/campaign/report"
	"github.com/postwarden/postwarden/mta/mtatest"
)

// A campaign run end to end through the daemon to the loopback sink (three
// delivered, a hard and a soft bounce, one deferred, an invalid row, one
// one-click unsubscribe), then its report: opened in Chromium from a
// file:// URL it renders its charts, holds the figures of `campaign status
// --json`, fetches nothing, runs no script and names no address; a
// screenshot is kept.
func TestReportInBrowser(t *testing.T) {
	ctx := newBrowser(t, 60*time.Second)
	h := newHarness(t, mtatest.Options{Rcpt: func(rcpt string, n int) error {
		switch rcpt {
		case "gone@acme.example":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		case "blocked@globex.example":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "rejected by policy"}
		case "later@initech.example":
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
		}
		return nil
	}})
	h.serve()
	file := h.campaign("rep-1", "email,first_name,company\n"+
		"ana@acme.example,Ana,Acme\ndave@globex.example,Dave,Globex\nolga@umbrella.example,Olga,Umbrella\n"+
		"gone@acme.example,Gon,Acme\nblocked@globex.example,Blo,Globex\nlater@initech.example,Lat,Initech\n"+
		"not-an-address,Bad,Row\n")
	h.mustRun(0, "campaign", "send", "--skip-invalid", file)
	status := func() campaignStatus {
		var st campaignStatus
		if err := json.Unmarshal([]byte(h.mustRun(0, "--json", "campaign", "status", "rep-1").stdout), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	waitFor(t, "every first attempt's outcome", func() bool {
		st := status()
		return st.Delivered == 3 && st.Bounced == 2 && st.Deferred == 1
	})
	resp, err := http.PostForm(h.unsubscribeLink("ana@acme.example", ""), url.Values{"List-Unsubscribe": {"One-Click"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("one-click POST: %d", resp.StatusCode)
	}
	st := status()
	if st.Unsubscribed != 1 || st.BouncedHard != 1 || st.BouncedSoft != 1 {
		t.Fatalf("status after the unsubscribe: %+v", st)
	}

	out := os.Getenv("TEST_OUTPUT_DIR")
	if out == "" {
		out = t.TempDir()
	}
	page := filepath.Join(out, "report-rep-1.html")
	r := h.mustRun(0, "campaign", "report", "rep-1", "--out", page)
	if !strings.Contains(r.stdout, page) {
		t.Errorf("report output: %s", r.stdout)
	}
	t.Logf("report page: %s", page)
	html := readFile(t, page)
	for _, bad := range []string{"<script", "@acme.example", "@globex.example", "@initech.example", "@umbrella.example", "not-an-address"} {
		if strings.Contains(strings.ToLower(html), bad) {
			t.Errorf("the page holds %q", bad)
		}
	}

	// --json is the same data; its figures are the status's.
	var rep report.Report
	if err := json.Unmarshal([]byte(h.mustRun(0, "--json", "campaign", "report", "rep-1").stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Record == nil || rep.Record.ConfigHash == "" || rep.Record.PrivacyURL != "https://example.com/privacy" ||
		len(rep.Record.LIAHeadings) != 4 || rep.Record.RequestedBy == "" || rep.Counts.Invalid != 1 || len(rep.Counts.InvalidRows) != 1 {
		t.Errorf("report record %+v, counts %+v", rep.Record, rep.Counts)
	}
	if len(rep.Bounces) != 2 || rep.Bounces[0].Reason == "unclassified" || rep.Bounces[1].Reason == "unclassified" {
		t.Errorf("bounces by reason: %+v", rep.Bounces)
	}
	if rep.Unsubscribes.Timed != 1 || rep.Unsubscribes.Max > 5*time.Second {
		t.Errorf("unsubscribe timings: %+v", rep.Unsubscribes)
	}
	// Without --out the page is report-ID.html in the current folder.
	t.Chdir(t.TempDir())
	h.mustRun(0, "campaign", "report", "rep-1")
	if _, err := os.Stat("report-rep-1.html"); err != nil {
		t.Errorf("default report file: %v", err)
	}
	if al := h.mustRun(0, "--json", "audit", "ls").stdout; strings.Count(al, `"action":"campaign.report"`) != 3 {
		t.Errorf("producing the report is not audited once per report:\n%s", al)
	}
	// An unknown campaign is a "not found" (1), as a JSON object on stderr with --json.
	nf := h.mustRun(1, "--json", "campaign", "report", "nope")
	var ce cliError
	if err := json.Unmarshal([]byte(strings.TrimSpace(nf.stderr)), &ce); err != nil || ce.Exit != 1 || !strings.Contains(ce.Error, "not found") {
		t.Errorf("unknown campaign with --json: stderr %q (%v)", nf.stderr, err)
	}

	// The page in the browser: every request it makes is recorded.
	var mu sync.Mutex
	var requests []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			requests = append(requests, e.Request.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	pageURL := (&url.URL{Scheme: "file", Path: page}).String()
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL), heading("Compliance report: campaign rep-1"),
		chromedp.WaitVisible(chromedp.CSS("#chart-deliveries svg"))); err != nil {
		t.Fatalf("open the report: %v", err)
	}
	svgs, err := chromedp.Run(ctx, chromedp.Nodes(chromedp.CSSAll("figure svg")))
	if err != nil {
		t.Fatal(err)
	}
	if len(svgs) != 5 {
		t.Errorf("%d charts rendered, want 5", len(svgs))
	}
	for _, id := range []string{"deliveries", "bounces", "providers", "unsubscribes", "latency"} {
		box, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`document.querySelector("#chart-`+id+` svg").getBoundingClientRect().height`))
		if err != nil || box < 100 {
			t.Errorf("chart %s: height %v, %v", id, box, err)
		}
	}
	scripts, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.scripts.length`))
	if err != nil || scripts != 0 {
		t.Errorf("scripts on the page: %d, %v", scripts, err)
	}
	figure := func(name string) int {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`td[data-figure="`+name+`"]`)))
		if err != nil {
			t.Fatalf("figure %s: %v", name, err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			t.Fatalf("figure %s: %q", name, s)
		}
		return n
	}
	sum := func(m map[string]int) int {
		n := 0
		for _, v := range m {
			n += v
		}
		return n
	}
	st = status()
	for name, want := range map[string]int{"enqueued": st.Enqueued, "delivered": st.Delivered, "pending": st.Pending,
		"deferred": st.Deferred, "bounced": st.Bounced, "bounced_hard": st.BouncedHard, "bounced_soft": st.BouncedSoft,
		"expired": st.Expired, "cancelled": st.Cancelled, "complained": st.Complained, "unsubscribed": st.Unsubscribed,
		"suppressed_at_enqueue": sum(st.Suppressed), "skipped_at_enqueue": sum(st.Skipped)} {
		if got := figure(name); got != want {
			t.Errorf("page figure %s = %d, campaign status says %d", name, got, want)
		}
	}
	if figure("enqueued") != 6 || figure("invalid") != 1 || figure("rows") != 7 {
		t.Errorf("page: enqueued %d, invalid %d, rows %d", figure("enqueued"), figure("invalid"), figure("rows"))
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shotPath := filepath.Join(out, "report-rep-1.png")
	if err := os.WriteFile(shotPath, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shotPath)
	mu.Lock()
	defer mu.Unlock()
	for _, u := range requests {
		if u != pageURL {
			t.Errorf("the page requested %s", u)
		}
	}
	if len(requests) == 0 {
		t.Error("no request seen: the listener saw nothing, the check proves nothing")
	}
}
