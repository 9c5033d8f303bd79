package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// chromiumPath is Debian's chromium, installed by .ci/run.
const chromiumPath = "/usr/bin/chromium"

// newBrowser starts headless Chromium for the test, or skips the test when it
// is not installed (CI=true makes that a failure).
func newBrowser(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing under CI: %v", chromiumPath, err)
		}
		t.Skipf("%s not installed", chromiumPath)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelBrowser := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() { cancelTimeout(); cancelBrowser(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // start the browser
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// heading waits for an <h1> containing text.
func heading(text string) chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(chromedp.Search(`//h1[contains(., "` + text + `")]`))
}

// mainText returns the text of the page's <main>.
func mainText(ctx context.Context, t *testing.T) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
	if err != nil {
		t.Fatalf("read page text: %v", err)
	}
	return s
}

// Click through the recipient pages in a real browser: unsubscribe from a
// delivered message's link, and sign up, confirm by the mailed link.
func TestBrowserUnsubscribeAndDoubleOptIn(t *testing.T) {
	ctx := newBrowser(t, 20*time.Second)
	h := newHarness(t, mtatest.Options{})
	h.withLists()
	h.serve()
	base := "http://" + h.httpAddr

	// Unsubscribe from a delivered campaign message.
	h.mustRun(0, "campaign", "send", h.campaign("b-1", "email,first_name,company\nana@acme.example,Ana,Acme\n"))
	waitFor(t, "the campaign's delivery", func() bool { return h.sink.Count() == 1 })
	if err := chromedp.Do(ctx, chromedp.Navigate(h.unsubscribeLink("ana@acme.example", "")), heading("Unsubscribe")); err != nil {
		t.Fatalf("open unsubscribe page: %v", err)
	}
	page := mainText(ctx, t)
	if !strings.Contains(page, "a***@acme.example") || strings.Contains(page, "ana@") {
		t.Errorf("unsubscribe page text:\n%s", page)
	}
	h.mustRun(1, "suppress", "check", "ana@acme.example", "--list", "product-news") // opening it changed nothing
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`button[value="one"]`)), heading("You are unsubscribed")); err != nil {
		t.Fatalf("click unsubscribe: %v", err)
	}
	page = mainText(ctx, t)
	if !strings.Contains(page, "You will receive no more of these messages.") {
		t.Errorf("unsubscribed page text:\n%s", page)
	}
	if chk := h.mustRun(0, "suppress", "check", "ana@acme.example", "--list", "product-news"); !strings.Contains(chk.stdout, "unsubscribed") {
		t.Errorf("suppress check: %s", chk.stdout)
	}

	// Sign up through the form page, then confirm from the mailed link.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/subscribe?list=news"),
		heading("Subscribe to Product news"),
		chromedp.SendKeys(chromedp.ID("f-email"), "zoe@globex.example"),
		chromedp.SendKeys(chromedp.ID("f-name"), "Zoë"),
		chromedp.Click(chromedp.CSS(`form button[type="submit"]`)),
		heading("Check your inbox"),
	); err != nil {
		t.Fatalf("sign up: %v", err)
	}
	link := h.confirmLink("zoe@globex.example", 1)
	if err := chromedp.Do(ctx, chromedp.Navigate(link), heading("Confirm your subscription")); err != nil {
		t.Fatalf("open confirmation link: %v", err)
	}
	page = mainText(ctx, t)
	if !strings.Contains(page, "Product news") {
		t.Errorf("confirm page text:\n%s", page)
	}
	if st := h.subscriberState("zoe@globex.example", "news"); st != "pending" {
		t.Fatalf("after opening the link: %s", st)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`button[value="yes"]`)), heading("Subscription confirmed")); err != nil {
		t.Fatalf("click confirm: %v", err)
	}
	page = mainText(ctx, t)
	if !strings.Contains(page, "Product news will come to z***@globex.example") {
		t.Errorf("confirmed page text:\n%s", page)
	}
	if st := h.subscriberState("zoe@globex.example", "news"); st != "confirmed" {
		t.Errorf("after confirming: %s", st)
	}
}
