package templates

import (
	"bytes"
	"mime"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"
)

// Long subjects fold only between words (RFC 5322 §2.2.3), keep every line
// of the field within 76 characters where an encoded-word is (RFC 2047 §2),
// and decode back to the subject as written.
func TestLongSubjectFoldsAtSpaces(t *testing.T) {
	for _, subj := range []string{
		"Quarterly update for Acme Corporation: new pricing, new warehouse locations and an invitation to our customer day in Rotterdam",
		"Größere Lieferungen für die Müller GmbH: neue Preise, neue Lagerstandorte und eine Einladung zum Kundentag in Düsseldorf",
		"Zoë, Ünïcode GmbH: ça déménage à Évry — réunion spéciale pour les clients privilégiés de l’année prochaine, écrivez-nous",
		"Νέες τιμές για την εταιρεία σας και μια πρόσκληση στην ημέρα πελατών μας τον Μάιο στην Αθήνα, με καφέ",
		"Neu: Lieferungen  mit\tzwei Leerzeichen für Müller und Söhne, überall in Österreich, der Schweiz und Südtirol, schnell",
	} {
		s, err := Parse("long", []byte(goodHTML), []byte(goodText), subj)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := s.Render(data(), envelope())
		if err != nil {
			t.Fatalf("Render: %v", err)
		}
		mr, err := mail.CreateReader(bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := mr.Header.Subject(); err != nil || got != subj {
			t.Errorf("decoded Subject = %q, %v\nwant %q", got, err, subj)
		}

		lines := subjectLines(t, msg)
		if len(lines) < 2 {
			t.Errorf("%q: not folded: %q", subj, lines)
		}
		words := strings.Fields(subj)
		at := 0 // index in words of the next line's first word
		var dec mime.WordDecoder
		for i, l := range lines {
			if len(l) > 76 {
				t.Errorf("line %d of Subject is %d characters: %q", i, len(l), l)
			}
			if i == 0 {
				l = strings.TrimPrefix(l, "Subject:")
			}
			d, err := dec.DecodeHeader(l)
			if err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			// Each line holds whole words, in order: the fold was between two.
			lw := strings.Fields(d)
			if at+len(lw) > len(words) || strings.Join(lw, " ") != strings.Join(words[at:at+len(lw)], " ") {
				t.Errorf("%q: line %d %q (decoded %q) does not hold whole words at word %d", subj, i, l, d, at)
				break
			}
			at += len(lw)
		}
	}
}

// A word too long for one encoded-word is split by mime, inside the word,
// and still decodes back whole.
func TestGiantWordSubjectDecodes(t *testing.T) {
	subj := "Betreff: " + strings.Repeat("Größenordnung", 12) + " und so weiter"
	s, err := Parse("long", []byte(goodHTML), []byte(goodText), subj)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.Render(data(), envelope())
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	mr, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := mr.Header.Subject(); err != nil || got != subj {
		t.Errorf("decoded Subject = %q, %v\nwant %q", got, err, subj)
	}
	for i, l := range subjectLines(t, msg) {
		if len(l) > 76 {
			t.Errorf("line %d of Subject is %d characters: %q", i, len(l), l)
		}
	}
}

// subjectLines are the raw lines of the Subject field, first to last.
func subjectLines(t *testing.T, msg []byte) []string {
	t.Helper()
	hdr, _, _ := strings.Cut(string(msg), "\r\n\r\n")
	var out []string
	in := false
	for _, l := range strings.Split(hdr, "\r\n") {
		switch {
		case strings.HasPrefix(l, "Subject:"):
			in = true
		case in && (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")):
		default:
			in = false
		}
		if in {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		t.Fatal("no Subject field")
	}
	return out
}
