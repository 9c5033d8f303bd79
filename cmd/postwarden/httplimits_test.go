package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
)

// signUp posts the sign-up form for list news, with X-Forwarded-For when xff
// is set.
func (h *harness) signUp(email, name, company, xff string) (int, string) {
	h.t.Helper()
	v := url.Values{"list": {"news"}, "email": {email}, "name": {name}, "company": {company}}
	req, err := http.NewRequest(http.MethodPost, "http://"+h.httpAddr+"/subscribe", strings.NewReader(v.Encode()))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
		h.t.Errorf("429 without Retry-After")
	}
	return resp.StatusCode, string(b)
}

// confirmationsTo counts the messages at the sink whose recipient's local
// part starts with local at domain (every +tag of one mailbox).
func (h *harness) confirmationsTo(local, domain string) int {
	n := 0
	for rcpt, c := range h.sink.ByRecipient() {
		if strings.HasPrefix(rcpt, local) && strings.HasSuffix(rcpt, "@"+domain) {
			n += c
		}
	}
	return n
}

// The plus-tag mail bomb: victim+1@, victim+2@, … from ten clients in ten
// /24s behind a trusted proxy. The victim's inbox gets no more than
// subscribe_limits.confirmations_per_mailbox's burst (3) of confirmations,
// counted at a real SMTP sink; another mailbox still signs up.
func TestPlusTagFloodIsLimitedPerMailbox(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.withLists()
	h.appendConfig("http_trusted_proxies: [127.0.0.1/32]\n")
	h.serve()
	const burst = 3 // README: subscribe_limits.confirmations_per_mailbox burst
	accepted, limited := 0, 0
	for ip := 0; ip < 10; ip++ {
		for i := 0; i < 10; i++ {
			// A spoofed left entry is not the client: the proxy's right one is.
			xff := fmt.Sprintf("203.0.113.99, 198.51.%d.7", ip)
			code, body := h.signUp(fmt.Sprintf("Victim+%d@acme.example", ip*10+i), "", "", xff)
			switch code {
			case http.StatusOK:
				accepted++
			case http.StatusTooManyRequests:
				limited++
			default:
				t.Fatalf("sign-up = %d: %s", code, body)
			}
		}
	}
	if accepted == 0 || accepted > burst || limited != 100-accepted {
		t.Errorf("100 plus-tag sign-ups: %d accepted, %d limited; want at most %d accepted", accepted, limited, burst)
	}
	// Wait until every queued confirmation is delivered; the queue holds
	// exactly the accepted ones, and the sink has them.
	var ls []msgView
	waitFor(t, "the accepted confirmations delivered", func() bool {
		ls = jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", "optin-news").stdout)
		for _, m := range ls {
			if m.State != queue.StateDelivered {
				return false
			}
		}
		return len(ls) >= accepted
	})
	if len(ls) != accepted {
		t.Errorf("%d confirmations queued, %d sign-ups accepted", len(ls), accepted)
	}
	if n := h.confirmationsTo("Victim+", "acme.example"); n != len(ls) || n > burst {
		t.Errorf("the victim's inbox got %d confirmations (%d delivered), limit %d", n, len(ls), burst)
	}
	// The limit is the mailbox's: someone else, from another network, is mailed.
	if code, body := h.signUp("other@globex.example", "", "", "192.0.2.44"); code != http.StatusOK {
		t.Fatalf("another mailbox = %d: %s", code, body)
	}
	h.confirmLink("other@globex.example", 1)
	// The audit names the client the proxy reported, not the proxy.
	al := h.mustRun(0, "--json", "audit", "ls").stdout
	if !strings.Contains(al, `"who":"http:198.51.0.7"`) || !strings.Contains(al, `"who":"http:192.0.2.44"`) || strings.Contains(al, "203.0.113.99") {
		t.Errorf("audit does not name the forwarded clients:\n%s", al)
	}
}

// A peer that is not a trusted proxy cannot pick its own address with
// X-Forwarded-For: its requests count against its own address, and the
// audit names it.
func TestForwardedForIgnoredFromUntrustedPeer(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.withLists()
	h.appendConfig("http_trusted_proxies: [192.0.2.0/24]\n") // not the loopback peer of this test
	h.serve()
	const burst = 10 // README: subscribe_limits.requests_per_ip burst
	limited := 0
	for i := 0; i < burst+5; i++ {
		code, body := h.signUp(fmt.Sprintf("person%d@acme.example", i), "", "", fmt.Sprintf("198.51.%d.7", i))
		switch code {
		case http.StatusOK:
		case http.StatusTooManyRequests:
			limited++
		default:
			t.Fatalf("sign-up %d = %d: %s", i, code, body)
		}
	}
	if limited != 5 {
		t.Errorf("%d of %d sign-ups limited, want 5: X-Forwarded-For from an untrusted peer changed the client", limited, burst+5)
	}
	al := h.mustRun(0, "--json", "audit", "ls").stdout
	if strings.Contains(al, "198.51.") || !strings.Contains(al, `"who":"http:127.0.0.1"`) {
		t.Errorf("audit names a forwarded address from an untrusted peer:\n%s", al)
	}
}

// A control character in name or company is a 400 naming the field, and
// nothing is audited, recorded or mailed.
func TestSignupControlCharacterIsRefusedNamingTheField(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.withLists()
	h.serve()
	for _, tc := range []struct{ email, name, company, field string }{
		{"ana@acme.example", "Ana\x01Ruiz", "Acme", "name"},
		{"bo@acme.example", "Bo", "Acme\x1b[31m", "company"},
		{"cy@acme.example", "Cy\x7f", "", "name"},
	} {
		code, body := h.signUp(tc.email, tc.name, tc.company, "")
		if code != http.StatusBadRequest || !strings.Contains(body, tc.field+": contains a control character") {
			t.Errorf("%s with a control character in %s = %d:\n%s", tc.email, tc.field, code, body)
		}
	}
	if al := h.mustRun(0, "--json", "audit", "ls").stdout; strings.Contains(al, "subscribers.subscribe") {
		t.Errorf("refused sign-ups were audited:\n%s", al)
	}
	if ls := h.mustRun(0, "--json", "subscribers", "ls").stdout; strings.TrimSpace(ls) != "" {
		t.Errorf("refused sign-ups were recorded:\n%s", ls)
	}
	if ls := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all").stdout); len(ls) != 0 {
		t.Errorf("refused sign-ups queued %d messages", len(ls))
	}
	// The same person without the control character signs up.
	if code, body := h.signUp("ana@acme.example", "Ana Ruiz", "Acme", ""); code != http.StatusOK {
		t.Fatalf("clean sign-up = %d: %s", code, body)
	}
	h.confirmLink("ana@acme.example", 1)
	if n := len(h.sink.Messages()); n != 1 {
		t.Errorf("%d messages at the sink, want the one confirmation", n)
	}
}
