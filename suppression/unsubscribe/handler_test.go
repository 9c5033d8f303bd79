package unsubscribe

import (
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/httplimit"
	"github.com/postwarden/postwarden/suppression/sealed"
)

type env struct {
	srv   *httptest.Server
	store *suppression.Store
	tk    *Tokens
	logs  *bytes.Buffer
}

func newEnv(t *testing.T, sup Suppressor, opts ...func(*Config)) *env {
	t.Helper()
	dir := t.TempDir()
	store, err := suppression.Open(suppression.Config{Path: filepath.Join(dir, "suppression.db"), Box: testBox(t)}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	key, err := LoadOrCreateKey(filepath.Join(dir, "token.key"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{store: store, logs: &bytes.Buffer{}}
	if sup == nil {
		sup = store
	}
	mux := http.NewServeMux()
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	if e.tk, err = NewTokens(key, e.srv.URL); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Tokens: e.tk, Suppressor: sup, PrivacyURL: "https://example.com/privacy", SenderName: "Example & Co"}
	for _, o := range opts {
		o(&cfg)
	}
	h := NewHandler(cfg, zerolog.New(e.logs))
	mux.Handle("/", h)
	return e
}

// client never follows redirects, so a redirect would show as its own status.
var client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func do(t *testing.T, req *http.Request) (int, http.Header, string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		t.Fatalf("%s %s answered a redirect %d", req.Method, req.URL.Path, resp.StatusCode)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func post(t *testing.T, u, ctype, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	code, _, b := do(t, req)
	return code, b
}

func check(t *testing.T, s *suppression.Store, addr, list string) (suppression.Entry, bool) {
	t.Helper()
	e, ok, err := s.Lookup(addr, list)
	if err != nil {
		t.Fatal(err)
	}
	return e, ok
}

func TestGetChangesNothing(t *testing.T) {
	e := newEnv(t, nil)
	u := e.tk.UnsubscribeURL("ana.ruiz@example.com", "news", "c1")
	for i := 0; i < 3; i++ {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		code, hdr, body := do(t, req)
		if code != http.StatusOK {
			t.Fatalf("GET = %d", code)
		}
		if hdr.Get("Cache-Control") != "no-store" || hdr.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("headers: %v", hdr)
		}
		for _, want := range []string{`<html lang="en" dir="ltr">`, "<title>Unsubscribe – Example &amp; Co</title>", `<form method="post">`,
			`name="scope" value="all"`, "Unsubscribe from all mail from Example &amp; Co", `href="https://example.com/privacy"`, "a***@example.com"} {
			if !strings.Contains(body, want) {
				t.Errorf("GET page lacks %q", want)
			}
		}
		if strings.Contains(body, "<script") || strings.Contains(body, "ana.ruiz") {
			t.Error("GET page has script or the full address")
		}
	}
	req, _ := http.NewRequest(http.MethodHead, u, nil)
	if code, _, _ := do(t, req); code != http.StatusOK {
		t.Errorf("HEAD = %d", code)
	}
	if n, _ := e.store.Count(); n != 0 {
		t.Errorf("GET changed the store: %d entries", n)
	}
}

func TestOneClickSuppressesListOnly(t *testing.T) {
	e := newEnv(t, nil)
	u := e.tk.UnsubscribeURL("Ana.Ruiz@Example.com", "news", "c1")
	for i := 0; i < 2; i++ { // idempotent
		code, body := post(t, u, "application/x-www-form-urlencoded", "List-Unsubscribe=One-Click") // RFC 8058 §3.1
		if code != http.StatusOK || !strings.Contains(body, "You are unsubscribed") {
			t.Fatalf("POST #%d = %d %s", i+1, code, body)
		}
	}
	got, ok := check(t, e.store, "ana.ruiz@example.com", "news")
	if !ok || got.Reason != suppression.Unsubscribed || got.Source != "one-click" || got.List != "news" {
		t.Errorf("after one-click: %+v %v", got, ok)
	}
	if _, ok := check(t, e.store, "ana.ruiz@example.com", "events"); ok {
		t.Error("one-click for news suppressed events too")
	}
	if n, _ := e.store.Count(); n != 1 {
		t.Errorf("Count = %d, want 1", n)
	}
	if !strings.Contains(e.logs.String(), `"rcpt":"A***@example.com"`) || !strings.Contains(e.logs.String(), `"campaign":"c1"`) ||
		strings.Contains(strings.ToLower(e.logs.String()), "ana.ruiz") {
		t.Errorf("log line: %s", e.logs)
	}
}

func TestOneClickMultipart(t *testing.T) {
	e := newEnv(t, nil)
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	mw.WriteField("List-Unsubscribe", "One-Click")
	mw.Close()
	code, _ := post(t, e.tk.UnsubscribeURL("bob@example.org", "news", "c2"), mw.FormDataContentType(), b.String())
	if code != http.StatusOK {
		t.Fatalf("multipart POST = %d", code)
	}
	if got, ok := check(t, e.store, "bob@example.org", "news"); !ok || got.Source != "one-click" {
		t.Errorf("after multipart one-click: %+v %v", got, ok)
	}
}

func TestFormScopes(t *testing.T) {
	e := newEnv(t, nil)
	code, _ := post(t, e.tk.UnsubscribeURL("carol@example.com", "news", "c1"), "application/x-www-form-urlencoded", "scope=one")
	if code != http.StatusOK {
		t.Fatalf("scope=one = %d", code)
	}
	if got, ok := check(t, e.store, "carol@example.com", "news"); !ok || got.Source != "web" || got.List != "news" {
		t.Errorf("scope=one: %+v %v", got, ok)
	}
	if _, ok := check(t, e.store, "carol@example.com", "events"); ok {
		t.Error("scope=one suppressed another list")
	}

	code, body := post(t, e.tk.UnsubscribeURL("dave@example.com", "news", "c1"), "application/x-www-form-urlencoded", url.Values{"scope": {"all"}}.Encode())
	if code != http.StatusOK || !strings.Contains(body, "no more email from Example &amp; Co") {
		t.Fatalf("scope=all = %d %s", code, body)
	}
	for _, list := range []string{"", "news", "events"} {
		if got, ok := check(t, e.store, "dave@example.com", list); !ok || got.List != "" || got.Source != "web" {
			t.Errorf("scope=all, list %q: %+v %v", list, got, ok)
		}
	}
}

func TestBadTokens(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.tk.Mint(Claim{Address: "ana@example.com", List: "news", Campaign: "c1"})
	flip := []byte(tok)
	if flip[10] == 'A' {
		flip[10] = 'B'
	} else {
		flip[10] = 'A'
	}
	for _, bad := range []string{string(flip), "garbage", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", tok + "x"} {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			req, _ := http.NewRequest(m, e.srv.URL+"/u/"+bad, strings.NewReader("List-Unsubscribe=One-Click"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			code, _, body := do(t, req)
			if code != http.StatusNotFound || !strings.Contains(body, "Not found") || strings.Contains(body, "ana") {
				t.Errorf("%s %q = %d %q", m, bad, code, body)
			}
		}
	}
	if n, _ := e.store.Count(); n != 0 {
		t.Errorf("bad tokens changed the store: %d entries", n)
	}
}

func TestMethodsAndLimits(t *testing.T) {
	e := newEnv(t, nil)
	u := e.tk.UnsubscribeURL("ana@example.com", "news", "c1")
	for _, m := range []string{http.MethodPut, http.MethodDelete, http.MethodPatch} {
		req, _ := http.NewRequest(m, u, nil)
		code, hdr, _ := do(t, req)
		if code != http.StatusMethodNotAllowed || !strings.Contains(hdr.Get("Allow"), "POST") {
			t.Errorf("%s = %d, Allow %q", m, code, hdr.Get("Allow"))
		}
	}
	if code, _ := post(t, u, "application/x-www-form-urlencoded", "x="+strings.Repeat("a", 5000)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body = %d, want 413", code)
	}
	if n, _ := e.store.Count(); n != 0 {
		t.Errorf("refused requests changed the store: %d entries", n)
	}
	// A one-click body without a Content-Type still unsubscribes.
	if code, _ := post(t, u, "", "List-Unsubscribe=One-Click"); code != http.StatusOK {
		t.Errorf("POST without Content-Type = %d", code)
	}
	if got, ok := check(t, e.store, "ana@example.com", "news"); !ok || got.Source != "one-click" {
		t.Errorf("after POST without Content-Type: %+v %v", got, ok)
	}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/elsewhere", nil)
	if code, _, _ := do(t, req); code != http.StatusNotFound {
		t.Errorf("GET /elsewhere = %d", code)
	}
}

type failing struct{}

func (failing) Add(e suppression.Entry) error {
	return errors.New("disk full while writing " + e.Target)
}

// The rest of failing reads an empty store: only the write fails.
func (failing) Covers(suppression.Entry) (bool, error) { return false, nil }
func (failing) Lookup(string, string) (suppression.Entry, bool, error) {
	return suppression.Entry{}, false, nil
}
func (failing) Check(string, string) (string, bool, error) { return "", false, nil }

func TestStoreError(t *testing.T) {
	e := newEnv(t, failing{})
	code, body := post(t, e.tk.UnsubscribeURL("ana.ruiz@example.com", "news", "c1"), "application/x-www-form-urlencoded", "List-Unsubscribe=One-Click")
	if code != http.StatusInternalServerError || strings.Contains(body, "ana.ruiz") {
		t.Errorf("store failure = %d %q", code, body)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "unsubscribe not recorded") || strings.Contains(logs, "ana.ruiz") {
		t.Errorf("log: %s", logs)
	}
}

// testBox is a data key for the stores of a test.
func testBox(t testing.TB) *sealed.Box {
	t.Helper()
	b, err := sealed.New(bytes.Repeat([]byte{5}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A flood of POSTs on one token from one IP gets 429 with Retry-After once
// the unsubscribe is recorded, while the first POST on every other token
// from that IP is still recorded, even with the IP's limit spent.
func TestRepeatedPostsLimitedFirstHonoured(t *testing.T) {
	e := newEnv(t, nil, func(c *Config) {
		c.Limits = Limits{PerIP: httplimit.Per(1, time.Hour, 4), PerToken: httplimit.Per(1, time.Hour, 2)}
	})
	u := e.tk.UnsubscribeURL("ana@example.com", "news", "c1")
	var ok, limited int
	for i := 0; i < 20; i++ {
		req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader("List-Unsubscribe=One-Click"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		code, hdr, body := do(t, req)
		switch code {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			limited++
			if ra := hdr.Get("Retry-After"); ra == "" || ra == "0" || !strings.Contains(body, "already unsubscribed") {
				t.Errorf("429 without Retry-After or explanation: %q %q", ra, body)
			}
		default:
			t.Fatalf("POST %d = %d", i, code)
		}
	}
	if ok == 0 || ok > 3 || limited < 17 {
		t.Errorf("one token, 20 POSTs: %d recorded, %d limited; want 1-3 and the rest 429", ok, limited)
	}
	if _, found := check(t, e.store, "ana@example.com", "news"); !found {
		t.Fatal("the first POST was not recorded")
	}
	// The IP's bucket is spent now; first POSTs on new tokens still count.
	for i := 0; i < 6; i++ {
		addr := "bo" + string(rune('a'+i)) + "@example.com"
		code, _ := post(t, e.tk.UnsubscribeURL(addr, "news", "c1"), "application/x-www-form-urlencoded", "List-Unsubscribe=One-Click")
		if code != http.StatusOK {
			t.Errorf("first POST for %s = %d", addr, code)
		}
		if _, found := check(t, e.store, addr, "news"); !found {
			t.Errorf("first POST for %s not recorded", addr)
		}
	}
	// A second POST on one of those is a repeat: refused, nothing lost.
	code, _ := post(t, e.tk.UnsubscribeURL("boa@example.com", "news", "c1"), "application/x-www-form-urlencoded", "List-Unsubscribe=One-Click")
	if code != http.StatusTooManyRequests {
		t.Errorf("repeat with the IP's limit spent = %d, want 429", code)
	}
}
