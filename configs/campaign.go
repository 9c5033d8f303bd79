package configs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Legal bases and audiences a campaign may name.
const (
	LegitimateInterest = "legitimate_interest"
	Consent            = "consent"
	AudienceB2B        = "b2b"
	AudienceB2C        = "b2c"
)

// Campaign is one campaign file; keys mirror the YAML.
type Campaign struct {
	Path       string // absolute path of the file
	ID         string // stable id, [A-Za-z0-9._-]{1,64}
	List       string // list people unsubscribe from, same charset
	ListName   string // optional List-Id display name
	From       string // "Name <addr>", checked with net/mail
	ReplyTo    string // optional, checked with net/mail
	Subject    string // text/template source
	Template   string // absolute base path: Template+".html" and Template+".txt"
	Recipients string // absolute path of the CSV
	LegalBasis string // legitimate_interest | consent
	LIA        string // absolute path of the legitimate-interest assessment, or ""
	Audience   string // b2b | b2c
	PrivacyURL string // overrides the server's when set
	// Language is the language (a locale code such as "de") of the pages
	// the campaign's unsubscribe links open, whatever the browser asks
	// for; "" leaves it to the list's language, then the browser's.
	Language string
	// Rate is this campaign's own ceiling in messages per second ("rate:
	// 50/s"); 0 is unlimited.
	Rate float64
	// ExcludeCountries is exclude_countries as written: ISO 3166-1 alpha-2
	// codes or the groups EU, EEA, UK, any case. ExcludedCountries gives the
	// expanded set.
	ExcludeCountries []string
	// UnknownCountry decides for rows whose country is empty or not
	// recognised: "exclude" or "include"; the default is exclude when any
	// country is excluded, else include.
	UnknownCountry string
	// FreeMailList is the absolute path of freemail_list, or "" for the
	// embedded configs/freemail.txt.
	FreeMailList string
	// FreeMail is the set of consumer mailbox domains (lower case), loaded
	// from FreeMailList or the embedded list when legal_basis is
	// legitimate_interest or freemail_list is given; nil otherwise.
	FreeMail map[string]bool
	// Pool names the sending pool (sources and pools arrive later; the name
	// is checked and recorded); default "default".
	Pool string
	// Brakes are the campaign's own brakes as written; fields not given take
	// the server's delivery.brakes (Brakes.Over).
	Brakes Brakes

	lines    map[string]int
	hash     string
	excluded map[string]bool // ExcludeCountries expanded
	liaHash  string          // sha256 hex of the LIA file as read at load
	liaHeads []string        // the LIA's headings as read at load
}

// Unknown-country policies.
const (
	UnknownExclude = "exclude"
	UnknownInclude = "include"
)

// ExcludedCountries returns a copy of the expanded exclude_countries set:
// upper-case ISO 3166-1 alpha-2 codes (EU, EEA and UK become their members,
// EL becomes GR, UK becomes GB). It is empty when nothing is excluded.
func (c *Campaign) ExcludedCountries() map[string]bool {
	out := make(map[string]bool, len(c.excluded))
	for k := range c.excluded {
		out[k] = true
	}
	return out
}

// LIAHash returns the sha256 hex of the legitimate-interest assessment file
// as read at load, or "" when the campaign names none.
func (c *Campaign) LIAHash() string { return c.liaHash }

// LIAHeadings returns the headings of the legitimate-interest assessment as
// read at load (LIAHeadings), or nil when the campaign names none.
func (c *Campaign) LIAHeadings() []string { return c.liaHeads }

// idPattern is the charset of id and list.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Line returns the line of a top-level key in the file, or 0 when absent, so
// later checks can say "example.yaml:7: template: …".
func (c *Campaign) Line(key string) int { return c.lines[key] }

