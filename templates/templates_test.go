package templates

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/emersion/go-message/mail"
)

const (
	goodHTML = `<!DOCTYPE html><html lang="en"><body>
<p>Hello {{.FirstName}} at {{.Company}} ({{.Fields.region}})</p>
<p><a href="{{.UnsubscribeURL}}">Unsubscribe</a> · <a href="{{.PrivacyURL}}">Privacy</a></p>
</body></html>
`
	goodText = "Hello {{.FirstName}} at {{.Company}} ({{.Fields.region}})\n\nUnsubscribe: {{.UnsubscribeURL}}\nPrivacy: {{.PrivacyURL}}\n"
	subject  = "{{.FirstName}}, a note about {{.Company}}"
)

// write puts base.html and base.txt in a temp dir and returns base.
func write(t testing.TB, html, text string) string {
	t.Helper()
	base := filepath.Join(t.TempDir(), "example")
	if err := os.WriteFile(base+".html", []byte(html), 0o644); err != nil {
		t.Fatal(err)
	}
	if text != "" {
		if err := os.WriteFile(base+".txt", []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return base
}

func load(t testing.TB, html, text string) *Set {
	t.Helper()
	s, err := Load(write(t, html, text), subject)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s
}

func data() Data {
	return Data{
		FirstName: "Zoë", LastName: "Lindqvist", Company: "Ünïcode GmbH", Email: "zoe@fjord-tech.example",
		Fields:         map[string]string{"region": "Nord"},
		UnsubscribeURL: "https://mail.example.com/u/TOKEN-abc_123",
		PrivacyURL:     "https://example.com/privacy?lang=en&v=2",
	}
}

func envelope() Envelope {
	return Envelope{
		From: "Ana Ruiz <ana@example.com>", ReplyTo: "sales@example.com",
		To: "zoe@fjord-tech.example", ToName: "Zoë Lindqvist",
		MessageID: "abc123@mail.example.com",
		Date:      time.Date(2026, 10, 1, 9, 30, 0, 0, time.UTC),
		ListID:    "product-news.mail.example.com", ListName: "Product news",
		Unsubscribe: []string{"https://mail.example.com/u/TOKEN-abc_123", "mailto:unsubscribe@example.com?subject=TOKEN"},
	}
}

func TestRenderParsesBack(t *testing.T) {
	s := load(t, goodHTML, goodText)
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	d := data()
	msg, err := s.Render(d, envelope())
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	if bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) ||
		bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\r")) {
		t.Error("message has a bare LF or CR")
	}

	mr, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	h := mr.Header
	if got, err := h.Subject(); err != nil || got != "Zoë, a note about Ünïcode GmbH" {
		t.Errorf("Subject = %q, %v", got, err)
	}
	if raw := h.Get("Subject"); !strings.HasPrefix(raw, "=?utf-8?") {
		t.Errorf("raw Subject %q is not RFC 2047 encoded", raw)
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Name != "Zoë Lindqvist" || to[0].Address != "zoe@fjord-tech.example" {
		t.Errorf("To = %v, %v", to, err)
	}
	from, _ := h.AddressList("From")
	if len(from) != 1 || from[0].Address != "ana@example.com" || from[0].Name != "Ana Ruiz" {
		t.Errorf("From = %v", from)
	}
	if id, _ := h.MessageID(); id != "abc123@mail.example.com" {
		t.Errorf("Message-ID = %q", id)
	}
	if date, _ := h.Date(); !date.Equal(envelope().Date) {
		t.Errorf("Date = %v", date)
	}
	want := map[string]string{
		"Reply-To":              "<sales@example.com>",
		"MIME-Version":          "1.0",
		"List-Id":               `"Product news" <product-news.mail.example.com>`,
		"List-Unsubscribe":      "<https://mail.example.com/u/TOKEN-abc_123>, <mailto:unsubscribe@example.com?subject=TOKEN>",
		"List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if mt, _, _ := h.ContentType(); mt != "multipart/alternative" {
		t.Errorf("Content-Type = %q", mt)
	}

	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("NextPart: %v", err)
		}
		ph := p.Header.(*mail.InlineHeader)
		mt, params, _ := ph.ContentType()
		types = append(types, mt)
		if params["charset"] != "utf-8" || ph.Get("Content-Transfer-Encoding") != "quoted-printable" {
			t.Errorf("%s: charset %q, encoding %q", mt, params["charset"], ph.Get("Content-Transfer-Encoding"))
		}
		body, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(body, []byte(d.UnsubscribeURL)) || !htmlContains(body, d.PrivacyURL) {
			t.Errorf("%s part lacks a link:\n%s", mt, body)
		}
		if !bytes.Contains(body, []byte("Zoë")) || !bytes.Contains(body, []byte("Nord")) {
			t.Errorf("%s part lacks the recipient's data:\n%s", mt, body)
		}
	}
	if strings.Join(types, ",") != "text/plain,text/html" {
		t.Errorf("parts = %v, want text/plain then text/html", types)
	}
}

