package configs

import (
	"net/url"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/warmup"
	"github.com/postwarden/postwarden/queue"
)

// Delivery modes.
const (
	ModeCapture = "capture" // write each message to <capture_dir>/<queue id>.eml
	ModeMX      = "mx"      // deliver to the recipient domain's MX hosts
	ModeRelay   = "relay"   // hand every message to one smart host
)

// Delivery says how the queue hands messages on.
type Delivery struct {
	Mode                 string            // capture | mx | relay
	CaptureDir           string            // absolute; default <data_dir>/outbox
	Relay                string            // smtp://host:port, required in relay mode
	Routes               map[string]string // recipient domain → host:port, overrides MX
	Retry                []time.Duration   // waits between attempts
	MaxAge               time.Duration     // give up after this long in the queue
	DrainTimeout         time.Duration     // on SIGTERM, in-flight deliveries get this long, then go back to the queue
	ConcurrencyPerDomain int
	SMTPPort             int
	Workers              int
	// Rates is messages per second by destination domain; key "default"
	// applies to the others; 0 is unlimited.
	Rates map[string]float64
	// TLS is the STARTTLS policy by destination domain: none, opportunistic,
	// required or verify; key "default" applies to the others.
	TLS                      map[string]string
	MTASTS                   bool   // fetch, cache and enforce MTA-STS (RFC 8461)
	MaxMessagesPerConnection int    // then the connection is closed and redialled
	Resolver                 string // host:port of a DNS server; "" = the system's
	// Providers is an extra provider rules file (absolute), merged over the
	// built-in table configs/providers.yaml; "" = the built-in table only.
	Providers string
	// Shaping overrides the table's limits by provider name ("default" for
	// destinations no rule names) or by domain; the domain's entry wins.
	Shaping map[string]Shaping
	// ProviderTable is the built-in table with Providers merged over it.
	ProviderTable *Providers
	// Adaptive lets the replies of providers lower or suspend the limits of
	// mail to them (mta/adaptive); default true.
	Adaptive bool
	// Brakes are the campaign brakes every campaign has unless its file
	// says otherwise; default brakes.Defaults (Gmail's and Yahoo's bulk-sender
	// rules: spam complaints under 0.3 %).
	Brakes brakes.Thresholds
	// Sources are the egress addresses (none: the system's default), Pools
	// the weighted lists of them campaigns name, Warmup the daily caps per
	// provider of new sources (see mta/sources.go, mta/warmup).
	Sources []mta.Source
	Pools   map[string][]mta.PoolMember
	Warmup  warmup.Schedule
}

// TLS policies, weakest first.
const (
	TLSNone          = "none"
	TLSOpportunistic = "opportunistic"
	TLSRequired      = "required"
	TLSVerify        = "verify"
)

// fields decodes the delivery section; rates and brakes are kept raw in
// rates and br.
func (dl *Delivery) fields(d *decoder, rates *map[string]string, br *rawBrakes) map[string]func(string, *yaml.Node) {
	f := map[string]func(string, *yaml.Node){
		"mode":                        d.str(&dl.Mode),
		"capture_dir":                 d.str(&dl.CaptureDir),
		"relay":                       d.str(&dl.Relay),
		"routes":                      d.stringMap(&dl.Routes),
		"retry":                       d.durations(&dl.Retry),
		"max_age":                     d.duration(&dl.MaxAge),
		"drain_timeout":               d.duration(&dl.DrainTimeout),
		"concurrency_per_domain":      d.integer(&dl.ConcurrencyPerDomain),
		"smtp_port":                   d.integer(&dl.SMTPPort),
		"workers":                     d.integer(&dl.Workers),
		"rates":                       d.scalarMap(rates),
		"tls":                         d.stringMap(&dl.TLS),
		"mta_sts":                     d.boolean(&dl.MTASTS),
		"max_messages_per_connection": d.integer(&dl.MaxMessagesPerConnection),
		"resolver":                    d.str(&dl.Resolver),
		"providers":                   d.str(&dl.Providers),
		"shaping":                     d.shapingMap(&dl.Shaping),
		"adaptive":                    d.boolean(&dl.Adaptive),
		"brakes":                      d.rawBrakes(br),
	}
	for k, fn := range dl.sourceFields(d) {
		f[k] = fn
	}
	return f
}

