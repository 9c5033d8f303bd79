package configs

import (
	"crypto/sha256"
	"encoding/hex"
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
	// Rate is this campaign's own ceiling in messages per second ("rate:
	// 50/s"); 0 is unlimited.
	Rate float64

	lines map[string]int
	hash  string
}

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
// recipients and lia against its folder. All problems come back at once as
// Errors, each "file:line: field: problem". Files named are not opened here.
func LoadCampaign(path string) (*Campaign, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("configs: read campaign: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("configs: %s: %w", path, err)
	}
	d := newDecoder(path)
	sum := sha256.Sum256(data)
	c := &Campaign{Path: abs, lines: d.lines, hash: hex.EncodeToString(sum[:])}
	var rate string
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
		"rate":        d.scalarStr(&rate),
	}, "id", "list", "from", "subject", "template", "recipients", "legal_basis")
	if rate != "" {
		r, err := ParseRate(rate)
		if err != nil {
			d.fieldErr("rate", "%v", err)
		}
		c.Rate = r
	}
	c.applyDefaults(filepath.Dir(abs))
	c.check(d)
	if err := d.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// applyDefaults sets the audience and makes paths absolute against dir.
func (c *Campaign) applyDefaults(dir string) {
	for _, p := range []*string{&c.Template, &c.Recipients, &c.LIA} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if c.Audience == "" {
		c.Audience = AudienceB2B
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
	for _, f := range []struct{ key, v string }{{"id", c.ID}, {"list", c.List}} {
		if !idPattern.MatchString(f.v) {
			d.fieldErr(f.key, "%q must be 1-64 of A-Z a-z 0-9 . _ -", f.v)
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
		d.fieldErr("from", "%q: %v", c.From, err)
	}
	if c.ReplyTo != "" {
		if _, err := mail.ParseAddress(c.ReplyTo); err != nil {
			d.fieldErr("reply_to", "%q: %v", c.ReplyTo, err)
		}
	}
	if c.LegalBasis != LegitimateInterest && c.LegalBasis != Consent {
		d.fieldErr("legal_basis", "%q must be legitimate_interest or consent", c.LegalBasis)
	}
	if c.Audience != AudienceB2B && c.Audience != AudienceB2C {
		d.fieldErr("audience", "%q must be b2b or b2c", c.Audience)
	}
	if c.PrivacyURL != "" && !absoluteURL(c.PrivacyURL) {
		d.fieldErr("privacy_url", "%q is not an absolute URL", c.PrivacyURL)
	}
}
