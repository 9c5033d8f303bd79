package campaign

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/postwarden/postwarden/configs"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/templates"
)

const (
	testHTML = `<html><body><p>Hello {{.FirstName}} of {{.Company}} ({{.JobTitle}}), plan {{.Fields.plan}}, colour {{.Fields.favourite_colour}}.</p>
{{if ne .Country "FR"}}<p><a href="{{.UnsubscribeURL}}">Unsubscribe</a></p>{{end}}
<p><a href="{{.PrivacyURL}}">Privacy</a></p></body></html>
`
	testText = `Hello {{.FirstName}} of {{.Company}} ({{.JobTitle}}), plan {{.Fields.plan}}, colour {{.Fields.favourite_colour}}.
{{if ne .Country "FR"}}Unsubscribe: {{.UnsubscribeURL}}{{end}}
Privacy: {{.PrivacyURL}}
`
	testKey = "0123456789abcdef0123456789abcdef"
)

// loadTemplates writes an HTML and a text body into a temp dir and loads them.
func loadTemplates(t testing.TB, html, text string) *templates.Set {
	t.Helper()
	base := filepath.Join(t.TempDir(), "news")
	for name, src := range map[string]string{base + ".html": html, base + ".txt": text} {
		if err := os.WriteFile(name, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	set, err := templates.Load(base, "News for {{.Company}}")
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// testSpec writes the templates and the CSV into a temp dir and returns a spec for them.
func testSpec(t testing.TB, csv string) Spec {
	t.Helper()
	path := filepath.Join(t.TempDir(), "example.csv")
	if err := os.WriteFile(path, []byte(csv), 0o600); err != nil {
		t.Fatal(err)
	}
	return Spec{
		ID: "example-2026-q4", List: "product-news", ListName: "Product news",
		From: "Ana Ruiz <news@example.com>", ReplyTo: "Support <support@example.com>",
		Subject: "News for {{.Company}}", Templates: loadTemplates(t, testHTML, testText), Recipients: path,
		PrivacyURL: "https://example.com/privacy", Hostname: "mail.example.com",
		LegalBasis: "legitimate_interest", LIA: "lia-2026.md", Audience: "b2b", LIAHash: "beef",
		FreeMail: map[string]bool{"gmail.com": true}, FileHash: "f00d", MessageIDKey: []byte(testKey),
		CountryCode: configs.CountryCode,
	}
}

// fakeQueue is an in-memory queue that, like the real one, ignores a (Campaign, Key) it already holds.
type fakeQueue struct {
	mu    sync.Mutex
	msgs  map[string]Message
	calls int
	err   error
	after func(call int) // runs after each successful Enqueue
	mem   map[*byte]bool // the distinct memory Body slices arrived in
}

func newFakeQueue() *fakeQueue { return &fakeQueue{msgs: map[string]Message{}, mem: map[*byte]bool{}} }

func (q *fakeQueue) Enqueue(msgs []Message) (int, int, error) {
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return 0, 0, q.err
	}
	added, dups := 0, 0
	for _, m := range msgs {
		k := m.Campaign + "\x00" + m.Key
		if _, ok := q.msgs[k]; ok {
			dups++
			continue
		}
		q.mem[unsafe.SliceData(m.Body)] = true
		m.Body = bytes.Clone(m.Body) // a Queue keeps no Body: the engine reuses its memory
		q.msgs[k] = m
		added++
	}
	q.calls++
	call := q.calls
	q.mu.Unlock()
	if q.after != nil {
		q.after(call)
	}
	return added, dups, nil
}

func (q *fakeQueue) get(t *testing.T, campaign, key string) Message {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	m, ok := q.msgs[campaign+"\x00"+key]
	if !ok {
		t.Fatalf("queue holds no message for %s", key)
	}
	return m
}

func (q *fakeQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.msgs)
}

// fakeSuppressions is the gate: it suppresses the lower-cased addresses it
// holds, on every list, and under the consent basis stops those it holds no
// consent for (SkipNoConsent).
type fakeSuppressions struct {
	reasons map[string]string
	consent map[string]bool // confirmed consent, on every list
	checked atomic.Int64
	err     error

	mu    sync.Mutex
	lists map[string]bool // lists asked about
	bases map[string]bool // legal bases asked about
}

func (s *fakeSuppressions) CheckCampaign(addr, list, basis string) (string, bool, error) {
	s.checked.Add(1)
	s.mu.Lock()
	if s.lists == nil {
		s.lists, s.bases = map[string]bool{}, map[string]bool{}
	}
	s.lists[list], s.bases[basis] = true, true
	s.mu.Unlock()
	if s.err != nil {
		return "", false, s.err
	}
	if r, ok := s.reasons[strings.ToLower(addr)]; ok {
		return r, true, nil
	}
	if basis == Consent && !s.consent[strings.ToLower(addr)] {
		return SkipNoConsent, true, nil
	}
	return "", false, nil
}

// fakeLinks mints an opaque URL per (address, list, campaign).
type fakeLinks struct{}

func (fakeLinks) UnsubscribeURL(addr, list, campaign string) string {
	h := sha256.Sum256([]byte(addr + "\x00" + list + "\x00" + campaign))
	return "https://unsub.example.com/u/" + hex.EncodeToString(h[:8])
}

// fakeRecords keeps every record put.
type fakeRecords struct {
	mu   sync.Mutex
	recs [][]byte
}

func (r *fakeRecords) PutCampaign(id string, rec []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, append([]byte(nil), rec...))
	return nil
}

