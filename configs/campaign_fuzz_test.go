package configs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseCampaign checks that no campaign file panics the decoder, that
// every refusal is Errors whose lines name the file, and that an accepted
// campaign holds what Send relies on.
func FuzzParseCampaign(f *testing.F) {
	files, _ := filepath.Glob("testdata/campaign*.yaml")
	files = append(files, "campaigns/example.yaml")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		"id: a\nlist: b\nfrom: a@example.com\nsubject: Hi\ntemplate: t\nrecipients: r.csv\nlegal_basis: consent\n",
		"id: a\nlist: b\nfrom: a@example.com\nsubject: Hi\ntemplate: t\nrecipients: r.csv\nlegal_basis: consent\nrate: 10/s\nexclude_countries: [EU, us]\nunknown_country: include\n",
		"id: [1, 2]\nlist: {a: b}\nfrom: \"x\\r\\nBcc: y@example.com\"\nrate: -1/h\n",
		"id: &a x\nlist: *a\nfrom: *a\n",
		"- a\n- b\n",
		"id: a\nid: b\n",
		"",
	} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	path := filepath.Join(dir, "fuzz.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseCampaign(path, path, data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %v is %T, not Errors", err, err)
			}
			for _, e := range errs {
				if !strings.HasPrefix(e.Error(), path+":") {
					t.Fatalf("error %q does not name the file", e)
				}
			}
			return
		}
		if c == nil || !idPattern.MatchString(c.ID) || !idPattern.MatchString(c.List) ||
			strings.ContainsAny(c.Subject+c.From+c.ReplyTo+c.ListName, "\r\n") ||
			(c.LegalBasis != LegitimateInterest && c.LegalBasis != Consent) ||
			!filepath.IsAbs(c.Template) || !filepath.IsAbs(c.Recipients) {
			t.Fatalf("accepted a campaign Send cannot trust: %+v", c)
		}
	})
}
