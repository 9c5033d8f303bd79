package unsubscribe

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
)

func TestMailto(t *testing.T) {
	tok, err := NewTokens([]byte(strings.Repeat("k", KeySize)), "https://mail.example.com")
	if err != nil {
		t.Fatal(err)
	}
	c := Claim{Address: "Ana@Example.com", List: "product-news", Campaign: "q4"}
	uri := tok.MailtoURI(c.Address, c.List, c.Campaign, "bounce.example.com")
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "mailto" || u.Query().Get("subject") != "unsubscribe" {
		t.Fatalf("MailtoURI = %q (%v)", uri, err)
	}
	local, dom, ok := strings.Cut(u.Opaque, "@")
	if !ok || dom != "bounce.example.com" || !strings.HasPrefix(local, MailtoPrefix) || local != strings.ToLower(local) {
		t.Fatalf("MailtoURI = %q", uri)
	}
	if strings.Contains(strings.ToLower(uri), "ana") {
		t.Errorf("address readable in %q", uri)
	}
	for _, lp := range []string{local, strings.ToUpper(local), local[len(MailtoPrefix):]} {
		got, err := tok.ParseMailto(lp)
		if err != nil || got != c {
			t.Errorf("ParseMailto(%q) = %+v, %v; want %+v", lp, got, err, c)
		}
	}
	// The same bytes as the URL token.
	back, err := tok.ParseMailto(local)
	if err != nil || tok.Mint(back) != tok.Mint(c) {
		t.Errorf("mailto and URL tokens differ")
	}

	other, _ := NewTokens([]byte(strings.Repeat("o", KeySize)), "https://mail.example.com")
	otherLocal := strings.SplitN(strings.TrimPrefix(other.MailtoURI(c.Address, c.List, c.Campaign, "b.example"), "mailto:"), "@", 2)[0]
	tail := []byte(local)
	tail[len(tail)-5] ^= 1
	for _, bad := range []string{"", "unsubscribe+", "unsubscribe+!!", otherLocal, string(tail), local + "a", local[:len(local)-1]} {
		if got, err := tok.ParseMailto(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseMailto(%q) = %+v, %v; want ErrBadToken", bad, got, err)
		}
	}
}

// fakeEvents records CountCampaignEvent calls; it fails when err is set.
type fakeEvents struct {
	got []string
	err error
}

func (f *fakeEvents) CountCampaignEvent(campaign, _, kind string) (bool, error) {
	f.got = append(f.got, campaign+"/"+kind)
	return f.err == nil, f.err
}

// A successful POST counts an "unsubscribed" event for the token's campaign;
// a failing counter does not fail the unsubscribe; GET counts nothing.
func TestHandlerCountsEvents(t *testing.T) {
	for _, fail := range []bool{false, true} {
		store, err := suppression.Open(suppression.Config{Path: filepath.Join(t.TempDir(), "s.db"), Box: testBox(t)}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		tk, _ := NewTokens([]byte(strings.Repeat("k", KeySize)), "https://mail.example.com")
		ev := &fakeEvents{}
		if fail {
			ev.err = errors.New("disk full")
		}
		srv := httptest.NewServer(NewHandler(Config{Tokens: tk, Suppressor: store, Events: ev}, zerolog.Nop()))
		u := srv.URL + "/u/" + tk.Mint(Claim{Address: "ana@example.com", List: "news", Campaign: "q4"})
		if code, _, _ := do(t, mustReq(t, http.MethodGet, u, "")); code != http.StatusOK || len(ev.got) != 0 {
			t.Errorf("GET: %d, events %v", code, ev.got)
		}
		if code, _ := post(t, u, "application/x-www-form-urlencoded", "List-Unsubscribe=One-Click"); code != http.StatusOK {
			t.Errorf("POST (counter failing %v): %d", fail, code)
		}
		if len(ev.got) != 1 || ev.got[0] != "q4/unsubscribed" {
			t.Errorf("events %v, want [q4/unsubscribed]", ev.got)
		}
		if reason, ok, _ := store.Check("ana@example.com", "news"); !ok || reason != "unsubscribed" {
			t.Errorf("not suppressed: %q %v", reason, ok)
		}
		srv.Close()
		store.Close()
	}
}

func mustReq(t *testing.T, method, u, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}
