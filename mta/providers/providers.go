// Package providers finds the mailbox provider behind a destination domain
// and the shaping (connections, rate, messages per connection) that applies
// to mail for it.
//
// A domain's provider is found from its MX hosts: the table holds suffix
// rules ("mail.protection.outlook.com" matches that host and every host
// below it); the most preferred MX host that matches a rule decides, and
// among rules the longest suffix wins. A domain whose MX hosts match no rule
// gets a site provider named from its sorted MX host set
// ("site:mx1.example.net+mx2.example.net", KumoMTA's "site"), so two domains
// served by the same MX hosts share limits.
//
// Shaping is layered, each layer replacing only the fields it sets: the
// table's default limits, then the provider's own (as shipped), then a
// delivery.shaping entry by provider name ("default" for site providers),
// then one by domain (domain wins). The package knows no YAML: configs
// parses the files and cmd hands the values to New.
package providers

import (
	"fmt"
	"sort"
	"strings"
)

// SitePrefix starts the name of a provider made from an MX host set.
const SitePrefix = "site:"

// DefaultName is the shaping key of the limits every site provider gets,
// and that fills a provider's unset fields.
const DefaultName = "default"

// Limits are the shaping of mail from one source to one provider; a zero
// field is not set (no limit, or the next layer's value).
type Limits struct {
	Connections           int     // sessions open at once
	Rate                  float64 // messages per second
	MessagesPerConnection int     // then the session is closed and another opened
}

// Over returns l with the fields o sets replaced by o's: how each layer of
// shaping (table default, provider, delivery.shaping) lies over the last.
func (l Limits) Over(o Limits) Limits {
	if o.Connections != 0 {
		l.Connections = o.Connections
	}
	if o.Rate != 0 {
		l.Rate = o.Rate
	}
	if o.MessagesPerConnection != 0 {
		l.MessagesPerConnection = o.MessagesPerConnection
	}
	return l
}

// Provider is one entry of the table, or a site made from an MX host set.
type Provider struct {
	Name     string   // "microsoft", or "site:mx1.example.net+mx2.example.net"
	Title    string   // "Microsoft 365 (Exchange Online)"; a site's is its hosts
	Suffixes []string // MX host suffix rules, lower case, no trailing dot
	Limits   Limits   // as shipped, the default filling unset fields; before delivery.shaping
	Source   string   // where the limits come from
	Site     bool     // made from an MX host set: no rule matched
	Hosts    []string // a site's MX hosts, sorted
}

// Config is the table and the overrides.
type Config struct {
	// Providers is the table in order, each name once.
	Providers []Provider
	// Default fills the unset fields of every provider and is a site's limits.
	Default Limits
	// DefaultSource says where Default comes from.
	DefaultSource string
	// Shaping overrides by provider name, DefaultName (sites) or domain.
	Shaping map[string]Limits
}

// Table matches MX hosts to providers and says which shaping applies.
type Table struct {
	providers []Provider
	bySuffix  map[string]int // suffix → index in providers
	byName    map[string]int
	def       Limits
	defSource string
	shaping   map[string]Limits // keys lower case
}

// New checks cfg and builds the table: names and suffixes must be unique and
// non-empty, a name must not start with SitePrefix or be DefaultName, and no
// limit may be negative.
func New(cfg Config) (*Table, error) {
	t := &Table{
		bySuffix:  map[string]int{},
		byName:    map[string]int{},
		def:       cfg.Default,
		defSource: cfg.DefaultSource,
		shaping:   map[string]Limits{},
	}
	if err := checkLimits(cfg.Default); err != nil {
		return nil, fmt.Errorf("providers: default: %w", err)
	}
	for _, p := range cfg.Providers {
		name := strings.ToLower(p.Name)
		switch {
		case name == "":
			return nil, fmt.Errorf("providers: a provider has no name")
		case name == DefaultName || strings.HasPrefix(name, SitePrefix):
			return nil, fmt.Errorf("providers: %q is a reserved name", p.Name)
		case len(p.Suffixes) == 0:
			return nil, fmt.Errorf("providers: %s: no MX suffix", name)
		}
		if _, dup := t.byName[name]; dup {
			return nil, fmt.Errorf("providers: %s: named twice", name)
		}
		if err := checkLimits(p.Limits); err != nil {
			return nil, fmt.Errorf("providers: %s: %w", name, err)
		}
		q := Provider{Name: name, Title: p.Title, Source: p.Source, Limits: cfg.Default.Over(p.Limits)}
		for _, s := range p.Suffixes {
			s = normHost(s)
			if s == "" {
				return nil, fmt.Errorf("providers: %s: an empty MX suffix", name)
			}
			if i, dup := t.bySuffix[s]; dup {
				return nil, fmt.Errorf("providers: %s: suffix %s belongs to %s already", name, s, t.providers[i].Name)
			}
			t.bySuffix[s] = len(t.providers)
			q.Suffixes = append(q.Suffixes, s)
		}
		t.byName[name] = len(t.providers)
		t.providers = append(t.providers, q)
	}
	for k, l := range cfg.Shaping {
		if err := checkLimits(l); err != nil {
			return nil, fmt.Errorf("providers: shaping %s: %w", k, err)
		}
		t.shaping[normHost(k)] = l
	}
	return t, nil
}

