// Package locale holds the message catalogs of the pages a recipient sees and
// of the double opt-in confirmation mail, in the 24 official languages of the
// EU, and picks the language of a request.
//
// Contract: the catalogs (catalog/LANG.yaml, embedded) are go-i18n v2 message
// files with the same keys and, per message, the same {{.Name}} placeholders
// as English (a test holds every language to this). Negotiate picks the first
// supported override (a campaign's, then a list's language), else the best
// match of the Accept-Language header, else English. A message missing from a
// catalog falls back to English, never to an empty string.
package locale

import (
	"embed"
	"fmt"
	"path"
	"time"

	"github.com/nicksnyder/go-i18n/v2/i18n"
	"go.yaml.in/yaml/v3"
	"golang.org/x/text/language"
)

// Default is the fallback language.
const Default = "en"

// Languages are the EU's 24 official languages, as BCP 47 codes.
var Languages = []string{"bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "ga", "hr",
	"hu", "it", "lt", "lv", "mt", "nl", "pl", "pt", "ro", "sk", "sl", "sv"}

//go:embed catalog/*.yaml
var catalogs embed.FS

// Vars are a message's placeholder values.
type Vars map[string]any

var (
	bundle  *i18n.Bundle
	matcher language.Matcher
	tags    []language.Tag // matcher's order: English first, so it is the fallback
	byCode  = map[string]*Locale{}
)

// The catalogs are compiled into the binary; one that does not parse is a
// build mistake the package's tests catch, so init may panic on it.
func init() {
	b, err := load()
	if err != nil {
		panic(err)
	}
	bundle = b
	tags = []language.Tag{language.MustParse(Default)}
	for _, c := range Languages {
		if c != Default {
			tags = append(tags, language.MustParse(c))
		}
	}
	matcher = language.NewMatcher(tags)
	for _, t := range tags {
		byCode[t.String()] = &Locale{tag: t, loc: i18n.NewLocalizer(bundle, t.String())}
	}
}

// load parses every catalog into one bundle.
func load() (*i18n.Bundle, error) {
	b := i18n.NewBundle(language.English)
	b.RegisterUnmarshalFunc("yaml", yaml.Unmarshal)
	for _, c := range Languages {
		p := path.Join("catalog", c+".yaml")
		if _, err := b.LoadMessageFileFS(catalogs, p); err != nil {
			return nil, fmt.Errorf("locale: load catalog %s: %w", p, err)
		}
	}
	return b, nil
}

// catalog returns the raw bytes of a language's catalog file, for the test
// that holds every catalog to English's keys and placeholders.
func catalog(code string) ([]byte, error) {
	b, err := catalogs.ReadFile(path.Join("catalog", code+".yaml"))
	if err != nil {
		return nil, fmt.Errorf("locale: read catalog %s: %w", code, err)
	}
	return b, nil
}

// Supported reports whether code is exactly one of Languages.
func Supported(code string) bool { _, ok := byCode[code]; return ok }

// For returns the locale of a supported code, else English's.
func For(code string) *Locale {
	if l, ok := byCode[code]; ok {
		return l
	}
	return byCode[Default]
}

// Negotiate returns the locale of the first supported non-empty override
// (callers pass the most specific first: a campaign's language, then a
// list's), else the best match of an Accept-Language header (RFC 9110
// §12.5.4; q-values and region variants such as de-AT count), else English.
func Negotiate(acceptLanguage string, overrides ...string) *Locale {
	for _, o := range overrides {
		if o != "" && Supported(o) {
			return byCode[o]
		}
	}
	prefs, _, err := language.ParseAcceptLanguage(acceptLanguage)
	if err != nil || len(prefs) == 0 {
		return byCode[Default]
	}
	// The index, not the returned tag: the tag may carry -u-rg extensions.
	_, i, conf := matcher.Match(prefs...)
	if conf == language.No {
		return byCode[Default]
	}
	return byCode[tags[i].String()]
}

// Locale is one language's messages; safe for concurrent use.
type Locale struct {
	tag language.Tag
	loc *i18n.Localizer
}

// Lang is the language's BCP 47 code, for HTML's lang attribute.
func (l *Locale) Lang() string { return l.tag.String() }

// rtlScripts are the scripts written right to left (Unicode's Bidi_Class R
// and AL scripts still in use).
var rtlScripts = map[string]bool{"Arab": true, "Hebr": true, "Syrc": true, "Thaa": true,
	"Nkoo": true, "Adlm": true, "Rohg": true, "Samr": true, "Mand": true}

// Dir is the language's writing direction for HTML's dir attribute: "rtl"
// for a right-to-left script, else "ltr".
func (l *Locale) Dir() string {
	s, _ := l.tag.Script()
	if rtlScripts[s.String()] {
		return "rtl"
	}
	return "ltr"
}

// T returns message id with its placeholders filled from v (nil when it has
// none). A message the catalog lacks comes in English; an id no catalog has
// comes back as itself, so a mistake shows on the page instead of nothing.
func (l *Locale) T(id string, v Vars) string {
	s, err := l.loc.Localize(&i18n.LocalizeConfig{MessageID: id, TemplateData: map[string]any(v)})
	if err != nil || s == "" {
		if s, err = byCode[Default].loc.Localize(&i18n.LocalizeConfig{MessageID: id, TemplateData: map[string]any(v)}); err != nil {
			return id
		}
	}
	return s
}

// N returns plural message id for count n ({{.Count}}), in the plural form
// the language's CLDR rules choose.
func (l *Locale) N(id string, n int) string {
	s, err := l.loc.Localize(&i18n.LocalizeConfig{MessageID: id, PluralCount: n, TemplateData: map[string]any{"Count": n}})
	if err != nil || s == "" {
		if s, err = byCode[Default].loc.Localize(&i18n.LocalizeConfig{MessageID: id, PluralCount: n, TemplateData: map[string]any{"Count": n}}); err != nil {
			return id
		}
	}
	return s
}

// Validity writes a link's lifetime: "7 days", or "12 hours" under two days
// (rounded up), in the language's plural forms.
func (l *Locale) Validity(d time.Duration) string {
	if d >= 48*time.Hour {
		return l.N("Days", int(d/(24*time.Hour)))
	}
	return l.N("Hours", int((d+time.Hour-1)/time.Hour))
}
