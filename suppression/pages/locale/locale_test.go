package locale

import (
	"maps"
	"regexp"
	"slices"
	"testing"

	"github.com/nicksnyder/go-i18n/v2/i18n"
	"go.yaml.in/yaml/v3"
)

// placeholder finds a message's {{.Name}} placeholders.
var placeholder = regexp.MustCompile(`\{\{\s*\.([A-Za-z0-9_]+)\s*\}\}`)

// entries reads a catalog as key → the message's texts (one, or a plural's
// forms by name).
func entries(t *testing.T, code string) map[string]map[string]string {
	t.Helper()
	raw, err := catalog(code)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(raw, &m); err != nil {
		t.Fatalf("catalog %s: %v", code, err)
	}
	out := map[string]map[string]string{}
	for k, v := range m {
		switch v := v.(type) {
		case string:
			out[k] = map[string]string{"": v}
		case map[string]any:
			forms := map[string]string{}
			for f, s := range v {
				str, ok := s.(string)
				if !ok {
					t.Errorf("catalog %s: %s.%s is %T; want a string", code, k, f, s)
				}
				forms[f] = str
			}
			out[k] = forms
		default:
			t.Errorf("catalog %s: %s is %T; want a string or plural forms", code, k, v)
		}
	}
	return out
}

func placeholders(s string) []string {
	var names []string
	for _, m := range placeholder.FindAllStringSubmatch(s, -1) {
		names = append(names, m[1])
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// TestCatalogsComplete: every language has every English key, no other key,
// no empty text, and in each text the same placeholders as English's; every
// plural message has each form the language's plural rules pick for counts
// 0-200; most texts are translated, not English copied.
func TestCatalogsComplete(t *testing.T) {
	en := entries(t, Default)
	if len(en) < 40 {
		t.Fatalf("English catalog has %d keys; the pages need more", len(en))
	}
	plurals := map[string]bool{}
	for k, forms := range en {
		if _, single := forms[""]; !single {
			plurals[k] = true
		}
	}
	for _, code := range Languages {
		t.Run(code, func(t *testing.T) {
			cat := entries(t, code)
			for _, k := range slices.Sorted(maps.Keys(en)) {
				forms, ok := cat[k]
				if !ok {
					t.Errorf("%s: key %s missing", code, k)
					continue
				}
				want := placeholders(en[k][firstForm(en[k])])
				for f, s := range forms {
					if s == "" {
						t.Errorf("%s: %s %s is empty", code, k, f)
					}
					if got := placeholders(s); !slices.Equal(got, want) {
						t.Errorf("%s: %s %s has placeholders %v; English has %v", code, k, f, got, want)
					}
				}
				if _, single := forms[""]; single == plurals[k] {
					t.Errorf("%s: %s is plural in one catalog and not in the other", code, k)
				}
			}
			for k := range cat {
				if _, ok := en[k]; !ok {
					t.Errorf("%s: key %s is not in the English catalog", code, k)
				}
			}
			l := For(code)
			if l.Lang() != code {
				t.Fatalf("For(%s).Lang() = %s", code, l.Lang())
			}
			for k := range plurals {
				for n := 0; n <= 200; n++ {
					if _, err := l.loc.Localize(&i18n.LocalizeConfig{MessageID: k, PluralCount: n, TemplateData: map[string]any{"Count": n}}); err != nil {
						t.Errorf("%s: %s for %d: %v", code, k, n, err)
						break
					}
				}
			}
			if code == Default {
				return
			}
			same := 0
			for k := range en {
				if !plurals[k] && cat[k][""] == en[k][""] {
					same++
				}
			}
			if same > len(en)/4 {
				t.Errorf("%s: %d of %d texts are the English ones; not translated?", code, same, len(en))
			}
		})
	}
}

func firstForm(forms map[string]string) string {
	if _, ok := forms[""]; ok {
		return ""
	}
	return "other"
}

// TestNegotiate: overrides win in order, then Accept-Language with q-values
// and region variants, then English.
func TestNegotiate(t *testing.T) {
	for _, c := range []struct {
		accept    string
		overrides []string
		want      string
	}{
		{"", nil, "en"},
		{"de", nil, "de"},
		{"de-AT", nil, "de"},
		{"de-CH,de;q=0.9,en;q=0.5", nil, "de"},
		{"fr-BE;q=0.8, pl;q=0.9", nil, "pl"},
		{"en-GB,en;q=0.9", nil, "en"},
		{"pt-BR", nil, "pt"},
		{"sv-FI,fi;q=0.7", nil, "sv"},
		{"ja,zh;q=0.8", nil, "en"},
		{"*", nil, "en"},
		{"not a header;;q=x", nil, "en"},
		{"ga-IE", nil, "ga"},
		{"mt,en;q=0.5", nil, "mt"},
		{"ja, de;q=0.1", nil, "de"},
		{"de-AT", []string{"fr"}, "fr"},                    // a campaign's or list's language wins
		{"de", []string{"", "pl"}, "pl"},                   // no campaign language: the list's
		{"de", []string{"it", "pl"}, "it"},                 // the campaign's before the list's
		{"de", []string{"xx", ""}, "de"},                   // an unsupported override is skipped
		{"fr", []string{"de-AT"}, "fr"},                    // overrides are exact codes
		{"da;q=0.2,nl;q=0.9,et;q=0.5", []string{""}, "nl"}, // highest q first
	} {
		if got := Negotiate(c.accept, c.overrides...).Lang(); got != c.want {
			t.Errorf("Negotiate(%q, %q) = %s; want %s", c.accept, c.overrides, got, c.want)
		}
	}
}

// TestLocale: lang and dir attributes, placeholders and plurals.
func TestLocale(t *testing.T) {
	for _, code := range Languages {
		if d := For(code).Dir(); d != "ltr" {
			t.Errorf("%s: dir %s; want ltr", code, d)
		}
	}
	if For("xx").Lang() != "en" || Supported("xx") || !Supported("ga") {
		t.Error("For/Supported of an unknown code")
	}
	if got := For("en").T("LeftList", Vars{"List": "News"}); got != "You are unsubscribed from News." {
		t.Errorf("T: %q", got)
	}
	if got := For("de").T("no such key", nil); got != "no such key" {
		t.Errorf("T of an unknown id: %q", got)
	}
	if got := For("en").N("Days", 1) + "|" + For("en").N("Days", 7); got != "1 day|7 days" {
		t.Errorf("N: %q", got)
	}
}
