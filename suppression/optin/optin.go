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
//   - Rate limits keep the form from mail-bombing anyone (429 with
//     Retry-After, nothing recorded): requests per client IP (the peer, or
//     X-Forwarded-For from Config.Proxies only), sign-ups per mailbox (the
//     address without its +tag, case-folded), and confirmation mails per
//     mailbox, per IP, per /24 (IPv6 /64) and in total.
//   - Bad form input is a 400 naming the field, before anything is audited,
//     recorded or mailed.
//   - Pages speak the list's language when it has one, else the browser's
//     (Accept-Language), else English. A sign-up records the consent wording
//     in the language the form showed (its hidden lang field), and the
//     confirmation mail is written in that same language: the person
//     confirms what they read.
package optin

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/httplimit"
	"github.com/postwarden/postwarden/suppression/pages"
	"github.com/postwarden/postwarden/suppression/pages/locale"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// maxBody caps a sign-up or confirm POST body.
const maxBody = 16 << 10

// Store is the consent store; *subscribers.Store satisfies it.
type Store interface {
	Subscribe(subscribers.Subscription) (subscribers.Event, error)
	Confirm(addr, list, ip, ua string) (subscribers.Event, error)
	Status(addr, list string) (subscribers.Status, error)
}

// Mailer sends the confirmation message (through the queue, DKIM and the MTA
// like every message) in language lang (a locale code).
type Mailer interface {
	SendConfirmation(ctx context.Context, addr, list, listName, confirmURL, lang string) error
}

// Suppressions says whether an address may not be mailed on a list;
// suppression/gate's Gate satisfies it. Such an address signs up only
// through double opt-in.
type Suppressions interface {
	Check(addr, list string) (reason string, suppressed bool, err error)
}

// Lifter lifts a person's own earlier "unsubscribed" entry on a list once
// they confirm that list again through double opt-in (never a bounce,
// complaint or erasure).
type Lifter interface {
	LiftUnsubscribe(addr, list string) error
}

// List is a list that takes sign-ups.
type List struct {
	Name        string
	DoubleOptIn bool
	// Language, a locale code, is the language of the list's pages and
	// confirmation mail whatever the browser asks for; "": the browser's.
	Language string
}

// Limits are the rate limits of the sign-up form; a zero Rate takes its
// default (DefaultLimits), rate.Inf switches it off.
type Limits struct {
	RequestsPerIP           httplimit.Rate // every POST /subscribe and /c/TOKEN, per client IP
	SignupsPerMailbox       httplimit.Rate // POST /subscribe per mailbox (address.MailboxKey)
	ConfirmationsPerMailbox httplimit.Rate // confirmation mails per mailbox
	ConfirmationsPerIP      httplimit.Rate // confirmation mails per client IP
	ConfirmationsPerNetwork httplimit.Rate // confirmation mails per /24 (IPv4) or /64 (IPv6)
	ConfirmationsTotal      httplimit.Rate // confirmation mails from the whole form
	MaxKeys                 int            // keys each limit remembers; default httplimit.DefaultMaxKeys
}

// DefaultLimits are the limits a zero Limits field takes; the server
// config's subscribe_limits defaults are the same (README, server config).
var DefaultLimits = Limits{
	RequestsPerIP:           httplimit.Per(5, time.Minute, 10),
	SignupsPerMailbox:       httplimit.Per(3, time.Hour, 3),
	ConfirmationsPerMailbox: httplimit.Per(1, time.Hour, 3),
	ConfirmationsPerIP:      httplimit.Per(20, time.Hour, 10),
	ConfirmationsPerNetwork: httplimit.Per(60, time.Hour, 20),
	ConfirmationsTotal:      httplimit.Per(600, time.Hour, 100),
}

// Config is what the handler needs.
type Config struct {
	Lists        map[string]List // by id; required
	Store        Store           // required
	Mailer       Mailer          // required for double opt-in lists
	Suppressions Suppressions    // optional
	Lifter       Lifter          // optional; nil: a confirmation lifts nothing
	Pages        *pages.Renderer // required
	Tokens       *Tokens         // required
	PublicURL    string          // base of confirmation links
	PrivacyURL   string          // recorded with every sign-up as the policy shown
	Limits       Limits
	Now          func() time.Time // default time.Now
	// Audit, when set, records sign-ups and confirmations as actions of
	// "http:IP" before they are reported done.
	Audit Auditor
	// Proxies are the reverse proxies whose X-Forwarded-For names the client.
	Proxies httplimit.Proxies
}

