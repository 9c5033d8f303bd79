package optin

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/pages"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

type sent struct{ addr, list, name, url, lang string }

type fakeMailer struct {
	mu   sync.Mutex
	sent []sent
}

func (m *fakeMailer) SendConfirmation(_ context.Context, addr, list, name, u, lang string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, sent{addr, list, name, u, lang})
	return nil
}

func (m *fakeMailer) last(t *testing.T) sent {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sent) == 0 {
		t.Fatal("no confirmation sent")
	}
	return m.sent[len(m.sent)-1]
}

type tenv struct {
	srv  *httptest.Server
	subs *subscribers.Store
	supp *suppression.Store
	mail *fakeMailer
	now  time.Time
	mu   sync.Mutex
}

func (e *tenv) clock() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now }
func (e *tenv) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

func newTenv(t *testing.T, opts ...func(*Config)) *tenv {
	t.Helper()
	dir := t.TempDir()
	box, err := sealed.New(bytes.Repeat([]byte{7}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	subs, err := subscribers.Open(subscribers.Config{Path: filepath.Join(dir, "subs.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { subs.Close() })
	supp, err := suppression.Open(suppression.Config{Path: filepath.Join(dir, "supp.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { supp.Close() })
	r, err := pages.New(pages.Branding{Name: "Acme"}, "https://example.com/privacy")
	if err != nil {
		t.Fatal(err)
	}
	tk, err := NewTokens(bytes.Repeat([]byte{9}, 32), 7*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &tenv{subs: subs, supp: supp, mail: &fakeMailer{}, now: time.Now()}
	mux := http.NewServeMux()
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	cfg := Config{
		Lists: map[string]List{"news": {Name: "Product news", DoubleOptIn: true}, "open": {Name: "Open list"}},
		Store: subs, Mailer: e.mail, Suppressions: supp, Pages: r, Tokens: tk,
		PublicURL: e.srv.URL, PrivacyURL: "https://example.com/privacy", Now: e.clock,
	}
	for _, o := range opts {
		o(&cfg)
	}
	h := NewHandler(cfg, zerolog.Nop())
	mux.Handle("/", h)
	return e
}

var client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func req(t *testing.T, method, u string, form url.Values) (int, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	r, _ := http.NewRequest(method, u, body)
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := client.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *tenv) state(t *testing.T, addr, list string) string {
	t.Helper()
	st, err := e.subs.Status(addr, list)
	if err != nil {
		t.Fatal(err)
	}
	return st.State
}

func TestDoubleOptIn(t *testing.T) {
	e := newTenv(t)
	code, body := req(t, "GET", e.srv.URL+"/subscribe?list=news", nil)
	if code != 200 || !strings.Contains(body, `action="/subscribe"`) || !strings.Contains(body, `name="consent_text"`) {
		t.Fatalf("form page %d\n%s", code, body)
	}
	form := url.Values{"list": {"news"}, "email": {"Ana@Acme.example"}, "name": {"Ana"}, "company": {"Acme"},
		"consent_text": {"I agree v3"}, "source": {"form:footer"}}
	code, body = req(t, "POST", e.srv.URL+"/subscribe", form)
	if code != 200 || !strings.Contains(body, "Check your inbox") {
		t.Fatalf("subscribe %d\n%s", code, body)
	}
	m := e.mail.last(t)
	if m.addr != "Ana@acme.example" || m.list != "news" || m.name != "Product news" || !strings.HasPrefix(m.url, e.srv.URL+"/c/") {
		t.Fatalf("sent %+v", m)
	}
	if strings.Contains(m.url, "ana") || strings.Contains(m.url, "Ana") {
		t.Errorf("confirm URL shows the address: %s", m.url)
	}
	if s := e.state(t, "ana@acme.example", "news"); s != subscribers.StatePending {
		t.Fatalf("state %s", s)
	}
	// GET changes nothing.
	for i := 0; i < 2; i++ {
		code, body = req(t, "GET", m.url, nil)
		if code != 200 || !strings.Contains(body, "Confirm subscription") {
			t.Fatalf("GET confirm %d\n%s", code, body)
		}
	}
	if s := e.state(t, "ana@acme.example", "news"); s != subscribers.StatePending {
		t.Fatalf("GET changed state to %s", s)
	}
	// Forged and expired tokens are 404 and reveal nothing.
	// The second-last character carries six data bits in full: flipping it
	// always forges (the old "AA" suffix equalled the token 1 run in 4096).
	flip := map[byte]byte{'A': 'B'}[m.url[len(m.url)-2]]
	if flip == 0 {
		flip = 'A'
	}
	forged := m.url[:len(m.url)-2] + string(flip) + m.url[len(m.url)-1:]
	if code, body = req(t, "POST", forged, url.Values{}); code != 404 || strings.Contains(strings.ToLower(body), "ana") {
		t.Errorf("forged %d %s", code, body)
	}
	code, body = req(t, "POST", m.url, url.Values{"confirm": {"yes"}})
	if code != 200 || !strings.Contains(body, "Subscription confirmed") {
		t.Fatalf("POST confirm %d\n%s", code, body)
	}
	if s := e.state(t, "ana@acme.example", "news"); s != subscribers.StateConfirmed {
		t.Fatalf("state after confirm %s", s)
	}
	hist, err := e.subs.History("ana@acme.example")
	if err != nil {
		t.Fatal(err)
	}
	ev := hist[0].Events
	// The wording recorded is the server's own, whatever the client posted.
	if len(ev) != 2 || ev[0].IP != "127.0.0.1" || !strings.HasPrefix(ev[0].ConsentText, "I agree to receive Product news") || ev[0].Source != "form:footer" ||
		ev[0].PrivacyURL != "https://example.com/privacy" || ev[1].Kind != subscribers.KindConfirmed || ev[1].IP != "127.0.0.1" {
		t.Errorf("history %+v", ev)
	}
	// A second click is fine; a second sign-up shows the same page and mails nothing.
	if code, _ = req(t, "POST", m.url, url.Values{}); code != 200 {
		t.Errorf("second confirm %d", code)
	}
	n := len(e.mail.sent)
	code, body2 := req(t, "POST", e.srv.URL+"/subscribe", form)
	if code != 200 || !strings.Contains(body2, "Check your inbox") || len(e.mail.sent) != n {
		t.Errorf("repeat sign-up %d, mails %d→%d\n%s", code, n, len(e.mail.sent), body2)
	}
	// Expiry.
	e.advance(8 * 24 * time.Hour)
	if code, _ = req(t, "GET", m.url, nil); code != 404 {
		t.Errorf("expired GET %d", code)
	}
}

func TestNoDoubleOptInAndSuppressed(t *testing.T) {
	e := newTenv(t)
	code, body := req(t, "POST", e.srv.URL+"/subscribe", url.Values{"list": {"open"}, "email": {"bob@acme.example"}})
	if code != 200 || !strings.Contains(body, "You are subscribed") || len(e.mail.sent) != 0 {
		t.Fatalf("open list %d mails %d\n%s", code, len(e.mail.sent), body)
	}
	if s := e.state(t, "bob@acme.example", "open"); s != subscribers.StateConfirmed {
		t.Fatalf("state %s", s)
	}
	// A suppressed address must confirm by mail even on a list without double opt-in.
	if err := e.supp.SuppressAddress("carol@acme.example", "", "hard_bounce", "bounce", ""); err != nil {
		t.Fatal(err)
	}
	code, body = req(t, "POST", e.srv.URL+"/subscribe", url.Values{"list": {"open"}, "email": {"carol@acme.example"}})
	if code != 200 || !strings.Contains(body, "Check your inbox") || len(e.mail.sent) != 1 {
		t.Fatalf("suppressed %d mails %d\n%s", code, len(e.mail.sent), body)
	}
	if s := e.state(t, "carol@acme.example", "open"); s != subscribers.StatePending {
		t.Fatalf("state %s", s)
	}
	// Unknown list, bad address.
	if code, _ = req(t, "POST", e.srv.URL+"/subscribe", url.Values{"list": {"nope"}, "email": {"x@acme.example"}}); code != 400 {
		t.Errorf("unknown list %d", code)
	}
	if code, _ = req(t, "POST", e.srv.URL+"/subscribe", url.Values{"list": {"news"}, "email": {"not an address"}}); code != 400 {
		t.Errorf("bad address %d", code)
	}
	if code, _ = req(t, "GET", e.srv.URL+"/subscribe?list=nope", nil); code != 404 {
		t.Errorf("form of unknown list %d", code)
	}
}

func TestUnsubscribedComesBackByConfirming(t *testing.T) {
	e := newTenv(t)
	if err := e.supp.Add(suppression.Entry{Target: "dan@acme.example", List: "news", Reason: suppression.Unsubscribed}); err != nil {
		t.Fatal(err)
	}
	if code, _ := req(t, "POST", e.srv.URL+"/subscribe", url.Values{"list": {"news"}, "email": {"dan@acme.example"}}); code != 200 {
		t.Fatal(code)
	}
	if code, _ := req(t, "POST", e.mail.last(t).url, url.Values{}); code != 200 {
		t.Fatal(code)
	}
	// Without a Lifter the suppression entry stays: the store wins.
	if _, sup, _ := e.supp.Check("dan@acme.example", "news"); !sup {
		t.Error("suppression entry lifted without a Lifter")
	}
}

func TestRateLimits(t *testing.T) {
	e := newTenv(t)
	post := func(addr string) int {
		code, _ := req(t, "POST", e.srv.URL+"/subscribe", url.Values{"list": {"news"}, "email": {addr}})
		return code
	}
	for i := 0; i < 3; i++ {
		if c := post("eve@acme.example"); c != 200 {
			t.Fatalf("sign-up %d = %d", i, c)
		}
	}
	if c := post("eve@acme.example"); c != http.StatusTooManyRequests {
		t.Errorf("4th sign-up of one address = %d", c)
	}
	// One confirmation while its link is valid, however often the form is sent.
	if len(e.mail.sent) != 1 {
		t.Errorf("mails %d, want 1", len(e.mail.sent))
	}
	// Per IP: burst 10, 6 left after the 4 above.
	got429 := false
	for i := 0; i < 8; i++ {
		if post("x"+strings.Repeat("y", i)+"@acme.example") == http.StatusTooManyRequests {
			got429 = true
		}
	}
	if !got429 {
		t.Error("no 429 per IP")
	}
	e.advance(2 * time.Hour)
	if c := post("eve@acme.example"); c != 200 {
		t.Errorf("after the wait = %d", c)
	}
}

func TestTokens(t *testing.T) {
	tk, _ := NewTokens(bytes.Repeat([]byte{1}, 32), time.Hour)
	now := time.Unix(1_700_000_000, 0)
	tok := tk.Mint(Claim{Address: "a@b.example", List: "news", Issued: now})
	c, err := tk.Parse(tok, now.Add(59*time.Minute))
	if err != nil || c.Address != "a@b.example" || c.List != "news" || !c.Issued.Equal(now) {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := tk.Parse(tok, now.Add(61*time.Minute)); err != ErrBadToken {
		t.Error("expired accepted")
	}
	if _, err := tk.Parse(tok, now.Add(-time.Hour)); err != ErrBadToken {
		t.Error("future token accepted")
	}
	other, _ := NewTokens(bytes.Repeat([]byte{2}, 32), time.Hour)
	if _, err := other.Parse(tok, now); err != ErrBadToken {
		t.Error("token of another key accepted")
	}
	for i := 0; i < len(tok); i++ {
		b := []byte(tok)
		b[i] ^= 1
		if _, err := tk.Parse(string(b), now); err == nil {
			t.Errorf("altered at %d accepted", i)
		}
	}
}

// lifter records what Config.Lifter was asked to lift.
type lifter struct {
	mu     sync.Mutex
	lifted []string
}

func (l *lifter) LiftUnsubscribe(addr, list string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lifted = append(l.lifted, addr+"/"+list)
	return nil
}

// With Config.Lifter a confirmation lifts the person's own unsubscribe on
// the list, and only a confirmation does.
func TestConfirmingCallsLifter(t *testing.T) {
	lf := &lifter{}
	e := newTenv(t, func(c *Config) { c.Lifter = lf })
	if code, _ := req(t, "POST", e.srv.URL+"/subscribe", url.Values{"list": {"news"}, "email": {"dan@acme.example"}}); code != 200 {
		t.Fatal(code)
	}
	if len(lf.lifted) != 0 {
		t.Fatalf("signing up lifted %v", lf.lifted)
	}
	if code, _ := req(t, "POST", e.mail.last(t).url, url.Values{}); code != 200 {
		t.Fatal(code)
	}
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if strings.Join(lf.lifted, ",") != "dan@acme.example/news" {
		t.Errorf("lifted %v, want dan@acme.example/news", lf.lifted)
	}
}

func TestFormSource(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "form"},
		{"   ", "form"},
		{"form", "form"},
		{"form:footer", "form:footer"},
		{"formal", "formal"},
		{" landing ", "form:landing"},
		{"import", "form:import"},
	} {
		if got := formSource(tc.in); got != tc.want {
			t.Errorf("formSource(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
