package configs

import (
	_ "embed"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/httplimit"
	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// DefaultPath is where the server configuration is looked for when none is named.
const DefaultPath = "configs/postwarden.yaml"

//go:embed default.yaml
var defaultYAML []byte

// Delivery modes.
const (
	ModeCapture = "capture" // write each message to <capture_dir>/<queue id>.eml
	ModeMX      = "mx"      // deliver to the recipient domain's MX hosts
	ModeRelay   = "relay"   // hand every message to one smart host
)

// Server is the server configuration (postwarden.yaml); keys mirror the YAML.
type Server struct {
	Path         string // absolute path of the file; "" for DefaultServer
	Hostname     string // EHLO name, Message-ID domain
	DataDir      string // absolute; bbolt files, keys, outbox
	PublicURL    string // base of unsubscribe links, no trailing slash
	HTTPListen   string // host:port of the unsubscribe pages
	AdminSocket  string // absolute; default <data_dir>/admin.sock
	PrivacyURL   string // privacy policy link put in every message
	TokenKeyFile string // absolute; default <data_dir>/token.key
	SenderName   string // shown on the unsubscribe pages; default the hostname
	// SMTPListen is host:port of the inbound listener for bounces and
	// complaints ("" = off); it never relays.
	SMTPListen string
	// Inbound limits the listener on SMTPListen.
	Inbound Inbound
	// BounceDomain is the envelope sender domain of campaign mail (VERP
	// addresses bounce+TOKEN@BounceDomain); "" sends from the From address.
	BounceDomain string
	// MetricsListen is host:port of the Prometheus endpoint ("" = off).
	MetricsListen string
	// DataKeyFile holds the AES-256 key that seals personal fields at rest
	// (default <data_dir>/data.key, created 0600).
	DataKeyFile string
	// Lists are the lists that take subscriptions, by id.
	Lists map[string]List
	// OptinTTL is how long a double opt-in confirmation link stays valid.
	OptinTTL  time.Duration
	Retention Retention
	Branding  Branding
	DKIM      []DKIM
	Delivery  Delivery
	// HTTPTrustedProxies are the reverse proxies in front of http_listen:
	// only from these is X-Forwarded-For read for the client address.
	HTTPTrustedProxies []netip.Prefix
	SubscribeLimits    SubscribeLimits
	UnsubscribeLimits  UnsubscribeLimits

	lines map[string]int
}

// Inbound limits the inbound SMTP listener. A zero field takes the
// listener's own default (mta/inbound), listed in README.md.
type Inbound struct {
	MaxConnections      int           // all clients together; default 100
	MaxConnectionsPerIP int           // one client address; default 10
	MaxBytesInFlight    int64         // message bytes held in memory at once; default 128 MiB
	MaxMessageBytes     int64         // one message; default 10 MiB
	ReadTimeout         time.Duration // waiting for a command, or for more message data; default 5m
}

// Limit is a token bucket: Burst requests at once, refilled at Rate per
// second; Rate 0 is no limit.
type Limit struct {
	Rate  float64
	Burst int
}

// SubscribeLimits bound POST /subscribe and /c/TOKEN (429 with Retry-After).
type SubscribeLimits struct {
	RequestsPerIP           Limit // every POST, per client IP
	SignupsPerMailbox       Limit // sign-ups per mailbox (address without +tag, case-folded)
	ConfirmationsPerMailbox Limit // confirmation mails per mailbox
	ConfirmationsPerIP      Limit // confirmation mails per client IP
	ConfirmationsPerNetwork Limit // confirmation mails per /24 (IPv4) or /64 (IPv6)
	ConfirmationsTotal      Limit // confirmation mails in all
}

// UnsubscribeLimits bound repeated POSTs on /u/TOKEN; the first POST on a
// token, and any whose unsubscribe is not yet recorded, always counts.
type UnsubscribeLimits struct {
	PerIP    Limit
	PerToken Limit
}

// List is a mailing list people may subscribe to.
type List struct {
	Name        string // shown on pages and in List-Id
	DoubleOptIn bool   // a sign-up is confirmed by a click in an email first
}

// Retention says how long records are kept before `db prune` (and the
// daemon) remove them.
type Retention struct {
	FinishedMessages time.Duration // delivered/bounced/expired records
	PendingOptin     time.Duration // unconfirmed sign-ups
	Audit            time.Duration // audit entries
}

// Branding is how the pages a recipient sees look.
type Branding struct {
	Name       string // sender name shown on pages; default sender_name
	LogoURL    string // optional https URL of a logo
	Color      string // accent colour, #rrggbb
	Background string // page background, #rrggbb
}

// DKIM is one signing key.
type DKIM struct {
	Domain   string
	Selector string
	KeyFile  string // absolute; default <data_dir>/dkim/<domain>.<selector>.key
	Type     string // rsa | ed25519
	// BodyCanonicalization is the c= body algorithm (RFC 6376 §3.4.3/§3.4.4):
	// simple (default) or relaxed. Bodies are quoted-printable with short
	// lines and no trailing white space, so both survive the same transit;
	// simple costs next to nothing, relaxed ~15 % of a campaign's CPU.
	BodyCanonicalization string
	// RSASigner computes an RSA key's signatures: auto (default: OpenSSL's
	// libcrypto when it loads, else Go), go, or openssl (an error without
	// libcrypto). The signatures are the same bytes; OpenSSL is ~4x faster.
	RSASigner string
}

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
}

