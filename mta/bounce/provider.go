package bounce

import (
	"regexp"
	"strings"
)

// Provider families a bounce can be traced to by host name. They name who
// answered or reported, so the delivery side can tell "Microsoft is judging
// us" from "this mailbox is gone"; the delivery-side table of providers
// (rates, rules) lives elsewhere and is not this.
const (
	ProviderMicrosoft      = "microsoft"
	ProviderGoogle         = "google"
	ProviderYahoo          = "yahoo" // Yahoo and AOL
	ProviderApple          = "apple"
	ProviderProofpoint     = "proofpoint"
	ProviderMimecast       = "mimecast"
	ProviderCisco          = "cisco"
	ProviderBarracuda      = "barracuda"
	ProviderSophos         = "sophos"
	ProviderTrendMicro     = "trendmicro"
	ProviderHornetsecurity = "hornetsecurity"
	ProviderGMX            = "gmx" // GMX, Web.de, 1&1 IONOS mail
	ProviderZoho           = "zoho"
	ProviderFastmail       = "fastmail"
	ProviderYandex         = "yandex"
	ProviderMailRu         = "mailru"
	ProviderOrange         = "orange"
	ProviderFree           = "free"
)

// providerSuffixes maps a host-name suffix (a whole label boundary) to its
// provider family: the MX, relay and bounce hosts each provider documents
// or shows in its Received lines.
var providerSuffixes = []struct{ suffix, provider string }{
	{"outlook.com", ProviderMicrosoft}, // *.mail.protection.outlook.com, *.prod.outlook.com, *.olc.protection.outlook.com
	{"hotmail.com", ProviderMicrosoft},
	{"live.com", ProviderMicrosoft},
	{"msn.com", ProviderMicrosoft},
	{"office365.com", ProviderMicrosoft},
	{"exchangelabs.com", ProviderMicrosoft},
	{"google.com", ProviderGoogle}, // aspmx.l.google.com, mx.google.com, smtp.google.com
	{"googlemail.com", ProviderGoogle},
	{"gmail.com", ProviderGoogle},
	{"1e100.net", ProviderGoogle},
	{"yahoodns.net", ProviderYahoo}, // mta*.am0.yahoodns.net
	{"yahoo.com", ProviderYahoo},
	{"yahoo.net", ProviderYahoo},
	{"aol.com", ProviderYahoo},
	{"mail.icloud.com", ProviderApple},
	{"me.com", ProviderApple},
	{"apple.com", ProviderApple},
	{"pphosted.com", ProviderProofpoint},
	{"ppe-hosted.com", ProviderProofpoint},
	{"mimecast.com", ProviderMimecast},
	{"iphmx.com", ProviderCisco},
	{"barracudanetworks.com", ProviderBarracuda},
	{"hydra.sophos.com", ProviderSophos},
	{"tmes.trendmicro.com", ProviderTrendMicro},
	{"tmes.trendmicro.eu", ProviderTrendMicro},
	{"hornetsecurity.com", ProviderHornetsecurity},
	{"gmx.net", ProviderGMX},
	{"web.de", ProviderGMX},
	{"ionos.com", ProviderGMX},
	{"zoho.com", ProviderZoho},
	{"zoho.eu", ProviderZoho},
	{"messagingengine.com", ProviderFastmail},
	{"fastmail.com", ProviderFastmail},
	{"yandex.net", ProviderYandex},
	{"yandex.ru", ProviderYandex},
	{"mail.ru", ProviderMailRu},
	{"orange.fr", ProviderOrange},
	{"free.fr", ProviderFree},
}

// ProviderOf returns the provider family of a host name (an MX, a
// Reporting-MTA, a Received host; a trailing dot and case are ignored), or
// "" when it is none of those known.
func ProviderOf(host string) string {
	h := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(host), "."))
	if h == "" {
		return ""
	}
	for _, s := range providerSuffixes {
		if h == s.suffix || strings.HasSuffix(h, "."+s.suffix) {
			return s.provider
		}
	}
	return ""
}

// receivedHostRe finds the host names after "from" and "by" in a Received
// field (RFC 5321 §4.4).
var receivedHostRe = regexp.MustCompile(`(?i)\b(from|by)\s+\(?([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+)`)

// messageProvider looks for a known provider in the hosts that made or
// carried the report: the Reporting-MTA and Remote-MTA fields (RFC 3464
// §2.2.2, §2.3.5), the report's own Received fields and its From domain,
// then the hosts that received the returned original ("by" in its Received
// fields; "from" there is our own host).
func (p *parser) messageProvider() string {
	var hosts []string
	for _, g := range p.dsn {
		for _, k := range []string{"Remote-MTA", "Reporting-MTA"} {
			if v := g.get(k); v != "" {
				hosts = append(hosts, hostOf(stripType(v)))
			}
		}
	}
	for _, v := range p.top.all("Received") {
		for _, m := range receivedHostRe.FindAllStringSubmatch(v, 4) {
			hosts = append(hosts, m[2])
		}
	}
	if a := firstAddress(p.top.get("From")); a != "" {
		hosts = append(hosts, a[strings.LastIndexByte(a, '@')+1:])
	}
	for _, v := range p.orig.all("Received") {
		for _, m := range receivedHostRe.FindAllStringSubmatch(v, 4) {
			if strings.EqualFold(m[1], "by") {
				hosts = append(hosts, m[2])
			}
		}
	}
	for _, h := range hosts {
		if pr := ProviderOf(h); pr != "" {
			return pr
		}
	}
	return ""
}