// Auditor records an action a person took over HTTP.
type Auditor interface {
	HTTPAction(ip, action, address, detail string) error
}

// Handler serves /subscribe and /c/{token}.
type Handler struct {
	cfg       Config
	log       zerolog.Logger
	mux       *http.ServeMux
	byIP      *httplimit.Buckets // requests
	byMailbox *httplimit.Buckets // sign-ups
	// confirmation mails
	mailMailbox, mailIP, mailNet, mailTotal *httplimit.Buckets
}

// NewHandler returns the handler; mount it on "/subscribe" and "/c/".
func NewHandler(cfg Config, log zerolog.Logger) *Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l, d := &cfg.Limits, DefaultLimits
	for _, r := range []struct{ v, def *httplimit.Rate }{
		{&l.RequestsPerIP, &d.RequestsPerIP}, {&l.SignupsPerMailbox, &d.SignupsPerMailbox},
		{&l.ConfirmationsPerMailbox, &d.ConfirmationsPerMailbox}, {&l.ConfirmationsPerIP, &d.ConfirmationsPerIP},
		{&l.ConfirmationsPerNetwork, &d.ConfirmationsPerNetwork}, {&l.ConfirmationsTotal, &d.ConfirmationsTotal},
	} {
		if *r.v == (httplimit.Rate{}) {
			*r.v = *r.def
		}
	}
	b := func(r httplimit.Rate) *httplimit.Buckets { return httplimit.NewBuckets(r, l.MaxKeys) }
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	h := &Handler{cfg: cfg, log: log,
		byIP: b(l.RequestsPerIP), byMailbox: b(l.SignupsPerMailbox),
		mailMailbox: b(l.ConfirmationsPerMailbox), mailIP: b(l.ConfirmationsPerIP),
		mailNet: b(l.ConfirmationsPerNetwork), mailTotal: b(l.ConfirmationsTotal)}
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

// pageLocale is the language of a page about list l: the list's own, else the
// one the form was shown in (shown, from its hidden field), else the
// browser's choice.
func pageLocale(r *http.Request, l List, shown string) *locale.Locale {
	return locale.Negotiate(r.Header.Get("Accept-Language"), l.Language, shown)
}

func (h *Handler) render(w http.ResponseWriter, status int, p pages.Page) {
	if err := h.cfg.Pages.Render(w, status, p); err != nil {
		h.log.Warn().Err(err).Msg("optin page not written")
	}
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	h.notFoundIn(w, pageLocale(r, List{}, ""))
}

func (h *Handler) notFoundIn(w http.ResponseWriter, l *locale.Locale) {
	h.render(w, http.StatusNotFound, pages.Message(l, l.T("NotFound", nil), l.T("NotFound", nil), l.T("NotFoundSignUp", nil)))
}

func (h *Handler) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Allow", "GET, HEAD, POST")
	l := pageLocale(r, List{}, "")
	h.render(w, http.StatusMethodNotAllowed, pages.Message(l, l.T("MethodNotAllowed", nil), l.T("MethodNotAllowed", nil), l.T("OpenInBrowser", nil)))
}

func (h *Handler) badRequest(w http.ResponseWriter, l *locale.Locale, text string) {
	h.render(w, http.StatusBadRequest, pages.Message(l, l.T("CheckForm", nil), l.T("CheckForm", nil), text))
}

func (h *Handler) tooMany(w http.ResponseWriter, l *locale.Locale, wait time.Duration) {
	w.Header().Set("Retry-After", httplimit.RetryAfter(wait)) // RFC 6585 §4
	h.render(w, http.StatusTooManyRequests, pages.Message(l, l.T("TooManyRequests", nil), l.T("TooManyRequests", nil),
		l.T("WaitAndRetry", nil)))
}

// consentText is the wording the built-in form shows and records, in l's
// language.
func (h *Handler) consentText(l List, loc *locale.Locale) string {
	return loc.T("ConsentText", locale.Vars{"List": l.Name, "Sender": h.cfg.Pages.Name()})
}