// TLS policies, weakest first.
const (
	TLSNone          = "none"
	TLSOpportunistic = "opportunistic"
	TLSRequired      = "required"
	TLSVerify        = "verify"
)

// Line returns the line of a dotted key ("hostname", "delivery.mode",
// "dkim[0].selector") in the file, or 0 when absent.
func (s *Server) Line(key string) int { return s.lines[key] }

// LoadServer reads the server configuration at path, applies defaults and
// resolves relative paths against the file's folder. All problems come back
// at once as Errors.
func LoadServer(path string) (*Server, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("configs: read server config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("configs: %s: %w", path, err)
	}
	s, err := parseServer(path, data, filepath.Dir(abs))
	if err != nil {
		return nil, err
	}
	s.Path = abs
	return s, nil
}

// DefaultServer returns the embedded default configuration (capture mode,
// data_dir "var" under the current working directory), used when no file
// exists at DefaultPath.
func DefaultServer() (*Server, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, fmt.Errorf("configs: default config: %w", err)
	}
	return parseServer("default.yaml (embedded)", defaultYAML, wd)
}

// parseServer decodes, defaults and checks one server file.
func parseServer(name string, data []byte, dir string) (*Server, error) {
	d := newDecoder(name)
	s := &Server{lines: d.lines}
	var rates map[string]string
	adaptive := true
	var br rawBrakes
	root := d.document(data)
	if root == nil {
		return nil, d.err()
	}
	d.fields(root, "", map[string]func(string, *yaml.Node){
		"hostname":       d.str(&s.Hostname),
		"data_dir":       d.str(&s.DataDir),
		"public_url":     d.str(&s.PublicURL),
		"http_listen":    d.str(&s.HTTPListen),
		"admin_socket":   d.str(&s.AdminSocket),
		"privacy_url":    d.str(&s.PrivacyURL),
		"token_key_file": d.str(&s.TokenKeyFile),
		"sender_name":    d.str(&s.SenderName),
		"smtp_listen":    d.str(&s.SMTPListen),
		"bounce_domain":  d.str(&s.BounceDomain),
		"inbound": func(path string, v *yaml.Node) {
			if d.mapping(path, v) {
				in := &s.Inbound
				d.fields(v, path+".", map[string]func(string, *yaml.Node){
					"max_connections":        d.integer(&in.MaxConnections),
					"max_connections_per_ip": d.integer(&in.MaxConnectionsPerIP),
					"max_bytes_in_flight":    d.byteSize(&in.MaxBytesInFlight),
					"max_message_bytes":      d.byteSize(&in.MaxMessageBytes),
					"read_timeout":           d.duration(&in.ReadTimeout),
				})
			}
		},
		"metrics_listen": d.str(&s.MetricsListen),
		"data_key_file":  d.str(&s.DataKeyFile),
		"optin_ttl":      d.duration(&s.OptinTTL),
		"lists":          d.lists(&s.Lists),
		"retention": func(path string, v *yaml.Node) {
			if d.mapping(path, v) {
				r := &s.Retention
				d.fields(v, path+".", map[string]func(string, *yaml.Node){
					"finished_messages": d.duration(&r.FinishedMessages),
					"pending_optin":     d.duration(&r.PendingOptin),
					"audit":             d.duration(&r.Audit),
				})
			}
		},
		"branding": func(path string, v *yaml.Node) {
			if d.mapping(path, v) {
				b := &s.Branding
				d.fields(v, path+".", map[string]func(string, *yaml.Node){
					"name":       d.str(&b.Name),
					"logo_url":   d.str(&b.LogoURL),
					"color":      d.str(&b.Color),
					"background": d.str(&b.Background),
				})
			}
		},
		"dkim": d.dkimList(&s.DKIM),
		"delivery": func(path string, v *yaml.Node) {
			if d.mapping(path, v) {
				dl := &s.Delivery
				d.fields(v, path+".", map[string]func(string, *yaml.Node){
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
					"rates":                       d.scalarMap(&rates),
					"tls":                         d.stringMap(&dl.TLS),
					"mta_sts":                     d.boolean(&dl.MTASTS),
					"max_messages_per_connection": d.integer(&dl.MaxMessagesPerConnection),
					"resolver":                    d.str(&dl.Resolver),
					"providers":                   d.str(&dl.Providers),
					"shaping":                     d.shapingMap(&dl.Shaping),
					"adaptive":                    d.boolean(&adaptive),
					"brakes":                      d.rawBrakes(&br),
				})
			}
		},
		"http_trusted_proxies": d.cidrs(&s.HTTPTrustedProxies),
		"subscribe_limits": d.limits(map[string]*Limit{
			"requests_per_ip":           &s.SubscribeLimits.RequestsPerIP,
			"signups_per_mailbox":       &s.SubscribeLimits.SignupsPerMailbox,
			"confirmations_per_mailbox": &s.SubscribeLimits.ConfirmationsPerMailbox,
			"confirmations_per_ip":      &s.SubscribeLimits.ConfirmationsPerIP,
			"confirmations_per_network": &s.SubscribeLimits.ConfirmationsPerNetwork,
			"confirmations_total":       &s.SubscribeLimits.ConfirmationsTotal,
		}),
		"unsubscribe_limits": d.limits(map[string]*Limit{
			"per_ip":    &s.UnsubscribeLimits.PerIP,
			"per_token": &s.UnsubscribeLimits.PerToken,
		}),
	}, "hostname", "data_dir", "public_url", "privacy_url")
	s.Delivery.Rates = d.rates("delivery.rates", rates)
	s.Delivery.Adaptive = adaptive
	s.Delivery.Brakes = d.brakes("delivery.brakes", br).Over(brakes.Defaults)
	s.applyDefaults(dir)
	s.check(d)
	s.loadProviderTable(d, dir)
	if err := d.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// dkimList decodes the dkim sequence.
func (d *decoder) dkimList(dst *[]DKIM) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind != yaml.SequenceNode {
			d.typeErr(path, v, "a list of {domain, selector, key_file, type}")
			return
		}
		out := make([]DKIM, len(v.Content))
		for i, e := range v.Content {
			e = resolve(e)
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = e.Line
			if !d.mapping(p, e) {
				continue
			}
			k := &out[i]
			d.fields(e, p+".", map[string]func(string, *yaml.Node){
				"domain":                d.str(&k.Domain),
				"selector":              d.str(&k.Selector),
				"key_file":              d.str(&k.KeyFile),
				"type":                  d.str(&k.Type),
				"body_canonicalization": d.str(&k.BodyCanonicalization),
				"rsa_signer":            d.str(&k.RSASigner),
			}, "domain", "selector")
		}
		*dst = out
	}
}

