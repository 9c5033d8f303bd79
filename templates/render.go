package templates

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"net/url"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-message/mail"
)

// Render builds the message for one recipient: multipart/alternative with a
// text/plain then a text/html part, utf-8, quoted-printable, CRLF line endings,
// unsigned. Both bodies must carry d.UnsubscribeURL and d.PrivacyURL. The
// returned slice is the caller's; no memory of it is reused.
func (s *Set) Render(d Data, env Envelope) ([]byte, error) { return s.RenderAppend(nil, d, env) }

// RenderAppend is Render appending the message to dst: a caller that renders
// many messages can reuse the memory of one it no longer needs. On error dst
// is returned unchanged.
func (s *Set) RenderAppend(dst []byte, d Data, env Envelope) ([]byte, error) {
	if d.UnsubscribeURL == "" || d.PrivacyURL == "" {
		return dst, errors.New("templates: Data needs both UnsubscribeURL and PrivacyURL")
	}
	subject, err := s.Subject(d)
	if err != nil {
		return dst, err
	}
	sc := getScratch()
	defer putScratch(sc)
	left := MaxMessageBytes - len(subject)
	if err := s.bodiesCapped(d, &sc.text, &sc.html, &left); err != nil {
		return dst, err
	}
	text, htm := sc.text.Bytes(), sc.html.Bytes()
	if err := s.checkLinks(d, text, htm); err != nil {
		return dst, err
	}
	h, err := header(env, subject)
	if err != nil {
		return dst, err
	}

	buf := &sc.msg // keeps the capacity of earlier messages
	buf.Grow(len(text) + len(htm) + len(htm)/8 + 2048)
	w, err := mail.CreateInlineWriter(buf, h)
	if err != nil {
		return dst, fmt.Errorf("templates: write header: %w", err)
	}
	if err := writePart(w, textPart, text); err != nil {
		return dst, err
	}
	if err := writePart(w, htmlPart, htm); err != nil {
		return dst, err
	}
	if err := w.Close(); err != nil {
		return dst, fmt.Errorf("templates: close message: %w", err)
	}
	if buf.Len() > MaxMessageBytes { // quoted-printable grew the bodies past the cap
		return dst, fmt.Errorf("templates: render %s and %s: encoded %w", s.textPath, s.htmlPath, ErrTooLarge)
	}
	return append(dst, buf.Bytes()...), nil // the one copy that leaves; sc goes back to the pool
}

