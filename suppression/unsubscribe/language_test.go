package unsubscribe

import (
	"html"
	"net/http"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/suppression/pages/locale"
)

// TestPageLanguage: the unsubscribe pages speak the campaign's language
// carried in the token, else the list's, else the browser's Accept-Language
// (q-values, region variants), else English; lang and dir follow.
func TestPageLanguage(t *testing.T) {
	e := newEnv(t, nil, func(c *Config) { c.ListLanguages = map[string]string{"fr-news": "fr"} })
	for _, c := range []struct {
		name   string
		claim  Claim
		accept string
		want   string
	}{
		{"no header", Claim{Address: "ana@example.com", List: "news"}, "", "en"},
		{"German browser", Claim{Address: "ana@example.com", List: "news"}, "de-AT,de;q=0.9,en;q=0.5", "de"},
		{"q-values", Claim{Address: "ana@example.com", List: "news"}, "fr;q=0.4, pl;q=0.8, en;q=0.1", "pl"},
		{"unknown language", Claim{Address: "ana@example.com", List: "news"}, "ja", "en"},
		{"list language", Claim{Address: "ana@example.com", List: "fr-news"}, "de", "fr"},
		{"campaign language", Claim{Address: "ana@example.com", List: "fr-news", Campaign: "c1", Language: "pl"}, "de", "pl"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, e.tk.URL(c.claim), nil)
			if c.accept != "" {
				req.Header.Set("Accept-Language", c.accept)
			}
			code, _, body := do(t, req)
			l := locale.For(c.want)
			if code != http.StatusOK || !strings.Contains(body, `<html lang="`+c.want+`" dir="ltr">`) ||
				!strings.Contains(body, "<h1>"+html.EscapeString(l.T("Unsubscribe", nil))+"</h1>") {
				t.Fatalf("GET = %d, want a page in %s:\n%s", code, c.want, body)
			}
			req, _ = http.NewRequest(http.MethodPost, e.tk.URL(c.claim), strings.NewReader("scope=one"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if c.accept != "" {
				req.Header.Set("Accept-Language", c.accept)
			}
			code, _, body = do(t, req)
			if code != http.StatusOK || !strings.Contains(body, html.EscapeString(l.T("UnsubscribedHeading", nil))) {
				t.Errorf("POST = %d, want the unsubscribed page in %s:\n%s", code, c.want, body)
			}
		})
	}
	// A bad token's 404 follows the browser too.
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/u/forged", nil)
	req.Header.Set("Accept-Language", "sv-SE")
	if code, _, body := do(t, req); code != http.StatusNotFound || !strings.Contains(body, `lang="sv"`) ||
		!strings.Contains(body, html.EscapeString(locale.For("sv").T("NotFoundUnsubscribe", nil))) {
		t.Errorf("404 = %d:\n%s", code, body)
	}
}

// TestTokenLanguage: a claim without a language mints the token it did
// before languages existed; one with a language round-trips.
func TestTokenLanguage(t *testing.T) {
	tk, err := NewTokens(goldenKey, "https://mail.example.com")
	if err != nil {
		t.Fatal(err)
	}
	plain := Claim{Address: "ana@example.com", List: "news", Campaign: "c1"}
	withLang := plain
	withLang.Language = "de"
	if tk.Mint(plain) == tk.Mint(withLang) {
		t.Error("the language does not change the token")
	}
	for _, c := range []Claim{plain, withLang} {
		if got, err := tk.Parse(tk.Mint(c)); err != nil || got != c {
			t.Errorf("Parse(Mint(%+v)) = %+v, %v", c, got, err)
		}
	}
}