// mapping reports whether v is a mapping, recording a problem if not.
func (d *decoder) mapping(path string, v *yaml.Node) bool {
	if v.Kind != yaml.MappingNode {
		d.typeErr(path, v, "a mapping")
		return false
	}
	return true
}

// applyDefaults fills every unset field and makes paths absolute: relative
// paths are taken from dir (the config file's folder), then the defaults
// derived from data_dir are applied.
func (s *Server) applyDefaults(dir string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	s.DataDir = abs(s.DataDir)
	s.DataKeyFile = abs(s.DataKeyFile)
	s.AdminSocket = abs(s.AdminSocket)
	s.TokenKeyFile = abs(s.TokenKeyFile)
	s.Delivery.CaptureDir = abs(s.Delivery.CaptureDir)
	for i := range s.DKIM {
		s.DKIM[i].KeyFile = abs(s.DKIM[i].KeyFile)
	}

	or := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	or(&s.AdminSocket, filepath.Join(s.DataDir, "admin.sock"))
	or(&s.TokenKeyFile, filepath.Join(s.DataDir, "token.key"))
	or(&s.DataKeyFile, filepath.Join(s.DataDir, "data.key"))
	if s.OptinTTL == 0 {
		s.OptinTTL = 7 * 24 * time.Hour
	}
	if s.Lists == nil {
		s.Lists = map[string]List{}
	}
	rt := &s.Retention
	for _, r := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&rt.FinishedMessages, 365 * 24 * time.Hour}, {&rt.PendingOptin, 7 * 24 * time.Hour}, {&rt.Audit, 1825 * 24 * time.Hour}} {
		if *r.v == 0 {
			*r.v = r.def
		}
	}
	or(&s.Delivery.CaptureDir, filepath.Join(s.DataDir, "outbox"))
	sl, ul := &s.SubscribeLimits, &s.UnsubscribeLimits
	od, ud := optin.DefaultLimits, unsubscribe.DefaultLimits // each limit's default lives with its handler
	for _, l := range []struct {
		key string
		v   *Limit
		def httplimit.Rate
	}{
		{"subscribe_limits.requests_per_ip", &sl.RequestsPerIP, od.RequestsPerIP},
		{"subscribe_limits.signups_per_mailbox", &sl.SignupsPerMailbox, od.SignupsPerMailbox},
		{"subscribe_limits.confirmations_per_mailbox", &sl.ConfirmationsPerMailbox, od.ConfirmationsPerMailbox},
		{"subscribe_limits.confirmations_per_ip", &sl.ConfirmationsPerIP, od.ConfirmationsPerIP},
		{"subscribe_limits.confirmations_per_network", &sl.ConfirmationsPerNetwork, od.ConfirmationsPerNetwork},
		{"subscribe_limits.confirmations_total", &sl.ConfirmationsTotal, od.ConfirmationsTotal},
		{"unsubscribe_limits.per_ip", &ul.PerIP, ud.PerIP},
		{"unsubscribe_limits.per_token", &ul.PerToken, ud.PerToken},
	} {
		if s.lines[l.key+".rate"] == 0 {
			l.v.Rate = float64(l.def.Limit)
		}
		if s.lines[l.key+".burst"] == 0 {
			l.v.Burst = l.def.Burst
		}
	}
	for i := range s.DKIM {
		k := &s.DKIM[i]
		or(&k.KeyFile, filepath.Join(s.DataDir, "dkim", k.Domain+"."+k.Selector+".key"))
		or(&k.Type, "rsa")
		or(&k.BodyCanonicalization, "simple")
		or(&k.RSASigner, "auto")
	}
	or(&s.HTTPListen, "127.0.0.1:8025")
	or(&s.SenderName, s.Hostname)
	or(&s.Branding.Name, s.SenderName)
	or(&s.Branding.Color, "#1a56db")
	or(&s.Branding.Background, "#ffffff")
	or(&s.Delivery.Mode, ModeCapture)
	s.PublicURL = strings.TrimRight(s.PublicURL, "/")

	d := &s.Delivery
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