func testDeps(q *fakeQueue, sup *fakeSuppressions) Deps {
	now := time.Date(2026, 10, 1, 9, 0, 0, 0, time.UTC)
	return Deps{Suppressions: sup, Queue: q, Links: fakeLinks{}, Now: func() time.Time { return now }}
}

// parsed is a rendered message's header and decoded text part.
type parsed struct {
	header mail.Header
	text   string
}

func parseMessage(t *testing.T, body []byte) parsed {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("read rendered message: %v", err)
	}
	_, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("content type: %v", err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextPart() // decodes quoted-printable
		if err != nil {
			t.Fatalf("no text/plain part: %v", err)
		}
		if strings.HasPrefix(p.Header.Get("Content-Type"), "text/plain") {
			b, err := io.ReadAll(p)
			if err != nil {
				t.Fatal(err)
			}
			return parsed{header: m.Header, text: string(b)}
		}
	}
}

const mixedCSV = "email,first_name,last_name,company,plan\n" +
	"ana@example.com,Ana,Ruiz,Acme,gold\n" + // 2: sent
	"bob@example.com,Bob,Stone,Beta,silver\n" + // 3: suppressed
	"not-an-address@,Carl,Diaz,Gamma,free\n" + // 4: bad email
	"dan@example.com,\"Dan\r\nBcc: x@evil.example\",Lee,Delta,free\n" + // 5-6: CR/LF in first_name
	"\n" + // 7: empty, skipped
	"eve@example.com,Eve,Ng,Epsilon\n" + // 8: wrong field count
	"FRED@Example.COM,Fred,Quinn,Zeta,bronze\n" // 9: sent

