package main

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// withLists declares the list "news" (double opt-in) in the harness config.
func (h *harness) withLists() {
	h.t.Helper()
	f, err := os.OpenFile(h.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("lists:\n  news: {name: \"Product news\", double_opt_in: true}\n"); err != nil {
		h.t.Fatal(err)
	}
}

// consentCampaign writes a legal_basis consent campaign on list news.
func (h *harness) consentCampaign(id, csv string) string {
	h.t.Helper()
	h.write(id+".csv", csv)
	return h.write(id+".yaml", `id: `+id+`
list: news
from: "Ana Ruiz <ana@example.com>"
subject: "{{.FirstName}}, product news"
template: templates/note
recipients: `+id+`.csv
legal_basis: consent
audience: b2b
`)
}

// messageText returns the decoded text of every part of a message.
func messageText(t *testing.T, data []byte) (mail.Header, string) {
	t.Helper()
	mr, err := mail.CreateReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(p.Body)
		b.Write(body)
		b.WriteString("\n")
	}
	return mr.Header, b.String()
}

var confirmURL = regexp.MustCompile(`http://[^\s"<>]+/c/[A-Za-z0-9_-]+`)

// confirmLink waits for the n-th message to rcpt at the sink, checks it is a
// DKIM-signed confirmation carrying the privacy and unsubscribe links, and
// returns its confirmation link.
func (h *harness) confirmLink(rcpt string, n int) string {
	h.t.Helper()
	waitFor(h.t, "the confirmation message to "+rcpt, func() bool { return h.sink.ByRecipient()[rcpt] >= n })
	var msgs []mtatest.Received
	for _, m := range h.sink.Messages() {
		if m.To[0] == rcpt {
			msgs = append(msgs, m)
		}
	}
	m := msgs[n-1]
	vs := h.verifyDKIM(m.Data)
	if len(vs) == 0 || vs[0].Err != nil {
		h.t.Fatalf("confirmation to %s: DKIM %v", rcpt, vs)
	}
	hd, text := messageText(h.t, m.Data)
	if subj, _ := hd.Subject(); !strings.Contains(subj, "Product news") {
		h.t.Errorf("confirmation subject %q", subj)
	}
	if !strings.Contains(text, "https://example.com/privacy") || !strings.Contains(text, "/u/") || hd.Get("List-Unsubscribe") == "" {
		h.t.Errorf("confirmation lacks privacy or unsubscribe link:\n%s", text)
	}
	link := confirmURL.FindString(text)
	if link == "" {
		h.t.Fatalf("no confirmation link in:\n%s", text)
	}
	return link
}

func (h *harness) subscriberState(addr, list string) string {
	h.t.Helper()
	r := h.run("--json", "--reveal", "subscribers", "ls", "--list", list)
	for _, v := range jsonLines[subscriberView](h.t, r.stdout) {
		if v.Address == addr {
			return v.State
		}
	}
	return "none"
}

