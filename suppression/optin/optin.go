// Package optin serves the sign-up and double opt-in pages: POST /subscribe
// records a sign-up and mails a confirmation link; GET /c/TOKEN shows a
// confirm button; POST /c/TOKEN confirms.
//
// Contract:
//   - GET never changes anything (mail scanners prefetch links); POST never
//     redirects (200 with a page).
//   - The sign-up answers the same page whether or not the address was known
//     or already subscribed, so the form reveals nothing about who is on a list.
//   - A list with double_opt_in, and any address the suppression store holds
//     (unsubscribed, bounced, complained, erased), records a pending sign-up
//     and is mailed a confirmation link; nothing else counts as consent until
//     POST /c/TOKEN. Confirmation tokens are authenticated, bind address, list
//     and issue time, and expire after Config.TTL; a bad or expired one is a
//     404 that names nothing.
//   - Rate limits per client IP (RemoteAddr only; forwarding headers are not
//     trusted) and per address keep the form from mail-bombing anyone: 429.
package optin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/pages"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// maxBody caps a sign-up or confirm POST body.
const maxBody = 16 << 10

// maxConsentText caps the consent wording a form may carry.
const maxConsentText = 2000

// Store is the consent store; *subscribers.Store satisfies it.
type Store interface {
	Subscribe(subscribers.Subscription) (subscribers.Event, error)
	Confirm(addr, list, ip, ua string) (subscribers.Event, error)
	Status(addr, list string) (subscribers.Status, error)
}

// Mailer sends the confirmation message (through the queue, DKIM and the MTA
// like every message).
type Mailer interface {
	SendConfirmation(ctx context.Context, addr, list, listName, confirmURL string) error
}

// Suppressions says whether an address is suppressed on a list;
// *suppression.Store satisfies it. Such an address signs up only through
// double opt-in.
type Suppressions interface {
	Check(addr, list string) (reason string, suppressed bool, err error)
}

// Lifter is an optional power of Suppressions: once a person confirms a list
// again through double opt-in, lift their own earlier "unsubscribed" entry on
// that list (never a bounce, complaint or erasure).
type Lifter interface {
	LiftUnsubscribe(addr, list string) error
}

// List is a list that takes sign-ups.
type List struct {
	Name        string
	DoubleOptIn bool
}

// Limits are the rate limits of the sign-up form.
type Limits struct {
	PerIP           rate.Limit // sign-ups and confirms per second per client IP; default 5/min
	PerIPBurst      int        // default 10
	PerAddress      rate.Limit // sign-ups per second per address; default 3/hour
	PerAddressBurst int        // default 3
}

// Config is what the handler needs.
type Config struct {
	Lists        map[string]List // by id; required
	Store        Store           // required
	Mailer       Mailer          // required for double opt-in lists
	Suppressions Suppressions    // optional
	Pages        *pages.Renderer // required
	Tokens       *Tokens         // required
	PublicURL    string          // base of confirmation links
	PrivacyURL   string          // recorded with every sign-up as the policy shown
	Limits       Limits
	Now          func() time.Time // default time.Now
	// Audit, when set, records sign-ups and confirmations as actions of
	// "http:IP" before they are reported done.
	Audit Auditor
}

// Auditor records an action a person took over HTTP.
type Auditor interface {
	HTTPAction(ip, action, address, detail string) error
}

// Handler serves /subscribe and /c/{token}.
type Handler struct {
	cfg    Config
	log    zerolog.Logger
	mux    *http.ServeMux
	byIP   *limiters
	byAddr *limiters
}

