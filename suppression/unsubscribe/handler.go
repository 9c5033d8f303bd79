package unsubscribe

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/httplimit"
	"github.com/postwarden/postwarden/suppression/pages"
	"github.com/postwarden/postwarden/suppression/pages/locale"
)

// maxBody caps the POST body; a one-click body is 26 bytes.
const maxBody = 4 << 10

// Suppressor is the suppression store as unsubscribing uses it;
// *suppression.Store satisfies it. Add records an unsubscribe; Covers says
// it is in effect already, so a repeat records and audits nothing; Lookup
// says which entry suppresses an address, so a repeated POST can be rate
// limited; Check says which lists the preference page shows as left.
type Suppressor interface {
	Add(suppression.Entry) error
	Covers(suppression.Entry) (bool, error)
	Lookup(addr, list string) (suppression.Entry, bool, error)
	Check(addr, list string) (reason string, suppressed bool, err error)
}

// ListStatus is one list on the preference page.
type ListStatus struct {
	ID, Name   string
	Subscribed bool
}

// Lists tells the preference page which lists a person is on.
type Lists interface {
	ListsFor(addr string) ([]ListStatus, error)
}

// ConsentHistory records an unsubscribe in the consent history too
// (list "" = every list).
type ConsentHistory interface {
	Unsubscribed(addr, list, source string) error
}

// Config is what the handler needs.
type Config struct {
	Tokens     *Tokens    // required
	Suppressor Suppressor // required
	PrivacyURL string     // shown on every page when set (unless Pages is set)
	SenderName string     // "Unsubscribe from all mail from {{SenderName}}"
	// Pages renders the pages in the sender's branding; nil: a plain
	// renderer with SenderName and PrivacyURL.
	Pages *pages.Renderer
	// Lists, when set, enables the preference page GET|POST /u/{token}/prefs.
	Lists Lists
	// ListLanguages are the lists' own languages (list id → a locale code);
	// a page for a token of such a list speaks it unless the token carries
	// its campaign's language. Other pages follow the browser's
	// Accept-Language, English by default.
	ListLanguages map[string]string
	// History, when set, is told of each unsubscribe recorded; its errors
	// are logged, not shown: the suppression store has it already.
	History ConsentHistory
	// Events, when set, counts an unsubscribe against the token's campaign
	// (kind "unsubscribed"), once per person; its errors are logged, not shown.
	Events Events
	// Timings, when set, keeps when each recorded unsubscribe of a campaign
	// was asked and how long it took to suppress; its errors are logged.
	Timings Timings
	// Audit, when set, records each unsubscribe that changes the suppression
	// store as an action of "http:IP" (a repeat is not audited again); an
	// unsubscribe counts as done only once it is recorded.
	Audit Auditor
	// Limits bound repeated POSTs; a zero Rate takes DefaultLimits.
	Limits Limits
	// Proxies are the reverse proxies whose X-Forwarded-For names the client.
	Proxies httplimit.Proxies
	Now     func() time.Time // default time.Now
}

// Limits are the rate limits of POST /u/TOKEN and /u/TOKEN/prefs. They
// refuse (429) only a repeat: a POST on a token already drawn on lately whose
// unsubscribe is already in effect. The first POST on a token, and any POST
// whose unsubscribe is not yet recorded, is always recorded (RFC 8058: a
// provider's one-click POST must not be lost).
type Limits struct {
	PerIP    httplimit.Rate // POSTs per client IP
	PerToken httplimit.Rate // POSTs per token
	MaxKeys  int            // keys each limit remembers; default httplimit.DefaultMaxKeys
}

// DefaultLimits are the limits a zero Limits field takes; the server
// config's unsubscribe_limits defaults are the same (README, server config).
var DefaultLimits = Limits{
	PerIP:    httplimit.Per(60, time.Minute, 120),
	PerToken: httplimit.Per(10, time.Hour, 5),
}

// Auditor records an action a recipient took over HTTP.
type Auditor interface {
	HTTPAction(ip, action, address, detail string) error
}

type handler struct {
	cfg     Config
	pages   *pages.Renderer
	rec     *Recorder
	log     zerolog.Logger
	byIP    *httplimit.Buckets
	byToken *httplimit.Buckets
}

