package confirm

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/pages/locale"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// The mailer is what suppression/optin sends confirmations through.
var _ optin.Mailer = (*Mailer)(nil)

// storeQueue puts confirmations into a real queue store, as cmd's adapter does.
type storeQueue struct {
	q     *queue.Store
	kicks int
}

func (s *storeQueue) Enqueue(m Message) error {
	_, err := s.q.Enqueue([]queue.NewMessage{{Campaign: m.Campaign, List: m.List, Key: m.Key, From: m.From, To: m.To, Body: m.Body}})
	return err
}

func (s *storeQueue) Kick() { s.kicks++ }

// links mints real unsubscribe URLs and, with a bounce domain, mailto URIs.
type links struct {
	*unsubscribe.Tokens
	bounceDomain string
}

func (l links) UnsubscribeURLIn(addr, list, campaign, lang string) string {
	return l.URL(unsubscribe.Claim{Address: addr, List: list, Campaign: campaign, Language: lang})
}

func (l links) UnsubscribeMailto(addr, list, campaign string) string {
	if l.bounceDomain == "" {
		return ""
	}
	return l.MailtoURI(addr, list, campaign, l.bounceDomain)
}

func newQueue(t *testing.T) *storeQueue {
	t.Helper()
	box, err := sealed.New(bytes.Repeat([]byte{5}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(queue.Config{Path: filepath.Join(t.TempDir(), "queue.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return &storeQueue{q: q}
}

func newMailer(t *testing.T, q Queue, bounceDomain string, validFor time.Duration) *Mailer {
	t.Helper()
	tk, err := unsubscribe.NewTokens(bytes.Repeat([]byte{3}, unsubscribe.KeySize), "https://mail.example.com")
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Queue: q, Links: links{tk, bounceDomain}, HTML: configs.ConfirmHTML, Text: configs.ConfirmText,
		Subject: configs.ConfirmSubject, SenderName: "Acme", FromDomain: "acme.example", Hostname: "mx.acme.example",
		PrivacyURL: "https://acme.example/privacy", ValidFor: validFor})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// queued returns the messages of campaign in the queue with their bodies.
func queued(t *testing.T, q *queue.Store, campaign string) (msgs []queue.Message, bodies [][]byte) {
	t.Helper()
	err := q.List(queue.Filter{Campaign: campaign}, func(m queue.Message) error {
		b, err := q.Body(m.ID)
		msgs, bodies = append(msgs, m), append(bodies, b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return msgs, bodies
}

// readMail returns the header and the text of every text part.
func readMail(t *testing.T, body []byte) (mail.Header, string) {
	t.Helper()
	r, err := mail.CreateReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		text.Write(b)
	}
	return r.Header, text.String()
}

// TestSendConfirmation: the confirmation lands in a real queue as campaign
// optin-LIST on queue list optin:LIST, from noreply@ the DKIM domain, with
// the confirm link, the privacy link, List-Id and List-Unsubscribe as every
// message has them; each sign-up gets its own message.
func TestSendConfirmation(t *testing.T) {
	q := newQueue(t)
	m := newMailer(t, q, "bounce.acme.example", 72*time.Hour)
	const link = "https://mail.example.com/c/TOKEN123"
	for i := 0; i < 2; i++ {
		if err := m.SendConfirmation(context.Background(), "Ana@Example.COM", "news", "Product news", link, ""); err != nil {
			t.Fatal(err)
		}
	}
	msgs, bodies := queued(t, q.q, "optin-news")
	if len(msgs) != 2 || q.kicks != 2 {
		t.Fatalf("queued %d confirmations, %d kicks; want 2, 2", len(msgs), q.kicks)
	}
	if msgs[0].Key == msgs[1].Key {
		t.Errorf("two sign-ups share the key %q", msgs[0].Key)
	}
	msg := msgs[0]
	if msg.List != "optin:news" || msg.From != "noreply@acme.example" || msg.To != "Ana@example.com" ||
		!strings.HasPrefix(msg.Key, "ana@example.com:") {
		t.Errorf("queued message: %+v", msg)
	}
	hd, text := readMail(t, bodies[0])
	for _, want := range []string{link, "https://acme.example/privacy", "https://mail.example.com/u/", "Product news", "3 days"} {
		if !strings.Contains(text, want) {
			t.Errorf("confirmation text lacks %q:\n%s", want, text)
		}
	}
	if subj, _ := hd.Subject(); subj != "Please confirm your subscription to Product news" {
		t.Errorf("subject %q", subj)
	}
	if from := hd.Get("From"); !strings.Contains(from, "Acme") || !strings.Contains(from, "<noreply@acme.example>") {
		t.Errorf("From %q", from)
	}
	if id := hd.Get("Message-Id"); !regexp.MustCompile(`^<optin\.[0-9a-f]{24}@mx\.acme\.example>$`).MatchString(id) {
		t.Errorf("Message-ID %q", id)
	}
	if lid := hd.Get("List-Id"); !strings.Contains(lid, "<news.mx.acme.example>") || !strings.Contains(lid, "Product news") {
		t.Errorf("List-Id %q", lid)
	}
	lu := hd.Get("List-Unsubscribe")
	if !regexp.MustCompile(`^<https://mail\.example\.com/u/[^>]+>, ?<mailto:unsubscribe\+[a-z0-9]+@bounce\.acme\.example\?subject=unsubscribe>$`).MatchString(lu) {
		t.Errorf("List-Unsubscribe %q", lu)
	}
	if hd.Get("List-Unsubscribe-Post") != "List-Unsubscribe=One-Click" {
		t.Errorf("List-Unsubscribe-Post %q", hd.Get("List-Unsubscribe-Post"))
	}
}

// TestSendConfirmationWithoutMailto: no inbound listener, no mailto URI;
// a link valid under two days is said in hours.
func TestSendConfirmationWithoutMailto(t *testing.T) {
	q := newQueue(t)
	m := newMailer(t, q, "", 36*time.Hour)
	if err := m.SendConfirmation(context.Background(), "bob@example.com", "events", "Events", "https://mail.example.com/c/X", "en"); err != nil {
		t.Fatal(err)
	}
	msgs, bodies := queued(t, q.q, "optin-events")
	if len(msgs) != 1 || msgs[0].List != "optin:events" {
		t.Fatalf("queued: %+v", msgs)
	}
	hd, text := readMail(t, bodies[0])
	if lu := hd.Get("List-Unsubscribe"); strings.Contains(lu, "mailto:") || !strings.HasPrefix(lu, "<https://") {
		t.Errorf("List-Unsubscribe %q", lu)
	}
	if !strings.Contains(text, "36 hours") {
		t.Errorf("validity not in hours:\n%s", text)
	}
}

// TestSendConfirmationRefuses: a bad address enqueues nothing; New refuses
// templates without the unsubscribe link and a missing queue.
func TestSendConfirmationRefuses(t *testing.T) {
	q := newQueue(t)
	m := newMailer(t, q, "", 72*time.Hour)
	if err := m.SendConfirmation(context.Background(), "not-an-address", "news", "News", "https://x/c/1", ""); err == nil {
		t.Error("a bad address was accepted")
	}
	if msgs, _ := queued(t, q.q, "optin-news"); len(msgs) != 0 || q.kicks != 0 {
		t.Errorf("queued %d after a refusal", len(msgs))
	}
	tk, _ := unsubscribe.NewTokens(bytes.Repeat([]byte{3}, unsubscribe.KeySize), "https://mail.example.com")
	if _, err := New(Config{Queue: q, Links: links{tk, ""}, HTML: []byte("<p>hi</p>"), Text: []byte("hi"), Subject: "s"}); err == nil {
		t.Error("templates without unsubscribe link accepted")
	}
	if _, err := New(Config{Links: links{tk, ""}, HTML: configs.ConfirmHTML, Text: configs.ConfirmText, Subject: configs.ConfirmSubject}); err == nil {
		t.Error("a missing queue accepted")
	}
}

// TestSendConfirmationInLanguage: the message is written in the language it
// is given (subject, sentences, validity in the language's plural, lang
// attribute), and its unsubscribe link carries the language.
func TestSendConfirmationInLanguage(t *testing.T) {
	q := newQueue(t)
	m := newMailer(t, q, "", 72*time.Hour)
	if err := m.SendConfirmation(context.Background(), "jan@example.pl", "news", "Nowości", "https://mail.example.com/c/P", "pl"); err != nil {
		t.Fatal(err)
	}
	_, bodies := queued(t, q.q, "optin-news")
	if len(bodies) != 1 {
		t.Fatalf("queued %d", len(bodies))
	}
	hd, text := readMail(t, bodies[0])
	pl := locale.For("pl")
	v := locale.Vars{"List": "Nowości", "Sender": "Acme", "Validity": pl.Validity(72 * time.Hour)}
	if subj, _ := hd.Subject(); subj != pl.T("MailSubject", v) {
		t.Errorf("subject %q", subj)
	}
	for _, want := range []string{pl.T("MailAsked", v), pl.T("ConfirmConsent", v), pl.T("MailNotYou", v), `lang="pl" dir="ltr"`, pl.N("Days", 3)} {
		if !strings.Contains(text, want) {
			t.Errorf("confirmation lacks %q:\n%s", want, text)
		}
	}
	tk, _ := unsubscribe.NewTokens(bytes.Repeat([]byte{3}, unsubscribe.KeySize), "https://mail.example.com")
	u := regexp.MustCompile(`https://mail\.example\.com/u/([A-Za-z0-9_-]+)`).FindStringSubmatch(text)
	if u == nil {
		t.Fatalf("no unsubscribe link:\n%s", text)
	}
	if c, err := tk.Parse(u[1]); err != nil || c.Language != "pl" || c.Campaign != "optin-news" {
		t.Errorf("unsubscribe claim %+v, %v", c, err)
	}
}
