package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"

	pwdkim "github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/mtatest"
)

const e2eCSV = `email,first_name,last_name,company,job_title,country
ana@acme.example,Ana,Silva,Acme,CTO,PT
bob@acme.example,Bob,Stone,Acme,CFO,GB
carol@initech.example,Carol,Reyes,Initech,COO,ES
not-an-address,Nobody,Nowhere,Void,None,FR
dave@globex.example,Dave,Kim,Globex,VP Sales,DE
zoe@umbrella.example,Zoë,Müller,Ünïcode GmbH,CEO,AT
`

// The sink receives exactly the allowed messages, each DKIM-signed with a
// signature that verifies, carrying the list and unsubscribe headers.
func TestCampaignEndToEnd(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mustRun(0, "suppress", "add", "bob@acme.example", "--reason", "manual")
	h.mustRun(0, "suppress", "add", "@initech.example")
	file := h.campaign("launch-1", e2eCSV)

	r := h.mustRun(0, "campaign", "send", "--skip-invalid", file)
	for _, want := range []string{"rows read      6", "invalid rows   1", "launch-1.csv:5", "suppressed     2 (manual 2)", "enqueued       3", "delivered 3"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout+r.stderr, "ana@acme.example") {
		t.Errorf("output shows a clear address:\n%s\n%s", r.stdout, r.stderr)
	}

	got := h.sink.ByRecipient()
	want := map[string]int{"ana@acme.example": 1, "dave@globex.example": 1, "zoe@umbrella.example": 1}
	if len(got) != len(want) {
		t.Fatalf("sink received %v, want %v", got, want)
	}
	for rcpt, n := range want {
		if got[rcpt] != n {
			t.Errorf("sink received %d for %s, want %d (all: %v)", got[rcpt], rcpt, n, got)
		}
	}
	for _, m := range h.sink.Messages() {
		if m.From != "ana@example.com" {
			t.Errorf("envelope sender %q", m.From)
		}
		vs := h.verifyDKIM(m.Data)
		if len(vs) == 0 {
			t.Fatalf("message to %v has no DKIM signature", m.To)
		}
		for _, v := range vs {
			if v.Err != nil {
				t.Errorf("DKIM for %v: %v", m.To, v.Err)
			}
			for _, hk := range []string{"from", "to", "subject", "date", "message-id", "list-id", "feedback-id", "list-unsubscribe", "list-unsubscribe-post", "mime-version", "content-type"} {
				if !containsFold(v.HeaderKeys, hk) {
					t.Errorf("DKIM h= lacks %s: %v", hk, v.HeaderKeys)
				}
			}
		}
		mr, err := mail.CreateReader(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		hd := mr.Header
		for _, k := range []string{"From", "To", "Subject", "Date", "Message-Id", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"} {
			if hd.Get(k) == "" {
				t.Errorf("message to %v lacks %s", m.To, k)
			}
		}
		if got := hd.Get("List-Unsubscribe-Post"); got != "List-Unsubscribe=One-Click" {
			t.Errorf("List-Unsubscribe-Post = %q", got)
		}
		// Gmail's feedback loop: campaign:list:sender, under the signature (h= above).
		if got, want := hd.Get("Feedback-ID"), "launch-1:product-news:example.com"; got != want {
			t.Errorf("Feedback-ID = %q, want %q", got, want)
		}
		if m.To[0] == "zoe@umbrella.example" {
			subj, _ := hd.Subject()
			if subj != "Zoë, a note about Ünïcode GmbH" {
				t.Errorf("decoded subject %q", subj)
			}
		}
		if !bytes.Contains(m.Data, []byte("https://example.com/privacy")) {
			t.Errorf("message to %v lacks the privacy link", m.To)
		}
	}

	// Re-running the same campaign id mails nobody twice.
	r = h.mustRun(0, "campaign", "send", "--skip-invalid", file)
	if !strings.Contains(r.stdout, "enqueued       0") || !strings.Contains(r.stdout, "already sent   3") {
		t.Errorf("re-run summary:\n%s", r.stdout)
	}
	if n := h.sink.Count(); n != 3 {
		t.Errorf("sink has %d messages after the re-run, want 3", n)
	}
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

var unsubURL = regexp.MustCompile(`<(http://[^>]+/u/[A-Za-z0-9_-]+)>`)

// One-click unsubscribe through the running daemon: a GET changes nothing,
// the RFC 8058 POST suppresses, a forged token is 404, and the next campaign
// on the list skips the address.
func TestOneClickUnsubscribeThroughDaemon(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.serve()
	file := h.campaign("news-1", "email,first_name,company\nana@acme.example,Ana,Acme\ndave@globex.example,Dave,Globex\n")
	r := h.mustRun(0, "campaign", "send", file)
	if !strings.Contains(r.stdout, "handed to the running daemon") {
		t.Errorf("send did not go through the daemon:\n%s", r.stdout)
	}
	waitFor(t, "two deliveries", func() bool { return h.sink.Count() == 2 })
	h.waitDelivered("news-1", 2)

	// Queue admin verbs work through the socket while serve holds the store.
	ls := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", "news-1").stdout)
	if len(ls) != 2 {
		t.Fatalf("queue ls: %d entries", len(ls))
	}
	for _, v := range ls {
		if v.ID == "" || strings.HasPrefix(v.Rcpt, "ana@") {
			t.Errorf("queue ls entry %+v: want an id and a masked address", v)
		}
	}
	show := h.mustRun(0, "queue", "show", ls[0].ID)
	if !strings.Contains(show.stdout, "delivered") {
		t.Errorf("queue show:\n%s", show.stdout)
	}
	// queue show names the server each attempt reached ("host[ip]:port"),
	// its full reply and the id it queued the message under.
	sv := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "show", ls[0].ID).stdout)
	qids := map[string]bool{}
	for _, m := range h.sink.Messages() {
		qids[m.QueueID] = true
	}
	var delivered *attemptView
	for i, a := range sv[0].History {
		if a.Outcome == "delivered" {
			delivered = &sv[0].History[i]
		}
	}
	switch {
	case delivered == nil:
		t.Errorf("queue show --json: no delivered attempt: %+v", sv[0].History)
	case !strings.Contains(delivered.Remote, "[127.0.0.1]:"+strconv.Itoa(h.sink.Port())):
		t.Errorf("delivered attempt's remote %q: want host[127.0.0.1]:%d", delivered.Remote, h.sink.Port())
	case !qids[delivered.RemoteQueueID] || !strings.Contains(delivered.Reply, "queued as "+delivered.RemoteQueueID):
		t.Errorf("delivered attempt: remote queue id %q, reply %q; the sink gave %v", delivered.RemoteQueueID, delivered.Reply, qids)
	case sv[0].EnvelopeFrom != sv[0].From:
		t.Errorf("without bounce_domain the envelope sender is From: %q vs %q", sv[0].EnvelopeFrom, sv[0].From)
	case !strings.Contains(show.stdout, "remote queue id "+delivered.RemoteQueueID) || !strings.Contains(show.stdout, delivered.Remote):
		t.Errorf("queue show text lacks the remote or its queue id:\n%s", show.stdout)
	}
	h.mustRun(1, "queue", "show", "nonexistent")

	link := h.unsubscribeLink("ana@acme.example", "")
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	// A mail scanner's GET changes nothing.
	resp, err := noRedirect.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "<form") {
		t.Fatalf("GET %s: %d\n%s", link, resp.StatusCode, page)
	}
	h.mustRun(1, "suppress", "check", "ana@acme.example", "--list", "product-news")

	// A forged token reveals nothing.
	forged := link[:len(link)-3] + flip(link[len(link)-3:])
	resp, err = noRedirect.PostForm(forged, url.Values{"List-Unsubscribe": {"One-Click"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || strings.Contains(string(body), "ana") {
		t.Errorf("forged token: %d\n%s", resp.StatusCode, body)
	}
	h.mustRun(1, "suppress", "check", "ana@acme.example", "--list", "product-news")

	// RFC 8058 one-click POST.
	resp, err = noRedirect.PostForm(link, url.Values{"List-Unsubscribe": {"One-Click"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("one-click POST: %d", resp.StatusCode)
	}
	chk := h.mustRun(0, "suppress", "check", "ana@acme.example", "--list", "product-news")
	if !strings.Contains(chk.stdout, "unsubscribed") {
		t.Errorf("suppress check: %s", chk.stdout)
	}
	// The unsubscribe is in the audit log as the recipient's own action,
	// naming them by index only.
	al := h.mustRun(0, "--json", "audit", "ls").stdout
	if !strings.Contains(al, `"who":"http:127.0.0.1"`) || !strings.Contains(al, `"action":"suppress.add"`) || strings.Contains(al, "ana@") {
		t.Errorf("audit log after a one-click unsubscribe:\n%s", al)
	}

	// The next campaign on the list skips her.
	file2 := h.campaign("news-2", "email,first_name,company\nana@acme.example,Ana,Acme\ndave@globex.example,Dave,Globex\n")
	r = h.mustRun(0, "campaign", "send", file2)
	if !strings.Contains(r.stdout, "unsubscribed 1") || !strings.Contains(r.stdout, "enqueued       1") {
		t.Errorf("second campaign summary:\n%s", r.stdout)
	}
	waitFor(t, "the second campaign's delivery", func() bool { return h.sink.Count() == 3 })
	if n := h.sink.ByRecipient()["ana@acme.example"]; n != 1 {
		t.Errorf("ana received %d messages, want 1", n)
	}
}

func flip(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
	}
	return string(b)
}

// A 4xx is retried and then delivered; a 550 5.1.1 bounces and suppresses.
// Queue verbs run directly on the store when no daemon runs.
func TestRetryAndHardBounce(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: func(rcpt string, n int) error {
		switch {
		case rcpt == "temp@acme.example" && n == 1:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
		case rcpt == "gone@acme.example":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}})
	file := h.campaign("retry-1", "email,first_name,company\ntemp@acme.example,Tem,Acme\ngone@acme.example,Gon,Acme\nok@acme.example,Oka,Acme\n")
	r := h.mustRun(0, "campaign", "send", file)
	for _, want := range []string{"bounced 1", "deferred 1", "delivered 1"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stdout)
		}
	}
	chk := h.mustRun(0, "suppress", "check", "gone@acme.example")
	if !strings.Contains(chk.stdout, "hard_bounce") {
		t.Errorf("gone@ not suppressed as hard_bounce: %s", chk.stdout)
	}
	deferred := jsonLines[msgView](t, h.mustRun(0, "--json", "--reveal", "queue", "ls", "--all", "--state", "deferred").stdout)
	if len(deferred) != 1 || deferred[0].Rcpt != "temp@acme.example" || !strings.Contains(deferred[0].LastReply, "451") {
		t.Fatalf("deferred: %+v", deferred)
	}
	h.mustRun(0, "queue", "retry", "ALL")
	h.mustRun(0, "campaign", "send", file)
	if n := h.sink.ByRecipient()["temp@acme.example"]; n != 1 {
		t.Errorf("temp@ delivered %d times after retry, want 1", n)
	}
	st := jsonLines[statsView](t, h.mustRun(0, "--json", "queue", "stats").stdout)
	if len(st) != 1 || st[0].ByState["delivered"] != 2 || st[0].ByState["bounced"] != 1 {
		t.Errorf("queue stats: %+v", st)
	}
}