// scratch holds one Render's working buffers. They come from scratchPool and
// go back to it when Render returns, so a render's bytes never outlive it
// except in the copy Render returns.
type scratch struct {
	text, html, msg bytes.Buffer
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// maxPooled is the largest buffer put back in the pool, so that one unusual
// message does not keep its memory alive.
const maxPooled = 1 << 20

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(sc *scratch) {
	if sc.text.Cap() > maxPooled || sc.html.Cap() > maxPooled || sc.msg.Cap() > maxPooled {
		return
	}
	sc.text.Reset()
	sc.html.Reset()
	sc.msg.Reset()
	scratchPool.Put(sc)
}

// checkLinks refuses bodies that lost a link for this recipient, which happens
// when a recipient-dependent conditional hides it.
func (s *Set) checkLinks(d Data, text, htm []byte) error {
	var errs []error
	for _, l := range []struct{ name, url string }{{"unsubscribe", d.UnsubscribeURL}, {"privacy", d.PrivacyURL}} {
		if !bytes.Contains(text, []byte(l.url)) {
			errs = append(errs, fmt.Errorf("templates: %s: rendered text lacks the %s link for this recipient (a conditional hid it)", s.textPath, l.name))
		}
		if !htmlContains(htm, l.url) {
			errs = append(errs, fmt.Errorf("templates: %s: rendered HTML lacks the %s link for this recipient (a conditional hid it)", s.htmlPath, l.name))
		}
	}
	return errors.Join(errs...)
}

// textPart and htmlPart are the two alternatives, their headers built once:
// they are only read, since InlineWriter.CreatePart copies a header before
// adding to it.
var textPart, htmlPart = newPart("text/plain"), newPart("text/html")

// part is one quoted-printable utf-8 alternative.
type part struct {
	contentType string
	header      mail.InlineHeader
}

func newPart(contentType string) part {
	p := part{contentType: contentType}
	p.header.SetContentType(contentType, map[string]string{"charset": "utf-8"})
	p.header.Set("Content-Transfer-Encoding", "quoted-printable")
	return p
}

// writePart writes body as alternative p. Quoted-printable turns every line
// break into CRLF (RFC 2045 §6.7).
func writePart(w *mail.InlineWriter, p part, body []byte) error {
	pw, err := w.CreatePart(p.header)
	if err != nil {
		return fmt.Errorf("templates: create %s part: %w", p.contentType, err)
	}
	if _, err := pw.Write(body); err != nil {
		return fmt.Errorf("templates: write %s part: %w", p.contentType, err)
	}
	if err := pw.Close(); err != nil {
		return fmt.Errorf("templates: close %s part: %w", p.contentType, err)
	}
	return nil
}

// header builds the top-level header. go-message writes fields in the reverse
// order of insertion, so they are set here from last to first.
func header(env Envelope, subject string) (mail.Header, error) {
	var h mail.Header
	var errs []error
	fail := func(name string, err error) { errs = append(errs, fmt.Errorf("templates: header %s: %w", name, err)) }

	unsub, web, err := listUnsubscribe(env.Unsubscribe)
	if err != nil {
		fail("List-Unsubscribe", err)
	}
	if web {
		// RFC 8058 §3.1: one-click needs an HTTP(S) URI to POST to (https in
		// production; the CLI warns when public_url is plain http).
		h.Set("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
	}
	h.Set("List-Unsubscribe", unsub) // RFC 2369 §2: "<uri>, <uri>"

	if env.FeedbackID != "" {
		if err := feedbackID(env.FeedbackID); err != nil {
			fail("Feedback-ID", err)
		} else {
			h.Set("Feedback-ID", env.FeedbackID)
		}
	}

	if id, err := listID(env.ListID, env.ListName); err != nil {
		fail("List-Id", err)
	} else {
		h.Set("List-Id", id) // RFC 2919 §3
	}
	h.Set("MIME-Version", "1.0") // RFC 2045 §4

	if err := checkMessageID(env.MessageID); err != nil {
		fail("Message-ID", err)
	} else {
		h.SetMessageID(env.MessageID) // RFC 5322 §3.6.4
	}
	if env.Date.IsZero() {
		fail("Date", errors.New("missing"))
	} else {
		h.SetDate(env.Date) // RFC 5322 §3.3
	}
	// Set, not SetSubject: the value is already encoded, word by word.
	h.Set("Subject", subjectField(subject))

	if to, err := recipient(env.To, env.ToName); err != nil {
		errs = append(errs, err)
	} else {
		h.SetAddressList("To", []*mail.Address{to}) // RFC 2047 §5 for non-ASCII display names
	}
	if env.ReplyTo != "" {
		if a, err := mailbox("Reply-To", env.ReplyTo); err != nil {
			errs = append(errs, err)
		} else {
			h.SetAddressList("Reply-To", []*mail.Address{a})
		}
	}
	if a, err := mailbox("From", env.From); err != nil {
		errs = append(errs, err)
	} else {
		h.SetAddressList("From", []*mail.Address{a})
	}
	return h, errors.Join(errs...)
}

// mailbox parses a "Name <addr>" value and checks the decoded parts too, since
// an RFC 2047 word could smuggle a control character past the raw check.
func mailbox(name, v string) (*mail.Address, error) {
	if err := checkHeaderValue(name, v); err != nil {
		return nil, err
	}
	a, err := mail.ParseAddress(v)
	if err != nil {
		return nil, fmt.Errorf("templates: header %s: %q: %w", name, v, err)
	}
	if err := checkHeaderValue(name, a.Name); err != nil {
		return nil, err
	}
	return a, nil
}

// recipient builds the To address from a bare address and a display name.
func recipient(addr, name string) (*mail.Address, error) {
	if addr == "" {
		return nil, errors.New("templates: header To: missing address")
	}
	if err := checkHeaderValue("To", name); err != nil {
		return nil, err
	}
	a, err := mailbox("To", addr)
	if err != nil {
		return nil, err
	}
	if a.Name != "" || strings.ContainsAny(addr, "<>") {
		return nil, fmt.Errorf("templates: header To: %q: want a bare address, the name goes in ToName", addr)
	}
	a.Name = name
	return a, nil
}

// feedbackID checks a Feedback-ID value: colon-separated identifiers of
// printable ASCII without white space (Gmail's "a:b:c:SenderId" form).
func feedbackID(v string) error {
	if len(v) > 200 {
		return fmt.Errorf("%d characters, at most 200", len(v))
	}
	for _, r := range v {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("%q: %q is not allowed", v, r)
		}
	}
	return nil
}

// listID formats `"ListName" <ListID>`, or `<ListID>` without a name (RFC 2919 §3).
func listID(id, name string) (string, error) {
	if id == "" {
		return "", errors.New("missing list id")
	}
	if err := controlChars(id + name); err != nil {
		return "", err
	}
	for _, r := range id { // RFC 2919 §2: list-label is a dot-atom
		if !isAtext(r) && r != '.' {
			return "", fmt.Errorf("list id %q: %q is not allowed", id, r)
		}
	}
	if name == "" {
		return "<" + id + ">", nil
	}
	return phrase(name) + " <" + id + ">", nil
}

// Line budgets of an encoded-word: RFC 2047 §2 keeps a line that holds one to
// 76 characters, so a word on a continuation line (after its folding space)
// has 75, and the first word of the Subject field ("Subject: " before it) 67.
const (
	encodedWordMax   = 75
	encodedWordFirst = 76 - len("Subject: ")
)

// subjectField is the Subject's field body: ASCII words as they are, and each
// run of words that need RFC 2047 encoding as encoded-words holding whole
// words (mime.QEncoding encodes; it would split anywhere at 75 characters).
// go-message's writer folds at white space, so the subject folds only between
// words (RFC 5322 §2.2.3), every line within 76 characters. Only a single word
// too long for one encoded-word is split inside, by mime, losslessly.
func subjectField(s string) string {
	// words[i] is followed by seps[i] (the last by "").
	words := strings.FieldsFunc(s, isWSP)
	seps := make([]string, len(words))
	rest := s
	for i, w := range words {
		rest = rest[strings.Index(rest, w)+len(w):]
		end := strings.IndexFunc(rest, func(r rune) bool { return !isWSP(r) })
		if end < 0 {
			end = len(rest)
		}
		seps[i], rest = rest[:end], rest[end:]
	}
	enc := func(t string) string { return mime.QEncoding.Encode("utf-8", t) } // RFC 2047 §4.2
	needs := func(w string) bool { return enc(w) != w }

	var b strings.Builder
	for i := 0; i < len(words); {
		if !needs(words[i]) {
			b.WriteString(words[i] + seps[i]) // plain text keeps its white space
			i++
			continue
		}
		budget := encodedWordMax
		if b.Len() == 0 {
			budget = encodedWordFirst
		}
		text, j := words[i], i+1
		for ; j < len(words) && needs(words[j]); j++ {
			cand := text + seps[j-1] + words[j]
			if len(enc(cand+seps[j])) > budget {
				break
			}
			text = cand
		}
		if j < len(words) && needs(words[j]) {
			// RFC 2047 §6.2: white space between two encoded-words is
			// dropped on decoding, so the separator goes inside this one.
			b.WriteString(enc(text+seps[j-1]) + " ")
		} else {
			b.WriteString(enc(text) + seps[j-1]) // §5(1): white space beside plain text is kept
		}
		i = j
	}
	return b.String()
}

// isWSP reports RFC 5234 WSP, where a header may fold.
func isWSP(r rune) bool { return r == ' ' || r == '\t' }

// phrase quotes an ASCII display name or RFC 2047-encodes a non-ASCII one.
func phrase(s string) string {
	for _, r := range s {
		if r >= utf8.RuneSelf {
			return mime.QEncoding.Encode("utf-8", s) // RFC 2047 §5(3)
		}
	}
	return `"` + quotedPair.Replace(s) + `"`
}

// quotedPair escapes a quoted-string's backslashes and quotes (RFC 5322 §3.2.4).
var quotedPair = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

// isAtext reports RFC 5322 §3.2.3 atext.
func isAtext(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

// listUnsubscribe formats the RFC 2369 value and says whether an http(s) URI
// is present, which RFC 8058 one-click POSTs to.
func listUnsubscribe(uris []string) (string, bool, error) {
	if len(uris) == 0 {
		return "", false, errors.New("no URI: every message needs an unsubscribe")
	}
	parts := make([]string, 0, len(uris))
	web := false
	for _, u := range uris {
		if err := controlChars(u); err != nil {
			return "", false, err
		}
		// RFC 2369 §2: angle brackets delimit, commas separate; neither may appear inside.
		if u == "" || strings.ContainsAny(u, "<>, ") {
			return "", false, fmt.Errorf("URI %q: empty or holds <, >, comma or space", u)
		}
		p, err := url.Parse(u)
		if err != nil {
			return "", false, fmt.Errorf("URI %q: %w", u, err)
		}
		switch p.Scheme {
		case "https", "http":
			web = true
		case "mailto":
		default:
			return "", false, fmt.Errorf("URI %q: scheme must be https, http or mailto", u)
		}
		parts = append(parts, "<"+u+">")
	}
	return strings.Join(parts, ", "), web, nil
}

// checkMessageID accepts id-left "@" id-right without brackets, spaces or controls.
func checkMessageID(id string) error {
	if err := controlChars(id); err != nil {
		return err
	}
	at := strings.LastIndexByte(id, '@')
	if at <= 0 || at == len(id)-1 || strings.ContainsAny(id, "<> \t\"") { // RFC 5322 §3.6.4
		return fmt.Errorf("%q is not of the form left@right", id)
	}
	return nil
}

// checkHeaderValue refuses, naming the header, a value from data that
// controlChars rejects.
func checkHeaderValue(name, v string) error {
	if err := controlChars(v); err != nil {
		return fmt.Errorf("templates: header %s: %w", name, err)
	}
	return nil
}

// controlChars refuses invalid UTF-8, CR, LF and other control characters
// (tab aside). RFC 5322 §2.2: a field body holds no CR or LF.
func controlChars(v string) error {
	if !utf8.ValidString(v) {
		return errors.New("not valid UTF-8")
	}
	if strings.ContainsAny(v, "\r\n") {
		return errors.New("contains CR or LF")
	}
	for _, r := range v {
		if r != '\t' && unicode.IsControl(r) {
			return fmt.Errorf("contains control character %U", r)
		}
	}
	return nil
}
