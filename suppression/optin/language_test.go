package optin

import (
	"html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/suppression/pages/locale"
)

// reqLang is req with an Accept-Language header.
func reqLang(t *testing.T, method, u, accept string, form url.Values) (int, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	r, _ := http.NewRequest(method, u, body)
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	r.Header.Set("Accept-Language", accept)
	resp, err := client.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var hiddenLang = regexp.MustCompile(`name="lang" value="([a-z]+)"`)

// TestSignUpLanguage: the form speaks the browser's language and says so in
// a hidden field; the sign-up records the consent wording in that language
// and the confirmation mail is asked for in it, even when the POST's own
// Accept-Language differs; a list's language wins over the browser's.
func TestSignUpLanguage(t *testing.T) {
	e := newTenv(t, func(c *Config) {
		c.Lists["fr-news"] = List{Name: "Nouvelles", DoubleOptIn: true, Language: "fr"}
	})
	code, body := reqLang(t, "GET", e.srv.URL+"/subscribe?list=news", "de-CH, en;q=0.5", nil)
	de := locale.For("de")
	m := hiddenLang.FindStringSubmatch(body)
	if code != 200 || !strings.Contains(body, `<html lang="de" dir="ltr">`) || m == nil || m[1] != "de" ||
		!strings.Contains(body, html.EscapeString(de.T("SubscribeTo", locale.Vars{"List": "Product news"}))) {
		t.Fatalf("German form %d:\n%s", code, body)
	}
	code, body = reqLang(t, "POST", e.srv.URL+"/subscribe", "en", url.Values{"list": {"news"}, "email": {"ana@acme.example"}, "lang": {m[1]}})
	if code != 200 || !strings.Contains(body, html.EscapeString(de.T("CheckInbox", nil))) ||
		!strings.Contains(body, html.EscapeString(de.Validity(7*24*time.Hour))) {
		t.Fatalf("German sign-up %d:\n%s", code, body)
	}
	if s := e.mail.last(t); s.lang != "de" {
		t.Errorf("confirmation asked in %q; want de", s.lang)
	}
	hist, err := e.subs.History("ana@acme.example")
	if err != nil {
		t.Fatal(err)
	}
	want := de.T("ConsentText", locale.Vars{"List": "Product news", "Sender": "Acme"})
	if len(hist) != 1 || hist[0].Events[0].ConsentText != want {
		t.Errorf("recorded consent %+v; want %q", hist, want)
	}

	// The confirm page follows the browser that opens the link.
	link := e.mail.last(t).url
	code, body = reqLang(t, "GET", link, "pl-PL,pl;q=0.9", nil)
	pl := locale.For("pl")
	if code != 200 || !strings.Contains(body, `lang="pl"`) || !strings.Contains(body, html.EscapeString(pl.T("ConfirmHeading", nil))) ||
		!strings.Contains(body, html.EscapeString(pl.T("ConfirmConsent", locale.Vars{"List": "Product news", "Sender": "Acme"}))) {
		t.Fatalf("Polish confirm page %d:\n%s", code, body)
	}

	// A list with its own language speaks it whatever the browser asks.
	code, body = reqLang(t, "GET", e.srv.URL+"/subscribe?list=fr-news", "de", nil)
	if code != 200 || !strings.Contains(body, `<html lang="fr" dir="ltr">`) {
		t.Fatalf("French list form %d:\n%s", code, body)
	}
	code, _ = reqLang(t, "POST", e.srv.URL+"/subscribe", "de", url.Values{"list": {"fr-news"}, "email": {"bo@acme.example"}, "lang": {"de"}})
	if code != 200 || e.mail.last(t).lang != "fr" {
		t.Errorf("French list sign-up %d, mail in %q", code, e.mail.last(t).lang)
	}
}
