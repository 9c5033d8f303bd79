package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/suppression/pages/locale"
)

// acceptLanguage makes the browser send header as Accept-Language on every
// request from now on, as a browser set to that language does.
func acceptLanguage(header string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		if _, err := cdp.Call(ctx, t, network.Enable, network.EnableParams{}); err != nil {
			return fmt.Errorf("enable network: %w", err)
		}
		_, err := cdp.Call(ctx, t, network.SetExtraHTTPHeaders,
			network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Accept-Language": header}})
		return err
	})
}

// pageLang returns the lang and dir attributes of the page's <html>.
func pageLang(ctx context.Context, t *testing.T) (lang, dir string) {
	t.Helper()
	l, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("html"), "lang"))
	if err != nil {
		t.Fatalf("read lang: %v", err)
	}
	d, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("html"), "dir"))
	if err != nil {
		t.Fatalf("read dir: %v", err)
	}
	return l.Value, d.Value
}

// at waits for an <h1> with the text and checks the page's language.
func at(ctx context.Context, t *testing.T, l *locale.Locale, what, h1 string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, append(steps, heading(h1))...); err != nil {
		t.Fatalf("%s (%s): want heading %q: %v", what, l.Lang(), h1, err)
	}
	if lang, dir := pageLang(ctx, t); lang != l.Lang() || dir != "ltr" {
		t.Errorf("%s: <html lang=%q dir=%q>; want %q, ltr", what, lang, dir, l.Lang())
	}
}