// applyDefaults fills the delivery section's unset fields, each from the
// package that owns the setting.
func (d *Delivery) applyDefaults() {
	if d.Routes == nil {
		d.Routes = map[string]string{}
	}
	if d.Retry == nil {
		d.Retry = slices.Clone(queue.DefaultRetry)
	}
	if d.MaxAge == 0 {
		d.MaxAge = queue.DefaultMaxAge
	}
	if d.DrainTimeout == 0 {
		d.DrainTimeout = queue.DefaultDrainTimeout
	}
	if d.Rates == nil {
		d.Rates = map[string]float64{}
	}
	if d.TLS == nil {
		d.TLS = map[string]string{}
	}
	if d.Shaping == nil {
		d.Shaping = map[string]Shaping{}
	}
	if d.TLS["default"] == "" {
		d.TLS["default"] = TLSOpportunistic // RFC 3207: STARTTLS when offered
	}
	ints := []struct {
		v   *int
		def int
	}{{&d.ConcurrencyPerDomain, mta.DefaultConcurrencyPerDomain}, {&d.SMTPPort, mta.DefaultSMTPPort},
		{&d.Workers, queue.DefaultWorkers}, {&d.MaxMessagesPerConnection, mta.DefaultMaxMessagesPerConnection}}
	for _, n := range ints {
		if *n.v == 0 {
			*n.v = n.def
		}
	}
}

// check checks the delivery section.
func (dl Delivery) check(d *decoder) {
	for dom, pol := range dl.TLS {
		switch pol {
		case TLSNone, TLSOpportunistic, TLSRequired, TLSVerify:
		default:
			d.fieldErr("delivery.tls."+dom, "%s must be one of none, opportunistic, required, verify", Quote(pol))
		}
		if dom != "default" && !isHostname(dom) {
			d.fieldErr("delivery.tls."+dom, "%s is not a domain name", Quote(dom))
		}
	}
	if dl.Resolver != "" {
		if err := hostPort(dl.Resolver, false); err != nil {
			d.fieldErr("delivery.resolver", "%s: %v", Quote(dl.Resolver), err)
		}
	}
	switch dl.Mode {
	case ModeCapture, ModeMX, ModeRelay:
	default:
		d.fieldErr("delivery.mode", "%s must be one of capture, mx, relay", Quote(dl.Mode))
	}
	dl.checkRelayAndRoutes(d)
	dl.checkSources(d)
	positive := []struct {
		key string
		v   int
		max int
	}{{"concurrency_per_domain", dl.ConcurrencyPerDomain, 1000}, {"smtp_port", dl.SMTPPort, 65535}, {"workers", dl.Workers, 10000},
		{"max_messages_per_connection", dl.MaxMessagesPerConnection, 100000}}
	for _, n := range positive {
		if n.v < 1 || n.v > n.max {
			d.fieldErr("delivery."+n.key, "%d must be between 1 and %d", n.v, n.max)
		}
	}
}

// checkRelayAndRoutes checks the smart host and the routes by domain.
func (dl Delivery) checkRelayAndRoutes(d *decoder) {
	if dl.Mode == ModeRelay && dl.Relay == "" {
		d.fieldErr("delivery.relay", "required in relay mode (smtp://host:port)")
	}
	if dl.Relay != "" {
		u, err := url.Parse(dl.Relay)
		if err != nil || u.Scheme != "smtp" || u.Path != "" || u.RawQuery != "" || u.User != nil || hostPort(u.Host, false) != nil {
			d.fieldErr("delivery.relay", "%s must be smtp://host:port", Quote(dl.Relay))
		}
	}
	for dom, hp := range dl.Routes {
		if !isHostname(dom) {
			d.fieldErr("delivery.routes."+dom, "%s is not a domain name", Quote(dom))
		}
		if err := hostPort(hp, false); err != nil {
			d.fieldErr("delivery.routes."+dom, "%s: %v", Quote(hp), err)
		}
	}
}

// rates parses the delivery.rates values, recording bad ones.
func (d *decoder) rates(path string, raw map[string]string) map[string]float64 {
	out := make(map[string]float64, len(raw))
	for dom, v := range raw {
		r, err := ParseRate(v)
		if err != nil {
			d.fieldErr(path+"."+dom, "%v", err)
			continue
		}
		if dom != "default" && !isHostname(dom) {
			d.fieldErr(path+"."+dom, "%s is not a domain name", Quote(dom))
		}
		out[dom] = r
	}
	return out
}