// form shows a sign-up form for ?list=ID. It changes nothing.
func (h *Handler) form(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("list")
	l, ok := h.cfg.Lists[id]
	if !ok {
		h.notFound(w, r)
		return
	}
	loc := pageLocale(r, l, "")
	consent := h.consentText(l, loc)
	note := consent
	if l.DoubleOptIn {
		note += " " + loc.T("WillEmailLink", nil)
	}
	title := loc.T("SubscribeTo", locale.Vars{"List": l.Name})
	h.render(w, http.StatusOK, pages.Page{Locale: loc, Title: title, Heading: title,
		Forms: []pages.Form{{
			Action: "/subscribe",
			Hidden: []pages.Field{{Name: "list", Value: id}, {Name: "consent_text", Value: consent}, {Name: "source", Value: "form:web"},
				{Name: "lang", Value: loc.Lang()}},
			Inputs: []pages.Input{
				{Name: "email", Label: loc.T("EmailAddress", nil), Type: "email", Autocomplete: "email", Required: true},
				{Name: "name", Label: loc.T("Name", nil), Autocomplete: "name"},
				{Name: "company", Label: loc.T("Company", nil), Autocomplete: "organization"},
			},
			Note:    note,
			Buttons: []pages.Button{{Label: loc.T("Subscribe", nil)}},
		}}})
}

// readForm parses a POST form of at most maxBody bytes; false means a page
// in l's language has been written.
func (h *Handler) readForm(w http.ResponseWriter, r *http.Request, l *locale.Locale) (url.Values, bool) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	var err error
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		err = r.ParseMultipartForm(maxBody)
	} else {
		err = r.ParseForm()
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		h.render(w, http.StatusRequestEntityTooLarge, pages.Message(l, l.T("TooLarge", nil), l.T("TooLarge", nil), l.T("ShortenInput", nil)))
		return nil, false
	}
	if err != nil {
		h.badRequest(w, l, l.T("FormUnreadable", nil))
		return nil, false
	}
	return r.PostForm, true
}

// subscribe records a sign-up and, when it is pending, mails the confirmation
// link. The page is the same for known and unknown addresses.
func (h *Handler) subscribe(w http.ResponseWriter, r *http.Request) {
	ip := h.cfg.Proxies.ClientIP(r)
	if ok, wait := h.byIP.Allow(ip, h.cfg.Now()); !ok {
		h.log.Warn().Str("ip", ip).Msg("sign-up rate limited (ip)")
		h.tooMany(w, pageLocale(r, List{}, ""), wait)
		return
	}
	form, ok := h.readForm(w, r, pageLocale(r, List{}, ""))
	if !ok {
		return
	}
	su, ok := h.readSignUp(w, r, form, ip)
	if !ok {
		return
	}
	now := h.cfg.Now()
	if ok, wait := h.byMailbox.Allow(su.mailbox, now); !ok {
		h.log.Warn().Str("rcpt", address.Mask(su.sub.Address)).Str("ip", ip).Msg("sign-up rate limited (mailbox)")
		h.tooMany(w, su.loc, wait)
		return
	}
	// While a confirmation link is still valid, another sign-up sends no
	// second message: the form cannot be used to mail someone repeatedly.
	if h.confirmationPending(su) {
		h.log.Info().Str("rcpt", address.Mask(su.sub.Address)).Str("list", su.sub.List).Msg("sign-up: confirmation already pending")
		h.renderCheckInbox(w, su)
		return
	}
	pending, ok := h.needsConfirmation(w, su)
	if !ok {
		return
	}
	// A sign-up that will mail draws on every confirmation limit, or on none
	// when one is spent, before anything is recorded: a pending sign-up
	// without its mail would hold back the next one for the link's lifetime.
	if pending && !h.takeConfirmationLimits(w, su, now) {
		return
	}
	if !h.auditSignUp(w, su) {
		return
	}
	pending, mail, ok := h.recordSignUp(w, &su, pending)
	if !ok {
		return
	}
	h.log.Info().Str("rcpt", address.Mask(su.sub.Address)).Str("list", su.sub.List).Str("source", su.sub.Source).Bool("pending", pending).
		Bool("mailed", mail).Msg("sign-up")
	if mail && !h.sendConfirmation(w, r, su) {
		return
	}
	if pending {
		h.renderCheckInbox(w, su)
		return
	}
	l := su.loc
	h.render(w, http.StatusOK, pages.Message(l, l.T("Subscribed", nil), l.T("SubscribedHeading", nil),
		l.T("WillCome", locale.Vars{"List": su.list.Name, "Address": address.Mask(su.sub.Address)})))
}

