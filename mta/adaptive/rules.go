package adaptive

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Kind is what a matching reply does to a (source, provider) pair.
type Kind int

const (
	// Throttle multiplies the pair's rate and/or connections by Action.Factor
	// and holds them there for Action.For before they start to come back.
	Throttle Kind = iota + 1
	// SuspendPair stops the source sending to the provider until Action.For
	// has passed: messages wait, attempts are not spent, max_age still applies.
	SuspendPair
	// SuspendSource stops the source sending to every provider for Action.For;
	// the pool's other sources carry on.
	SuspendSource
)

// String returns the config spelling of k ("throttle", "suspend_pair", …).
func (k Kind) String() string {
	switch k {
	case Throttle:
		return "throttle"
	case SuspendPair:
		return "suspend_pair"
	case SuspendSource:
		return "suspend_source"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Target is which limit a Throttle lowers.
type Target int

const (
	// Both lowers rate and connections (the zero value).
	Both Target = iota
	// Rate lowers only the messages per second.
	Rate
	// Connections lowers only the concurrent connections.
	Connections
)

// String returns "both", "rate" or "connections".
func (t Target) String() string {
	switch t {
	case Rate:
		return "rate"
	case Connections:
		return "connections"
	}
	return "both"
}

// Action is what a rule does when a reply matches it.
type Action struct {
	Kind   Kind
	Target Target        // Throttle only: which limit; Both by default
	Factor float64       // Throttle only: 0 < Factor < 1, e.g. 0.5 halves the limit
	For    time.Duration // how long the throttle holds or the suspension lasts
}

// Rule maps a reply to an Action. Empty fields match anything; a rule needs
// at least one of Code, Enhanced and Pattern.
type Rule struct {
	// Provider is the provider table's name ("google"), compared without case;
	// "" matches every provider.
	Provider string
	// Code is the reply code: 0 any, 4 or 5 any reply of that class (4yz, 5yz),
	// otherwise the exact code (421).
	Code int
	// Enhanced is an RFC 3463 code or its prefix, compared field by field:
	// "4.7." and "4.7" match 4.7.28 and 4.7.0; "4.7.2" matches only 4.7.2.
	Enhanced string
	// Pattern, when set, must match the reply text; write it case-insensitive
	// ((?i), as ParseRule does).
	Pattern *regexp.Regexp
	Action  Action
	// Note says where the reply comes from and what it means, for logs and
	// `providers ls` ("Gmail: unusual rate of unsolicited mail").
	Note string
}

// Matches reports whether a reply from provider matches r. enhanced is the
// reply's RFC 3463 code without its text ("" when the reply has none).
func (r *Rule) Matches(provider string, code int, enhanced, text string) bool {
	if r.Provider != "" && !strings.EqualFold(r.Provider, provider) {
		return false
	}
	switch {
	case r.Code == 0:
	case r.Code < 10:
		if code/100 != r.Code {
			return false
		}
	case r.Code != code:
		return false
	}
	if r.Enhanced != "" && !enhancedHas(r.Enhanced, enhanced) {
		return false
	}
	return r.Pattern == nil || r.Pattern.MatchString(text)
}

// enhancedHas reports whether the enhanced code got lies under prefix, field by
// field ("4.7." and "4.7" hold "4.7.28"; "4.7.2" does not).
func enhancedHas(prefix, got string) bool {
	if got == "" {
		return false
	}
	want := strings.Split(strings.TrimSuffix(prefix, "."), ".")
	have := strings.Split(got, ".")
	if len(have) < len(want) {
		return false
	}
	for i := range want {
		if want[i] != have[i] {
			return false
		}
	}
	return true
}

// enhancedInText finds an RFC 3463 code at the start of a reply's text, after
// an optional reply code ("421-4.7.28 Our system…", "4.7.650 The mail server…").
var enhancedInText = regexp.MustCompile(`^\s*(?:[245]\d\d[ -]+)?([245]\.\d{1,3}\.\d{1,3})\b`)

// enhancedOf returns enhanced, or the one that opens text when enhanced is "".
func enhancedOf(enhanced, text string) string {
	if enhanced = strings.TrimSpace(enhanced); enhanced != "" {
		return enhanced
	}
	if m := enhancedInText.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// Match returns the first rule of rules that the reply matches, or nil.
func Match(rules []Rule, provider string, code int, enhanced, text string) *Rule {
	enhanced = enhancedOf(enhanced, text)
	for i := range rules {
		if rules[i].Matches(provider, code, enhanced, text) {
			return &rules[i]
		}
	}
	return nil
}

// enhancedSyntax is an RFC 3463 code or a prefix of one: "5", "5.7", "5.7.", "5.7.1".
var enhancedSyntax = regexp.MustCompile(`^[245](\.\d{1,3}){0,2}\.?$`)

// ParseRule builds a Rule from the strings of a configs/providers.yaml `rules:`
// entry. code is "" (any), "4xx", "5xx" or a reply code 400–599; enhanced is ""
// or an RFC 3463 code or prefix ("4.7."); pattern is a regular expression,
// matched without case; action is throttle, throttle_rate,
// throttle_connections, suspend_pair or suspend_source; factor (throttles only)
// is a number between 0 and 1; for is a Go duration ("15m"). Every problem is
// reported at once, each naming its field. The rule's Note describes it; the
// caller may replace it.
func ParseRule(provider, code, enhanced, pattern, action, factor, forDur string) (Rule, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("adaptive: rule %s: "+format, append([]any{field}, args...)...))
	}
	r := Rule{Provider: strings.TrimSpace(provider), Enhanced: strings.TrimSpace(enhanced)}

	switch c := strings.ToLower(strings.TrimSpace(code)); c {
	case "", "0", "*", "any":
	case "4xx", "5xx":
		r.Code = int(c[0] - '0')
	default:
		n, err := strconv.Atoi(c)
		if err != nil || n < 400 || n > 599 {
			bad("code", "%q: want a reply code 400–599, 4xx, 5xx or nothing", code)
		} else {
			r.Code = n
		}
	}
	if r.Enhanced != "" {
		if !enhancedSyntax.MatchString(r.Enhanced) {
			bad("enhanced", "%q: want an RFC 3463 code or prefix such as 4.7.28 or 4.7.", enhanced)
		} else if cls := codeClass(r.Code); cls != 0 && int(r.Enhanced[0]-'0') != cls {
			bad("enhanced", "%q: class %c does not fit code %s", enhanced, r.Enhanced[0], code)
		}
	}
	if p := strings.TrimSpace(pattern); p != "" {
		re, err := regexp.Compile("(?i)" + p)
		if err != nil {
			bad("pattern", "%q: %v", pattern, err)
		} else {
			r.Pattern = re
		}
	}
	if r.Code == 0 && r.Enhanced == "" && r.Pattern == nil && len(errs) == 0 {
		bad("match", "needs a code, an enhanced code or a pattern: a rule for every reply would act on a dead mailbox too")
	}

	switch a := strings.ToLower(strings.TrimSpace(action)); a {
	case "throttle":
		r.Action = Action{Kind: Throttle, Target: Both}
	case "throttle_rate":
		r.Action = Action{Kind: Throttle, Target: Rate}
	case "throttle_connections":
		r.Action = Action{Kind: Throttle, Target: Connections}
	case "suspend_pair":
		r.Action = Action{Kind: SuspendPair}
	case "suspend_source":
		r.Action = Action{Kind: SuspendSource}
	default:
		bad("action", "%q: want throttle, throttle_rate, throttle_connections, suspend_pair or suspend_source", action)
	}
	f := strings.TrimSpace(factor)
	switch {
	case r.Action.Kind == Throttle && f == "":
		bad("factor", "a throttle needs a factor between 0 and 1 (0.5 halves the limit)")
	case r.Action.Kind == Throttle:
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || !(v > 0 && v < 1) {
			bad("factor", "%q: want a number between 0 and 1, both excluded", factor)
		} else {
			r.Action.Factor = v
		}
	case r.Action.Kind != 0 && f != "":
		bad("factor", "%q: only a throttle takes a factor, not %s", factor, r.Action.Kind)
	}
	if d, err := time.ParseDuration(strings.TrimSpace(forDur)); err != nil || d <= 0 {
		bad("for", "%q: want a positive duration such as 15m or 1h", forDur)
	} else {
		r.Action.For = d
	}
	if len(errs) > 0 {
		return Rule{}, errors.Join(errs...)
	}
	r.Note = describe(r, code, pattern)
	return r, nil
}

// codeClass returns a rule code's class: 4 for 421 and for 4 (4xx), 0 for any.
func codeClass(code int) int {
	if code >= 100 {
		return code / 100
	}
	return code
}

// describe writes a parsed rule's default Note: "config: gmail 421 4.7.0 /pattern/".
func describe(r Rule, code, pattern string) string {
	parts := []string{"config:"}
	if r.Provider != "" {
		parts = append(parts, r.Provider)
	} else {
		parts = append(parts, "any provider")
	}
	if c := strings.TrimSpace(code); c != "" {
		parts = append(parts, c)
	}
	if r.Enhanced != "" {
		parts = append(parts, r.Enhanced)
	}
	if p := strings.TrimSpace(pattern); p != "" {
		parts = append(parts, "/"+p+"/")
	}
	return strings.Join(parts, " ")
}
