package templates

import (
	"strings"
	"testing"
)

// Part gives back each alternative of a rendered message, decoded.
func TestPartReadsBothAlternatives(t *testing.T) {
	s := load(t, goodHTML, goodText)
	msg, err := s.Render(data(), envelope())
	if err != nil {
		t.Fatal(err)
	}
	html, err := Part(msg, "text/html")
	if err != nil || !strings.Contains(string(html), "<html") || !strings.Contains(string(html), "Zoë") {
		t.Errorf("html part: %v\n%s", err, html)
	}
	text, err := Part(msg, "text/plain")
	if err != nil || strings.Contains(string(text), "<html") || !strings.Contains(string(text), "Zoë") {
		t.Errorf("text part: %v\n%s", err, text)
	}
	if _, err := Part(msg, "image/png"); err == nil || !strings.Contains(err.Error(), "no image/png part") {
		t.Errorf("missing part: %v", err)
	}
}