func postForm(t *testing.T, u string, v url.Values) (int, string) {
	t.Helper()
	resp, err := noRedirect.PostForm(u, v)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := noRedirect.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// Double opt-in over real HTTP, the real queue, DKIM and a loopback SMTP
// sink; then consent campaigns, imports against the suppression store, and
// the form's rate limit.
func TestDoubleOptInEndToEnd(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.withLists()
	h.serve()
	base := "http://" + h.httpAddr

	code, page := postForm(t, base+"/subscribe", url.Values{"list": {"news"}, "email": {"ana@acme.example"}, "name": {"Ana"},
		"company": {"Acme"}, "consent_text": {"newsletter-consent-v2"}})
	if code != 200 || !strings.Contains(page, "Check your inbox") {
		t.Fatalf("subscribe: %d\n%s", code, page)
	}
	if code, _ := postForm(t, base+"/subscribe", url.Values{"list": {"news"}, "email": {"bob@acme.example"}}); code != 200 {
		t.Fatalf("subscribe bob: %d", code)
	}
	if code, _ := postForm(t, base+"/subscribe", url.Values{"list": {"nope"}, "email": {"bob@acme.example"}}); code != 400 {
		t.Errorf("unknown list: %d", code)
	}
	link := h.confirmLink("ana@acme.example", 1)
	h.confirmLink("bob@acme.example", 1)

	// A scanner's GET changes nothing.
	for i := 0; i < 2; i++ {
		code, page = get(t, link)
		if code != 200 || !strings.Contains(page, "Confirm subscription") {
			t.Fatalf("GET confirm: %d\n%s", code, page)
		}
	}
	if st := h.subscriberState("ana@acme.example", "news"); st != "pending" {
		t.Fatalf("after GET: %s", st)
	}
	if code, _ := postForm(t, link[:len(link)-2]+"xx", nil); code != 404 {
		t.Errorf("forged confirm: %d", code)
	}
	code, page = postForm(t, link, url.Values{"confirm": {"yes"}})
	if code != 200 || !strings.Contains(page, "Subscription confirmed") {
		t.Fatalf("POST confirm: %d\n%s", code, page)
	}
	if st := h.subscriberState("ana@acme.example", "news"); st != "confirmed" {
		t.Fatalf("after POST: %s", st)
	}
	ls := h.mustRun(0, "subscribers", "ls")
	if strings.Contains(ls.stdout, "ana@acme.example") || !strings.Contains(ls.stdout, "a***@acme.example") {
		t.Errorf("subscribers ls not masked:\n%s", ls.stdout)
	}

	// A consent campaign reaches ana, not the unconfirmed bob nor dave.
	file := h.consentCampaign("news-c1", "email,first_name,company\nana@acme.example,Ana,Acme\nbob@acme.example,Bob,Acme\ndave@globex.example,Dave,Globex\n")
	r := h.mustRun(0, "campaign", "send", file)
	if !strings.Contains(r.stdout, "enqueued       1") || !strings.Contains(r.stdout, "no_consent 2") {
		t.Errorf("consent campaign summary:\n%s", r.stdout)
	}
	if st := h.mustRun(0, "campaign", "status", "news-c1").stdout; !strings.Contains(st, "skipped at enqueue    2 (no_consent 2)") {
		t.Errorf("campaign status lacks the skip reasons:\n%s", st)
	}
	waitFor(t, "the consent campaign's delivery", func() bool { return h.sink.ByRecipient()["ana@acme.example"] == 2 })
	if n := h.sink.ByRecipient()["bob@acme.example"]; n != 1 {
		t.Errorf("bob got %d messages, want only the confirmation", n)
	}
	if n := h.sink.ByRecipient()["dave@globex.example"]; n != 0 {
		t.Errorf("dave got %d messages", n)
	}

	// Ana leaves through her campaign message's one-click link.
	unsub := h.unsubscribeLink("ana@acme.example", "product news")
	if code, _ := postForm(t, unsub, url.Values{"List-Unsubscribe": {"One-Click"}}); code != 200 {
		t.Fatalf("one-click: %d", code)
	}
	if st := h.subscriberState("ana@acme.example", "news"); st != "unsubscribed" {
		t.Errorf("consent history after one-click: %s", st)
	}

	// An import never brings back who unsubscribed, bounced, complained or was erased.
	h.mustRun(0, "suppress", "add", "erin@acme.example", "--reason", "erased")
	h.mustRun(0, "suppress", "add", "frank@acme.example", "--reason", "hard_bounce")
	h.mustRun(0, "suppress", "add", "@umbrella.example", "--reason", "complaint")
	csvPath := h.write("contacts.csv", "email,name,company,consented_at,ip,source\n"+
		"ana@acme.example,Ana,Acme,2025-01-02,192.0.2.1,fair\n"+
		"erin@acme.example,Erin,Acme,2025-01-02T10:00:00Z,192.0.2.2,fair\n"+
		"frank@acme.example,Frank,Acme,,,\n"+
		"zed@umbrella.example,Zed,Umbrella,2025-01-02,,\n"+
		"gina@globex.example,Gina,Globex,2025-03-04,198.51.100.7,webinar\n"+
		"hank@globex.example,Hank,Globex,,,\n"+
		"not-an-address,X,Y,,,\n"+
		"ivy@globex.example,Ivy,Globex,yesterday,,\n")
	r = h.mustRun(2, "subscribers", "import", csvPath, "--list", "news", "--source", "crm-2025")
	if al := h.mustRun(0, "--json", "audit", "ls").stdout; !strings.Contains(al, `"action":"subscribers.import"`) {
		t.Errorf("the import is not audited:\n%s", al)
	}
	for _, want := range []string{"imported with consent         1", "legitimate-interest candidates 1", "suppressed                    4",
		"invalid rows                  2"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("import summary lacks %q:\n%s", want, r.stdout)
		}
	}
	for _, want := range []string{"contacts.csv:8:", "contacts.csv:9:"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("import errors lack %q:\n%s", want, r.stderr)
		}
	}
	for addr, want := range map[string]string{"ana@acme.example": "unsubscribed", "erin@acme.example": "none", "frank@acme.example": "none",
		"zed@umbrella.example": "none", "gina@globex.example": "confirmed", "hank@globex.example": "legitimate_interest"} {
		if st := h.subscriberState(addr, "news"); st != want {
			t.Errorf("%s after import: %s, want %s", addr, st, want)
		}
	}

	// The form cannot mail-bomb anyone: the 4th sign-up of one address within the hour is refused.
	for i := 1; i <= 4; i++ {
		code, page := postForm(t, base+"/subscribe", url.Values{"list": {"news"}, "email": {"victim@initech.example"}})
		if i < 4 && code != 200 {
			t.Fatalf("sign-up %d: %d", i, code)
		}
		if i == 4 && (code != http.StatusTooManyRequests || !strings.Contains(page, "Too many requests")) {
			t.Errorf("4th sign-up: %d\n%s", code, page)
		}
	}
	// ...and while the first link is valid, no second confirmation goes out.
	waitFor(t, "the confirmation to the victim", func() bool { return h.sink.ByRecipient()["victim@initech.example"] >= 1 })
	// Confirmations are enqueued before the page answers: count the queue.
	n := 0
	for _, v := range jsonLines[msgView](t, h.mustRun(0, "--json", "--reveal", "queue", "ls", "--all", "--campaign", "optin-news").stdout) {
		if v.Rcpt == "victim@initech.example" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d confirmations queued for the victim, want 1", n)
	}
}