func checkLimits(l Limits) error {
	if l.Connections < 0 || l.Rate < 0 || l.MessagesPerConnection < 0 {
		return fmt.Errorf("negative limit %+v", l)
	}
	return nil
}

// normHost lower-cases a host name and drops its trailing dot.
func normHost(h string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(h), "."))
}

// Providers returns the table in order (sites are not in it).
func (t *Table) Providers() []Provider {
	out := make([]Provider, len(t.providers))
	copy(out, t.providers)
	return out
}

// Default returns the limits of site providers as shipped, and their source.
func (t *Table) Default() (Limits, string) { return t.def, t.defSource }

// Lookup returns the provider of the table with that name.
func (t *Table) Lookup(name string) (Provider, bool) {
	i, ok := t.byName[strings.ToLower(name)]
	if !ok {
		return Provider{}, false
	}
	return t.providers[i], true
}

// rule returns the index of the provider whose longest suffix matches host.
func (t *Table) rule(host string) (int, bool) {
	for s := host; s != ""; {
		if i, ok := t.bySuffix[s]; ok {
			return i, true
		}
		_, rest, found := strings.Cut(s, ".")
		if !found {
			break
		}
		s = rest
	}
	return 0, false
}

// Match returns the provider of a domain whose MX hosts, most preferred
// first, are mxHosts (case-insensitive, trailing dot tolerated): the first
// host that matches a rule decides; with none, a site made from the sorted,
// deduplicated host set. With no hosts it returns a site named "site:".
func (t *Table) Match(mxHosts []string) Provider {
	p, _, _ := t.MatchRule(mxHosts)
	return p
}

// MatchRule is Match that also names the MX host that decided and the
// suffix rule it matched ("", "" for a site).
func (t *Table) MatchRule(mxHosts []string) (p Provider, host, suffix string) {
	for _, h := range mxHosts {
		h = normHost(h)
		if i, ok := t.rule(h); ok {
			return t.providers[i], h, t.suffixOf(h, i)
		}
	}
	set := map[string]bool{}
	var hosts []string
	for _, h := range mxHosts {
		if h = normHost(h); h != "" && !set[h] {
			set[h] = true
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	name := SitePrefix + strings.Join(hosts, "+")
	return Provider{Name: name, Title: strings.Join(hosts, ", "), Limits: t.def, Source: t.defSource, Site: true, Hosts: hosts}, "", ""
}

// suffixOf returns the longest suffix of provider i that host matches.
func (t *Table) suffixOf(host string, i int) string {
	for s := host; s != ""; {
		if j, ok := t.bySuffix[s]; ok && j == i {
			return s
		}
		_, rest, found := strings.Cut(s, ".")
		if !found {
			break
		}
		s = rest
	}
	return ""
}

// Shaped is the shaping that applies to a domain and what it came from.
type Shaped struct {
	Limits     Limits // in force
	Shipped    Limits // the provider's (or a site's default) before delivery.shaping
	ByProvider string // the delivery.shaping key by provider that applied ("" none)
	ByDomain   string // the delivery.shaping key by domain that applied ("" none)
	// ProviderOverride and DomainOverride are those entries' fields as set.
	ProviderOverride, DomainOverride Limits
}

// Shaping returns the limits in force for mail to domain at provider p.
func (t *Table) Shaping(domain string, p Provider) Limits {
	return t.Explain(domain, p).Limits
}

// Explain returns the limits in force for mail to domain at provider p and
// the layers they came from.
func (t *Table) Explain(domain string, p Provider) Shaped {
	s := Shaped{Shipped: p.Limits}
	if p.Site {
		s.Shipped = t.def
	}
	s.Limits = s.Shipped
	key := strings.ToLower(p.Name)
	if p.Site {
		key = DefaultName
	}
	if o, ok := t.shaping[key]; ok {
		s.Limits, s.ByProvider, s.ProviderOverride = s.Limits.Over(o), key, o
	}
	if d := normHost(domain); d != "" {
		if o, ok := t.shaping[d]; ok {
			s.Limits, s.ByDomain, s.DomainOverride = s.Limits.Over(o), d, o
		}
	}
	return s
}

// FormatRate writes a rate in messages per second the way the config takes
// it, per minute when that is a whole count ("300/m", "6000/m" for 100/s),
// else per hour ("90/h"), else per second ("0.01/s");
// "" for no rate.
func FormatRate(perSecond float64) string {
	if perSecond <= 0 {
		return ""
	}
	for _, u := range []struct {
		unit string
		secs float64
	}{{"m", 60}, {"h", 3600}} {
		n := perSecond * u.secs
		if r := float64(int64(n + 0.5)); r >= 1 && abs(n-r) < 1e-6*r {
			return fmt.Sprintf("%d/%s", int64(r), u.unit)
		}
	}
	return fmt.Sprintf("%g/s", perSecond)
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}
