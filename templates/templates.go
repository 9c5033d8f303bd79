// Package templates parses a campaign's HTML body, plain-text body and subject,
// proves with sentinel data that every rendering carries the unsubscribe and
// privacy links, and renders one recipient's message as multipart/alternative
// MIME (CRLF, unsigned) with the list headers of RFC 2369, RFC 2919 and RFC 8058.
//
// A Set is parsed once by Load and is safe for concurrent Render calls. Header
// values that come from data are checked for CR, LF and other control
// characters and refused, never emitted.
package templates

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"os"
	"path/filepath"
	"strings"
	texttemplate "text/template"
	"time"
)

// Data is what the templates see for one recipient.
type Data struct {
	FirstName, LastName, Company, JobTitle, Country, Email string
	Fields                                                 map[string]string // extra CSV columns; missing keys render empty
	UnsubscribeURL, PrivacyURL                             string
}

// Envelope holds the header values of one message.
type Envelope struct {
	From, ReplyTo string    // "Name <addr>" forms
	To, ToName    string    // bare recipient address and its display name
	MessageID     string    // without <>
	Date          time.Time // Date header
	ListID        string    // "product-news.mail.example.com"
	ListName      string    // optional List-Id phrase
	Unsubscribe   []string  // List-Unsubscribe URIs, https first
	// FeedbackID, when set, is the Feedback-ID field ("campaign:list:sender"),
	// the key of Gmail's feedback loop; it must be DKIM-signed to count.
	FeedbackID string
}

// Set is a parsed HTML body, text body and subject; safe for concurrent use.
type Set struct {
	htmlPath, textPath string
	html               *htmltemplate.Template
	text               *texttemplate.Template
	subject            *texttemplate.Template
	fieldKeys          []string // .Fields keys the templates name, for Validate
	hash               string   // sha256 of the bodies and the subject (Hash)
}

// Hash is the sha256 (hex) of the set's HTML and text bodies, as loaded: a
// re-run of a campaign compares it to tell that the content changed.
func (s *Set) Hash() string { return s.hash }

// missingKey makes a missing .Fields key render as "" rather than "<no value>".
const missingKey = "missingkey=zero"

// Load parses base+".html" (html/template), base+".txt" (text/template) and the
// subject (text/template named "subject"). Both files are required.
func Load(base, subject string) (*Set, error) {
	htmlSrc, err := os.ReadFile(base + ".html")
	if err != nil {
		return nil, fmt.Errorf("templates: read HTML body: %w", err)
	}
	textSrc, err := os.ReadFile(base + ".txt")
	if err != nil {
		return nil, fmt.Errorf("templates: read text body: %w", err)
	}
	return Parse(base, htmlSrc, textSrc, subject)
}

// Parse is Load for bodies already in memory (embedded ones); base names
// them in errors as base+".html" and base+".txt".
func Parse(base string, htmlSrc, textSrc []byte, subject string) (*Set, error) {
	s := &Set{htmlPath: base + ".html", textPath: base + ".txt"}
	h := sha256.New()
	for _, part := range [][]byte{htmlSrc, textSrc} {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(part)))) // length-prefixed: no ambiguous split
		h.Write(part)
	}
	s.hash = hex.EncodeToString(h.Sum(nil))
	var err error
	// Template names are the file names, so parse and exec errors say "example.html:12".
	s.html, err = htmltemplate.New(filepath.Base(s.htmlPath)).Option(missingKey).Parse(string(htmlSrc))
	if err != nil {
		return nil, fmt.Errorf("templates: parse %s: %w", s.htmlPath, err)
	}
	s.text, err = texttemplate.New(filepath.Base(s.textPath)).Option(missingKey).Parse(string(textSrc))
	if err != nil {
		return nil, fmt.Errorf("templates: parse %s: %w", s.textPath, err)
	}
	if strings.TrimSpace(subject) == "" {
		return nil, errors.New("templates: subject is empty")
	}
	s.subject, err = texttemplate.New("subject").Option(missingKey).Parse(subject)
	if err != nil {
		return nil, fmt.Errorf("templates: parse subject: %w", err)
	}
	s.fieldKeys = s.collectFieldKeys()
	return s, nil
}

// Files returns the paths of the HTML and text bodies.
func (s *Set) Files() []string { return []string{s.htmlPath, s.textPath} }

// Subject renders the subject for d: trimmed, non-empty, free of control characters.
func (s *Set) Subject(d Data) (string, error) {
	var b strings.Builder
	left := MaxMessageBytes
	if err := s.subject.Execute(capWriter{&b, &left}, d); err != nil {
		return "", fmt.Errorf("templates: render subject: %w", err)
	}
	subj := strings.TrimSpace(b.String())
	if err := checkHeaderValue("Subject", subj); err != nil {
		return "", err
	}
	if subj == "" {
		return "", errors.New("templates: header Subject: renders empty")
	}
	return subj, nil
}

// MaxMessageBytes caps a rendered message: the subject and both bodies
// together, and the encoded message. 10 MB is the SIZE (RFC 1870) most
// receivers accept; a template that renders more (a huge range) is stopped
// there, with an error naming it.
const MaxMessageBytes = 10 << 20

// ErrTooLarge is the error of a render that passed MaxMessageBytes.
var ErrTooLarge = fmt.Errorf("message over the %d-byte cap (MaxMessageBytes)", MaxMessageBytes)

// capWriter fails every write once its budget of bytes is spent, so the
// template engine, which stops at a write error, stops there.
type capWriter struct {
	w    io.Writer
	left *int // shared by the writers of one message
}

func (c capWriter) Write(p []byte) (int, error) {
	if len(p) > *c.left {
		return 0, ErrTooLarge
	}
	*c.left -= len(p)
	return c.w.Write(p)
}

// bodies executes the text and HTML templates for d into text and html.
func (s *Set) bodies(d Data, text, html *bytes.Buffer) error {
	left := MaxMessageBytes
	return s.bodiesCapped(d, text, html, &left)
}

// bodiesCapped is bodies within a budget of left bytes, which it spends.
func (s *Set) bodiesCapped(d Data, text, html *bytes.Buffer, left *int) error {
	if err := s.text.Execute(capWriter{text, left}, d); err != nil {
		return fmt.Errorf("templates: render %s: %w", s.textPath, err)
	}
	if err := s.html.Execute(capWriter{html, left}, d); err != nil {
		return fmt.Errorf("templates: render %s: %w", s.htmlPath, err)
	}
	return nil
}