// NewHandler serves GET and POST /u/{token} and, with Config.Lists, GET and
// POST /u/{token}/prefs. GET shows a page and changes nothing; POST (the
// page's form, or an RFC 8058 one-click request) records the unsubscribe and
// answers 200, never a redirect.
func NewHandler(cfg Config, log zerolog.Logger) http.Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Limits.PerIP == (httplimit.Rate{}) {
		cfg.Limits.PerIP = DefaultLimits.PerIP
	}
	if cfg.Limits.PerToken == (httplimit.Rate{}) {
		cfg.Limits.PerToken = DefaultLimits.PerToken
	}
	h := &handler{cfg: cfg, pages: cfg.Pages, rec: NewRecorder(cfg, log), log: log,
		byIP:    httplimit.NewBuckets(cfg.Limits.PerIP, cfg.Limits.MaxKeys),
		byToken: httplimit.NewBuckets(cfg.Limits.PerToken, cfg.Limits.MaxKeys)}
	if h.pages == nil {
		r, err := pages.New(pages.Branding{Name: cfg.SenderName}, cfg.PrivacyURL)
		if err != nil {
			log.Error().Err(err).Msg("unsubscribe pages: bad privacy URL; pages show no privacy link")
			r, _ = pages.New(pages.Branding{Name: cfg.SenderName}, "")
		}
		h.pages = r
	}
	if h.cfg.SenderName == "" {
		h.cfg.SenderName = h.pages.Name()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /u/{token}", h.confirm)
	mux.HandleFunc("POST /u/{token}", h.unsubscribe)
	mux.HandleFunc("/u/{token}", h.methodNotAllowed)
	if cfg.Lists != nil {
		mux.HandleFunc("GET /u/{token}/prefs", h.prefs)
		mux.HandleFunc("POST /u/{token}/prefs", h.prefsPost)
		mux.HandleFunc("/u/{token}/prefs", h.methodNotAllowed)
	}
	mux.HandleFunc("/", h.notFound)
	return mux
}

// locale is the language of a page for c: the campaign's (carried in the
// token), the list's, else the browser's choice.
func (h *handler) locale(r *http.Request, c Claim) *locale.Locale {
	return locale.Negotiate(r.Header.Get("Accept-Language"), c.Language, h.cfg.ListLanguages[c.List])
}

// render writes a page with the headers every response carries.
func (h *handler) render(w http.ResponseWriter, status int, p pages.Page) {
	if err := h.pages.Render(w, status, p); err != nil {
		h.log.Warn().Err(err).Msg("unsubscribe page not written")
	}
}

func (h *handler) notFound(w http.ResponseWriter, r *http.Request) {
	l := h.locale(r, Claim{})
	h.render(w, http.StatusNotFound, pages.Message(l, l.T("NotFound", nil), l.T("NotFound", nil), l.T("NotFoundUnsubscribe", nil)))
}

func (h *handler) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Allow", "GET, HEAD, POST")
	l := h.locale(r, Claim{})
	h.render(w, http.StatusMethodNotAllowed, pages.Message(l, l.T("MethodNotAllowed", nil), l.T("MethodNotAllowed", nil), l.T("OpenInBrowser", nil)))
}

// claim parses the token in the path; ok is false (and a 404 or 500 has been
// written) when it is unusable.
func (h *handler) claim(w http.ResponseWriter, r *http.Request) (Claim, bool) {
	if h.cfg.Tokens == nil || h.cfg.Suppressor == nil {
		h.log.Error().Msg("unsubscribe handler misconfigured: no tokens or suppressor")
		h.render(w, http.StatusInternalServerError, pages.ServerError(h.locale(r, Claim{})))
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
	l := h.locale(r, c)
	p := pages.Page{Locale: l, Title: l.T("Unsubscribe", nil), Heading: l.T("Unsubscribe", nil),
		Text: []string{l.T("StopSending", locale.Vars{"Address": address.Mask(c.Address)}), l.T("UnsubscribeEffect", nil)},
		Forms: []pages.Form{{Buttons: []pages.Button{
			{Name: "scope", Value: "one", Label: l.T("Unsubscribe", nil)},
			{Name: "scope", Value: "all", Label: l.T("UnsubscribeAll", locale.Vars{"Sender": h.cfg.SenderName}), Secondary: true},
		}}}}
	if h.cfg.Lists != nil {
		p.Links = []pages.Link{{URL: r.PathValue("token") + "/prefs", Label: l.T("ChooseLists", nil)}}
	}
	h.render(w, http.StatusOK, p)
}

// readPost reads the form of a POST, writing a 413 or 400 page in l's
// language when it cannot.
func (h *handler) readPost(w http.ResponseWriter, r *http.Request, l *locale.Locale) (url.Values, bool) {
	form, err := readForm(w, r)
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		h.render(w, http.StatusRequestEntityTooLarge, pages.Message(l, l.T("TooLarge", nil), l.T("TooLarge", nil), l.T("OpenInBrowser", nil)))
		return nil, false
	}
	if err != nil {
		h.render(w, http.StatusBadRequest, pages.Message(l, l.T("BadRequest", nil), l.T("BadRequest", nil), l.T("OpenInBrowser", nil)))
		return nil, false
	}
	return form, true
}

