package mta

import (
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

// writeOutbox creates files (name → content) in a fresh folder; each is
// dated age ago.
func writeOutbox(t *testing.T, files map[string]string, age map[string]time.Duration) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if d, ok := age[name]; ok {
			at := time.Now().Add(-d)
			if err := os.Chtimes(p, at, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub.eml"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func left(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range entries {
		names = append(names, de.Name())
	}
	sort.Strings(names)
	return names
}

func same(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOutboxRemove(t *testing.T) {
	dir := writeOutbox(t, map[string]string{
		"q1.eml":          "a",
		".q1.eml.tmp-123": "half",
		"q10.eml":         "another message",
		".q10.eml.tmp-9":  "another half",
		"q1.eml.notes":    "not ours",
		"notes.txt":       "not ours",
	}, nil)
	o := NewOutbox(dir)
	n, err := o.Remove("q1")
	if err != nil || n != 2 {
		t.Fatalf("Remove(q1) = %d, %v; want 2", n, err)
	}
	want := []string{".q10.eml.tmp-9", "notes.txt", "q1.eml.notes", "q10.eml", "sub.eml"}
	if got := left(t, dir); !same(got, want) {
		t.Fatalf("left %v, want %v", got, want)
	}
	if n, err := o.Remove("q1"); err != nil || n != 0 {
		t.Fatalf("second Remove(q1) = %d, %v; want 0", n, err)
	}
	for _, id := range []string{"", "*", "../q10", "q1?"} {
		if n, err := o.Remove(id); err != nil || n != 0 {
			t.Fatalf("Remove(%q) = %d, %v; want nothing removed", id, n, err)
		}
	}
	if got := left(t, dir); !same(got, want) {
		t.Fatalf("bad ids removed files: left %v", got)
	}
	if n, err := NewOutbox("").Remove("q1"); err != nil || n != 0 {
		t.Fatalf("no outbox: Remove = %d, %v", n, err)
	}
}

func TestOutboxRemoveMentioning(t *testing.T) {
	dir := writeOutbox(t, map[string]string{
		"q1.eml":          "To: Ana@Example.org\r\n",
		".q2.eml.tmp-1":   "To: ana@example.org\r\n",
		"q3.eml":          "To: bob@example.org\r\n",
		"ana@example.org": "not a capture file",
	}, nil)
	n, err := NewOutbox(dir).RemoveMentioning("ANA@example.org")
	if err != nil || n != 2 {
		t.Fatalf("RemoveMentioning = %d, %v; want 2", n, err)
	}
	want := []string{"ana@example.org", "q3.eml", "sub.eml"}
	if got := left(t, dir); !same(got, want) {
		t.Fatalf("left %v, want %v", got, want)
	}
	if n, err := NewOutbox(filepath.Join(dir, "missing")).RemoveMentioning("ana@example.org"); err != nil || n != 0 {
		t.Fatalf("missing outbox: %d, %v", n, err)
	}
}

// RemoveAddressed removes the files whose To, Cc or Bcc header names an
// address the caller recognises (by index, in a cluster), and keeps those
// that only mention it elsewhere or whose header does not parse.
func TestOutboxRemoveAddressed(t *testing.T) {
	dir := writeOutbox(t, map[string]string{
		"q1.eml": "To: \"Ana Z\" <Ana@Example.org>\r\nSubject: hi\r\n\r\nbody\r\n",
		"q2.eml": "To: bob@example.org\r\nCc: x@example.org, ana@example.org\r\n\r\nbody\r\n",
		"q3.eml": "To: bob@example.org\r\n\r\nwrite to ana@example.org\r\n",
		"q4.eml": "not a header at all",
	}, nil)
	var seen []string
	n, err := NewOutbox(dir).RemoveAddressed(func(a string) bool {
		seen = append(seen, a)
		return a == "Ana@Example.org" || a == "ana@example.org"
	})
	if err != nil || n != 2 {
		t.Fatalf("RemoveAddressed = %d, %v; want 2 (seen %v)", n, err, seen)
	}
	if got, want := left(t, dir), []string{"q3.eml", "q4.eml", "sub.eml"}; !same(got, want) {
		t.Fatalf("left %v, want %v", got, want)
	}
}

// Mentioning finds a person's capture files by content, in any case, and
// changes nothing.
func TestOutboxMentioning(t *testing.T) {
	dir := writeOutbox(t, map[string]string{
		"q1.eml":          "To: Ana@Example.org\r\n",
		".q2.eml.tmp-1":   "To: ana@example.org\r\n",
		"q3.eml":          "To: bob@example.org\r\n",
		"ana@example.org": "not a capture file",
	}, nil)
	got := map[string]string{}
	err := NewOutbox(dir).Mentioning("ANA@example.org", func(name string, body []byte) error {
		got[name] = string(body)
		return nil
	})
	if err != nil || len(got) != 2 || got["q1.eml"] != "To: Ana@Example.org\r\n" || got[".q2.eml.tmp-1"] == "" {
		t.Fatalf("Mentioning = %v, %v; want q1.eml and .q2.eml.tmp-1", got, err)
	}
	if n := len(left(t, dir)); n != 5 {
		t.Fatalf("%d files left, want all 5", n)
	}
	if err := NewOutbox(filepath.Join(dir, "missing")).Mentioning("ana@example.org", nil); err != nil {
		t.Fatalf("missing outbox: %v", err)
	}
}

func TestOutboxPrune(t *testing.T) {
	day := 24 * time.Hour
	dir := writeOutbox(t, map[string]string{
		"old.eml":          "x",
		".crash.eml.tmp-1": "x",
		"new.eml":          "x",
		"old.txt":          "x",
	}, map[string]time.Duration{"old.eml": 40 * day, ".crash.eml.tmp-1": 40 * day, "new.eml": day, "old.txt": 40 * day})
	n, err := NewOutbox(dir).Prune(time.Now().Add(-30 * day))
	if err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v; want 2", n, err)
	}
	want := []string{"new.eml", "old.txt", "sub.eml"}
	if got := left(t, dir); !same(got, want) {
		t.Fatalf("left %v, want %v", got, want)
	}
	if n, err := NewOutbox("").Prune(time.Now()); err != nil || n != 0 {
		t.Fatalf("no outbox: Prune = %d, %v", n, err)
	}
}

// A capture written by the Sender is found by every operation of Outbox.
func TestOutboxOfSender(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	s := newSender(t, Config{Mode: ModeCapture, CaptureDir: dir}, false)
	mustDeliver(t, s, "q1", "ana@example.org", msg)
	mustDeliver(t, s, "q2", "bob@example.org", msg)
	o := NewOutbox(dir)
	if o.Path("q1") != s.CapturePath("q1") {
		t.Fatalf("Path %s, CapturePath %s", o.Path("q1"), s.CapturePath("q1"))
	}
	if n, err := o.Remove("q1"); err != nil || n != 1 {
		t.Fatalf("Remove = %d, %v", n, err)
	}
	if n, err := o.Prune(time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
}
