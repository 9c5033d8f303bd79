package configs

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/postwarden/postwarden/suppression/httplimit"
	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

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

// Branding is how the pages a recipient sees look.
type Branding struct {
	Name       string // sender name shown on pages; default sender_name
	LogoURL    string // optional https URL of a logo
	Color      string // accent colour, #rrggbb
	Background string // page background, #rrggbb
}

// fields decodes the branding section.
func (b *Branding) fields(d *decoder) map[string]func(string, *yaml.Node) {
	return map[string]func(string, *yaml.Node){
		"name":       d.str(&b.Name),
		"logo_url":   d.str(&b.LogoURL),
		"color":      d.str(&b.Color),
		"background": d.str(&b.Background),
	}
}

// defaultLimits gives each rate limit the file leaves out its handler's default.
func (s *Server) defaultLimits() {
	for _, l := range s.limits() {
		if s.lines[l.key+".rate"] == 0 {
			l.v.Rate = float64(l.def.Limit)
		}
		if s.lines[l.key+".burst"] == 0 {
			l.v.Burst = l.def.Burst
		}
	}
}

// limitSpec is one rate limit of the file: its dotted key, where it is
// decoded to, and the default of the handler it bounds.
type limitSpec struct {
	key string
	v   *Limit
	def httplimit.Rate
}

// limits is the one table of the file's rate limits.
func (s *Server) limits() []limitSpec {
	sl, ul := &s.SubscribeLimits, &s.UnsubscribeLimits
	od, ud := optin.DefaultLimits, unsubscribe.DefaultLimits // each limit's default lives with its handler
	return []limitSpec{
		{"subscribe_limits.requests_per_ip", &sl.RequestsPerIP, od.RequestsPerIP},
		{"subscribe_limits.signups_per_mailbox", &sl.SignupsPerMailbox, od.SignupsPerMailbox},
		{"subscribe_limits.confirmations_per_mailbox", &sl.ConfirmationsPerMailbox, od.ConfirmationsPerMailbox},
		{"subscribe_limits.confirmations_per_ip", &sl.ConfirmationsPerIP, od.ConfirmationsPerIP},
		{"subscribe_limits.confirmations_per_network", &sl.ConfirmationsPerNetwork, od.ConfirmationsPerNetwork},
		{"subscribe_limits.confirmations_total", &sl.ConfirmationsTotal, od.ConfirmationsTotal},
		{"unsubscribe_limits.per_ip", &ul.PerIP, ud.PerIP},
		{"unsubscribe_limits.per_token", &ul.PerToken, ud.PerToken},
	}
}

// limitsUnder names the limits of one section (subscribe_limits,
// unsubscribe_limits) by their key within it.
func (s *Server) limitsUnder(section string) map[string]*Limit {
	out := map[string]*Limit{}
	for _, l := range s.limits() {
		if k, ok := strings.CutPrefix(l.key, section+"."); ok {
			out[k] = l.v
		}
	}
	return out
}

// checkHTTP checks the host name and the addresses the pages are served at.
func (s *Server) checkHTTP(d *decoder) {
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
}

// checkBranding checks the page colours and logo.
func (s *Server) checkBranding(d *decoder) {
	for _, c := range []struct{ key, v string }{{"branding.color", s.Branding.Color}, {"branding.background", s.Branding.Background}} {
		if !hexColor.MatchString(c.v) {
			d.fieldErr(c.key, "%s must be a colour like #1a56db", Quote(c.v))
		}
	}
	if s.Branding.LogoURL != "" && !strings.HasPrefix(s.Branding.LogoURL, "https://") {
		d.fieldErr("branding.logo_url", "%s must be an https URL", Quote(s.Branding.LogoURL))
	}
}

// checkLimits checks that every rate limit admits at least one request.
func (s *Server) checkLimits(d *decoder) {
	for _, l := range s.limits() {
		if l.v.Rate > 0 && l.v.Burst < 1 {
			d.fieldErr(l.key+".burst", "%d must be at least 1 (or rate 0 for no limit)", l.v.Burst)
		}
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

// OneClickUnsubscribe reports whether mailbox providers will use the
// one-click unsubscribe URLs under public_url: RFC 8058 needs https.
func (s *Server) OneClickUnsubscribe() bool {
	return strings.HasPrefix(s.PublicURL, "https://")
}