// check records every bad value.
func (s *Server) check(d *decoder) {
	required := []struct{ key, v string }{
		{"hostname", s.Hostname}, {"data_dir", s.DataDir}, {"public_url", s.PublicURL}, {"privacy_url", s.PrivacyURL},
	}
	for _, r := range required {
		if r.v == "" {
			d.fieldErr(r.key, "must not be empty")
			d.failed[r.key] = true
		}
	}
	if !isHostname(s.Hostname) {
		d.fieldErr("hostname", "%s is not a host name", Quote(s.Hostname))
	}
	if u, err := url.Parse(s.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		d.fieldErr("public_url", "%s is not an absolute http(s) URL", Quote(s.PublicURL))
	}
	if !absoluteURL(s.PrivacyURL) {
		d.fieldErr("privacy_url", "%s is not an absolute URL", Quote(s.PrivacyURL))
	}
	if err := hostPort(s.HTTPListen, true); err != nil {
		d.fieldErr("http_listen", "%s: %v", Quote(s.HTTPListen), err)
	}

	seen := map[string]int{}
	for i, k := range s.DKIM {
		p := fmt.Sprintf("dkim[%d]", i)
		if !isHostname(k.Domain) {
			d.fieldErr(p+".domain", "%s is not a domain name", Quote(k.Domain))
		}
		if !isHostname(k.Selector) {
			d.fieldErr(p+".selector", "%s is not a selector (letters, digits, '-' and '.')", Quote(k.Selector))
		}
		if k.Type != "rsa" && k.Type != "ed25519" {
			d.fieldErr(p+".type", "%s must be rsa or ed25519", Quote(k.Type))
		}
		if k.BodyCanonicalization != "simple" && k.BodyCanonicalization != "relaxed" {
			d.fieldErr(p+".body_canonicalization", "%s must be simple or relaxed", Quote(k.BodyCanonicalization))
		}
		if k.RSASigner != "auto" && k.RSASigner != "go" && k.RSASigner != "openssl" {
			d.fieldErr(p+".rsa_signer", "%s must be auto, go or openssl", Quote(k.RSASigner))
		}
		pair := strings.ToLower(k.Domain + "/" + k.Selector)
		if j, dup := seen[pair]; dup {
			d.fieldErr(p, "domain %s selector %s repeats dkim[%d]", k.Domain, k.Selector, j)
		}
		seen[pair] = i
	}

	for _, l := range []struct{ key, v string }{{"smtp_listen", s.SMTPListen}, {"metrics_listen", s.MetricsListen}} {
		if l.v != "" {
			if err := hostPort(l.v, true); err != nil {
				d.fieldErr(l.key, "%s: %v", Quote(l.v), err)
			}
		}
	}
	for id, l := range s.Lists {
		if !listID.MatchString(id) {
			d.fieldErr("lists."+id, "%s must be 1-64 of A-Z a-z 0-9 . _ -", Quote(id))
		}
		if strings.ContainsAny(l.Name, "\r\n") {
			d.fieldErr("lists."+id+".name", "contains CR or LF")
		}
	}
	for _, c := range []struct{ key, v string }{{"branding.color", s.Branding.Color}, {"branding.background", s.Branding.Background}} {
		if !hexColor.MatchString(c.v) {
			d.fieldErr(c.key, "%s must be a colour like #1a56db", Quote(c.v))
		}
	}
	if s.Branding.LogoURL != "" && !strings.HasPrefix(s.Branding.LogoURL, "https://") {
		d.fieldErr("branding.logo_url", "%s must be an https URL", Quote(s.Branding.LogoURL))
	}
	if s.BounceDomain != "" && !isHostname(s.BounceDomain) {
		d.fieldErr("bounce_domain", "%s is not a domain name", Quote(s.BounceDomain))
	}
	in := s.Inbound
	for _, n := range []struct {
		key string
		v   int64
	}{{"inbound.max_connections", int64(in.MaxConnections)}, {"inbound.max_connections_per_ip", int64(in.MaxConnectionsPerIP)},
		{"inbound.max_bytes_in_flight", in.MaxBytesInFlight}, {"inbound.max_message_bytes", in.MaxMessageBytes}} {
		if n.v < 0 {
			d.fieldErr(n.key, "must not be negative")
		}
	}
	if in.MaxMessageBytes > 32<<20 { // mta/bounce reads at most 32 MiB of a report
		d.fieldErr("inbound.max_message_bytes", "%d is over 32 MiB", in.MaxMessageBytes)
	}
	if in.MaxBytesInFlight > 0 && in.MaxMessageBytes > 0 && in.MaxBytesInFlight < in.MaxMessageBytes {
		d.fieldErr("inbound.max_bytes_in_flight", "%d is less than inbound.max_message_bytes %d: no message that size could ever be taken", in.MaxBytesInFlight, in.MaxMessageBytes)
	}
	for _, l := range []struct {
		key string
		v   Limit
	}{
		{"subscribe_limits.requests_per_ip", s.SubscribeLimits.RequestsPerIP},
		{"subscribe_limits.signups_per_mailbox", s.SubscribeLimits.SignupsPerMailbox},
		{"subscribe_limits.confirmations_per_mailbox", s.SubscribeLimits.ConfirmationsPerMailbox},
		{"subscribe_limits.confirmations_per_ip", s.SubscribeLimits.ConfirmationsPerIP},
		{"subscribe_limits.confirmations_per_network", s.SubscribeLimits.ConfirmationsPerNetwork},
		{"subscribe_limits.confirmations_total", s.SubscribeLimits.ConfirmationsTotal},
		{"unsubscribe_limits.per_ip", s.UnsubscribeLimits.PerIP},
		{"unsubscribe_limits.per_token", s.UnsubscribeLimits.PerToken},
	} {
		if l.v.Rate > 0 && l.v.Burst < 1 {
			d.fieldErr(l.key+".burst", "%d must be at least 1 (or rate 0 for no limit)", l.v.Burst)
		}
	}
	if s.SMTPListen != "" && s.BounceDomain == "" {
		d.fieldErr("smtp_listen", "needs bounce_domain: the inbound listener takes mail only for that domain")
	}

	dl := s.Delivery
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

var (
	listID   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	hexColor = regexp.MustCompile(`^#[0-9A-Fa-f]{6}$`)
)

// lists decodes the lists mapping: id → {name, double_opt_in}.
func (d *decoder) lists(dst *map[string]List) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) || !d.mapping(path, v) {
			return
		}
		out := map[string]List{}
		for i := 0; i+1 < len(v.Content); i += 2 {
			k, e := resolve(v.Content[i]), resolve(v.Content[i+1])
			p := path + "." + k.Value
			d.lines[p] = k.Line
			if !d.mapping(p, e) {
				continue
			}
			var l List
			d.fields(e, p+".", map[string]func(string, *yaml.Node){
				"name":          d.str(&l.Name),
				"double_opt_in": d.boolean(&l.DoubleOptIn),
			}, "double_opt_in")
			out[k.Value] = l
		}
		*dst = out
	}
}

