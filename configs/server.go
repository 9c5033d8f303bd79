package configs

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/postwarden/postwarden/campaign/brakes"
)

// DefaultPath is where the server configuration is looked for when none is named.
const DefaultPath = "configs/postwarden.yaml"

//go:embed default.yaml
var defaultYAML []byte

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
	// Cluster is the cluster section; nil is a single node (issue 13).
	Cluster *Cluster

	lines map[string]int
	hash  string // sha256 hex of the file as loaded
}

// List is a mailing list people may subscribe to.
type List struct {
	Name        string // shown on pages and in List-Id
	DoubleOptIn bool   // a sign-up is confirmed by a click in an email first
	// Language (a locale code such as "de") is the language of the list's
	// pages and confirmation mail whatever the browser asks for; "": the
	// browser's (Accept-Language), English by default. A campaign's own
	// language wins on the pages its links open.
	Language string
}

// Retention says how long records are kept before `db prune` (and the
// daemon) remove them.
type Retention struct {
	FinishedMessages time.Duration // delivered/bounced/expired records
	PendingOptin     time.Duration // unconfirmed sign-ups
	Audit            time.Duration // audit entries
}

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
	sum := sha256.Sum256(data)
	s.hash = hex.EncodeToString(sum[:])
	return s, nil
}

// Hash returns the sha256 hex of the server file's bytes as loaded, or ""
// for DefaultServer: what a campaign record keeps of the config it ran under.
func (s *Server) Hash() string { return s.hash }

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
	s.Delivery.Adaptive = true // delivery.adaptive's default: learn from providers' replies
	var rates map[string]string
	var br rawBrakes
	root := d.document(data)
	if root == nil {
		return nil, d.err()
	}
	d.fields(root, "", s.fields(d, &rates, &br), "hostname", "data_dir", "public_url", "privacy_url")
	s.Delivery.Rates = d.rates("delivery.rates", rates)
	s.Delivery.Brakes = d.brakes("delivery.brakes", br).Over(brakes.Defaults)
	s.applyDefaults(dir)
	s.check(d)
	s.loadProviderTable(d, dir)
	if err := d.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// fields is the decoder of each top-level key of the server file; the
// delivery section's rates and brakes land in rates and br, parsed after.
func (s *Server) fields(d *decoder, rates *map[string]string, br *rawBrakes) map[string]func(string, *yaml.Node) {
	return map[string]func(string, *yaml.Node){
		"hostname":             d.str(&s.Hostname),
		"data_dir":             d.str(&s.DataDir),
		"public_url":           d.str(&s.PublicURL),
		"http_listen":          d.str(&s.HTTPListen),
		"admin_socket":         d.str(&s.AdminSocket),
		"privacy_url":          d.str(&s.PrivacyURL),
		"token_key_file":       d.str(&s.TokenKeyFile),
		"sender_name":          d.str(&s.SenderName),
		"smtp_listen":          d.str(&s.SMTPListen),
		"bounce_domain":        d.str(&s.BounceDomain),
		"inbound":              d.section(s.Inbound.fields(d)),
		"metrics_listen":       d.str(&s.MetricsListen),
		"data_key_file":        d.str(&s.DataKeyFile),
		"optin_ttl":            d.duration(&s.OptinTTL),
		"lists":                d.lists(&s.Lists),
		"retention":            d.section(s.Retention.fields(d)),
		"branding":             d.section(s.Branding.fields(d)),
		"dkim":                 d.dkimList(&s.DKIM),
		"delivery":             d.section(s.Delivery.fields(d, rates, br)),
		"http_trusted_proxies": d.cidrs(&s.HTTPTrustedProxies),
		"subscribe_limits":     d.limits(s.limitsUnder("subscribe_limits")),
		"unsubscribe_limits":   d.limits(s.limitsUnder("unsubscribe_limits")),
		"cluster":              d.cluster(&s.Cluster),
	}
}

// section decodes a mapping whose keys are known.
func (d *decoder) section(known map[string]func(string, *yaml.Node)) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if d.mapping(path, v) {
			d.fields(v, path+".", known)
		}
	}
}