// signUp is one POST /subscribe once its form is read and checked.
type signUp struct {
	ip      string
	loc     *locale.Locale // the language the form was shown in: pages, consent wording, mail
	list    List
	mailbox string // the address's MailboxKey, for the rate limits
	sub     subscribers.Subscription
}

// readSignUp reads the list, address and evidence of a sign-up from form and
// checks them against the consent store's rules, answering 400 (or 500) itself
// when they fail.
func (h *Handler) readSignUp(w http.ResponseWriter, r *http.Request, form url.Values, ip string) (signUp, bool) {
	id := strings.TrimSpace(form.Get("list"))
	l, ok := h.cfg.Lists[id]
	loc := pageLocale(r, l, strings.TrimSpace(form.Get("lang")))
	if !ok {
		h.badRequest(w, loc, loc.T("NoSignUps", nil))
		return signUp{}, false
	}
	a, err := address.Parse(form.Get("email"))
	if err != nil {
		h.badRequest(w, loc, loc.T("BadEmail", nil))
		return signUp{}, false
	}
	addr := a.String()
	name, company := strings.TrimSpace(form.Get("name")), strings.TrimSpace(form.Get("company"))
	// The evidence records the wording this server shows (a client cannot
	// write its own into the consent history) and a source marked as a form.
	sub := subscribers.Subscription{Address: addr, List: id, Name: name, Company: company,
		Source: formSource(form.Get("source")), IP: ip, UserAgent: r.UserAgent(),
		PrivacyURL: h.cfg.PrivacyURL, ConsentText: h.consentText(l, loc)}
	// The consent store's own rules, asked before anything is audited,
	// recorded or mailed: bad input is the sender's mistake, not a 500.
	if err := sub.Check(); err != nil {
		var fe *subscribers.FieldError
		if !errors.As(err, &fe) {
			h.log.Error().Err(err).Str("rcpt", address.Mask(addr)).Msg("sign-up refused")
			h.render(w, http.StatusInternalServerError, pages.ServerError(loc))
			return signUp{}, false
		}
		h.log.Info().Str("field", fe.Field).Str("problem", fe.Problem).Msg("sign-up: bad form field")
		h.badRequest(w, loc, loc.T("BadField", locale.Vars{"Field": fe.Field, "Problem": fe.Problem}))
		return signUp{}, false
	}
	return signUp{ip: ip, loc: loc, list: l, mailbox: a.MailboxKey(), sub: sub}, true
}

// formSource is the evidence's source of a form sign-up: "form", or the
// client's source marked as a form ("form:…") unless it already starts with "form".
func formSource(client string) string {
	source := strings.TrimSpace(client)
	if source == "" {
		return "form"
	}
	if !strings.HasPrefix(source, "form") {
		return "form:" + source
	}
	return source
}

// confirmationPending reports whether su's address waits on a confirmation
// link that is still valid.
func (h *Handler) confirmationPending(su signUp) bool {
	st, err := h.cfg.Store.Status(su.sub.Address, su.sub.List)
	return err == nil && st.State == subscribers.StatePending && h.cfg.Now().Sub(st.Since) < h.cfg.Tokens.ttl
}

// needsConfirmation reports whether su must confirm by mail: its list asks for
// double opt-in, or the suppression store holds the address. It answers 500
// itself when the suppression store fails.
func (h *Handler) needsConfirmation(w http.ResponseWriter, su signUp) (pending, ok bool) {
	if su.list.DoubleOptIn || h.cfg.Suppressions == nil {
		return su.list.DoubleOptIn, true
	}
	_, suppressed, err := h.cfg.Suppressions.Check(su.sub.Address, su.sub.List)
	if err != nil {
		h.log.Error().Err(err).Str("rcpt", address.Mask(su.sub.Address)).Msg("sign-up: suppression not checked")
		h.render(w, http.StatusInternalServerError, pages.ServerError(su.loc))
		return false, false
	}
	return suppressed, true // the suppression store wins: only a confirmed click brings them back
}