func TestSendSummary(t *testing.T) {
	spec := testSpec(t, mixedCSV)
	spec.Pool = "warm-1"
	q := newFakeQueue()
	sup := &fakeSuppressions{reasons: map[string]string{"bob@example.com": "unsubscribed"}}
	deps := testDeps(q, sup)
	recs := &fakeRecords{}
	deps.Records = recs
	var logs bytes.Buffer
	deps.Log = zerolog.New(&logs)

	sum, err := Send(context.Background(), spec, deps, nil)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if sum.Rows != 6 || sum.Invalid != 3 || sum.Enqueued != 2 || sum.AlreadySent != 0 ||
		len(sum.Suppressed) != 1 || sum.Suppressed["unsubscribed"] != 1 {
		t.Errorf("summary = %+v", sum)
	}
	q.mu.Lock()
	for _, m := range q.msgs {
		if m.Pool != "warm-1" {
			t.Errorf("message to %s: pool %q, want the campaign's warm-1", m.To, m.Pool)
		}
	}
	q.mu.Unlock()
	if got := sup.checked.Load(); got != 3 {
		t.Errorf("suppression checks = %d, want 3 (one per valid row)", got)
	}
	want := []string{
		spec.Recipients + `:4: email: address "not-an-address@": `,
		spec.Recipients + `:5: first_name: value contains CR, LF or NUL`,
		spec.Recipients + `:8: csv: 4 fields, header has 5`,
	}
	if len(sum.InvalidLines) != len(want) {
		t.Fatalf("InvalidLines = %q", sum.InvalidLines)
	}
	for i, w := range want {
		if !strings.HasPrefix(sum.InvalidRows[i].Error(), w) {
			t.Errorf("InvalidRows[%d] = %q, want prefix %q", i, sum.InvalidRows[i].Error(), w)
		}
		if sum.InvalidLines[i] != sum.InvalidRows[i].Masked() || strings.Contains(sum.InvalidLines[i], "not-an-address@") {
			t.Errorf("InvalidLines[%d] = %q: want the masked form", i, sum.InvalidLines[i])
		}
	}
	for i, line := range []int{4, 5, 8} {
		if i >= len(sum.InvalidRows) || sum.InvalidRows[i].Line != line {
			t.Errorf("InvalidRows[%d] line, want %d: %+v", i, line, sum.InvalidRows)
		}
	}
	if q.len() != 2 {
		t.Fatalf("queue holds %d messages, want 2", q.len())
	}

	m := q.get(t, spec.ID, "fred@example.com")
	if m.From != "news@example.com" || m.To != "FRED@example.com" || m.List != "product-news" {
		t.Errorf("message = %+v", m)
	}
	p := parseMessage(t, m.Body)
	if got := p.header.Get("List-Id"); got != `"Product news" <product-news.mail.example.com>` {
		t.Errorf("List-Id = %q", got)
	}
	wantUnsub := "<" + fakeLinks{}.UnsubscribeURL("FRED@example.com", spec.List, spec.ID) + ">"
	if got, want := p.header.Get("List-Unsubscribe"), wantUnsub; got != want {
		t.Errorf("List-Unsubscribe = %q, want %q", got, want)
	}
	if !regexp.MustCompile(`^<[0-9a-f]{24}\.example-2026-q4@mail\.example\.com>$`).MatchString(p.header.Get("Message-Id")) {
		t.Errorf("Message-Id = %q", p.header.Get("Message-Id"))
	}
	if got := p.header.Get("To"); got != `"Fred Quinn" <FRED@example.com>` {
		t.Errorf("To = %q", got)
	}
	if !strings.Contains(p.text, "Hello Fred of Zeta") || !strings.Contains(p.text, "plan bronze") ||
		!strings.Contains(p.text, "Privacy: https://example.com/privacy") {
		t.Errorf("text part:\n%s", p.text)
	}

	// The record is stored at the start and at the end; stored and logged text never holds a clear address.
	if len(recs.recs) != 2 {
		t.Fatalf("records put = %d, want 2", len(recs.recs))
	}
	var end Record
	if err := json.Unmarshal(recs.recs[1], &end); err != nil {
		t.Fatal(err)
	}
	if end.ID != spec.ID || end.LegalBasis != "legitimate_interest" || end.FileHash != "f00d" || end.RunBy == "" ||
		end.Finished.IsZero() || end.Summary.Enqueued != 2 || len(end.Summary.InvalidLines) != 3 {
		t.Errorf("end record = %s", recs.recs[1])
	}
	for _, clear := range []string{"not-an-address@", "dan@example.com", "eve@example.com", "ana@example.com", "FRED@"} {
		if bytes.Contains(recs.recs[1], []byte(clear)) {
			t.Errorf("record holds clear address %q: %s", clear, recs.recs[1])
		}
		if strings.Contains(logs.String(), clear) {
			t.Errorf("logs hold clear address %q:\n%s", clear, logs.String())
		}
	}
	if n := strings.Count(logs.String(), `"message":"invalid row skipped"`); n != 3 {
		t.Errorf("invalid-row log lines = %d, want 3:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"rcpt":"d***@example.com"`) {
		t.Errorf("logs lack the masked address of line 5:\n%s", logs.String())
	}

	// A re-run finds every message already queued.
	again, err := Send(context.Background(), spec, deps, nil)
	if err != nil {
		t.Fatalf("second Send: %v", err)
	}
	if again.Enqueued != 0 || again.AlreadySent != sum.Enqueued || again.Invalid != 3 || q.len() != 2 {
		t.Errorf("second run summary = %+v", again)
	}
}

func TestSendMessageIDDeterministic(t *testing.T) {
	spec := testSpec(t, "email\nana@example.com\nbob@example.com\n")
	ids := func(spec Spec, now time.Time) (string, string) {
		q := newFakeQueue()
		deps := testDeps(q, &fakeSuppressions{})
		deps.Now = func() time.Time { return now }
		if _, err := Send(context.Background(), spec, deps, nil); err != nil {
			t.Fatal(err)
		}
		return parseMessage(t, q.get(t, spec.ID, "ana@example.com").Body).header.Get("Message-Id"),
			parseMessage(t, q.get(t, spec.ID, "bob@example.com").Body).header.Get("Message-Id")
	}
	ana1, bob1 := ids(spec, time.Date(2026, 10, 1, 9, 0, 0, 0, time.UTC))
	ana2, bob2 := ids(spec, time.Date(2026, 10, 2, 17, 30, 0, 0, time.UTC))
	if ana1 != ana2 || bob1 != bob2 {
		t.Errorf("Message-IDs differ across runs: %s %s / %s %s", ana1, ana2, bob1, bob2)
	}
	if ana1 == bob1 {
		t.Errorf("two recipients share Message-ID %s", ana1)
	}
	spec.ID = "example-2027-q1"
	if ana3, _ := ids(spec, time.Now()); ana3 == ana1 {
		t.Errorf("two campaigns share Message-ID %s", ana3)
	}
}

func TestSendBOMHeaderAndExtraColumns(t *testing.T) {
	csv := "\uFEFF Email ,First Name,Job-Title,Favourite Colour,,plan\r\n" +
		"ana@example.com,Ana,CTO,teal,ignored,gold\r\n"
	spec := testSpec(t, csv)
	q := newFakeQueue()
	sum, err := Send(context.Background(), spec, testDeps(q, &fakeSuppressions{}), nil)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if sum.Enqueued != 1 || sum.Invalid != 0 {
		t.Fatalf("summary = %+v", sum)
	}
	text := parseMessage(t, q.get(t, spec.ID, "ana@example.com").Body).text
	if !strings.Contains(text, "Hello Ana of  (CTO), plan gold, colour teal.") {
		t.Errorf("text part:\n%s", text)
	}
	if strings.Contains(text, "ignored") {
		t.Errorf("an unnamed column reached the message:\n%s", text)
	}
}

func TestSendHeaderErrors(t *testing.T) {
	for _, tc := range []struct{ name, csv, want string }{
		{"no email column", "e-mail address,first_name\nana@example.com,Ana\n", `example.csv:1: header: no email column (columns: e_mail_address, first_name)`},
		{"duplicate column", "email,Email\nana@example.com,x\n", `example.csv:1: header: column "email" appears twice`},
		{"empty file", "", `example.csv:1: empty file`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t, tc.csv)
			q := newFakeQueue()
			_, err := Send(context.Background(), spec, testDeps(q, &fakeSuppressions{}), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if q.len() != 0 {
				t.Errorf("queue holds %d messages", q.len())
			}
		})
	}
}

