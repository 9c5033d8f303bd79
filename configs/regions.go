package configs

import (
	"fmt"
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

// countryNames maps the English (and own-language) names of the EU, EEA and
// UK countries, and of the countries most often found beside them in B2B
// lists, to their codes. Keys are lower case, dots removed, spaces single.
var countryNames = map[string]string{
	// EU
	"austria": "AT", "österreich": "AT", "osterreich": "AT",
	"belgium": "BE", "belgië": "BE", "belgie": "BE", "belgique": "BE", "belgien": "BE",
	"bulgaria": "BG", "българия": "BG",
	"croatia": "HR", "hrvatska": "HR",
	"cyprus": "CY", "κύπρος": "CY",
	"czech republic": "CZ", "czechia": "CZ", "česko": "CZ", "česká republika": "CZ",
	"denmark": "DK", "danmark": "DK",
	"estonia": "EE", "eesti": "EE",
	"finland": "FI", "suomi": "FI",
	"france":  "FR",
	"germany": "DE", "deutschland": "DE",
	"greece": "GR", "ελλάδα": "GR", "hellas": "GR",
	"hungary": "HU", "magyarország": "HU", "magyarorszag": "HU",
	"ireland": "IE", "republic of ireland": "IE", "éire": "IE", "eire": "IE",
	"italy": "IT", "italia": "IT",
	"latvia": "LV", "latvija": "LV",
	"lithuania": "LT", "lietuva": "LT",
	"luxembourg": "LU", "luxemburg": "LU",
	"malta":       "MT",
	"netherlands": "NL", "the netherlands": "NL", "holland": "NL", "nederland": "NL",
	"poland": "PL", "polska": "PL",
	"portugal": "PT",
	"romania":  "RO", "românia": "RO",
	"slovakia": "SK", "slovensko": "SK",
	"slovenia": "SI", "slovenija": "SI",
	"spain": "ES", "españa": "ES", "espana": "ES",
	"sweden": "SE", "sverige": "SE",
	// EEA
	"iceland": "IS", "ísland": "IS",
	"liechtenstein": "LI",
	"norway":        "NO", "norge": "NO", "noreg": "NO",
	// UK
	"united kingdom": "GB", "the united kingdom": "GB", "great britain": "GB", "britain": "GB",
	"england": "GB", "scotland": "GB", "wales": "GB", "northern ireland": "GB",
	"united kingdom of great britain and northern ireland": "GB",
	// Others often beside them
	"switzerland": "CH", "schweiz": "CH", "suisse": "CH", "svizzera": "CH",
	"united states": "US", "united states of america": "US", "the united states": "US", "usa": "US",
	"canada": "CA", "mexico": "MX", "brazil": "BR", "argentina": "AR", "chile": "CL",
	"australia": "AU", "new zealand": "NZ", "japan": "JP", "china": "CN", "india": "IN",
	"singapore": "SG", "hong kong": "HK", "south korea": "KR", "korea": "KR", "taiwan": "TW",
	"israel": "IL", "turkey": "TR", "türkiye": "TR", "turkiye": "TR",
	"united arab emirates": "AE", "uae": "AE", "saudi arabia": "SA", "south africa": "ZA",
	"ukraine": "UA", "russia": "RU", "russian federation": "RU", "serbia": "RS",
	"bosnia and herzegovina": "BA", "north macedonia": "MK", "albania": "AL", "montenegro": "ME",
	"moldova": "MD", "andorra": "AD", "monaco": "MC", "san marino": "SM",
	"gibraltar": "GI", "jersey": "JE", "guernsey": "GG", "isle of man": "IM",
}

// CountryCode reads a country value from a recipients file: an ISO 3166-1
// alpha-2 code in any case (EL and UK too), or a name from countryNames. ok
// is false for an empty or unrecognised value (the row's country is unknown).
func CountryCode(v string) (code string, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", false
	}
	name := strings.Join(strings.Fields(strings.ToLower(strings.ReplaceAll(v, ".", ""))), " ")
	if len(name) == 2 { // "DE", "de", "U.K."
		up := strings.ToUpper(name)
		if c, ok := countryAliases[up]; ok {
			return c, true
		}
		if up == "UK" {
			return "GB", true
		}
		if countryCodes[up] {
			return up, true
		}
		return "", false
	}
	code, ok = countryNames[name]
	return code, ok
}
