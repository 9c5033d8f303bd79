package configs

import (
	_ "embed"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/postwarden/postwarden/mta/adaptive"
	"github.com/postwarden/postwarden/mta/providers"
)

// providersYAML is the built-in provider table (issue 12).
//
//go:embed providers.yaml
var providersYAML []byte

// BuiltinProvidersName names the embedded table in error messages.
const BuiltinProvidersName = "providers.yaml (embedded)"

// Shaping is the limits of mail from one source to one provider; a zero
// field is not set: the table's value, or the next layer's, applies.
type Shaping = providers.Limits

// ProviderRule is one provider of the table: the MX host suffixes that name
// it and its shipped shaping.
type ProviderRule struct {
	Name     string
	Title    string
	Suffixes []string // lower case, no trailing dot
	Shaping  Shaping
	Source   string   // where the figures come from
	Examples []string // real MX hosts of the provider, for tests and docs
	File     string   // the file that defined it last
	Line     int
}

// Providers is the provider table: the embedded configs/providers.yaml with
// the delivery.providers file merged over it.
type Providers struct {
	Default       Shaping // a site's limits; fills a provider's unset fields
	DefaultSource string
	Rules         []ProviderRule
	// ReplyRules is the adaptive reply rules (rules:), the first match
	// winning: the delivery.providers file's first, then the built-in ones.
	ReplyRules []ReplyRule
}

// ReplyRule is one entry of a table's rules: list and where it was written.
type ReplyRule struct {
	adaptive.Rule
	File string
	Line int
}

// AdaptiveRules returns the reply rules in order, for adaptive.New.
func (p *Providers) AdaptiveRules() []adaptive.Rule {
	out := make([]adaptive.Rule, len(p.ReplyRules))
	for i, r := range p.ReplyRules {
		out[i] = r.Rule
	}
	return out
}

// BuiltinProviders parses the embedded table.
func BuiltinProviders() (*Providers, error) {
	p := &Providers{}
	if err := parseProviders(BuiltinProvidersName, providersYAML, p, true); err != nil {
		return nil, err
	}
	return p, nil
}

// LoadProviders returns the built-in table with the file at path ("" for
// none) merged over it: an entry naming a provider of the table adds its
// suffixes and replaces the fields it sets; a new name adds a provider. A
// suffix may belong to one provider only.
func LoadProviders(path string) (*Providers, error) {
	p, err := BuiltinProviders()
	if err != nil {
		return nil, err
	}
	if path == "" {
		return p, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileErr("read providers file", path, err)
	}
	if err := parseProviders(path, data, p, false); err != nil {
		return nil, err
	}
	return p, nil
}

// parseProviders decodes one table file into p, merging by name.
func parseProviders(name string, data []byte, p *Providers, builtin bool) error {
	d := newDecoder(name)
	root := d.document(data)
	if root == nil {
		return d.err()
	}
	var def rawShaping
	var defSource string
	var rules []ProviderRule
	var raws []rawShaping
	var replies []ReplyRule
	d.fields(root, "", map[string]func(string, *yaml.Node){
		"rules": func(path string, v *yaml.Node) {
			replies = d.replyRules(name, path, v)
		},
		"default": d.section(def.fields(d, map[string]func(string, *yaml.Node){"source": d.str(&defSource)})),
		"providers": func(path string, v *yaml.Node) {
			rules, raws = d.providerRules(name, path, v)
		},
	})
	if builtin {
		d.required(root, "default", "providers", "rules")
	}
	// a file's rules go before those it is merged over: the first match wins,
	// so an operator's rule overrides a built-in one
	p.ReplyRules = append(replies, p.ReplyRules...)
	if s, ok := def.parse(d, "default"); ok {
		p.Default = p.Default.Over(s)
	}
	if defSource != "" {
		p.DefaultSource = defSource
	}
	m := newProviderMerge(p)
	for i, r := range rules {
		m.add(d, i, r, raws[i])
	}
	for _, r := range replies { // a rule for a name the table lacks would never fire
		if r.Provider != "" && !slices.ContainsFunc(p.Rules, func(pr ProviderRule) bool { return strings.EqualFold(pr.Name, r.Provider) }) {
			d.errf(r.Line, "rules: provider %s is not in the provider table", Quote(r.Provider))
		}
	}
	return d.err()
}