func TestSendRowProblems(t *testing.T) {
	for _, tc := range []struct {
		name, header, rows string
		want               []string // invalid lines, without the path
		enqueued           int
	}{
		{"NUL in extra column", "email,first_name,plan", "ana@example.com,Ana,FR\x00x\nbob@example.com,Bob,UK\n", []string{`:2: plan: value contains CR, LF or NUL`}, 1},
		{"bare quote, reading goes on", "email,first_name,plan", "ana@example.com,An\"a,UK\nbob@example.com,Bob,UK\n", []string{`:2: csv: bare " in non-quoted-field`}, 1},
		{"garbage after closing quote, reading goes on", "email,first_name,plan", "ana@example.com,\"Ana\"x,UK\nbob@example.com,Bob,UK\n", []string{`:2: csv: extraneous or missing " in quoted-field`}, 1},
		{"unclosed quote takes the rest", "email,first_name,plan", "bob@example.com,Bob,UK\nana@example.com,\"Ana,UK\ncid@example.com,Cid,UK\n", []string{`:3: csv: extraneous or missing " in quoted-field (the quoted field runs on to line 4)`}, 1},
		{"display name in email", "email,first_name,plan", "Ana <ana@example.com>,Ana,UK\n", []string{`:2: email: address "Ana <ana@example.com>": `}, 0},
		{"unsubscribe link hidden for this row", "email,first_name,country", "ana@example.com,Ana,FR\n", []string{`:2: template: templates: `}, 0},
		{"duplicate row", "email,first_name,plan", "ana@example.com,Ana,UK\nANA@example.com,Ana,UK\n", nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t, tc.header+"\n"+tc.rows)
			q := newFakeQueue()
			sum, err := Send(context.Background(), spec, testDeps(q, &fakeSuppressions{}), nil)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if sum.Invalid != len(tc.want) || len(sum.InvalidLines) != len(tc.want) {
				t.Fatalf("invalid = %d %q, want %q", sum.Invalid, sum.InvalidLines, tc.want)
			}
			for i, w := range tc.want {
				if got := sum.InvalidRows[i].Error(); !strings.HasPrefix(got, spec.Recipients+w) {
					t.Errorf("invalid row %q, want prefix %q", got, spec.Recipients+w)
				}
			}
			if sum.Enqueued != tc.enqueued || q.len() != tc.enqueued {
				t.Errorf("enqueued = %d (queue %d), want %d", sum.Enqueued, q.len(), tc.enqueued)
			}
			if sum.Rows != sum.Invalid+sum.Enqueued+sum.AlreadySent {
				t.Errorf("rows %d do not add up: %+v", sum.Rows, sum)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	spec := testSpec(t, strings.Replace(mixedCSV, "plan\n", "country\n", 1)+"gil@example.com,Gil,Ortiz,Eta,FR\n")
	sum, errs := Validate(context.Background(), spec)
	want := []string{
		spec.Recipients + `:4: email: address "not-an-address@": `,
		spec.Recipients + `:5: first_name: value contains CR, LF or NUL`,
		spec.Recipients + `:8: csv: 4 fields, header has 5`,
		spec.Recipients + `:10: template: templates: `,
	}
	if sum.Rows != 7 || sum.Invalid != 4 || len(errs) != 4 || len(sum.InvalidLines) != 4 {
		t.Fatalf("summary = %+v, errors = %q", sum, errs)
	}
	for i, w := range want {
		if !strings.HasPrefix(errs[i].Error(), w) || sum.InvalidLines[i] != errs[i].(RowError).Masked() {
			t.Errorf("error %d = %q, want prefix %q", i, errs[i], w)
		}
	}
	var re RowError
	if !errors.As(errs[3], &re) || re.Field != "template" || re.Line != 10 {
		t.Errorf("error 3 = %#v", errs[3])
	}
}

func TestValidateSpecProblemsAndCap(t *testing.T) {
	var csv strings.Builder
	csv.WriteString("email,first_name\n")
	for i := range 1005 {
		fmt.Fprintf(&csv, "bad%d@,X\n", i)
	}
	spec := testSpec(t, csv.String())
	spec.From = "no address here"
	spec.Hostname = "mail example.com"
	spec.PrivacyURL = ""
	sum, errs := Validate(context.Background(), spec)
	if sum.Rows != 1005 || sum.Invalid != 1005 || len(sum.InvalidLines) != 100 {
		t.Errorf("summary rows %d invalid %d lines %d", sum.Rows, sum.Invalid, len(sum.InvalidLines))
	}
	if len(errs) != 3+1000+1 {
		t.Fatalf("%d errors, want 1004", len(errs))
	}
	for i, w := range []string{`hostname "mail example.com"`, `from: "no address here"`, `privacy_url ""`} {
		if !strings.HasPrefix(errs[i].Error(), w) {
			t.Errorf("error %d = %q, want prefix %q", i, errs[i], w)
		}
	}
	if got := errs[3].Error(); !strings.HasPrefix(got, spec.Recipients+`:2: email: address "bad0@": `) {
		t.Errorf("first row error = %q", got)
	}
	if got := errs[len(errs)-1].Error(); got != "… and 5 more invalid rows" {
		t.Errorf("last error = %q", got)
	}
}

func TestSendRefusesBadSpec(t *testing.T) {
	spec := testSpec(t, "email\nana@example.com\n")
	spec.From = "Ana <ana@example.com>\r\nBcc: all@example.com"
	q := newFakeQueue()
	_, err := Send(context.Background(), spec, testDeps(q, &fakeSuppressions{}), nil)
	if err == nil || !strings.Contains(err.Error(), "campaign example-2026-q4: from: value contains CR, LF or NUL") {
		t.Fatalf("err = %v", err)
	}
	if q.len() != 0 {
		t.Errorf("queue holds %d messages", q.len())
	}
}

func TestTemplatesWithoutUnsubscribeLink(t *testing.T) {
	spec := testSpec(t, "email\nana@example.com\n")
	spec.Templates = loadTemplates(t, `<p><a href="{{.PrivacyURL}}">Privacy</a></p>`, testText)
	_, errs := Validate(context.Background(), spec)
	if len(errs) == 0 {
		t.Fatal("Validate accepted an HTML body without the unsubscribe link")
	}
	for _, err := range errs {
		if !strings.HasPrefix(err.Error(), "templates: ") || strings.HasPrefix(err.Error(), "templates: templates:") {
			t.Errorf("error = %q, want one \"templates: \" prefix", err)
		}
	}
	q := newFakeQueue()
	if _, err := Send(context.Background(), spec, testDeps(q, &fakeSuppressions{}), nil); err == nil || !strings.Contains(err.Error(), "unsubscribe link") {
		t.Errorf("Send err = %v, want the missing unsubscribe link", err)
	}
	if q.len() != 0 {
		t.Errorf("queue holds %d messages", q.len())
	}
}

// generated returns a CSV of n rows; every 10th is suppressed (sup####@) and every 50th invalid.
func generated(n int) string {
	var b strings.Builder
	b.WriteString("email,first_name,last_name,company,plan\n")
	for i := range n {
		switch {
		case i%50 == 49:
			fmt.Fprintf(&b, "broken%d@,First%d,Last,Co%d,p%d\n", i, i, i, i)
		case i%10 == 9:
			fmt.Fprintf(&b, "sup%d@example.com,First%d,Last,Co%d,p%d\n", i, i, i, i)
		default:
			fmt.Fprintf(&b, "user%d@example.com,First%d,Last,Co%d,p%d\n", i, i, i, i)
		}
	}
	return b.String()
}

// suppressAll suppresses every address that starts with "sup".
type suppressAll struct{ fakeSuppressions }

func (s *suppressAll) CheckCampaign(addr, list, basis string) (string, bool, error) {
	s.checked.Add(1)
	return "hard_bounce", strings.HasPrefix(addr, "sup"), nil
}

func TestSendConcurrent(t *testing.T) {
	const n = 5000
	spec := testSpec(t, generated(n))
	q := newFakeQueue()
	deps := testDeps(q, nil)
	deps.Suppressions = &suppressAll{}
	var lastRows int
	var lastBytes int64
	sum, err := Send(context.Background(), spec, deps, func(rows int, b int64) {
		if rows < lastRows || b < lastBytes {
			t.Errorf("progress went backwards: %d/%d after %d/%d", rows, b, lastRows, lastBytes)
		}
		lastRows, lastBytes = rows, b
	})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	invalid, suppressed := n/50, n/10-n/50
	if sum.Rows != n || sum.Invalid != invalid || sum.Suppressed["hard_bounce"] != suppressed || sum.Enqueued != n-invalid-suppressed {
		t.Errorf("summary = rows %d invalid %d suppressed %v enqueued %d", sum.Rows, sum.Invalid, sum.Suppressed, sum.Enqueued)
	}
	if len(sum.InvalidRows) != 100 || sum.InvalidRows[0].Line != 51 || sum.InvalidRows[99].Line != 100*50+1 {
		t.Errorf("InvalidRows: %d, first line %d, last line %d", len(sum.InvalidRows), sum.InvalidRows[0].Line, sum.InvalidRows[len(sum.InvalidRows)-1].Line)
	}
	fi, err := os.Stat(spec.Recipients)
	if err != nil {
		t.Fatal(err)
	}
	if lastRows != n || lastBytes != fi.Size() {
		t.Errorf("last progress = %d rows %d bytes, want %d rows %d bytes", lastRows, lastBytes, n, fi.Size())
	}
	// Each message carries its own row's data: nothing mixed up between
	// workers, nor between bodies rendered into the memory of enqueued ones.
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.msgs) != sum.Enqueued {
		t.Fatalf("%d messages queued, want %d", len(q.msgs), sum.Enqueued)
	}
	for _, m := range q.msgs {
		var i int
		if _, err := fmt.Sscanf(m.To, "user%d@example.com", &i); err != nil {
			t.Fatalf("recipient %q: %v", m.To, err)
		}
		p := parseMessage(t, m.Body)
		if !strings.Contains(p.header.Get("To"), "<"+m.To+">") || !strings.Contains(p.text, fmt.Sprintf("Hello First%d of Co%d ", i, i)) {
			t.Errorf("message for %s: To %q, text %q", m.To, p.header.Get("To"), p.text)
		}
	}
	// Bodies were rendered into the memory of bodies already enqueued.
	if len(q.mem) > sum.Enqueued/2 {
		t.Errorf("%d messages arrived in %d distinct buffers: enqueued bodies' memory not reused", sum.Enqueued, len(q.mem))
	}
}

func TestSendCancel(t *testing.T) {
	const n = 5000
	spec := testSpec(t, generated(n))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := newFakeQueue()
	q.after = func(call int) { cancel() } // cancelled once the first group is committed
	sum, err := Send(ctx, spec, testDeps(q, &fakeSuppressions{}), nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if sum.Enqueued != batchSize || q.len() != batchSize {
		t.Errorf("enqueued %d, queue holds %d, want %d", sum.Enqueued, q.len(), batchSize)
	}
	if sum.Rows >= n {
		t.Errorf("read all %d rows despite the cancel", sum.Rows)
	}
}

func TestSendStoreErrorsAbort(t *testing.T) {
	errDisk := errors.New("disk full")
	for _, tc := range []struct {
		name string
		q    *fakeQueue
		sup  *fakeSuppressions
		want string
	}{
		{"queue", &fakeQueue{msgs: map[string]Message{}, err: errDisk}, &fakeSuppressions{}, "campaign example-2026-q4: enqueue: disk full"},
		{"suppressions", newFakeQueue(), &fakeSuppressions{err: errDisk}, "campaign example-2026-q4: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t, generated(600))
			sum, err := Send(context.Background(), spec, testDeps(tc.q, tc.sup), nil)
			if !errors.Is(err, errDisk) || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("err = %v, want prefix %q wrapping %v", err, tc.want, errDisk)
			}
			if sum.Enqueued != 0 {
				t.Errorf("enqueued = %d", sum.Enqueued)
			}
			if tc.name == "suppressions" && !regexp.MustCompile(`example\.csv:\d+: suppression check: disk full$`).MatchString(err.Error()) {
				t.Errorf("err = %v, want the file:line and 'suppression check'", err)
			}
		})
	}
}

func BenchmarkSend(b *testing.B) {
	const n = 10000
	spec := testSpec(b, generated(n))
	deps := Deps{Suppressions: &suppressAll{}, Links: fakeLinks{}}
	b.ReportAllocs()
	msgs := 0
	for b.Loop() {
		deps.Queue = newFakeQueue()
		sum, err := Send(context.Background(), spec, deps, nil)
		if err != nil {
			b.Fatal(err)
		}
		msgs += sum.Enqueued
	}
	b.ReportMetric(float64(msgs)/b.Elapsed().Seconds(), "msgs/s")
}