// unsubscribe records the request and answers 200, never a redirect.
func (h *handler) unsubscribe(w http.ResponseWriter, r *http.Request) {
	c, ok := h.claim(w, r)
	if !ok {
		return
	}
	l := h.locale(r, c)
	form, ok := h.readPost(w, r, l)
	if !ok {
		return
	}
	e := suppression.Entry{Target: c.Address, List: c.List, Reason: suppression.Unsubscribed, Source: "web"}
	if form.Get("List-Unsubscribe") == "One-Click" { // RFC 8058 §3.1
		e.Source = "one-click"
	}
	if form.Get("scope") == "all" {
		e.List = ""
	}
	if !h.record(w, r, l, c, e) {
		return
	}
	text := l.T("NoMoreOfThese", nil)
	if e.List == "" {
		text = l.T("NoMoreFrom", locale.Vars{"Sender": h.cfg.SenderName})
	}
	h.render(w, http.StatusOK, pages.Message(l, l.T("Unsubscribed", nil), l.T("UnsubscribedHeading", nil), text)) // RFC 8058 §3.2: no redirect
}

// admit applies the limits to a POST that would record e; false means a
// 429 page has been written. Only a repeat is refused: the token was drawn
// on lately and the store already holds the address's own entry for e's
// scope, so refusing loses nothing.
func (h *handler) admit(w http.ResponseWriter, r *http.Request, l *locale.Locale, ip string, c Claim, e suppression.Entry) bool {
	now, token := h.cfg.Now(), r.PathValue("token")
	seen := h.byToken.Has(token, now)
	ok, wait, by := httplimit.TakeAll(now,
		httplimit.Take{B: h.byToken, Key: token, Name: "token"}, httplimit.Take{B: h.byIP, Key: ip, Name: "ip"})
	if ok {
		return true
	}
	if !h.repeat(seen, c, e) {
		h.byToken.Allow(token, now) // recorded anyway, and drawn on: its next POST is a repeat
		return true
	}
	h.log.Warn().Str("rcpt", address.Mask(c.Address)).Str("ip", ip).Str("limit", by).Msg("unsubscribe repeat rate limited")
	w.Header().Set("Retry-After", httplimit.RetryAfter(wait)) // RFC 6585 §4
	h.render(w, http.StatusTooManyRequests, pages.Message(l, l.T("TooManyRequests", nil), l.T("AlreadyUnsubscribed", nil),
		l.T("AlreadyUnsubscribedText", nil)))
	return false
}

// repeat reports whether a POST the limits refused repeats one already in
// effect: the token was drawn on lately and the store holds the address's
// own entry for e's scope (a domain entry can be lifted, so it does not count).
func (h *handler) repeat(seen bool, c Claim, e suppression.Entry) bool {
	if !seen {
		return false
	}
	en, found, err := h.cfg.Suppressor.Lookup(c.Address, e.List)
	return err == nil && found && !strings.HasPrefix(en.Target, "@")
}

// record records the unsubscribe (once: a repeat answers 200 and adds
// nothing); false means a 429 or 500 page has been written.
func (h *handler) record(w http.ResponseWriter, r *http.Request, l *locale.Locale, c Claim, e suppression.Entry) bool {
	ip := h.cfg.Proxies.ClientIP(r)
	if !h.admit(w, r, l, ip, c, e) {
		return false
	}
	var audit func(string) error
	if h.cfg.Audit != nil {
		audit = func(detail string) error {
			return h.cfg.Audit.HTTPAction(ip, "suppress.add", c.Address, detail)
		}
	}
	if _, err := h.rec.Record(c, e, audit); err != nil {
		h.render(w, http.StatusInternalServerError, pages.ServerError(l))
		return false
	}
	return true
}

