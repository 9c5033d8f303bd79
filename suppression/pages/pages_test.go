package pages

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/suppression/pages/locale"
)

func TestRenderLayoutAndHeaders(t *testing.T) {
	r, err := New(Branding{Name: "Acme <Ltd>", LogoURL: "https://cdn.example.com/logo.png", Color: "#ffcc00", Background: "#ffffff"}, "https://example.com/privacy")
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	err = r.Render(rec, http.StatusTeapot, Page{
		Title: "Sign up", Heading: "Sign <up>", Text: []string{"a & b"},
		Forms: []Form{{Legend: "News", Hidden: []Field{{"list", "news"}},
			Inputs:  []Input{{Name: "email", Label: "Email address", Type: "email", Required: true}, {Name: "name", Label: "Name"}},
			Buttons: []Button{{Label: "Subscribe"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusTeapot {
		t.Errorf("status %d", rec.Code)
	}
	h := rec.Header()
	for k, want := range map[string]string{
		"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "Content-Type": "text/html; charset=utf-8",
	} {
		if h.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, h.Get(k), want)
		}
	}
	for _, want := range []string{"default-src 'none'", "img-src https:", "form-action 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(h.Get("Content-Security-Policy"), want) {
			t.Errorf("CSP %q lacks %q", h.Get("Content-Security-Policy"), want)
		}
	}
	body := rec.Body.String()
	for _, want := range []string{`<html lang="en" dir="ltr">`, "<title>Sign up – Acme &lt;Ltd&gt;</title>", "<main", "<h1>Sign &lt;up&gt;</h1>",
		"a &amp; b", `<label for="f-email">Email address</label>`, `id="f-email"`, `type="email"`, "required",
		"Name (optional)", `<legend>News</legend>`, `href="https://example.com/privacy"`, `src="https://cdn.example.com/logo.png"`,
		"focus-visible", `<button type="submit">Subscribe</button>`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "<script") {
		t.Error("page has a script")
	}
	// Yellow accent: button text must be dark, links fall back to the text colour.
	if !strings.Contains(body, "background:#ffcc00;color:#000000") {
		t.Errorf("button text colour not chosen for contrast:\n%s", body)
	}
}

func TestNewRefusesBadBranding(t *testing.T) {
	for _, b := range []Branding{
		{Color: "red"}, {Background: "#fff;}body{x"}, {LogoURL: "http://example.com/x.png"}, {LogoURL: "javascript:alert(1)"},
	} {
		if _, err := New(b, ""); err == nil {
			t.Errorf("New(%+v) accepted", b)
		}
	}
	if _, err := New(Branding{}, "javascript:x"); err == nil {
		t.Error("bad privacy URL accepted")
	}
}

func TestContrast(t *testing.T) {
	if c := contrast("#000000", "#ffffff"); c < 20.9 || c > 21.1 {
		t.Errorf("black on white %v", c)
	}
	for _, bg := range []string{"#ffffff", "#000000", "#1a56db", "#ffcc00", "#777777"} {
		if c := contrast(readableOn(bg), bg); c < 4.5 {
			t.Errorf("text on %s: contrast %.2f", bg, c)
		}
	}
}

func TestServerErrorPage(t *testing.T) {
	r, err := New(Branding{Name: "Acme"}, "https://example.com/privacy")
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	if err := r.Render(rec, http.StatusInternalServerError, ServerError(nil)); err != nil {
		t.Fatal(err)
	}
	body := rec.Body.String()
	if rec.Code != http.StatusInternalServerError || !strings.Contains(body, "<h1>Something went wrong</h1>") ||
		!strings.Contains(body, "try again in a few minutes") || !strings.Contains(body, "https://example.com/privacy") {
		t.Errorf("status %d, body %s", rec.Code, body)
	}
	if p := Message(nil, "T", "H", "a", "b"); p.Title != "T" || p.Heading != "H" || len(p.Text) != 2 {
		t.Errorf("Message = %+v", p)
	}
}

// TestRenderLocale: the page's locale sets lang and dir and the layout's own
// words (the optional-field mark, the privacy link).
func TestRenderLocale(t *testing.T) {
	r, err := New(Branding{Name: "Acme"}, "https://example.com/privacy")
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	if err := r.Render(rec, http.StatusOK, Page{Locale: locale.For("de"), Title: "T", Heading: "H",
		Forms: []Form{{Inputs: []Input{{Name: "name", Label: "Name"}}}}}); err != nil {
		t.Fatal(err)
	}
	de := locale.For("de")
	for _, want := range []string{`<html lang="de" dir="ltr">`, "(" + de.T("Optional", nil) + ")", ">" + de.T("PrivacyNotice", nil) + "</a>"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("page lacks %q:\n%s", want, rec.Body.String())
		}
	}
}
