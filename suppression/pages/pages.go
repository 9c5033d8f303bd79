// Package pages renders every page a recipient sees (unsubscribe, preferences,
// sign-up, confirmation) in one layout, in the sender's branding.
//
// Contract: pages are plain, accessible HTML (lang, title, main landmark,
// headings, labelled inputs, visible focus, text colours chosen for WCAG AA
// contrast against the configured background and accent) that work without
// JavaScript and load nothing but the optional https logo. Every response
// carries a strict Content-Security-Policy, Cache-Control: no-store and
// Referrer-Policy: no-referrer; every page links the privacy notice.
package pages

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/postwarden/postwarden/suppression/pages/locale"
)

// CSP is the Content-Security-Policy of every page: nothing loads but an https
// logo and the inline style sheet; forms post only to this origin; no framing.
const CSP = "default-src 'none'; img-src https:; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Branding is how the pages look.
type Branding struct {
	Name       string // sender name, shown in the header and titles
	LogoURL    string // optional https URL of a logo
	Color      string // accent colour #rrggbb (buttons, links); default #1a56db
	Background string // page background #rrggbb; default #ffffff
}

// Page is the content of one page. Text, forms and items are escaped; Body is
// trusted markup written by the caller, placed after the text.
type Page struct {
	// Locale is the page's language (lang and dir attributes, the layout's
	// own words); nil: English.
	Locale  *locale.Locale
	Title   string   // <title>; the sender name is appended
	Heading string   // the <h1>
	Text    []string // paragraphs
	Items   []string // a bulleted list after the paragraphs
	Body    template.HTML
	Forms   []Form
	Links   []Link // secondary links under the forms
}

// Message is a page of one heading and its paragraphs in l's language.
func Message(l *locale.Locale, title, heading string, text ...string) Page {
	return Page{Locale: l, Title: title, Heading: heading, Text: text}
}

// ServerError is the page of a request that could not be carried out
// (status 500); it says no more, so nothing about the failure leaks.
func ServerError(l *locale.Locale) Page {
	if l == nil {
		l = locale.For(locale.Default)
	}
	return Message(l, l.T("TryLater", nil), l.T("ServerErrorHeading", nil), l.T("ServerErrorText", nil))
}

// Form is a POST form. Action "" posts to the page's own URL.
type Form struct {
	Action  string
	Legend  string // when set, the form's controls sit in a fieldset with this legend
	Hidden  []Field
	Inputs  []Input
	Note    string // a paragraph after the inputs (consent wording)
	Buttons []Button
}

// Field is a hidden form field.
type Field struct{ Name, Value string }

// Input is a labelled text input.
type Input struct {
	Name, Label  string
	Type         string // "text" when empty; "email"
	Autocomplete string
	Value        string
	Required     bool
}

// Button is a submit button; Secondary ones are drawn outlined.
type Button struct {
	Name, Value, Label string
	Secondary          bool
}

// Link is a plain link.
type Link struct{ URL, Label string }

// Renderer writes pages; safe for concurrent use.
type Renderer struct {
	brand   Branding
	privacy string
	css     template.CSS
}

var hexColor = regexp.MustCompile(`^#[0-9A-Fa-f]{6}$`)

// New checks the branding and builds a Renderer. privacyURL is linked from
// every page.
func New(b Branding, privacyURL string) (*Renderer, error) {
	b.Name = strings.TrimSpace(b.Name)
	if b.Name == "" {
		b.Name = "this sender"
	}
	if b.Color == "" {
		b.Color = "#1a56db"
	}
	if b.Background == "" {
		b.Background = "#ffffff"
	}
	var errs []error
	for _, c := range []struct{ name, v string }{{"colour", b.Color}, {"background", b.Background}} {
		if !hexColor.MatchString(c.v) {
			errs = append(errs, fmt.Errorf("pages: %s %q: want #rrggbb", c.name, c.v))
		}
	}
	if b.LogoURL != "" {
		if u, err := url.Parse(b.LogoURL); err != nil || u.Scheme != "https" || u.Host == "" {
			errs = append(errs, fmt.Errorf("pages: logo URL %q: want an absolute https URL", b.LogoURL))
		}
	}
	if privacyURL != "" {
		if u, err := url.Parse(privacyURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, fmt.Errorf("pages: privacy URL %q: want an absolute http(s) URL", privacyURL))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Renderer{brand: b, privacy: privacyURL, css: styleSheet(b.Color, b.Background)}, nil
}

// Name returns the sender name shown on the pages.
func (r *Renderer) Name() string { return r.brand.Name }

// SetHeaders sets the headers every page response carries.
func SetHeaders(h http.Header) {
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", CSP)
}

// Render writes p with status and the security headers. The page is rendered
// before anything is written, so a template error still gives a clean 500.
func (r *Renderer) Render(w http.ResponseWriter, status int, p Page) error {
	var buf bytes.Buffer
	l := p.Locale
	if l == nil {
		l = locale.For(locale.Default)
	}
	err := layout.Execute(&buf, view{Page: p, Brand: r.brand, Privacy: r.privacy, CSS: r.css,
		Lang: l.Lang(), Dir: l.Dir(), Optional: l.T("Optional", nil), PrivacyLabel: l.T("PrivacyNotice", nil)})
	SetHeaders(w.Header())
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, "<!DOCTYPE html><html lang=\"en\"><title>Error</title><main><h1>Something went wrong</h1></main></html>")
		return fmt.Errorf("pages: render %q: %w", p.Title, err)
	}
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, err = w.Write(buf.Bytes())
	return err
}

// view is what the layout sees.
type view struct {
	Page
	Brand   Branding
	Privacy string
	CSS     template.CSS
	// From the page's locale: lang and dir attributes, the layout's words.
	Lang, Dir, Optional, PrivacyLabel string
}

