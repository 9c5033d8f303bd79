package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLanguageKeys: a list's and a campaign's language: are read, must be
// one of the pages' languages, and a bad one is named with file and line.
func TestLanguageKeys(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pw.yaml")
	server := `hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
lists:
  news: {name: "Neuigkeiten", double_opt_in: true, language: de}
  ops: {double_opt_in: false}
`
	if err := os.WriteFile(p, []byte(server), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	if s.Lists["news"].Language != "de" || s.Lists["ops"].Language != "" {
		t.Errorf("lists: %+v", s.Lists)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(server, "language: de", "language: klingon", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadServer(bad); err == nil || !strings.Contains(err.Error(), `bad.yaml:6: lists.news.language: "klingon" is not a page language`) {
		t.Errorf("bad list language: %v", err)
	}

	data, err := os.ReadFile("campaigns/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseCampaign(filepath.Join(dir, "c.yaml"), filepath.Join("campaigns", "c.yaml"), append(data, "language: pl\n"...))
	if err != nil {
		t.Fatal(err)
	}
	if c.Language != "pl" {
		t.Errorf("campaign language %q", c.Language)
	}
	if shipped, err := LoadCampaign("campaigns/example.yaml"); err != nil || shipped.Language != "" {
		t.Errorf("shipped campaign: %v, language %q", err, shipped.Language)
	}
	_, err = parseCampaign(filepath.Join(dir, "c.yaml"), filepath.Join("campaigns", "c.yaml"), append(data, "language: de-AT\n"...))
	if err == nil || !strings.Contains(err.Error(), `language: "de-AT" is not a page language`) {
		t.Errorf("bad campaign language: %v", err)
	}
}
