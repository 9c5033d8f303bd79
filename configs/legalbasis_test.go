package configs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fullLIA = `# LIA

## Purpose
Tell buyers about the release.

## Necessity
Work addresses only.

## 3. Balancing test
Low impact; one-click unsubscribe.
`

// campaignDir writes a campaign file (the head below plus extra lines) and the
// given side files into a temp dir and returns the campaign's path.
func campaignDir(t *testing.T, extra string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	head := "id: c1\n" + // 1
		"list: news\n" + // 2
		"from: \"Ana <ana@example.com>\"\n" + // 3
		"subject: Hi\n" + // 4
		"template: t\n" + // 5
		"recipients: r.csv\n" // 6
	p := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(p, []byte(head+extra), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLegalBasis(t *testing.T) {
	lia := map[string]string{"lia.md": fullLIA}
	tests := []struct {
		name  string
		extra string // from line 7
		files map[string]string
		want  []string // problems after "c.yaml:", in order; none = loads
	}{
		{"consent needs no lia", "legal_basis: consent\n", nil, nil},
		{"consent b2c", "legal_basis: consent\naudience: b2c\n", nil, nil},
		{"li with lia and b2b", "legal_basis: legitimate_interest\nlia: lia.md\naudience: b2b\n", lia, nil},
		{"li without lia", "legal_basis: legitimate_interest\naudience: b2b\n", nil,
			[]string{`7: lia: required when legal_basis is legitimate_interest`}},
		{"li with empty lia", "legal_basis: legitimate_interest\nlia: \"\"\naudience: b2b\n", nil,
			[]string{`8: lia: must name the legitimate-interest assessment`}},
		{"li lia file absent", "legal_basis: legitimate_interest\naudience: b2b\nlia: nope.md\n", nil,
			[]string{`9: lia: cannot read the legitimate-interest assessment: open `}},
		{"li lia lacks necessity", "legal_basis: legitimate_interest\nlia: lia.md\naudience: b2b\n",
			map[string]string{"lia.md": strings.Replace(fullLIA, "## Necessity", "Necessity:", 1)},
			[]string{`8: lia: ` + "LIADIR" + `lia.md: no "Necessity" section (a markdown heading such as "## Necessity")`}},
		{"li lia section empty", "legal_basis: legitimate_interest\nlia: lia.md\naudience: b2b\n",
			map[string]string{"lia.md": "# Purpose\ntext\n# Necessity\n<!-- to do -->\n## Detail\nmore\n# Balancing\n\n"},
			[]string{`8: lia: ` + "LIADIR" + `lia.md: the "Balancing" section has no text`}},
		{"li b2c", "legal_basis: legitimate_interest\nlia: lia.md\naudience: b2c\n", lia,
			[]string{`9: audience: b2c is not allowed with legal_basis legitimate_interest`}},
		{"li without audience", "legal_basis: legitimate_interest\nlia: lia.md\n", lia,
			[]string{`7: audience: required when legal_basis is legitimate_interest`}},
		{"li without anything", "legal_basis: legitimate_interest\n", nil, []string{
			`7: lia: required when legal_basis is legitimate_interest`,
			`7: audience: required when legal_basis is legitimate_interest`,
		}},
		{"unknown country code", "legal_basis: consent\nexclude_countries:\n  - eu\n  - XX\n  - Germany\nunknown_country: maybe\n", nil, []string{
			`10: exclude_countries[1]: "XX" is not an ISO 3166-1 alpha-2 country code nor one of the groups EU, EEA, UK`,
			`11: exclude_countries[2]: "Germany" is not an ISO 3166-1 alpha-2`,
			`12: unknown_country: "maybe" must be exclude or include`,
		}},
		{"exclude_countries wrong type", "legal_basis: consent\nexclude_countries: {EU: 1}\n", nil,
			[]string{`8: exclude_countries: expected a list such as [EU, CH]`}},
		{"bad freemail list", "legal_basis: legitimate_interest\nlia: lia.md\naudience: b2b\nfreemail_list: fm.txt\n",
			map[string]string{"lia.md": fullLIA, "fm.txt": "# mine\ngmail.com\nnot a domain\n@aol.com\n"}, []string{
				`10: freemail_list: ` + "LIADIR" + `fm.txt:3: "not a domain" is not a domain name`,
				`10: freemail_list: ` + "LIADIR" + `fm.txt:4: "@aol.com" is not a domain name`,
			}},
		{"absent freemail list", "legal_basis: consent\nfreemail_list: none.txt\n", nil,
			[]string{`8: freemail_list: configs: read free-mail list: open `}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := campaignDir(t, tt.extra, tt.files)
			c, err := LoadCampaign(p)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if c == nil {
					t.Fatal("nil campaign")
				}
				return
			}
			if err == nil {
				t.Fatal("loaded without error")
			}
			got := problems(t, err)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(got), len(tt.want), err)
			}
			for i, w := range tt.want {
				w = p + ":" + strings.ReplaceAll(w, "LIADIR", filepath.Dir(p)+string(filepath.Separator))
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("problem %d:\n got %s\nwant %s…", i, got[i], w)
				}
			}
		})
	}
}

