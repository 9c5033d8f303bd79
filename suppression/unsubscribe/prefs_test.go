package unsubscribe

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
)

// fakeLists is the consent store's view of one person.
type fakeLists struct {
	mu    sync.Mutex
	lists []ListStatus
	unsub []string
}

func (f *fakeLists) ListsFor(addr string) ([]ListStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ListStatus(nil), f.lists...), nil
}

func (f *fakeLists) Unsubscribed(addr, list, source string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unsub = append(f.unsub, list+"/"+source)
	return nil
}

func TestPreferencePage(t *testing.T) {
	dir := t.TempDir()
	store, err := suppression.Open(suppression.Config{Path: filepath.Join(dir, "s.db"), Box: testBox(t)}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	key, _ := LoadOrCreateKey(filepath.Join(dir, "k"))
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tk, _ := NewTokens(key, srv.URL)
	fl := &fakeLists{lists: []ListStatus{{"news", "Product news", true}, {"events", "Events", true}, {"old", "Old list", false}}}
	mux.Handle("/", NewHandler(Config{Tokens: tk, Suppressor: store, Lists: fl, History: fl, SenderName: "Acme", PrivacyURL: "https://example.com/p"}, zerolog.Nop()))
	u := tk.UnsubscribeURL("ana@example.com", "news", "c1")

	req, _ := http.NewRequest(http.MethodGet, u, nil)
	_, _, body := do(t, req)
	if !strings.Contains(body, "/prefs") {
		t.Errorf("confirm page does not link the preferences:\n%s", body)
	}
	for i := 0; i < 2; i++ {
		req, _ = http.NewRequest(http.MethodGet, u+"/prefs", nil)
		code, _, body := do(t, req)
		if code != 200 {
			t.Fatalf("GET prefs = %d", code)
		}
		for _, want := range []string{"Your subscriptions", "Unsubscribe from Product news", `name="list" value="events"`, "Old list: not subscribed",
			`name="scope" value="all"`, "a***@example.com", `href="https://example.com/p"`} {
			if !strings.Contains(body, want) {
				t.Errorf("prefs page lacks %q:\n%s", want, body)
			}
		}
	}
	if n, _ := store.Count(); n != 0 {
		t.Fatalf("GET prefs changed the store: %d", n)
	}

	if code, _ := post(t, u+"/prefs", "application/x-www-form-urlencoded", "list=old2"); code != http.StatusBadRequest {
		t.Errorf("unknown list = %d", code)
	}
	code, body := post(t, u+"/prefs", "application/x-www-form-urlencoded", "list=events")
	if code != 200 || !strings.Contains(body, "You are unsubscribed from Events.") || !strings.Contains(body, "Events: not subscribed") ||
		!strings.Contains(body, "Unsubscribe from Product news") {
		t.Errorf("POST list=events = %d\n%s", code, body)
	}
	if en, ok := check(t, store, "ana@example.com", "events"); !ok || en.List != "events" || en.Source != "preferences" {
		t.Errorf("events entry %+v %v", en, ok)
	}
	if _, ok := check(t, store, "ana@example.com", "news"); ok {
		t.Error("news suppressed too")
	}
	// A fresh GET knows events is left, from the suppression store.
	req, _ = http.NewRequest(http.MethodGet, u+"/prefs", nil)
	if _, _, body := do(t, req); !strings.Contains(body, "Events: not subscribed") {
		t.Errorf("prefs after leaving events:\n%s", body)
	}
	code, body = post(t, u+"/prefs", "application/x-www-form-urlencoded", "scope=all")
	if code != 200 || !strings.Contains(body, "all mail from Acme") {
		t.Errorf("POST scope=all = %d\n%s", code, body)
	}
	if en, ok := check(t, store, "ana@example.com", "anything"); !ok || en.List != "" {
		t.Errorf("global entry %+v %v", en, ok)
	}
	if strings.Join(fl.unsub, ",") != "events/preferences,/preferences" {
		t.Errorf("consent history told %v", fl.unsub)
	}
}