// cidrs decodes a list of CIDRs ("10.0.0.0/8") or single IP addresses.
func (d *decoder) cidrs(dst *[]netip.Prefix) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind != yaml.SequenceNode {
			d.typeErr(path, v, "a list of CIDRs such as [127.0.0.1/32, 10.0.0.0/8]")
			return
		}
		out := []netip.Prefix{}
		for i, e := range v.Content {
			e = resolve(e)
			p, err := netip.ParsePrefix(e.Value)
			if err != nil {
				a, aerr := netip.ParseAddr(e.Value)
				if aerr != nil || e.Kind != yaml.ScalarNode {
					d.errf(e.Line, "%s[%d]: %s is not a CIDR such as 10.0.0.0/8", path, i, Quote(e.Value))
					continue
				}
				p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			}
			out = append(out, p.Masked())
		}
		*dst = out
	}
}

// limits decodes a mapping of named limits, each {rate: N/s|N/m|N/h, burst: N}.
func (d *decoder) limits(dst map[string]*Limit) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) || !d.mapping(path, v) {
			return
		}
		known := make(map[string]func(string, *yaml.Node), len(dst))
		for name, l := range dst {
			known[name] = func(p string, v *yaml.Node) {
				if null(v) || !d.mapping(p, v) {
					return
				}
				var raw string
				d.fields(v, p+".", map[string]func(string, *yaml.Node){
					"rate":  d.scalarStr(&raw),
					"burst": d.integer(&l.Burst),
				})
				if raw == "" {
					return
				}
				r, err := ParseRate(raw)
				if err != nil {
					d.fieldErr(p+".rate", "%v", err)
					return
				}
				l.Rate = r
			}
		}
		d.fields(v, path+".", known)
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

// isHostname accepts dot-separated labels of letters, digits and hyphens.
func isHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// absoluteURL accepts scheme://host… URLs.
func absoluteURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.IsAbs() && u.Host != ""
}

// hostPort checks host:port with a numeric port; emptyHost allows ":8025".
func hostPort(s string, emptyHost bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port")
	}
	if host == "" && !emptyHost {
		return fmt.Errorf("host is empty")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %s is not 1-65535", Quote(port))
	}
	return nil
}

// byteSize decodes a byte count: an integer, or a number with a unit KB,
// MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024); null leaves it
// zero.
func (d *decoder) byteSize(dst *int64) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		n, err := parseByteSize(v.Value)
		if v.Kind != yaml.ScalarNode || err != nil {
			d.failed[path] = true
			d.errf(v.Line, "%s: %s is not a byte count (use e.g. 10485760, 10MiB, 256MB)", path, Quote(v.Value))
			return
		}
		*dst = n
	}
}

// byteUnits are the units byteSize accepts, longest first.
var byteUnits = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}

// parseByteSize reads "1048576", "1MiB" or "1 MB".
func parseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad byte count %s", Quote(s))
	}
	return n * mult, nil
}