func TestLegalBasisLoaded(t *testing.T) {
	p := campaignDir(t, "legal_basis: legitimate_interest\nlia: lia.md\naudience: b2b\nexclude_countries: [eu, UK, ch, el]\n",
		map[string]string{"lia.md": fullLIA})
	c, err := LoadCampaign(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(fullLIA))
	if c.LIAHash() != hex.EncodeToString(sum[:]) {
		t.Errorf("LIAHash = %q", c.LIAHash())
	}
	if !c.FreeMail["gmail.com"] || c.FreeMail["example.com"] {
		t.Errorf("FreeMail not the embedded list: %d domains", len(c.FreeMail))
	}
	if c.UnknownCountry != UnknownExclude {
		t.Errorf("UnknownCountry = %q, want the exclude default", c.UnknownCountry)
	}
	ex := c.ExcludedCountries()
	if len(ex) != 29 || !ex["DE"] || !ex["HU"] || !ex["GR"] || !ex["GB"] || !ex["CH"] || ex["NO"] || ex["US"] {
		t.Errorf("ExcludedCountries = %v", ex)
	}
	ex["US"] = true
	if c.ExcludedCountries()["US"] {
		t.Error("ExcludedCountries hands out its own map")
	}
	if got := fmt.Sprint(c.ExcludeCountries); got != "[eu UK ch el]" {
		t.Errorf("ExcludeCountries = %s, want as written", got)
	}

	// Consent: no free-mail list, include by default, no hash without a lia.
	c, err = LoadCampaign(campaignDir(t, "legal_basis: consent\n", nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.FreeMail != nil || c.UnknownCountry != UnknownInclude || c.LIAHash() != "" || len(c.ExcludedCountries()) != 0 {
		t.Errorf("consent campaign: FreeMail %d, UnknownCountry %q, LIAHash %q", len(c.FreeMail), c.UnknownCountry, c.LIAHash())
	}
	// A scalar is a list of one; an explicit include stays.
	c, err = LoadCampaign(campaignDir(t, "legal_basis: consent\nexclude_countries: EEA\nunknown_country: Include\n", nil))
	if err != nil {
		t.Fatal(err)
	}
	if ex := c.ExcludedCountries(); len(ex) != 30 || !ex["NO"] || !ex["IS"] || !ex["LI"] || c.UnknownCountry != UnknownInclude {
		t.Errorf("EEA: %v, UnknownCountry %q", ex, c.UnknownCountry)
	}
}

func TestExpandCountries(t *testing.T) {
	tests := []struct {
		in      []string
		n       int
		has     []string
		unknown []string
	}{
		{[]string{"EU"}, 27, []string{"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"}, nil},
		{[]string{"eea"}, 30, []string{"IS", "LI", "NO", "DE"}, nil},
		{[]string{"UK"}, 1, []string{"GB"}, nil},
		{[]string{"gb", "El", " us "}, 3, []string{"GB", "GR", "US"}, nil},
		{[]string{"NO", "xk"}, 2, []string{"NO", "XK"}, nil},
		{[]string{"XX", "DEU", "", "Germany"}, 0, nil, []string{"XX", "DEU", "", "Germany"}},
	}
	for _, tt := range tests {
		set, unknown := ExpandCountries(tt.in)
		if len(set) != tt.n || fmt.Sprint(unknown) != fmt.Sprint(tt.unknown) {
			t.Errorf("ExpandCountries(%q) = %v, %q", tt.in, set, unknown)
		}
		for _, c := range tt.has {
			if !set[c] {
				t.Errorf("ExpandCountries(%q) lacks %s", tt.in, c)
			}
		}
	}
	if n := len(countryCodes); n != 250 {
		t.Errorf("%d country codes, want 249 ISO + XK", n)
	}
}

func TestFreeMailDomains(t *testing.T) {
	embedded, err := FreeMailDomains("")
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := FreeMailDomains("freemail.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(embedded) < 150 || len(embedded) != len(shipped) {
		t.Errorf("embedded %d domains, shipped file %d", len(embedded), len(shipped))
	}
	for _, d := range []string{"gmail.com", "googlemail.com", "yahoo.co.uk", "outlook.com", "hotmail.de", "aol.com",
		"icloud.com", "gmx.de", "web.de", "mail.ru", "proton.me", "zohomail.com", "orange.fr", "t-online.de", "qq.com", "163.com", "naver.com"} {
		if !embedded[d] {
			t.Errorf("embedded list lacks %s", d)
		}
	}
	for _, d := range []string{"zoho.com", "google.com", "microsoft.com", "example.com"} {
		if embedded[d] {
			t.Errorf("embedded list holds business domain %s", d)
		}
	}
	p := filepath.Join(t.TempDir(), "fm.txt")
	if err := os.WriteFile(p, []byte("\uFEFFMail.Example # mine\n\n  other.example  \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := FreeMailDomains(p)
	if err != nil || len(got) != 2 || !got["mail.example"] || !got["other.example"] {
		t.Errorf("operator list = %v, %v", got, err)
	}
}

func TestLIATemplates(t *testing.T) {
	example, err := os.ReadFile("lia/example.md")
	if err != nil {
		t.Fatal(err)
	}
	if m := CheckLIA(string(example)); len(m) != 0 {
		t.Errorf("lia/example.md: %q", m)
	}
	tmpl, err := os.ReadFile("lia/TEMPLATE.md")
	if err != nil {
		t.Fatal(err)
	}
	want := `[the "Purpose" section has no text the "Necessity" section has no text the "Balancing" section has no text]`
	if m := CheckLIA(string(tmpl)); fmt.Sprint(m) != want {
		t.Errorf("unfilled lia/TEMPLATE.md: %q, want every section empty", m)
	}
	setext := "Purpose\n=======\nwhy\n\nNecessity\n---------\nhow\n\nBALANCING\n---\nfine\n"
	if m := CheckLIA(setext); len(m) != 0 {
		t.Errorf("setext headings: %q", m)
	}
	if m := CheckLIA("no headings, just text about purpose, necessity and balancing\n"); len(m) != 3 {
		t.Errorf("plain text: %q", m)
	}
}

func TestShippedCampaignLegalBasis(t *testing.T) {
	c, err := LoadCampaign("campaigns/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile("lia/example.md")
	sum := sha256.Sum256(data)
	abs, _ := filepath.Abs("freemail.txt")
	if c.LIAHash() != hex.EncodeToString(sum[:]) || c.FreeMailList != abs || !c.FreeMail["gmail.com"] ||
		c.UnknownCountry != UnknownInclude || len(c.ExcludedCountries()) != 0 {
		t.Errorf("LIAHash %q, FreeMailList %q (%d), UnknownCountry %q", c.LIAHash(), c.FreeMailList, len(c.FreeMail), c.UnknownCountry)
	}
}

func TestCountryCode(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"DE", "DE", true}, {"de", "DE", true}, {" De ", "DE", true}, {"EL", "GR", true}, {"uk", "GB", true},
		{"Germany", "DE", true}, {"GERMANY", "DE", true}, {"United  Kingdom", "GB", true}, {"U.K.", "GB", true},
		{"the Netherlands", "NL", true}, {"España", "ES", true}, {"Norway", "NO", true}, {"USA", "US", true},
		{"", "", false}, {"XX", "", false}, {"Narnia", "", false}, {"DEU", "", false},
	}
	for _, tt := range tests {
		got, ok := CountryCode(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("CountryCode(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	// Every EEA country and the UK can be named in English, and every name maps to a real code.
	set, _ := ExpandCountries([]string{"EEA", "UK"})
	for c := range set {
		found := false
		for _, code := range countryNames {
			found = found || code == c
		}
		if !found {
			t.Errorf("no English name for %s", c)
		}
	}
	for name, code := range countryNames {
		if !countryCodes[code] {
			t.Errorf("countryNames[%q] = %q is not an ISO code", name, code)
		}
	}
}