// NewHandler returns the handler; mount it on "/subscribe" and "/c/".
func NewHandler(cfg Config, log zerolog.Logger) *Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &cfg.Limits
	if l.PerIP == 0 {
		l.PerIP = rate.Every(12 * time.Second)
	}
	if l.PerIPBurst == 0 {
		l.PerIPBurst = 10
	}
	if l.PerAddress == 0 {
		l.PerAddress = rate.Every(20 * time.Minute)
	}
	if l.PerAddressBurst == 0 {
		l.PerAddressBurst = 3
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	h := &Handler{cfg: cfg, log: log,
		byIP: newLimiters(l.PerIP, l.PerIPBurst), byAddr: newLimiters(l.PerAddress, l.PerAddressBurst)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /subscribe", h.form)
	mux.HandleFunc("POST /subscribe", h.subscribe)
	mux.HandleFunc("/subscribe", h.methodNotAllowed)
	mux.HandleFunc("GET /c/{token}", h.confirmPage)
	mux.HandleFunc("POST /c/{token}", h.confirm)
	mux.HandleFunc("/c/{token}", h.methodNotAllowed)
	mux.HandleFunc("/", h.notFound)
	h.mux = mux
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// ConfirmURL returns the confirmation link for addr on list, issued now.
func (h *Handler) ConfirmURL(addr, list string) string {
	return h.cfg.PublicURL + "/c/" + h.cfg.Tokens.Mint(Claim{Address: addr, List: list, Issued: h.cfg.Now()})
}

func (h *Handler) render(w http.ResponseWriter, status int, p pages.Page) {
	if err := h.cfg.Pages.Render(w, status, p); err != nil {
		h.log.Warn().Err(err).Msg("optin page not written")
	}
}

func message(title, heading string, text ...string) pages.Page {
	return pages.Page{Title: title, Heading: heading, Text: text}
}

func (h *Handler) notFound(w http.ResponseWriter, _ *http.Request) {
	h.render(w, http.StatusNotFound, message("Not found", "Not found",
		"This link is not valid or has expired. Please sign up again if you still want to subscribe."))
}

func (h *Handler) methodNotAllowed(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Allow", "GET, HEAD, POST")
	h.render(w, http.StatusMethodNotAllowed, message("Method not allowed", "Method not allowed", "Open the page in your browser."))
}

func (h *Handler) badRequest(w http.ResponseWriter, text string) {
	h.render(w, http.StatusBadRequest, message("Please check the form", "Please check the form", text))
}

func (h *Handler) serverError(w http.ResponseWriter) {
	h.render(w, http.StatusInternalServerError, message("Try again later", "Something went wrong",
		"We could not record your request. Please try again in a few minutes."))
}

func (h *Handler) tooMany(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "3600")
	h.render(w, http.StatusTooManyRequests, message("Too many requests", "Too many requests",
		"Please wait a while before you try again."))
}

// consentText is the wording the built-in form shows and records.
func (h *Handler) consentText(l List) string {
	return "I agree to receive " + l.Name + " by email from " + h.cfg.Pages.Name() +
		". I can unsubscribe at any time with the link in every message."
}

// form shows a sign-up form for ?list=ID. It changes nothing.
func (h *Handler) form(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("list")
	l, ok := h.cfg.Lists[id]
	if !ok {
		h.notFound(w, r)
		return
	}
	consent := h.consentText(l)
	note := consent
	if l.DoubleOptIn {
		note += " We will email you a link to confirm."
	}
	h.render(w, http.StatusOK, pages.Page{Title: "Subscribe to " + l.Name, Heading: "Subscribe to " + l.Name,
		Forms: []pages.Form{{
			Action: "/subscribe",
			Hidden: []pages.Field{{Name: "list", Value: id}, {Name: "consent_text", Value: consent}, {Name: "source", Value: "form:web"}},
			Inputs: []pages.Input{
				{Name: "email", Label: "Email address", Type: "email", Autocomplete: "email", Required: true},
				{Name: "name", Label: "Name", Autocomplete: "name"},
				{Name: "company", Label: "Company", Autocomplete: "organization"},
			},
			Note:    note,
			Buttons: []pages.Button{{Label: "Subscribe"}},
		}}})
}

// clientIP is the host of RemoteAddr; forwarding headers are not trusted.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// readForm parses a POST form of at most maxBody bytes; false means a page
// has been written.
func (h *Handler) readForm(w http.ResponseWriter, r *http.Request) (url.Values, bool) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	var err error
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		err = r.ParseMultipartForm(maxBody)
	} else {
		err = r.ParseForm()
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		h.render(w, http.StatusRequestEntityTooLarge, message("Request too large", "Request too large", "Please shorten what you entered."))
		return nil, false
	}
	if err != nil {
		h.badRequest(w, "The form could not be read.")
		return nil, false
	}
	return r.PostForm, true
}