// Every recipient page in German, French and Polish, chosen by the browser's
// Accept-Language: the sign-up form and its results (double opt-in and
// single), the confirmation mail, the confirm and confirmed pages, the
// unsubscribe page, the preference page (leaving one list, then everything,
// by clicking), the unsubscribed page, and the error pages; a campaign's own
// language wins over the browser's.
func TestBrowserPagesInLanguages(t *testing.T) {
	ctx := newBrowser(t, 90*time.Second)
	h := newHarness(t, mtatest.Options{})
	f, err := os.OpenFile(h.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("lists:\n  news: {name: \"Product news\", double_opt_in: true}\n  events: {name: \"Events\", double_opt_in: false}\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	h.serve()
	base := "http://" + h.httpAddr
	sender := h.config().SenderName // as mountPages names the sender on the unsubscribe pages
	if sender == "" {
		sender = h.config().Hostname
	}

	people := []struct{ lang, accept, addr string }{
		{"de", "de-AT,de;q=0.9,en;q=0.5", "dora@acme.example"},
		{"fr", "fr-BE, en;q=0.3", "fleur@acme.example"},
		{"pl", "pl,en-US;q=0.7,en;q=0.3", "piotr@acme.example"},
	}
	// Sign up to both lists and confirm news, in each person's language.
	for _, p := range people {
		l := locale.For(p.lang)
		if err := chromedp.Do(ctx, acceptLanguage(p.accept)); err != nil {
			t.Fatal(err)
		}
		at(ctx, t, l, "sign-up form", l.T("SubscribeTo", locale.Vars{"List": "Product news"}), chromedp.Navigate(base+"/subscribe?list=news"))
		at(ctx, t, l, "sign-up result", l.T("CheckInbox", nil),
			chromedp.SendKeys(chromedp.ID("f-email"), p.addr),
			chromedp.Click(chromedp.CSS(`form button[type="submit"]`)))
		link := h.confirmLink(p.addr, 1)
		m := h.sink.Messages()
		for _, msg := range m {
			if msg.To[0] != p.addr {
				continue
			}
			hd, text := messageText(t, msg.Data)
			if subj, _ := hd.Subject(); subj != l.T("MailSubject", locale.Vars{"List": "Product news"}) {
				t.Errorf("%s: confirmation subject %q", p.lang, subj)
			}
			if !strings.Contains(text, l.T("MailPleaseConfirm", nil)) || !strings.Contains(text, `lang="`+p.lang+`"`) {
				t.Errorf("%s: confirmation mail not in its language:\n%s", p.lang, text)
			}
		}
		at(ctx, t, l, "confirm page", l.T("ConfirmHeading", nil), chromedp.Navigate(link))
		at(ctx, t, l, "confirmed page", l.T("Confirmed", nil), chromedp.Click(chromedp.CSS(`button[value="yes"]`)))
		if st := h.subscriberState(p.addr, "news"); st != "confirmed" {
			t.Fatalf("%s: news %s", p.addr, st)
		}
		at(ctx, t, l, "single opt-in result", l.T("SubscribedHeading", nil),
			chromedp.Navigate(base+"/subscribe?list=events"),
			chromedp.WaitVisible(chromedp.ID("f-email")),
			chromedp.SendKeys(chromedp.ID("f-email"), p.addr),
			chromedp.Click(chromedp.CSS(`form button[type="submit"]`)))
	}

	// One campaign without a language, one written in Italian.
	var rows strings.Builder
	rows.WriteString("email,first_name\n")
	for _, p := range people {
		rows.WriteString(p.addr + ",X\n")
	}
	for _, c := range []struct{ id, extra string }{{"lang-plain", ""}, {"lang-it", "language: it\n"}} {
		h.write(c.id+".csv", rows.String())
		h.mustRun(0, "campaign", "send", h.write(c.id+".yaml", "id: "+c.id+"\nlist: news\nfrom: \"Ana Ruiz <ana@example.com>\"\n"+
			"subject: \"{{.FirstName}}, news "+c.id+"\"\ntemplate: templates/note\nrecipients: "+c.id+".csv\nlegal_basis: consent\naudience: b2b\n"+c.extra))
	}
	waitFor(t, "both campaigns' deliveries", func() bool {
		n := 0
		for _, m := range h.sink.Messages() {
			if strings.Contains(string(m.Data), "news lang-") {
				n++
			}
		}
		return n == 2*len(people)
	})

	for _, p := range people {
		l := locale.For(p.lang)
		if err := chromedp.Do(ctx, acceptLanguage(p.accept)); err != nil {
			t.Fatal(err)
		}
		link := h.unsubscribeLink(p.addr, "news lang-plain")
		at(ctx, t, l, "unsubscribe page", l.T("Unsubscribe", nil), chromedp.Navigate(link))
		if page := mainText(ctx, t); !strings.Contains(page, l.T("UnsubscribeEffect", nil)) {
			t.Errorf("%s: unsubscribe page lacks what unsubscribing does:\n%s", p.lang, page)
		}
		// The campaign's language wins over the browser's.
		at(ctx, t, locale.For("it"), "unsubscribe page of an Italian campaign", locale.For("it").T("Unsubscribe", nil),
			chromedp.Navigate(h.unsubscribeLink(p.addr, "news lang-it")))

		// Preferences: leave one list, then everything, by clicking.
		at(ctx, t, l, "preference page", l.T("YourSubscriptions", nil),
			chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS("main a")), chromedp.Click(chromedp.CSS("main a")))
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`button[name="list"][value="events"]`)),
			chromedp.WaitVisible(chromedp.Search(`//p[contains(., "`+l.T("LeftList", locale.Vars{"List": "Events"})+`")]`))); err != nil {
			t.Fatalf("%s: leave events: %v", p.lang, err)
		}
		if chk := h.mustRun(0, "suppress", "check", p.addr, "--list", "events"); !strings.Contains(chk.stdout, "unsubscribed") {
			t.Errorf("%s: events after leaving it: %s", p.lang, chk.stdout)
		}
		h.mustRun(1, "suppress", "check", p.addr, "--list", "news") // still on news
		if p.lang == "fr" {
			// The unsubscribe page's own button, then its result page.
			at(ctx, t, l, "unsubscribed page", l.T("UnsubscribedHeading", nil),
				chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS(`button[value="one"]`)), chromedp.Click(chromedp.CSS(`button[value="one"]`)))
			if page := mainText(ctx, t); !strings.Contains(page, l.T("NoMoreOfThese", nil)) {
				t.Errorf("fr: unsubscribed page:\n%s", page)
			}
			h.mustRun(0, "suppress", "check", p.addr, "--list", "news")
			at(ctx, t, l, "preference page again", l.T("YourSubscriptions", nil), chromedp.Navigate(link+"/prefs"))
		}
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`button[name="scope"][value="all"]`)),
			chromedp.WaitVisible(chromedp.Search(`//p[contains(., "`+l.T("LeftAll", locale.Vars{"Sender": sender})+`")]`))); err != nil {
			t.Fatalf("%s: leave everything: %v", p.lang, err)
		}
		if chk := h.mustRun(0, "suppress", "check", p.addr); !strings.Contains(chk.stdout, "unsubscribed") {
			t.Errorf("%s: global check after leaving everything: %s", p.lang, chk.stdout)
		}

		// Error pages.
		at(ctx, t, l, "bad unsubscribe link", l.T("NotFound", nil), chromedp.Navigate(base+"/u/not-a-token"))
		at(ctx, t, l, "bad confirmation link", l.T("NotFound", nil), chromedp.Navigate(base+"/c/not-a-token"))
		if page := mainText(ctx, t); !strings.Contains(page, l.T("NotFoundSignUp", nil)) {
			t.Errorf("%s: 404 page:\n%s", p.lang, page)
		}
	}
}