func TestNoOneClickWithoutWebURI(t *testing.T) {
	s := load(t, goodHTML, goodText)
	env := envelope()
	env.Unsubscribe = []string{"mailto:unsubscribe@example.com"}
	env.ListName = ""
	msg, err := s.Render(data(), env)
	if err != nil {
		t.Fatal(err)
	}
	mr, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if mr.Header.Has("List-Unsubscribe-Post") {
		t.Error("List-Unsubscribe-Post without an http(s) URI")
	}
	if got := mr.Header.Get("List-Id"); got != "<product-news.mail.example.com>" {
		t.Errorf("List-Id = %q", got)
	}
}

func TestShippedExampleValidates(t *testing.T) {
	s, err := Load("../configs/templates/example", subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Render(data(), envelope()); err != nil {
		t.Fatal(err)
	}
}

func TestValidateRefuses(t *testing.T) {
	tests := []struct {
		name, html, text string
		want             []string
	}{
		{
			name: "no unsubscribe link",
			html: `<a href="{{.PrivacyURL}}">Privacy</a>`,
			text: goodText,
			want: []string{"example.html: rendered HTML lacks the unsubscribe link ({{.UnsubscribeURL}})"},
		},
		{
			name: "link hidden behind if .Company",
			html: goodHTML,
			text: "{{if .Company}}Unsubscribe: {{.UnsubscribeURL}}{{end}}\nPrivacy: {{.PrivacyURL}}\n",
			want: []string{"example.txt: rendered text lacks the unsubscribe link ({{.UnsubscribeURL}}) (with all fields empty)"},
		},
		{
			name: "link hidden behind a Fields key",
			html: `{{if .Fields.vip}}<a href="{{.UnsubscribeURL}}">u</a>{{end}}<a href="{{.PrivacyURL}}">p</a>`,
			text: goodText,
			want: []string{"example.html: rendered HTML lacks the unsubscribe link"},
		},
		{
			name: "link shown only without Fields key",
			html: `{{if not (index .Fields "vip")}}<a href="{{.UnsubscribeURL}}">u</a>{{end}}<a href="{{.PrivacyURL}}">p</a>`,
			text: goodText,
			want: []string{"example.html: rendered HTML lacks the unsubscribe link", "Fields filled"},
		},
		{
			name: "both links missing in both files",
			html: `<p>hi</p>`,
			text: "hi\n",
			want: []string{
				"example.txt: rendered text lacks the unsubscribe link",
				"example.txt: rendered text lacks the privacy link ({{.PrivacyURL}})",
				"example.html: rendered HTML lacks the unsubscribe link",
				"example.html: rendered HTML lacks the privacy link",
			},
		},
		{
			name: "exec error",
			html: goodHTML,
			text: goodText + "{{.Nope}}\n",
			want: []string{"example.txt:5:", "Nope"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := load(t, tt.html, tt.text).Validate()
			if err == nil {
				t.Fatal("Validate accepted the template")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
		})
	}
}

func TestRenderRefusesRecipientHiddenLink(t *testing.T) {
	// Sentinels cannot guess the value "DE"; the per-recipient check must catch it.
	s := load(t, goodHTML, `{{if ne .Country "DE"}}{{.UnsubscribeURL}}{{end}} {{.PrivacyURL}}`)
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	d := data()
	d.Country = "DE"
	_, err := s.Render(d, envelope())
	if err == nil || !strings.Contains(err.Error(), "rendered text lacks the unsubscribe link for this recipient") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	base := write(t, goodHTML, "")
	_, err := Load(base, subject)
	if err == nil || !strings.Contains(err.Error(), base+".txt") {
		t.Errorf("missing .txt: err = %v, want it to name %s.txt", err, base)
	}

	_, err = Load(write(t, "<p>\n{{.FirstName</p>", goodText), subject)
	if err == nil || !strings.Contains(err.Error(), "example.html:2") {
		t.Errorf("parse error: err = %v, want example.html:2", err)
	}

	_, err = Load(write(t, goodHTML, goodText), "{{.FirstName")
	if err == nil || !strings.Contains(err.Error(), "subject") {
		t.Errorf("bad subject: err = %v", err)
	}
}

func TestHeaderInjection(t *testing.T) {
	s := load(t, goodHTML, goodText)
	tests := []struct {
		name string
		edit func(*Data, *Envelope)
		want string
	}{
		{"CRLF in FirstName", func(d *Data, _ *Envelope) { d.FirstName = "Zoë\r\nBcc: victim@example.net" },
			"templates: header Subject: contains CR or LF"},
		{"LF in FirstName", func(d *Data, _ *Envelope) { d.FirstName = "Zoë\nX: y" },
			"templates: header Subject: contains CR or LF"},
		{"NUL in Company", func(d *Data, _ *Envelope) { d.Company = "A\x00B" },
			"templates: header Subject: contains control character"},
		{"CR in ToName", func(_ *Data, e *Envelope) { e.ToName = "Zoë\rX" }, "templates: header To: contains CR or LF"},
		{"LF in ListName", func(_ *Data, e *Envelope) { e.ListName = "News\nBcc: x" }, "templates: header List-Id: contains CR or LF"},
		{"encoded CR in From name", func(_ *Data, e *Envelope) { e.From = "=?utf-8?q?Ana=0D=0ABcc=3A_x?= <ana@example.com>" },
			"templates: header From: contains CR or LF"},
		{"display name in To", func(_ *Data, e *Envelope) { e.To = "Zoë <zoe@fjord-tech.example>" }, "templates: header To:"},
		{"no unsubscribe URI", func(_ *Data, e *Envelope) { e.Unsubscribe = nil }, "templates: header List-Unsubscribe:"},
		{"comma in URI", func(_ *Data, e *Envelope) { e.Unsubscribe = []string{"https://x.example/a,b"} }, "templates: header List-Unsubscribe:"},
		{"bad Message-ID", func(_ *Data, e *Envelope) { e.MessageID = "<a@b>" }, "templates: header Message-ID:"},
		{"no Date", func(_ *Data, e *Envelope) { e.Date = time.Time{} }, "templates: header Date: missing"},
		{"empty subject", func(d *Data, _ *Envelope) { d.FirstName, d.Company = "", "" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, env := data(), envelope()
			tt.edit(&d, &env)
			msg, err := s.Render(d, env)
			if tt.want == "" { // ", a note about" still renders: not empty
				if err != nil {
					t.Fatalf("Render: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q (message %q)", err, tt.want, msg)
			}
			if msg != nil {
				t.Error("a message came back with the error")
			}
		})
	}
}

func TestSubjectEmpty(t *testing.T) {
	s, err := Load(write(t, goodHTML, goodText), "{{.FirstName}}")
	if err != nil {
		t.Fatal(err)
	}
	err = s.Validate()
	if err == nil || !strings.Contains(err.Error(), "header Subject: renders empty (with all fields empty)") {
		t.Errorf("Validate: %v", err)
	}
}

func TestFilesAndFieldKeys(t *testing.T) {
	base := write(t, `{{$.Fields.a}}{{with .Company}}{{index $.Fields "b"}}{{end}}`, "{{range .Fields}}{{end}}{{.Fields.c}}")
	s, err := Load(base, subject)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Files(), ","); got != base+".html,"+base+".txt" {
		t.Errorf("Files = %s", got)
	}
	if got := strings.Join(s.fieldKeys, ","); got != "a,b,c" {
		t.Errorf("field keys = %s, want a,b,c", got)
	}
}

// TestConcurrentRender renders for two recipients from many goroutines at once
// and checks every message carries its own recipient's data and nothing of the
// other's: pooled buffers must not carry one render's bytes into another.
func TestConcurrentRender(t *testing.T) {
	html := strings.Repeat(`<p>Dear {{.FirstName}} ({{.Email}}) at {{.Company}}</p>`+"\n", 40) + goodHTML
	text := strings.Repeat("Dear {{.FirstName}} ({{.Email}})\n", 40) + goodText
	s := load(t, html, text)
	type who struct {
		d   Data
		env Envelope
	}
	var rcpts [2]who
	for i, r := range []struct{ name, addr, token string }{
		{"Zoë-Ünïque", "zoe@one.example", "TOKEN-ONE-1111"},
		{"Björn-Ŝecond", "bjorn@two.example", "TOKEN-TWO-2222"},
	} {
		d, env := data(), envelope()
		d.FirstName, d.Email = r.name, r.addr
		d.UnsubscribeURL = "https://mail.example.com/u/" + r.token
		env.To, env.ToName = r.addr, r.name
		env.Unsubscribe = []string{d.UnsubscribeURL}
		rcpts[i] = who{d, env}
	}
	check := func(msg []byte, self, other Data) error {
		mr, err := mail.CreateReader(bytes.NewReader(msg))
		if err != nil {
			return err
		}
		subj, err := mr.Header.Subject()
		if err != nil {
			return err
		}
		texts := []string{subj, mr.Header.Get("To"), mr.Header.Get("List-Unsubscribe")}
		if to, err := mr.Header.AddressList("To"); err != nil || len(to) != 1 || to[0].Address != self.Email || to[0].Name != self.FirstName {
			return fmt.Errorf("To = %v, %v; want %s <%s>", to, err, self.FirstName, self.Email)
		}
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			body, err := io.ReadAll(p.Body)
			if err != nil {
				return err
			}
			for _, want := range []string{self.FirstName, self.Email, self.UnsubscribeURL} {
				if n := bytes.Count(body, []byte(want)); n < 40 && want != self.UnsubscribeURL || n < 1 {
					return fmt.Errorf("part has %q %d times:\n%s", want, n, body)
				}
			}
			texts = append(texts, string(body))
		}
		for _, txt := range texts {
			for _, leak := range []string{other.FirstName, other.Email, other.UnsubscribeURL} {
				if strings.Contains(txt, leak) {
					return fmt.Errorf("the other recipient's %q is in:\n%s", leak, txt)
				}
			}
		}
		return nil
	}

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				i := (g + j) % 2
				msg, err := s.Render(rcpts[i].d, rcpts[i].env)
				if err == nil {
					err = check(msg, rcpts[i].d, rcpts[1-i].d)
				}
				if err != nil {
					errs <- fmt.Errorf("recipient %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkRender(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`<!DOCTYPE html><html lang="en"><body><p>Hello {{.FirstName}} at {{.Company}}</p>`)
	// A realistic newsletter: long static copy, a placeholder every tenth paragraph.
	for i := 0; sb.Len() < 20_000; i++ {
		who := "your team"
		if i%10 == 0 {
			who = "{{.Company}}"
		}
		sb.WriteString(`<p style="margin:0 0 16px; font-family:Arial, sans-serif;">Our Q4 release adds automatic matching of invoices to orders for ` + who + `, and an export your accountants can read as it is.</p>` + "\n")
	}
	sb.WriteString(`<p><a href="{{.UnsubscribeURL}}">Unsubscribe</a> <a href="{{.PrivacyURL}}">Privacy</a></p></body></html>`)
	s := load(b, sb.String(), goodText)
	d, env := data(), envelope()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Render(d, env); err != nil {
			b.Fatal(err)
		}
	}
}

var boundaryParam = regexp.MustCompile(`boundary=([0-9a-f]+)`)

// RenderAppend appends what Render returns, keeps dst's bytes, and renders
// into dst's memory when it has room; on error it returns dst as it was.
func TestRenderAppend(t *testing.T) {
	s := load(t, goodHTML, goodText)
	want, err := s.Render(data(), envelope())
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 0, 2*len(want))
	dst = append(dst, "prefix"...)
	got, err := s.RenderAppend(dst, data(), envelope())
	if err != nil {
		t.Fatal(err)
	}
	// The MIME boundary is random per render: compare with it named B.
	unbound := func(msg []byte) []byte {
		m := boundaryParam.FindSubmatch(msg)
		if m == nil {
			t.Fatalf("no boundary in %q", msg)
		}
		return bytes.ReplaceAll(msg, m[1], []byte("B"))
	}
	if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(unbound(got[len("prefix"):]), unbound(want)) {
		t.Fatal("RenderAppend differs from prefix + Render")
	}
	if unsafe.SliceData(got) != unsafe.SliceData(dst) {
		t.Fatal("RenderAppend did not use dst's memory")
	}
	bad := data()
	bad.UnsubscribeURL = ""
	if out, err := s.RenderAppend(dst, bad, envelope()); err == nil || string(out) != "prefix" {
		t.Fatalf("bad data: %q, %v; want dst unchanged and an error", out, err)
	}
}

// Feedback-ID (Gmail's feedback loop) goes in as given; a value with white
// space or a control character could break the header and is refused.
func TestFeedbackID(t *testing.T) {
	s := load(t, goodHTML, goodText)
	env := envelope()
	env.FeedbackID = "launch-1:product-news:example.com"
	msg, err := s.Render(data(), env)
	if err != nil {
		t.Fatal(err)
	}
	mr, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if got := mr.Header.Get("Feedback-ID"); got != env.FeedbackID {
		t.Errorf("Feedback-ID = %q", got)
	}
	for _, bad := range []string{"a b:c", "a:b\r\nBcc: x@example.org", "a:b:ç"} {
		env.FeedbackID = bad
		if _, err := s.Render(data(), env); err == nil || !strings.Contains(err.Error(), "Feedback-ID") {
			t.Errorf("Feedback-ID %q: err = %v", bad, err)
		}
	}
}
