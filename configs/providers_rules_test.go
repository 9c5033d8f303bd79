package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/adaptive"
)

// The embedded rules: list and adaptive.DefaultRules must not drift apart.
func TestBuiltinReplyRulesEqualDefaultRules(t *testing.T) {
	p, err := BuiltinProviders()
	if err != nil {
		t.Fatal(err)
	}
	got, want := p.AdaptiveRules(), adaptive.DefaultRules()
	if len(got) != len(want) {
		t.Fatalf("providers.yaml has %d rules, adaptive.DefaultRules %d", len(got), len(want))
	}
	pat := func(r adaptive.Rule) string {
		if r.Pattern == nil {
			return ""
		}
		return r.Pattern.String()
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Provider != w.Provider || g.Code != w.Code || g.Enhanced != w.Enhanced || pat(g) != pat(w) || g.Action != w.Action || g.Note != w.Note {
			t.Errorf("rule %d (%s:%d):\n yaml %+v /%s/\n Go   %+v /%s/", i, p.ReplyRules[i].File, p.ReplyRules[i].Line, g, pat(g), w, pat(w))
		}
		if p.ReplyRules[i].File != BuiltinProvidersName || p.ReplyRules[i].Line == 0 {
			t.Errorf("rule %d defined at %s:%d", i, p.ReplyRules[i].File, p.ReplyRules[i].Line)
		}
	}
	if _, err := adaptive.New(got, adaptive.Config{}, zerolog.Nop()); err != nil {
		t.Errorf("adaptive.New refuses the built-in rules: %v", err)
	}
}

func TestOperatorReplyRuleFirst(t *testing.T) {
	dir := t.TempDir()
	extra := filepath.Join(dir, "extra.yaml")
	os.WriteFile(extra, []byte(`rules:
  - provider: Microsoft
    code: 451
    enhanced: 4.7.650
    action: suspend_source
    for: 2h
    note: ours, agreed with Microsoft support
  - {code: 5xx, pattern: 'go away', action: suspend_source, for: 30m}
`), 0o644)
	p, err := LoadProviders(extra)
	if err != nil {
		t.Fatal(err)
	}
	builtin, _ := BuiltinProviders()
	if len(p.ReplyRules) != len(builtin.ReplyRules)+2 {
		t.Fatalf("%d rules, want %d", len(p.ReplyRules), len(builtin.ReplyRules)+2)
	}
	first, second := p.ReplyRules[0], p.ReplyRules[1]
	if first.File != extra || first.Line != 2 || first.Provider != "microsoft" || first.Code != 451 || first.Enhanced != "4.7.650" ||
		first.Action != (adaptive.Action{Kind: adaptive.SuspendSource, For: 2 * time.Hour}) || first.Note != "ours, agreed with Microsoft support" {
		t.Errorf("operator rule: %+v", first)
	}
	if second.Line != 8 || second.Code != 5 || second.Action.Kind != adaptive.SuspendSource || second.Note != "config: any provider 5xx /go away/" {
		t.Errorf("second operator rule: %+v", second)
	}
	for i, r := range builtin.ReplyRules {
		if p.ReplyRules[i+2].Note != r.Note || p.ReplyRules[i+2].File != BuiltinProvidersName {
			t.Errorf("built-in rule %d after the operator's: %+v", i, p.ReplyRules[i+2])
		}
	}
	// first match wins: 451 4.7.650 from Microsoft now suspends the source
	m := adaptive.Match(p.AdaptiveRules(), "microsoft", 451, "4.7.650", "temporarily rate limited due to IP reputation")
	if m == nil || m.Action.Kind != adaptive.SuspendSource {
		t.Errorf("451 4.7.650 matches %+v, want the operator's suspend_source", m)
	}
	if m := adaptive.Match(builtin.AdaptiveRules(), "microsoft", 451, "4.7.650", ""); m == nil || m.Action.Kind != adaptive.SuspendPair {
		t.Errorf("built-in 451 4.7.650 matches %+v, want suspend_pair", m)
	}

	// and through the server file
	pw := filepath.Join(dir, "pw.yaml")
	os.WriteFile(pw, []byte(serverHead+"delivery:\n  providers: extra.yaml\n"), 0o644)
	s, err := LoadServer(pw)
	if err != nil {
		t.Fatal(err)
	}
	if r := s.Delivery.ProviderTable.ReplyRules[0]; r.File != extra || r.Action.Kind != adaptive.SuspendSource {
		t.Errorf("server's first rule: %+v", r)
	}
}

func TestReplyRulesErrors(t *testing.T) {
	dir := t.TempDir()
	extra := filepath.Join(dir, "extra.yaml")
	os.WriteFile(extra, []byte(`rules:
  - provider: gmail
    code: 421
    action: slow_down
    for: 15m
  - code: 550
    pattern: '(unclosed'
    action: suspend_pair
    for: 1h
  - code: 421
    action: throttle
    factor: 0.5
    for: a while
  - {code: 421, action: throttle, factor: 2, for: 15m}
  - {action: suspend_pair, for: 1h}
  - {code: 700, enhanced: 4.7.0, action: suspend_pair, for: 1h}
  - {code: 421, for: 1h, colour: blue}
  - not a mapping
  - {provider: "no such!", code: 421, action: suspend_pair, for: 1h}
`), 0o644)
	_, err := LoadProviders(extra)
	if err == nil {
		t.Fatal("bad rules accepted")
	}
	got := strings.Join(problems(t, err), "\n")
	for _, want := range []string{
		`extra.yaml:4: rules[0].action: "slow_down": want throttle`,
		`extra.yaml:7: rules[1].pattern: "(unclosed": error parsing regexp`,
		`extra.yaml:13: rules[2].for: "a while": want a positive duration`,
		`extra.yaml:14: rules[3].factor: "2": want a number between 0 and 1`,
		`extra.yaml:15: rules[4]: needs a code, an enhanced code or a pattern`,
		`extra.yaml:16: rules[5].code: "700": want a reply code`,
		`extra.yaml:17: unknown key "rules[6].colour"`,
		`extra.yaml:17: missing required key "rules[6].action"`,
		`extra.yaml:18: rules[7]: expected a mapping`,
		`extra.yaml:19: rules[8].provider: "no such!" is not a provider name`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors lack %q:\n%s", want, got)
		}
	}

	// through the server file, each problem still names extra.yaml and its line
	pw := filepath.Join(dir, "pw.yaml")
	os.WriteFile(pw, []byte(serverHead+"delivery:\n  providers: extra.yaml\n"), 0o644)
	if _, err := LoadServer(pw); err == nil || !strings.Contains(err.Error(), `extra.yaml:4: rules[0].action`) {
		t.Errorf("server with bad rules: %v", err)
	}
}

// A reply rule naming a provider the table lacks (gmail for google) would
// never fire: it is an error naming its line. The shipped rules all name
// providers of the shipped table.
func TestReplyRuleProviderMustExist(t *testing.T) {
	extra := filepath.Join(t.TempDir(), "extra.yaml")
	os.WriteFile(extra, []byte("rules:\n  - {provider: gmail, code: 421, action: throttle, factor: 0.5, for: 15m}\n"), 0o644)
	_, err := LoadProviders(extra)
	if err == nil || !strings.Contains(err.Error(), `extra.yaml:2: rules: provider "gmail" is not in the provider table`) {
		t.Fatalf("err = %v", err)
	}
	if _, err := BuiltinProviders(); err != nil {
		t.Fatalf("built-in table: %v", err)
	}
}