// subscribe records a sign-up and, when it is pending, mails the confirmation
// link. The page is the same for known and unknown addresses.
func (h *Handler) subscribe(w http.ResponseWriter, r *http.Request) {
	ip := clientIP(r)
	if !h.byIP.allow(ip, h.cfg.Now()) {
		h.log.Warn().Str("ip", ip).Msg("sign-up rate limited (ip)")
		h.tooMany(w)
		return
	}
	form, ok := h.readForm(w, r)
	if !ok {
		return
	}
	id := strings.TrimSpace(form.Get("list"))
	l, ok := h.cfg.Lists[id]
	if !ok {
		h.badRequest(w, "This list does not take sign-ups.")
		return
	}
	a, err := address.Parse(form.Get("email"))
	if err != nil {
		h.badRequest(w, "Please enter a valid email address.")
		return
	}
	addr := a.String()
	name, company := strings.TrimSpace(form.Get("name")), strings.TrimSpace(form.Get("company"))
	// The evidence records the wording this server shows (a client cannot
	// write its own into the consent history) and a source marked as a form.
	consent, source := h.consentText(l), strings.TrimSpace(form.Get("source"))
	if source == "" {
		source = "form"
	} else if !strings.HasPrefix(source, "form") {
		source = "form:" + source
	}
	if len(name) > 200 || len(company) > 200 || len(source) > 200 || len(consent) > maxConsentText {
		h.badRequest(w, "Some of what you entered is too long.")
		return
	}
	if !h.byAddr.allow(a.Key(), h.cfg.Now()) {
		h.log.Warn().Str("rcpt", address.Mask(addr)).Str("ip", ip).Msg("sign-up rate limited (address)")
		h.tooMany(w)
		return
	}
	// While a confirmation link is still valid, another sign-up sends no
	// second message: the form cannot be used to mail someone repeatedly.
	if st, err := h.cfg.Store.Status(addr, id); err == nil && st.State == subscribers.StatePending &&
		h.cfg.Now().Sub(st.Since) < h.cfg.Tokens.ttl {
		h.log.Info().Str("rcpt", address.Mask(addr)).Str("list", id).Msg("sign-up: confirmation already pending")
		h.render(w, http.StatusOK, message("Check your inbox", "Check your inbox",
			"If "+address.Mask(addr)+" can receive "+l.Name+", we have sent it a message with a link to confirm your subscription.",
			"Nothing is sent to you until you confirm. The link is valid for "+days(h.cfg.Tokens.ttl)+"."))
		return
	}
	pending := l.DoubleOptIn
	if !pending && h.cfg.Suppressions != nil {
		_, suppressed, err := h.cfg.Suppressions.Check(addr, id)
		if err != nil {
			h.log.Error().Err(err).Str("rcpt", address.Mask(addr)).Msg("sign-up: suppression not checked")
			h.serverError(w)
			return
		}
		pending = suppressed // the suppression store wins: only a confirmed click brings them back
	}
	if h.cfg.Audit != nil {
		if err := h.cfg.Audit.HTTPAction(ip, "subscribers.subscribe", addr, "list "+id); err != nil {
			h.log.Error().Err(err).Str("rcpt", address.Mask(addr)).Msg("sign-up not audited")
			h.serverError(w)
			return
		}
	}
	sub := subscribers.Subscription{Address: addr, List: id, Name: name, Company: company, Source: source,
		IP: ip, UserAgent: r.UserAgent(), PrivacyURL: h.cfg.PrivacyURL, ConsentText: consent,
		Pending: pending, ViaDoubleOptIn: pending}
	_, err = h.cfg.Store.Subscribe(sub)
	if errors.Is(err, subscribers.ErrErased) && !pending {
		pending, sub.Pending, sub.ViaDoubleOptIn = true, true, true // an erased person comes back only by double opt-in
		_, err = h.cfg.Store.Subscribe(sub)
	}
	mail := pending
	switch {
	case errors.Is(err, subscribers.ErrAlreadyConfirmed):
		mail = false // nothing to confirm; the page says the same as for anyone
	case err != nil:
		h.log.Error().Err(err).Str("rcpt", address.Mask(addr)).Str("list", id).Msg("sign-up not recorded")
		h.serverError(w)
		return
	}
	h.log.Info().Str("rcpt", address.Mask(addr)).Str("list", id).Str("source", source).Bool("pending", pending).
		Bool("mailed", mail).Msg("sign-up")
	if mail {
		if h.cfg.Mailer == nil {
			h.log.Error().Str("list", id).Msg("sign-up: no mailer for the confirmation")
			h.serverError(w)
			return
		}
		if err := h.cfg.Mailer.SendConfirmation(r.Context(), addr, id, l.Name, h.ConfirmURL(addr, id)); err != nil {
			h.log.Error().Err(err).Str("rcpt", address.Mask(addr)).Str("list", id).Msg("confirmation not sent")
			h.serverError(w)
			return
		}
	}
	if pending {
		h.render(w, http.StatusOK, message("Check your inbox", "Check your inbox",
			"If "+address.Mask(addr)+" can receive "+l.Name+", we have sent it a message with a link to confirm your subscription.",
			"Nothing is sent to you until you confirm. The link is valid for "+days(h.cfg.Tokens.ttl)+"."))
		return
	}
	h.render(w, http.StatusOK, message("Subscribed", "You are subscribed",
		"Thank you. "+l.Name+" will come to "+address.Mask(addr)+". Every message has a link to unsubscribe."))
}