// listsOf returns the lists shown on the preference page: those Lists knows
// the person is on, plus the token's own list, each marked left when the
// suppression store says so.
func (h *handler) listsOf(c Claim) ([]ListStatus, error) {
	ls, err := h.cfg.Lists.ListsFor(c.Address)
	if err != nil {
		return nil, err
	}
	if c.List != "" && !slices.ContainsFunc(ls, func(l ListStatus) bool { return l.ID == c.List }) {
		ls = append([]ListStatus{{ID: c.List, Name: c.List, Subscribed: true}}, ls...)
	}
	for i := range ls {
		if !ls[i].Subscribed {
			continue
		}
		_, sup, err := h.cfg.Suppressor.Check(c.Address, ls[i].ID)
		if err != nil {
			return nil, err
		}
		ls[i].Subscribed = !sup
	}
	return ls, nil
}

// prefsPage builds the preference page in l's language; done, when set,
// leads it.
func (h *handler) prefsPage(l *locale.Locale, c Claim, ls []ListStatus, done string) pages.Page {
	p := pages.Page{Locale: l, Title: l.T("YourSubscriptions", nil), Heading: l.T("YourSubscriptions", nil)}
	if done != "" {
		p.Text = append(p.Text, done)
	}
	p.Text = append(p.Text, l.T("EmailFrom", locale.Vars{"Address": address.Mask(c.Address), "Sender": h.cfg.SenderName}))
	on := false
	for _, st := range ls {
		name := st.Name
		if name == "" {
			name = st.ID
		}
		if !st.Subscribed {
			p.Items = append(p.Items, l.T("NotSubscribed", locale.Vars{"List": name}))
			continue
		}
		on = true
		p.Forms = append(p.Forms, pages.Form{Legend: name, Buttons: []pages.Button{
			{Name: "list", Value: st.ID, Label: l.T("UnsubscribeFrom", locale.Vars{"List": name})},
		}})
	}
	if !on && len(p.Items) == 0 {
		p.Text = append(p.Text, l.T("OnNoList", nil))
	}
	p.Forms = append(p.Forms, pages.Form{Legend: l.T("Everything", nil), Buttons: []pages.Button{
		{Name: "scope", Value: "all", Label: l.T("UnsubscribeAll", locale.Vars{"Sender": h.cfg.SenderName}), Secondary: true},
	}})
	return p
}

// claimLists reads the token and the lists its person is on; false means an
// error page has been written.
func (h *handler) claimLists(w http.ResponseWriter, r *http.Request) (Claim, []ListStatus, bool) {
	c, ok := h.claim(w, r)
	if !ok {
		return c, nil, false
	}
	ls, err := h.listsOf(c)
	if err != nil {
		h.log.Error().Err(address.MaskError(err)).Str("rcpt", address.Mask(c.Address)).Msg("preference page: lists not read")
		h.render(w, http.StatusInternalServerError, pages.ServerError(h.locale(r, c)))
		return c, nil, false
	}
	return c, ls, true
}

// prefs shows the lists the person is on. It changes nothing.
func (h *handler) prefs(w http.ResponseWriter, r *http.Request) {
	c, ls, ok := h.claimLists(w, r)
	if !ok {
		return
	}
	h.render(w, http.StatusOK, h.prefsPage(h.locale(r, c), c, ls, ""))
}

// prefsPost leaves one list (list=ID, one shown on the page) or everything
// (scope=all), then shows the page again with 200.
func (h *handler) prefsPost(w http.ResponseWriter, r *http.Request) {
	c, ls, ok := h.claimLists(w, r)
	if !ok {
		return
	}
	l := h.locale(r, c)
	form, ok := h.readPost(w, r, l)
	if !ok {
		return
	}
	e := suppression.Entry{Target: c.Address, Reason: suppression.Unsubscribed, Source: "preferences"}
	var done string
	switch id := form.Get("list"); {
	case form.Get("scope") == "all":
		done = l.T("LeftAll", locale.Vars{"Sender": h.cfg.SenderName})
	case id != "":
		i := slices.IndexFunc(ls, func(st ListStatus) bool { return st.ID == id })
		if i < 0 {
			h.render(w, http.StatusBadRequest, pages.Message(l, l.T("BadRequest", nil), l.T("BadRequest", nil), l.T("NotYourList", nil)))
			return
		}
		e.List = id
		name := ls[i].Name
		if name == "" {
			name = id
		}
		done = l.T("LeftList", locale.Vars{"List": name})
	default:
		h.render(w, http.StatusBadRequest, pages.Message(l, l.T("BadRequest", nil), l.T("BadRequest", nil), l.T("ChooseList", nil)))
		return
	}
	if !h.record(w, r, l, c, e) {
		return
	}
	for i := range ls {
		if e.List == "" || ls[i].ID == e.List {
			ls[i].Subscribed = false
		}
	}
	h.render(w, http.StatusOK, h.prefsPage(l, c, ls, done))
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