// Hash returns the sha256 hex of the campaign file's bytes as loaded.
func (c *Campaign) Hash() (string, error) {
	if c.hash != "" {
		return c.hash, nil
	}
	data, err := os.ReadFile(c.Path)
	if err != nil {
		return "", fmt.Errorf("configs: hash campaign: %w", err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// LoadCampaign reads the campaign file at path, resolving template,
// recipients, lia and freemail_list against its folder. All problems come back
// at once as Errors, each "file:line: field: problem". Of the files named, only
// the assessment (lia: read, hashed and, under legitimate_interest, checked
// for its Purpose, Necessity and Balancing sections) and the free-mail list
// are opened here.
func LoadCampaign(path string) (*Campaign, error) {
	return loadCampaign(path, false)
}

// LoadCampaignToSend is LoadCampaign for a campaign about to be validated
// or sent: it also checks that the recipients file and the template's two
// bodies are there, so one run names every wrong path with the other
// problems.
func LoadCampaignToSend(path string) (*Campaign, error) {
	return loadCampaign(path, true)
}

func loadCampaign(path string, files bool) (*Campaign, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("configs: read campaign: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("configs: %s: %w", path, err)
	}
	return parseCampaignFiles(path, abs, data, files)
}

// parseCampaign is LoadCampaign on the bytes of the file path, whose
// absolute path is abs.
func parseCampaign(path, abs string, data []byte) (*Campaign, error) {
	return parseCampaignFiles(path, abs, data, false)
}

// parseCampaignFiles is parseCampaign, checking the named files when files is set.
func parseCampaignFiles(path, abs string, data []byte, files bool) (*Campaign, error) {
	d := newDecoder(path)
	sum := sha256.Sum256(data)
	c := &Campaign{Path: abs, lines: d.lines, hash: hex.EncodeToString(sum[:])}
	var rate string
	var br rawBrakes
	root := d.document(data)
	if root == nil {
		return nil, d.err()
	}
	d.fields(root, "", map[string]func(string, *yaml.Node){
		"id":          d.str(&c.ID),
		"list":        d.str(&c.List),
		"list_name":   d.str(&c.ListName),
		"from":        d.str(&c.From),
		"reply_to":    d.str(&c.ReplyTo),
		"subject":     d.str(&c.Subject),
		"template":    d.str(&c.Template),
		"recipients":  d.str(&c.Recipients),
		"legal_basis": d.str(&c.LegalBasis),
		"lia":         d.str(&c.LIA),
		"audience":    d.str(&c.Audience),
		"privacy_url": d.str(&c.PrivacyURL),
		"language":    d.str(&c.Language),
		"rate":        d.scalarStr(&rate),

		"exclude_countries": d.strList(&c.ExcludeCountries),
		"unknown_country":   d.str(&c.UnknownCountry),
		"freemail_list":     d.str(&c.FreeMailList),
		"pool":              d.str(&c.Pool),
		"brakes":            d.rawBrakes(&br),
	}, "id", "list", "from", "subject", "template", "recipients", "legal_basis")
	if rate != "" {
		r, err := ParseRate(rate)
		if err != nil {
			d.fieldErr("rate", "%v", err)
		}
		c.Rate = r
	}
	c.Brakes = d.brakes("brakes", br)
	audienceGiven := c.Audience != ""
	c.applyDefaults(filepath.Dir(abs))
	c.check(d)
	if files {
		c.checkFiles(d)
	}
	c.checkLegalBasis(d, audienceGiven)
	if err := d.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// applyDefaults sets the audience and makes paths absolute against dir.
func (c *Campaign) applyDefaults(dir string) {
	for _, p := range []*string{&c.Template, &c.Recipients, &c.LIA, &c.FreeMailList} {
		*p = absPath(dir, *p)
	}
	if c.Audience == "" {
		c.Audience = AudienceB2B
	}
	if c.Pool == "" {
		c.Pool = DefaultPool
	}
	if c.UnknownCountry == "" {
		c.UnknownCountry = UnknownInclude
		if len(c.ExcludeCountries) > 0 {
			c.UnknownCountry = UnknownExclude
		}
	}
}

// check records every bad value.
func (c *Campaign) check(d *decoder) {
	required := []struct{ key, v string }{
		{"id", c.ID}, {"list", c.List}, {"from", c.From}, {"subject", c.Subject},
		{"template", c.Template}, {"recipients", c.Recipients}, {"legal_basis", c.LegalBasis},
	}
	for _, r := range required {
		if strings.TrimSpace(r.v) == "" {
			d.fieldErr(r.key, "must not be empty")
			d.failed[r.key] = true
		}
	}
	for _, f := range []struct{ key, v string }{{"id", c.ID}, {"list", c.List}, {"pool", c.Pool}} {
		if !idPattern.MatchString(f.v) {
			d.fieldErr(f.key, "%s must be 1-64 of A-Z a-z 0-9 . _ -", Quote(f.v))
		}
	}
	// Header values must never carry CR or LF (RFC 5322 §2.2).
	for _, f := range []struct{ key, v string }{{"list_name", c.ListName}, {"from", c.From}, {"reply_to", c.ReplyTo}, {"subject", c.Subject}} {
		if strings.ContainsAny(f.v, "\r\n") {
			d.fieldErr(f.key, "contains CR or LF")
			d.failed[f.key] = true
		}
	}
	if _, err := mail.ParseAddress(c.From); err != nil {
		d.fieldErr("from", "%s: %v", Quote(c.From), err)
	}
	if c.ReplyTo != "" {
		if _, err := mail.ParseAddress(c.ReplyTo); err != nil {
			d.fieldErr("reply_to", "%s: %v", Quote(c.ReplyTo), err)
		}
	}
	if c.LegalBasis != LegitimateInterest && c.LegalBasis != Consent {
		d.fieldErr("legal_basis", "%s must be legitimate_interest or consent", Quote(c.LegalBasis))
	}
	if c.Audience != AudienceB2B && c.Audience != AudienceB2C {
		d.fieldErr("audience", "%s must be b2b or b2c", Quote(c.Audience))
	}
	if c.PrivacyURL != "" && !absoluteURL(c.PrivacyURL) {
		d.fieldErr("privacy_url", "%s is not an absolute URL", Quote(c.PrivacyURL))
	}
	checkLanguage(d, "language", c.Language)
}

// checkFiles records a recipients file or template body that cannot be
// read (template: BASE.html and BASE.txt).
func (c *Campaign) checkFiles(d *decoder) {
	if !d.failed["recipients"] {
		if fi, err := os.Stat(c.Recipients); err != nil {
			d.fieldErr("recipients", "%v", fileErr("cannot read the recipients file", c.Recipients, err))
		} else if fi.IsDir() {
			d.fieldErr("recipients", "%s is a directory, not a CSV file", short(c.Recipients))
		}
	}
	if !d.failed["template"] {
		for _, ext := range []string{".html", ".txt"} {
			if _, err := os.Stat(c.Template + ext); err != nil {
				d.fieldErr("template", "%v", fileErr("cannot read the template's body", c.Template+ext, err))
			}
		}
	}
}

// checkLegalBasis records what the legal basis lacks — legitimate_interest
// needs a complete assessment (lia) and audience: b2b, since PECR regulation
// 22 lets a sender email corporate subscribers without consent but not
// individuals — expands exclude_countries, and loads the LIA's hash and the
// free-mail list.
func (c *Campaign) checkLegalBasis(d *decoder, audienceGiven bool) {
	c.excluded = map[string]bool{}
	for i, e := range c.ExcludeCountries {
		set, unknown := ExpandCountries([]string{e})
		if len(unknown) > 0 {
			d.fieldErr(fmt.Sprintf("exclude_countries[%d]", i), "%s is not an ISO 3166-1 alpha-2 country code nor one of the groups EU, EEA, UK", Quote(e))
		}
		for k := range set {
			c.excluded[k] = true
		}
	}
	c.UnknownCountry = strings.ToLower(strings.TrimSpace(c.UnknownCountry))
	if c.UnknownCountry != UnknownExclude && c.UnknownCountry != UnknownInclude {
		d.fieldErr("unknown_country", "%s must be exclude or include", Quote(c.UnknownCountry))
	}

	li := c.LegalBasis == LegitimateInterest
	basisLine := c.Line("legal_basis")
	if c.LIA != "" {
		data, err := os.ReadFile(c.LIA)
		if err != nil {
			d.fieldErr("lia", "%v", fileErr("cannot read the legitimate-interest assessment", c.LIA, err))
		} else {
			sum := sha256.Sum256(data)
			c.liaHash = hex.EncodeToString(sum[:])
			c.liaHeads = LIAHeadings(string(data))
			if li {
				for _, m := range CheckLIA(string(data)) {
					d.fieldErr("lia", "%s: %s", short(c.LIA), m)
				}
			}
		}
	}
	if li {
		switch {
		case c.LIA == "" && c.Line("lia") != 0:
			d.fieldErr("lia", "must name the legitimate-interest assessment when legal_basis is legitimate_interest (see configs/lia/TEMPLATE.md)")
		case c.LIA == "":
			d.errf(basisLine, "lia: required when legal_basis is legitimate_interest: name the legitimate-interest assessment (purpose, necessity, balancing; see configs/lia/TEMPLATE.md)")
		}
		switch {
		case !audienceGiven && c.Line("audience") != 0:
			d.fieldErr("audience", "must be b2b when legal_basis is legitimate_interest")
		case !audienceGiven:
			d.errf(basisLine, "audience: required when legal_basis is legitimate_interest: add \"audience: b2b\"")
		case c.Audience == AudienceB2C:
			d.fieldErr("audience", "b2c is not allowed with legal_basis legitimate_interest: PECR regulation 22 needs consent to email individuals (use legal_basis: consent)")
		}
	}
	if li || c.FreeMailList != "" {
		fm, err := FreeMailDomains(c.FreeMailList)
		var errs Errors
		switch {
		case errors.As(err, &errs):
			for _, e := range errs {
				d.fieldErr("freemail_list", "%v", e)
			}
		case err != nil:
			d.fieldErr("freemail_list", "%v", err)
		default:
			c.FreeMail = fm
		}
	}
}