// days writes a duration as "7 days" or "12 hours".
func days(d time.Duration) string {
	if d >= 48*time.Hour {
		return strconv.Itoa(int(d/(24*time.Hour))) + " days"
	}
	return strconv.Itoa(int((d+time.Hour-1)/time.Hour)) + " hours"
}

// claim parses the token in the path; false means a 404 has been written.
func (h *Handler) claim(w http.ResponseWriter, r *http.Request) (Claim, List, bool) {
	c, err := h.cfg.Tokens.Parse(r.PathValue("token"), h.cfg.Now())
	if err != nil {
		h.notFound(w, r)
		return Claim{}, List{}, false
	}
	l, ok := h.cfg.Lists[c.List]
	if !ok {
		h.notFound(w, r)
		return Claim{}, List{}, false
	}
	return c, l, true
}

// confirmPage shows the confirm button. It changes nothing.
func (h *Handler) confirmPage(w http.ResponseWriter, r *http.Request) {
	c, l, ok := h.claim(w, r)
	if !ok {
		return
	}
	h.render(w, http.StatusOK, pages.Page{Title: "Confirm your subscription", Heading: "Confirm your subscription",
		Text:  []string{"Confirm that " + address.Mask(c.Address) + " wants to receive " + l.Name + " from " + h.cfg.Pages.Name() + "."},
		Forms: []pages.Form{{Buttons: []pages.Button{{Name: "confirm", Value: "yes", Label: "Confirm subscription"}}}},
	})
}

// confirm records the confirmation with the time and IP of the click.
func (h *Handler) confirm(w http.ResponseWriter, r *http.Request) {
	c, l, ok := h.claim(w, r)
	if !ok {
		return
	}
	ip := clientIP(r)
	if !h.byIP.allow(ip, h.cfg.Now()) {
		h.tooMany(w)
		return
	}
	if _, ok := h.readForm(w, r); !ok {
		return
	}
	if h.cfg.Audit != nil {
		if err := h.cfg.Audit.HTTPAction(ip, "subscribers.confirm", c.Address, "list "+c.List); err != nil {
			h.log.Error().Err(err).Str("rcpt", address.Mask(c.Address)).Msg("confirmation not audited")
			h.serverError(w)
			return
		}
	}
	_, err := h.cfg.Store.Confirm(c.Address, c.List, ip, r.UserAgent())
	if errors.Is(err, subscribers.ErrNoPending) {
		st, serr := h.cfg.Store.Status(c.Address, c.List)
		if serr == nil && st.State == subscribers.StateConfirmed {
			err = nil // a second click: already confirmed
		} else {
			h.notFound(w, r) // unsubscribed since, pruned or erased: the link is spent
			return
		}
	} else if err != nil {
		h.log.Error().Err(err).Str("rcpt", address.Mask(c.Address)).Str("list", c.List).Msg("confirmation not recorded")
		h.serverError(w)
		return
	} else if lf, ok := h.cfg.Suppressions.(Lifter); ok {
		if err := lf.LiftUnsubscribe(c.Address, c.List); err != nil {
			h.log.Error().Err(err).Str("rcpt", address.Mask(c.Address)).Str("list", c.List).Msg("earlier unsubscribe not lifted")
		}
	}
	h.log.Info().Str("rcpt", address.Mask(c.Address)).Str("list", c.List).Msg("subscription confirmed")
	h.render(w, http.StatusOK, message("Subscription confirmed", "Subscription confirmed",
		"Thank you. "+l.Name+" will come to "+address.Mask(c.Address)+". Every message has a link to unsubscribe."))
}

// limiters keeps one token bucket per key, dropping idle full ones.
type limiters struct {
	mu    sync.Mutex
	limit rate.Limit
	burst int
	m     map[string]*rate.Limiter
	swept time.Time
}

func newLimiters(l rate.Limit, burst int) *limiters {
	return &limiters{limit: l, burst: burst, m: map[string]*rate.Limiter{}}
}

// allow takes one token for key at now.
func (l *limiters) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		for k, lim := range l.m {
			if lim.TokensAt(now) >= float64(l.burst) {
				delete(l.m, k) // full again: the same as a fresh one
			}
		}
		l.swept = now
	}
	lim, ok := l.m[key]
	if !ok {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.m[key] = lim
	}
	return lim.AllowN(now, 1)
}