// dkim[].rsa_signer reaches the key that signs: the log names the engine, and
// the message verifies whichever engine signed it.
func TestRSASignerFromConfig(t *testing.T) {
	want := map[string]string{"go": pwdkim.EngineGo, "openssl": pwdkim.EngineOpenSSL, "auto": pwdkim.EngineGo}
	osErr := pwdkim.OpenSSLError()
	if osErr == nil {
		want["auto"] = pwdkim.EngineOpenSSL
	} else if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and OpenSSL is unavailable: %v", osErr)
	} else {
		delete(want, "openssl")
	}
	for signer, engine := range want {
		t.Run(signer, func(t *testing.T) {
			h := newHarness(t, mtatest.Options{})
			cfg, err := os.ReadFile(h.cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			h.write("postwarden.yaml", strings.Replace(string(cfg), "{domain: example.com, selector: pw1}",
				"{domain: example.com, selector: pw1, rsa_signer: "+signer+"}", 1))
			r := h.mustRun(0, "--log-level", "info", "campaign", "send", h.campaign("signer-1", "email,first_name,company\nana@acme.example,Ana,Acme\n"))
			if line := fmt.Sprintf(`"signer":%q`, engine); !strings.Contains(r.stderr, `"message":"dkim key"`) || !strings.Contains(r.stderr, line) {
				t.Fatalf("rsa_signer %s: log lacks the dkim key line with %s:\n%s", signer, line, r.stderr)
			}
			msgs := h.sink.Messages()
			if len(msgs) != 1 {
				t.Fatalf("sink has %d messages, want 1", len(msgs))
			}
			for _, v := range h.verifyDKIM(msgs[0].Data) {
				if v.Err != nil {
					t.Fatalf("rsa_signer %s: signature does not verify: %v", signer, v.Err)
				}
			}
		})
	}
}
