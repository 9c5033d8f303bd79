package unsubscribe

import (
	"errors"
	"html/template"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
)

// maxBody caps the POST body; a one-click body is 26 bytes.
const maxBody = 4 << 10

// Suppressor records an unsubscribe; *suppression.Store satisfies it.
type Suppressor interface{ Add(suppression.Entry) error }

// Config is what the handler needs.
type Config struct {
	Tokens     *Tokens    // required
	Suppressor Suppressor // required
	PrivacyURL string     // shown on every page when set
	SenderName string     // "Unsubscribe from all mail from {{SenderName}}"
	// Events, when set, counts each recorded unsubscribe against the token's
	// campaign (kind "unsubscribed"); its errors are logged, not shown.
	Events interface {
		AddCampaignEvent(campaign, kind string) error
	}
}

type handler struct {
	cfg Config
	log zerolog.Logger
}

// page is the data of every page.
type page struct {
	Title, Heading, Text string
	Form                 bool // show the confirm form
	Sender, PrivacyURL   string
}

var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{.Title}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em;line-height:1.5}button{font-size:1em;padding:.5em 1em;margin:.25em 0}</style>
</head>
<body>
<main>
<h1>{{.Heading}}</h1>
<p>{{.Text}}</p>
{{- if .Form}}
<form method="post">
<p><button type="submit" name="scope" value="one">Unsubscribe</button></p>
<p><button type="submit" name="scope" value="all">Unsubscribe from all mail from {{.Sender}}</button></p>
</form>
{{- end}}
{{- if .PrivacyURL}}
<p><a href="{{.PrivacyURL}}">Privacy notice</a></p>
{{- end}}
</main>
</body>
</html>
`))

// NewHandler serves GET and POST /u/{token}. GET shows a confirm page and
// changes nothing; POST (the page's form, or an RFC 8058 one-click request)
// records the unsubscribe and answers 200.
func NewHandler(cfg Config, log zerolog.Logger) http.Handler {
	if cfg.SenderName == "" {
		cfg.SenderName = "this sender"
	}
	h := &handler{cfg: cfg, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /u/{token}", h.confirm)
	mux.HandleFunc("POST /u/{token}", h.unsubscribe)
	mux.HandleFunc("/u/{token}", h.methodNotAllowed)
	mux.HandleFunc("/", h.notFound)
	return mux
}

// render writes a page with the headers every response carries.
func (h *handler) render(w http.ResponseWriter, status int, p page) {
	p.Sender, p.PrivacyURL = h.cfg.SenderName, h.cfg.PrivacyURL
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	w.WriteHeader(status)
	if err := pageTmpl.Execute(w, p); err != nil {
		h.log.Warn().Err(err).Msg("unsubscribe page not written")
	}
}

func (h *handler) notFound(w http.ResponseWriter, _ *http.Request) {
	h.render(w, http.StatusNotFound, page{Title: "Not found", Heading: "Not found",
		Text: "This link is not valid. Please use the link from the most recent message you received."})
}

func (h *handler) methodNotAllowed(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Allow", "GET, HEAD, POST")
	h.render(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed", Heading: "Method not allowed",
		Text: "Open the link in your browser."})
}

func (h *handler) serverError(w http.ResponseWriter) {
	h.render(w, http.StatusInternalServerError, page{Title: "Try again later", Heading: "Something went wrong",
		Text: "We could not record your request. Please try again in a few minutes."})
}

// claim parses the token in the path; ok is false (and a 404 or 500 has been
// written) when it is unusable.
func (h *handler) claim(w http.ResponseWriter, r *http.Request) (Claim, bool) {
	if h.cfg.Tokens == nil || h.cfg.Suppressor == nil {
		h.log.Error().Msg("unsubscribe handler misconfigured: no tokens or suppressor")
		h.serverError(w)
		return Claim{}, false
	}
	c, err := h.cfg.Tokens.Parse(r.PathValue("token"))
	if err != nil {
		h.notFound(w, r)
		return Claim{}, false
	}
	return c, true
}

// confirm shows the form. It must change nothing: scanners prefetch links.
func (h *handler) confirm(w http.ResponseWriter, r *http.Request) {
	c, ok := h.claim(w, r)
	if !ok {
		return
	}
	h.render(w, http.StatusOK, page{Title: "Unsubscribe", Heading: "Unsubscribe",
		Text: "Stop sending email to " + address.Mask(c.Address) + "?", Form: true})
}

// unsubscribe records the request and answers 200, never a redirect.
func (h *handler) unsubscribe(w http.ResponseWriter, r *http.Request) {
	c, ok := h.claim(w, r)
	if !ok {
		return
	}
	form, err := readForm(w, r)
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		h.render(w, http.StatusRequestEntityTooLarge, page{Title: "Request too large", Heading: "Request too large",
			Text: "Open the link in your browser."})
		return
	}
	if err != nil {
		h.render(w, http.StatusBadRequest, page{Title: "Bad request", Heading: "Bad request",
			Text: "Open the link in your browser."})
		return
	}
	e := suppression.Entry{Target: c.Address, List: c.List, Reason: suppression.Unsubscribed, Source: "web"}
	if form.Get("List-Unsubscribe") == "One-Click" { // RFC 8058 §3.1
		e.Source = "one-click"
	}
	if form.Get("scope") == "all" {
		e.List = ""
	}
	if err := h.cfg.Suppressor.Add(e); err != nil {
		h.log.Error().Err(scrub(err, c.Address)).Str("rcpt", address.Mask(c.Address)).Str("list", e.List).
			Str("campaign", c.Campaign).Msg("unsubscribe not recorded")
		h.serverError(w)
		return
	}
	h.log.Info().Str("rcpt", address.Mask(c.Address)).Str("list", e.List).Str("campaign", c.Campaign).
		Str("source", e.Source).Msg("unsubscribed")
	if h.cfg.Events != nil && c.Campaign != "" {
		if err := h.cfg.Events.AddCampaignEvent(c.Campaign, "unsubscribed"); err != nil {
			h.log.Error().Err(err).Str("campaign", c.Campaign).Msg("unsubscribe event not counted")
		}
	}
	text := "You will receive no more of these messages."
	if e.List == "" {
		text = "You will receive no more email from " + h.cfg.SenderName + "."
	}
	h.render(w, http.StatusOK, page{Title: "Unsubscribed", Heading: "You are unsubscribed", Text: text}) // RFC 8058 §3.2: no redirect
}

// readForm reads a url-encoded or multipart body of at most maxBody bytes.
// RFC 8058 §3.1: the one-click POST may be multipart/form-data or
// application/x-www-form-urlencoded; a body without a Content-Type is read as
// url-encoded too.
func readForm(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "multipart/form-data":
		if err := r.ParseMultipartForm(maxBody); err != nil {
			return nil, err
		}
		return r.PostForm, nil
	case "application/x-www-form-urlencoded":
		if err := r.ParseForm(); err != nil {
			return nil, err
		}
		return r.PostForm, nil
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	v, err := url.ParseQuery(strings.TrimSpace(string(b)))
	if err != nil {
		return url.Values{}, nil // an opaque body still means "unsubscribe"
	}
	return v, nil
}

// scrub replaces the address in an error text by its mask, for logs.
func scrub(err error, addr string) error {
	if addr == "" {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), addr, address.Mask(addr)))
}