// providerRules decodes the providers sequence of file name: each rule,
// and its shaping before its values are checked.
func (d *decoder) providerRules(name, path string, v *yaml.Node) ([]ProviderRule, []rawShaping) {
	if null(v) {
		return nil, nil
	}
	if v.Kind != yaml.SequenceNode {
		d.typeErr(path, v, "a list of {name, suffixes, connections, rate, messages_per_connection, source}")
		return nil, nil
	}
	var rules []ProviderRule
	var raws []rawShaping
	for i, e := range v.Content {
		e = resolve(e)
		ep := fmt.Sprintf("%s[%d]", path, i)
		d.lines[ep] = e.Line
		if !d.mapping(ep, e) {
			continue
		}
		r := ProviderRule{File: name, Line: e.Line}
		var raw rawShaping
		d.fields(e, ep+".", raw.fields(d, map[string]func(string, *yaml.Node){
			"name":     d.str(&r.Name),
			"title":    d.str(&r.Title),
			"suffixes": d.hostList(&r.Suffixes),
			"source":   d.str(&r.Source),
			"examples": d.hostList(&r.Examples),
		}), "name")
		rules = append(rules, r)
		raws = append(raws, raw)
	}
	return rules, raws
}

// replyRules decodes the rules sequence of file name, each entry's values
// checked by adaptive.ParseRule and every problem reported at its key's line.
func (d *decoder) replyRules(name, path string, v *yaml.Node) []ReplyRule {
	if null(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		d.typeErr(path, v, "a list of {provider, code, enhanced, pattern, action, factor, for, note}")
		return nil
	}
	var out []ReplyRule
	for i, e := range v.Content {
		e = resolve(e)
		ep := fmt.Sprintf("%s[%d]", path, i)
		d.lines[ep] = e.Line
		if !d.mapping(ep, e) {
			continue
		}
		var provider, code, enhanced, pattern, action, factor, forDur, note string
		d.fields(e, ep+".", map[string]func(string, *yaml.Node){
			"provider": d.str(&provider),
			"code":     d.scalarStr(&code),
			"enhanced": d.scalarStr(&enhanced),
			"pattern":  d.str(&pattern),
			"action":   d.str(&action),
			"factor":   d.scalarStr(&factor),
			"for":      d.str(&forDur),
			"note":     d.str(&note),
		}, "action", "for")
		if d.anyFailed(ep, "provider", "code", "enhanced", "pattern", "action", "factor", "for", "note") {
			continue
		}
		if provider != "" && !providerName.MatchString(strings.ToLower(provider)) {
			d.fieldErr(ep+".provider", "%s is not a provider name", Quote(provider))
			continue
		}
		if r, err := adaptive.ParseRule(strings.ToLower(provider), code, enhanced, pattern, action, factor, forDur); err != nil {
			d.ruleErrs(ep, err)
		} else {
			if note != "" {
				r.Note = note
			}
			out = append(out, ReplyRule{Rule: r, File: name, Line: e.Line})
		}
	}
	return out
}

// anyFailed reports whether a key of entry ep was already reported mistyped or missing.
func (d *decoder) anyFailed(ep string, keys ...string) bool {
	for _, k := range keys {
		if d.failed[ep+"."+k] {
			return true
		}
	}
	return false
}

// ruleErrs records adaptive.ParseRule's problems with entry ep, each at the
// line of the field it names ("adaptive: rule for: …" → ep.for).
func (d *decoder) ruleErrs(ep string, err error) {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		msg := strings.TrimPrefix(e.Error(), "adaptive: rule ")
		field, rest, ok := strings.Cut(msg, ": ")
		if !ok || strings.ContainsAny(field, " .") {
			d.fieldErr(ep, "%s", e.Error())
			continue
		}
		if field == "match" {
			d.fieldErr(ep, "%s", rest)
			continue
		}
		d.fieldErr(ep+"."+field, "%s", rest)
	}
}