// fields decodes the retention section.
func (r *Retention) fields(d *decoder) map[string]func(string, *yaml.Node) {
	return map[string]func(string, *yaml.Node){
		"finished_messages": d.duration(&r.FinishedMessages),
		"pending_optin":     d.duration(&r.PendingOptin),
		"audit":             d.duration(&r.Audit),
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
	s.absPaths(dir)
	s.defaultFiles()
	s.defaultLimits()
	s.defaultDKIM()
	orDefault(&s.HTTPListen, "127.0.0.1:8025")
	orDefault(&s.SenderName, s.Hostname)
	orDefault(&s.Branding.Name, s.SenderName)
	orDefault(&s.Branding.Color, "#1a56db")
	orDefault(&s.Branding.Background, "#ffffff")
	orDefault(&s.Delivery.Mode, ModeCapture)
	s.PublicURL = strings.TrimRight(s.PublicURL, "/")
	s.Delivery.applyDefaults()
	if s.Cluster != nil {
		s.Cluster.applyDefaults(dir, s.DataDir)
	}
}

// orDefault sets *v to def when it is empty.
func orDefault(v *string, def string) {
	if *v == "" {
		*v = def
	}
}

// absPath takes a relative path p from dir; "" stays "".
func absPath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// absPaths makes every path of the file absolute, relative ones from dir.
func (s *Server) absPaths(dir string) {
	for _, p := range []*string{&s.DataDir, &s.DataKeyFile, &s.AdminSocket, &s.TokenKeyFile, &s.Delivery.CaptureDir} {
		*p = absPath(dir, *p)
	}
	for i := range s.DKIM {
		s.DKIM[i].KeyFile = absPath(dir, s.DKIM[i].KeyFile)
	}
}

// defaultFiles puts the files, folders and retention periods left unset
// under data_dir or at their defaults.
func (s *Server) defaultFiles() {
	orDefault(&s.AdminSocket, filepath.Join(s.DataDir, "admin.sock"))
	orDefault(&s.TokenKeyFile, filepath.Join(s.DataDir, "token.key"))
	orDefault(&s.DataKeyFile, filepath.Join(s.DataDir, "data.key"))
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
	orDefault(&s.Delivery.CaptureDir, filepath.Join(s.DataDir, "outbox"))
}

// check records every bad value.
func (s *Server) check(d *decoder) {
	s.checkRequired(d)
	s.checkHTTP(d)
	s.checkDKIM(d)
	for _, l := range []struct{ key, v string }{{"smtp_listen", s.SMTPListen}, {"metrics_listen", s.MetricsListen}} {
		if l.v != "" {
			if err := hostPort(l.v, true); err != nil {
				d.fieldErr(l.key, "%s: %v", Quote(l.v), err)
			}
		}
	}
	s.checkLists(d)
	s.checkBranding(d)
	if s.BounceDomain != "" && !isHostname(s.BounceDomain) {
		d.fieldErr("bounce_domain", "%s is not a domain name", Quote(s.BounceDomain))
	}
	s.Inbound.check(d)
	s.checkLimits(d)
	if s.SMTPListen != "" && s.BounceDomain == "" {
		d.fieldErr("smtp_listen", "needs bounce_domain: the inbound listener takes mail only for that domain")
	}
	s.Delivery.check(d)
	if s.Cluster != nil {
		s.Cluster.check(d)
	}
}

// checkRequired records the required keys left empty.
func (s *Server) checkRequired(d *decoder) {
	required := []struct{ key, v string }{
		{"hostname", s.Hostname}, {"data_dir", s.DataDir}, {"public_url", s.PublicURL}, {"privacy_url", s.PrivacyURL},
	}
	for _, r := range required {
		if r.v == "" {
			d.fieldErr(r.key, "must not be empty")
			d.failed[r.key] = true
		}
	}
}

// checkLists checks each list's id and name.
func (s *Server) checkLists(d *decoder) {
	for id, l := range s.Lists {
		if !listID.MatchString(id) {
			d.fieldErr("lists."+id, "%s must be 1-64 of A-Z a-z 0-9 . _ -", Quote(id))
		}
		if strings.ContainsAny(l.Name, "\r\n") {
			d.fieldErr("lists."+id+".name", "contains CR or LF")
		}
		checkLanguage(d, "lists."+id+".language", l.Language)
	}
}

var (
	listID   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	hexColor = regexp.MustCompile(`^#[0-9A-Fa-f]{6}$`)
)

// lists decodes the lists mapping: id → {name, double_opt_in, language}.
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
				"language":      d.str(&l.Language),
			}, "double_opt_in")
			out[k.Value] = l
		}
		*dst = out
	}
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