// takeConfirmationLimits takes a token from every confirmation limit, or from
// none when one is spent, answering 429 itself then.
func (h *Handler) takeConfirmationLimits(w http.ResponseWriter, su signUp, now time.Time) bool {
	ok, wait, by := httplimit.TakeAll(now,
		httplimit.Take{B: h.mailIP, Key: su.ip, Name: "ip"},
		httplimit.Take{B: h.mailNet, Key: httplimit.Network(su.ip), Name: "network"},
		httplimit.Take{B: h.mailMailbox, Key: su.mailbox, Name: "mailbox"},
		httplimit.Take{B: h.mailTotal, Key: "", Name: "total"},
	)
	if !ok {
		h.log.Warn().Str("rcpt", address.Mask(su.sub.Address)).Str("ip", su.ip).Str("limit", by).Msg("confirmation rate limited")
		h.tooMany(w, su.loc, wait)
	}
	return ok
}

// auditSignUp writes the sign-up to the audit log, if there is one, answering
// 500 itself when that fails.
func (h *Handler) auditSignUp(w http.ResponseWriter, su signUp) bool {
	if h.cfg.Audit == nil {
		return true
	}
	if err := h.cfg.Audit.HTTPAction(su.ip, "subscribers.subscribe", su.sub.Address, "list "+su.sub.List); err != nil {
		h.log.Error().Err(err).Str("rcpt", address.Mask(su.sub.Address)).Msg("sign-up not audited")
		h.render(w, http.StatusInternalServerError, pages.ServerError(su.loc))
		return false
	}
	return true
}

// recordSignUp stores the subscription, pending when it must be confirmed; an
// erased person comes back pending whatever the list. mail says whether a
// confirmation is to be sent. It answers 500 itself when the store fails.
func (h *Handler) recordSignUp(w http.ResponseWriter, su *signUp, pending bool) (isPending, mail, ok bool) {
	su.sub.Pending, su.sub.ViaDoubleOptIn = pending, pending
	_, err := h.cfg.Store.Subscribe(su.sub)
	if errors.Is(err, subscribers.ErrErased) && !pending {
		pending, su.sub.Pending, su.sub.ViaDoubleOptIn = true, true, true // an erased person comes back only by double opt-in
		_, err = h.cfg.Store.Subscribe(su.sub)
	}
	mail = pending
	switch {
	case errors.Is(err, subscribers.ErrAlreadyConfirmed):
		mail = false // nothing to confirm; the page says the same as for anyone
	case err != nil:
		h.log.Error().Err(err).Str("rcpt", address.Mask(su.sub.Address)).Str("list", su.sub.List).Msg("sign-up not recorded")
		h.render(w, http.StatusInternalServerError, pages.ServerError(su.loc))
		return pending, false, false
	}
	return pending, mail, true
}

// sendConfirmation mails su its confirmation link, answering 500 itself when
// there is no mailer or the mail is not sent.
func (h *Handler) sendConfirmation(w http.ResponseWriter, r *http.Request, su signUp) bool {
	addr, id := su.sub.Address, su.sub.List
	if h.cfg.Mailer == nil {
		h.log.Error().Str("list", id).Msg("sign-up: no mailer for the confirmation")
		h.render(w, http.StatusInternalServerError, pages.ServerError(su.loc))
		return false
	}
	if err := h.cfg.Mailer.SendConfirmation(r.Context(), addr, id, su.list.Name, h.ConfirmURL(addr, id), su.loc.Lang()); err != nil {
		h.log.Error().Err(err).Str("rcpt", address.Mask(addr)).Str("list", id).Msg("confirmation not sent")
		h.render(w, http.StatusInternalServerError, pages.ServerError(su.loc))
		return false
	}
	return true
}