// providerMerge merges one file's rules over a table: a new name appends a
// rule, a known one merges over it; no MX suffix may belong to two providers.
type providerMerge struct {
	p     *Providers
	owner map[string]string // suffix → provider name
	index map[string]int    // name → index in p.Rules
	seen  map[string]int    // names in this file → index in its rules
}

func newProviderMerge(p *Providers) *providerMerge {
	m := &providerMerge{p: p, owner: map[string]string{}, index: map[string]int{}, seen: map[string]int{}}
	for i, r := range p.Rules {
		m.index[r.Name] = i
		for _, s := range r.Suffixes {
			m.owner[s] = r.Name
		}
	}
	return m
}

// add merges rule i of the file (providers[i]), recording what is wrong with it.
func (m *providerMerge) add(d *decoder, i int, r ProviderRule, raw rawShaping) {
	ep := fmt.Sprintf("providers[%d]", i)
	s, _ := raw.parse(d, ep)
	r.Name = strings.ToLower(r.Name)
	if d.failed[ep+".name"] {
		return
	}
	if !providerName.MatchString(r.Name) || r.Name == "default" {
		d.fieldErr(ep+".name", "%s must be 1-64 of a-z 0-9 . _ - (not default, no site: prefix)", Quote(r.Name))
		return
	}
	if j, dup := m.seen[r.Name]; dup {
		d.fieldErr(ep+".name", "%s is named again (first in providers[%d])", r.Name, j)
		return
	}
	m.seen[r.Name] = i
	j, known := m.index[r.Name]
	if !known && len(r.Suffixes) == 0 && !d.failed[ep+".suffixes"] {
		d.fieldErr(ep+".suffixes", "a new provider needs at least one MX host suffix")
	}
	for k, suf := range r.Suffixes {
		if o, taken := m.owner[suf]; taken && o != r.Name {
			d.fieldErr(fmt.Sprintf("%s.suffixes[%d]", ep, k), "%s belongs to provider %s already", suf, o)
		}
		m.owner[suf] = r.Name
	}
	if !known {
		r.Shaping = s
		m.index[r.Name] = len(m.p.Rules)
		m.p.Rules = append(m.p.Rules, r)
		return
	}
	mergeRule(&m.p.Rules[j], r, s)
}

// mergeRule merges a file's rule r, shaping s, over the table's entry e.
func mergeRule(e *ProviderRule, r ProviderRule, s Shaping) {
	e.Shaping = e.Shaping.Over(s)
	for _, suf := range r.Suffixes {
		if !contains(e.Suffixes, suf) {
			e.Suffixes = append(e.Suffixes, suf)
		}
	}
	e.Examples = append(e.Examples, r.Examples...)
	if r.Title != "" {
		e.Title = r.Title
	}
	if r.Source != "" {
		e.Source = r.Source
	}
	e.File, e.Line = r.File, r.Line
}

func contains(s []string, v string) bool {
	for _, e := range s {
		if e == v {
			return true
		}
	}
	return false
}

// required records a problem for each key absent from mapping n.
func (d *decoder) required(n *yaml.Node, keys ...string) {
	for _, k := range keys {
		if d.lines[k] == 0 {
			d.errf(n.Line, "missing required key %s", Quote(k))
		}
	}
}

// rawShaping is a shaping as written, before its rate is parsed.
type rawShaping struct {
	connections, messages int
	rate                  string
}

// fields adds the three shaping keys to more and returns it.
func (r *rawShaping) fields(d *decoder, more map[string]func(string, *yaml.Node)) map[string]func(string, *yaml.Node) {
	more["connections"] = d.integer(&r.connections)
	more["rate"] = d.scalarStr(&r.rate)
	more["messages_per_connection"] = d.integer(&r.messages)
	return more
}

