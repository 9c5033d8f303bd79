package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A 10 MB campaign id is refused with an error quoting at most ~80
// characters of it.
func TestHugeIDQuotedShort(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	id := strings.Repeat("x", 10<<20)
	yaml := "id: " + id + "\nlist: news\nfrom: a@example.com\nsubject: Hi\ntemplate: t\nrecipients: r.csv\nlegal_basis: consent\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadCampaign(path)
	if err == nil {
		t.Fatal("a 10 MB id was accepted")
	}
	msg := err.Error()
	if len(msg) > 400 || !strings.Contains(msg, path+":1: id: \""+strings.Repeat("x", 80)+"\"…") {
		t.Fatalf("error (%d bytes) = %.300s", len(msg), msg)
	}
}