// renderCheckInbox answers a sign-up that waits on its confirmation, whether
// or not a message went out: the page tells nobody which.
func (h *Handler) renderCheckInbox(w http.ResponseWriter, su signUp) {
	l := su.loc
	h.render(w, http.StatusOK, pages.Message(l, l.T("CheckInbox", nil), l.T("CheckInbox", nil),
		l.T("SentLink", locale.Vars{"Address": address.Mask(su.sub.Address), "List": su.list.Name}),
		l.T("NothingUntilConfirmed", locale.Vars{"Validity": l.Validity(h.cfg.Tokens.ttl)})))
}

// claim parses the token in the path; false means a 404 has been written.
// loc is the language of the pages about the token's list.
func (h *Handler) claim(w http.ResponseWriter, r *http.Request) (c Claim, l List, loc *locale.Locale, ok bool) {
	c, err := h.cfg.Tokens.Parse(r.PathValue("token"), h.cfg.Now())
	if err != nil {
		h.notFound(w, r)
		return Claim{}, List{}, nil, false
	}
	l, ok = h.cfg.Lists[c.List]
	if !ok {
		h.notFound(w, r)
		return Claim{}, List{}, nil, false
	}
	return c, l, pageLocale(r, l, ""), true
}

// confirmPage shows the confirm button. It changes nothing.
func (h *Handler) confirmPage(w http.ResponseWriter, r *http.Request) {
	c, l, loc, ok := h.claim(w, r)
	if !ok {
		return
	}
	v := locale.Vars{"Address": address.Mask(c.Address), "List": l.Name, "Sender": h.cfg.Pages.Name()}
	h.render(w, http.StatusOK, pages.Page{Locale: loc, Title: loc.T("ConfirmHeading", nil), Heading: loc.T("ConfirmHeading", nil),
		Text:  []string{loc.T("ConfirmThat", v)},
		Forms: []pages.Form{{Note: loc.T("ConfirmConsent", v), Buttons: []pages.Button{{Name: "confirm", Value: "yes", Label: loc.T("ConfirmButton", nil)}}}},
	})
}

// confirm records the confirmation with the time and IP of the click.
func (h *Handler) confirm(w http.ResponseWriter, r *http.Request) {
	c, l, loc, ok := h.claim(w, r)
	if !ok {
		return
	}
	ip := h.cfg.Proxies.ClientIP(r)
	if ok, wait := h.byIP.Allow(ip, h.cfg.Now()); !ok {
		h.tooMany(w, loc, wait)
		return
	}
	if _, ok := h.readForm(w, r, loc); !ok {
		return
	}
	if h.cfg.Audit != nil {
		if err := h.cfg.Audit.HTTPAction(ip, "subscribers.confirm", c.Address, "list "+c.List); err != nil {
			h.log.Error().Err(err).Str("rcpt", address.Mask(c.Address)).Msg("confirmation not audited")
			h.render(w, http.StatusInternalServerError, pages.ServerError(loc))
			return
		}
	}
	_, err := h.cfg.Store.Confirm(c.Address, c.List, ip, r.UserAgent())
	if errors.Is(err, subscribers.ErrNoPending) {
		st, serr := h.cfg.Store.Status(c.Address, c.List)
		if serr == nil && st.State == subscribers.StateConfirmed {
			err = nil // a second click: already confirmed
		} else {
			h.notFoundIn(w, loc) // unsubscribed since, pruned or erased: the link is spent
			return
		}
	} else if err != nil {
		h.log.Error().Err(err).Str("rcpt", address.Mask(c.Address)).Str("list", c.List).Msg("confirmation not recorded")
		h.render(w, http.StatusInternalServerError, pages.ServerError(loc))
		return
	} else if h.cfg.Lifter != nil {
		if err := h.cfg.Lifter.LiftUnsubscribe(c.Address, c.List); err != nil {
			h.log.Error().Err(err).Str("rcpt", address.Mask(c.Address)).Str("list", c.List).Msg("earlier unsubscribe not lifted")
		}
	}
	h.log.Info().Str("rcpt", address.Mask(c.Address)).Str("list", c.List).Msg("subscription confirmed")
	h.render(w, http.StatusOK, pages.Message(loc, loc.T("Confirmed", nil), loc.T("Confirmed", nil),
		loc.T("WillCome", locale.Vars{"List": l.Name, "Address": address.Mask(c.Address)})))
}