// styleSheet builds the inline CSS. Text colours are picked for contrast
// (WCAG 2.1 §1.4.3, 4.5:1) against the background and the accent.
func styleSheet(accent, bg string) template.CSS {
	text := readableOn(bg)
	onAccent := readableOn(accent)
	link := accent
	if contrast(accent, bg) < 4.5 {
		link = text
	}
	return template.CSS(fmt.Sprintf(`
:root{color-scheme:light}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:1.0625rem;line-height:1.55;margin:0;background:%[1]s;color:%[2]s}
.wrap{max-width:38rem;margin:0 auto;padding:1.5rem 1.25rem 3rem}
header{padding:1rem 0 .5rem;border-bottom:3px solid %[3]s;margin-bottom:1.5rem}
header img{max-height:3rem;max-width:12rem;display:block}
header .name{font-weight:600;font-size:1.125rem}
h1{font-size:1.6rem;line-height:1.25;margin:.5rem 0 1rem}
a{color:%[4]s;text-decoration:underline}
form{margin:1.25rem 0}
fieldset{border:1px solid currentColor;border-radius:.375rem;padding:.75rem 1rem;margin:0 0 1rem}
legend{font-weight:600;padding:0 .25rem}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
input[type=text],input[type=email]{font:inherit;width:100%%;box-sizing:border-box;padding:.5rem .625rem;border:2px solid %[2]s;border-radius:.25rem;background:#fff;color:#111}
button{font:inherit;font-weight:600;cursor:pointer;padding:.625rem 1.125rem;margin:.375rem .5rem .375rem 0;border-radius:.375rem;border:2px solid %[3]s;background:%[3]s;color:%[5]s}
button.secondary{background:transparent;color:%[2]s;border-color:%[2]s}
a:focus-visible,button:focus-visible,input:focus-visible{outline:3px solid %[2]s;outline-offset:3px}
.note{font-size:.95rem}
footer{margin-top:2.5rem;padding-top:1rem;border-top:1px solid %[6]s;font-size:.95rem}
@media (prefers-reduced-motion:reduce){*{transition:none!important}}
`, bg, text, accent, link, onAccent, text))
}

// readableOn returns near-black or white, whichever contrasts more with c.
func readableOn(c string) string {
	if contrast(c, "#000000") >= contrast(c, "#ffffff") {
		return "#000000"
	}
	return "#ffffff"
}

// contrast is the WCAG 2.1 contrast ratio of two #rrggbb colours.
func contrast(a, b string) float64 {
	la, lb := luminance(a), luminance(b)
	if la < lb {
		la, lb = lb, la
	}
	return (la + 0.05) / (lb + 0.05)
}

// luminance is the WCAG 2.1 relative luminance of #rrggbb.
func luminance(c string) float64 {
	v, err := strconv.ParseUint(strings.TrimPrefix(c, "#"), 16, 32)
	if err != nil {
		return 1
	}
	ch := func(x uint64) float64 {
		s := float64(x) / 255
		if s <= 0.03928 {
			return s / 12.92
		}
		return math.Pow((s+0.055)/1.055, 2.4)
	}
	return 0.2126*ch(v>>16&0xff) + 0.7152*ch(v>>8&0xff) + 0.0722*ch(v&0xff)
}

var layout = template.Must(template.New("layout").Parse(`<!DOCTYPE html>
<html lang="{{.Lang}}" dir="{{.Dir}}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<meta name="referrer" content="no-referrer">
<title>{{.Title}} – {{.Brand.Name}}</title>
<style>{{.CSS}}</style>
</head>
<body>
<div class="wrap">
<header>
{{- if .Brand.LogoURL}}
<img src="{{.Brand.LogoURL}}" alt="{{.Brand.Name}}" referrerpolicy="no-referrer">
{{- else}}
<div class="name">{{.Brand.Name}}</div>
{{- end}}
</header>
<main id="main">
<h1>{{.Heading}}</h1>
{{- range .Text}}
<p>{{.}}</p>
{{- end}}
{{- if .Items}}
<ul>
{{- range .Items}}
<li>{{.}}</li>
{{- end}}
</ul>
{{- end}}
{{- .Body}}
{{- range .Forms}}
<form method="post"{{if .Action}} action="{{.Action}}"{{end}}>
{{- if .Legend}}
<fieldset>
<legend>{{.Legend}}</legend>
{{- end}}
{{- range .Hidden}}
<input type="hidden" name="{{.Name}}" value="{{.Value}}">
{{- end}}
{{- range .Inputs}}
<label for="f-{{.Name}}">{{.Label}}{{if not .Required}} ({{$.Optional}}){{end}}</label>
<input id="f-{{.Name}}" name="{{.Name}}" type="{{if .Type}}{{.Type}}{{else}}text{{end}}"{{if .Autocomplete}} autocomplete="{{.Autocomplete}}"{{end}}{{if .Value}} value="{{.Value}}"{{end}}{{if .Required}} required{{end}}>
{{- end}}
{{- if .Note}}
<p class="note">{{.Note}}</p>
{{- end}}
<p>
{{- range .Buttons}}
<button type="submit"{{if .Name}} name="{{.Name}}" value="{{.Value}}"{{end}}{{if .Secondary}} class="secondary"{{end}}>{{.Label}}</button>
{{- end}}
</p>
{{- if .Legend}}
</fieldset>
{{- end}}
</form>
{{- end}}
{{- range .Links}}
<p><a href="{{.URL}}">{{.Label}}</a></p>
{{- end}}
</main>
<footer>
<p>{{.Brand.Name}}{{if .Privacy}} · <a href="{{.Privacy}}">{{.PrivacyLabel}}</a>{{end}}</p>
</footer>
</div>
</body>
</html>
`))
