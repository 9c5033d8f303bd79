package configs

import (
	"fmt"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// isoCodes is every ISO 3166-1 alpha-2 code officially assigned, plus XK
// (Kosovo, user-assigned but in common use). campaign/country.go keeps the
// same list for reading CSV values; a campaign test checks they agree.
const isoCodes = `AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY
HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ
VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW`

// countryGroups are the names exclude_countries accepts besides single codes.
var countryGroups = map[string][]string{
	// The 27 member states of the European Union.
	"EU": strings.Fields("AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE"),
	// The European Economic Area: the EU plus Iceland, Liechtenstein and Norway.
	"EEA": strings.Fields("AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE IS LI NO"),
	// The United Kingdom; its ISO code is GB.
	"UK": {"GB"},
}

// countryAliases are codes in common use that ISO 3166-1 assigns otherwise:
// EL is the EU's own code for Greece.
var countryAliases = map[string]string{"EL": "GR"}

// countryCodes is isoCodes as a set.
var countryCodes = func() map[string]bool {
	m := map[string]bool{}
	for _, c := range strings.Fields(isoCodes) {
		m[c] = true
	}
	return m
}()

// CountryCodes returns every ISO 3166-1 alpha-2 code exclude_countries
// accepts (upper case, sorted), without the groups and aliases.
func CountryCodes() []string {
	out := make([]string, 0, len(countryCodes))
	for c := range countryCodes {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// ExpandCountries turns exclude_countries entries — ISO 3166-1 alpha-2 codes
// or the groups EU, EEA and UK, in any case — into a set of upper-case
// alpha-2 codes. It returns the entries it does not know, as written.
func ExpandCountries(entries []string) (set map[string]bool, unknown []string) {
	set = map[string]bool{}
	for _, e := range entries {
		c := strings.ToUpper(strings.TrimSpace(e))
		if a, ok := countryAliases[c]; ok {
			c = a
		}
		switch {
		case countryGroups[c] != nil:
			for _, m := range countryGroups[c] {
				set[m] = true
			}
		case countryCodes[c]:
			set[c] = true
		default:
			unknown = append(unknown, e)
		}
	}
	return set, unknown
}

// strList decodes a sequence of scalars as text, recording each element's
// line as path[i]; a single scalar is taken as a list of one. Null leaves it nil.
func (d *decoder) strList(dst *[]string) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind == yaml.ScalarNode {
			// "exclude_countries: EU"; any scalar is taken as text, so that
			// a YAML 1.1 reader's NO (Norway) stays a country.
			d.lines[path+"[0]"] = v.Line
			*dst = []string{v.Value}
			return
		}
		if v.Kind != yaml.SequenceNode {
			d.typeErr(path, v, "a list such as [EU, CH]")
			return
		}
		out := []string{}
		for i, e := range v.Content {
			e = resolve(e)
			p := fmt.Sprintf("%s[%d]", path, i)
			if e.Kind != yaml.ScalarNode || null(e) {
				d.typeErr(p, e, "a country code or group")
				continue
			}
			d.lines[p] = e.Line
			out = append(out, e.Value)
		}
		*dst = out
	}
}