// parse checks the values under path: each, when given, must be positive
// (leaving a field out keeps the value below it; there is no "0 = none").
func (r rawShaping) parse(d *decoder, path string) (Shaping, bool) {
	s := Shaping{Connections: r.connections, MessagesPerConnection: r.messages}
	ok := true
	for _, n := range []struct {
		key string
		v   int
		max int
	}{{"connections", r.connections, 1000}, {"messages_per_connection", r.messages, 100000}} {
		if d.lines[path+"."+n.key] != 0 && !d.failed[path+"."+n.key] && (n.v < 1 || n.v > n.max) {
			d.fieldErr(path+"."+n.key, "%d must be between 1 and %d (leave it out to keep the default)", n.v, n.max)
			ok = false
		}
	}
	if r.rate != "" {
		rate, err := ParseRate(r.rate)
		switch {
		case err != nil:
			d.fieldErr(path+".rate", "%v", err)
			ok = false
		case rate == 0:
			d.fieldErr(path+".rate", "must be more than 0 (leave it out to keep the default)")
			ok = false
		}
		s.Rate = rate
	}
	return s, ok
}

// hostList decodes a list of host names (or suffixes), lower-cased, trailing
// dot dropped; a single scalar is a list of one. Null leaves it nil.
func (d *decoder) hostList(dst *[]string) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		items := []*yaml.Node{v}
		if v.Kind == yaml.SequenceNode {
			items = v.Content
		} else if v.Kind != yaml.ScalarNode {
			d.typeErr(path, v, "a list of host names such as [pphosted.com]")
			return
		}
		out := []string{}
		for i, e := range items {
			e = resolve(e)
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = e.Line
			h := strings.ToLower(strings.TrimSuffix(e.Value, "."))
			if e.Kind != yaml.ScalarNode || !isHostname(h) {
				d.failed[path] = true
				d.errf(e.Line, "%s: %s is not a host name", p, Quote(e.Value))
				continue
			}
			out = append(out, h)
		}
		*dst = out
	}
}

// shapingMap decodes delivery.shaping: key (provider name, "default", or a
// domain) → {connections, rate, messages_per_connection}.
func (d *decoder) shapingMap(dst *map[string]Shaping) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) || !d.mapping(path, v) {
			return
		}
		out := map[string]Shaping{}
		for i := 0; i+1 < len(v.Content); i += 2 {
			k, e := resolve(v.Content[i]), resolve(v.Content[i+1])
			key := strings.ToLower(strings.TrimSuffix(k.Value, "."))
			p := path + "." + key
			if _, dup := out[key]; dup {
				d.errf(k.Line, "%s: repeated key", short(p))
				continue
			}
			d.lines[p] = k.Line
			if k.Kind != yaml.ScalarNode || !d.mapping(p, e) {
				continue
			}
			var raw rawShaping
			d.fields(e, p+".", raw.fields(d, map[string]func(string, *yaml.Node){}))
			s, _ := raw.parse(d, p)
			if len(e.Content) == 0 {
				d.fieldErr(p, "sets nothing: give connections, rate or messages_per_connection")
			}
			out[key] = s
		}
		*dst = out
	}
}

// checkShaping reports delivery.shaping keys that are neither a provider of
// table, "default", nor a domain name.
func (s *Server) checkShaping(d *decoder, table *Providers) {
	names := map[string]bool{}
	var list []string
	for _, r := range table.Rules {
		names[r.Name] = true
		list = append(list, r.Name)
	}
	sort.Strings(list)
	for key := range s.Delivery.Shaping {
		switch {
		case key == "default" || names[key]:
		case strings.Contains(key, ".") && isHostname(key):
		default:
			d.fieldErr("delivery.shaping."+key, "%s is neither a provider (default, %s) nor a domain name", Quote(key), strings.Join(list, ", "))
		}
	}
}

// loadProviderTable merges delivery.providers over the built-in table,
// recording its problems (each naming its own file and line).
func (s *Server) loadProviderTable(d *decoder, dir string) {
	p := absPath(dir, s.Delivery.Providers)
	s.Delivery.Providers = p
	table, err := LoadProviders(p)
	if err != nil {
		if errs, ok := err.(Errors); ok {
			for _, e := range errs {
				d.errs = append(d.errs, lineError{d.lines["delivery.providers"], e})
			}
		} else {
			d.fieldErr("delivery.providers", "%v", err)
		}
		table, _ = BuiltinProviders()
	}
	s.Delivery.ProviderTable = table
	s.checkShaping(d, table)
}

var providerName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
