// Package preflight checks, before a campaign is sent, what receivers will
// check of it and what a sender can get wrong without noticing: a DKIM key
// for the From domain and its published record, SPF for the envelope
// sender's domain evaluated for the addresses mail leaves from, a DMARC
// record and DKIM/SPF alignment under its modes, an https public_url for
// one-click unsubscribe, the message's size, and its links.
//
// Each finding is a Check: OK, WARN or FAIL, with what to publish or change.
// A DNS lookup that fails (no resolver reachable, a timeout, SERVFAIL) is a
// WARN saying the check could not be made, never a FAIL: only an answer
// proves a record wrong. With Offline (or Capture) no DNS query is made.
// Nothing here sends mail or changes anything.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/dkim"
)

// Status is the verdict of one check.
type Status string

// Verdicts: OK passes; WARN is worth knowing and does not stop a send; FAIL
// stops a send unless forced.
const (
	OK   Status = "OK"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// States of a DNS check beyond its verdict, for check-dns's wording.
const (
	StateMissing   = "missing"   // no such record
	StateDifferent = "different" // a record, not the one needed
	StateUnchecked = "unchecked" // the lookup failed: nothing known
)

// Check is one finding.
type Check struct {
	Check   string `json:"check"`           // dkim, dkim-dns, spf, dmarc, dmarc-dkim, dmarc-spf, mx, public-url, size, link
	Status  Status `json:"status"`          // OK, WARN, FAIL
	Subject string `json:"subject"`         // what was checked: a domain, record name, URL
	Detail  string `json:"detail"`          // what was found
	Fix     string `json:"fix,omitempty"`   // what to publish or change
	Found   string `json:"found,omitempty"` // DNS: the record found
	Want    string `json:"want,omitempty"`  // DNS: the record to publish
	State   string `json:"state,omitempty"` // DNS: missing, different or unchecked
}

// Failed reports whether any check failed.
func Failed(checks []Check) bool {
	for _, c := range checks {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

// Config configures a Checker; zero values take the defaults noted.
type Config struct {
	Resolver string        // host:port of the DNS server to ask ("": the system's)
	Offline  bool          // make no DNS query: only the local checks
	Capture  bool          // capture mode: nothing leaves this host, so no DNS query either
	Timeout  time.Duration // each DNS lookup (default 4s)

	Hostname     string   // this host's name, said in EHLO (the SPF HELO identity)
	Sources      []string // egress source addresses mail leaves from; none: Relay, else this host's
	Relay        string   // relay mode: the relay's host name or address (it sends for us)
	BounceDomain string   // with VERP on: the envelope sender's domain ("": the From domain)
	Keys         []*dkim.Key
	PendingKeys  []KeyName // configured keys whose file does not exist yet (the first send creates them)
	PublicURL    string    // base of the one-click unsubscribe links
}

// KeyName names a DKIM key by its domain and selector.
type KeyName struct{ Domain, Selector string }

// Checker runs the checks of one Config.
type Checker struct {
	cfg Config
	res *net.Resolver
	log zerolog.Logger
}

// New returns a Checker asking cfg.Resolver.
func New(cfg Config, log zerolog.Logger) (*Checker, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 4 * time.Second
	}
	res := net.DefaultResolver
	if cfg.Resolver != "" {
		if _, port, err := net.SplitHostPort(cfg.Resolver); err != nil || port == "" {
			return nil, fmt.Errorf("preflight: DNS server %q is not host:port", cfg.Resolver)
		}
		addr := cfg.Resolver
		res = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: cfg.Timeout}
			return d.DialContext(ctx, network, addr)
		}}
	}
	return &Checker{cfg: cfg, res: res, log: log}, nil
}

// Via names the resolver asked, for messages: "resolver HOST:PORT" or "the
// system resolver".
func (c *Checker) Via() string {
	if c.cfg.Resolver != "" {
		return "resolver " + c.cfg.Resolver
	}
	return "the system resolver"
}

// online reports whether DNS checks run.
func (c *Checker) online() bool { return !c.cfg.Offline && !c.cfg.Capture }

// skipped is the WARN of a DNS check not made.
func (c *Checker) skipped(check, subject string) Check {
	why := "--offline"
	if c.cfg.Capture && !c.cfg.Offline {
		why = "capture mode: nothing leaves this host"
	}
	return Check{Check: check, Status: Warn, Subject: subject, State: StateUnchecked,
		Detail: "not checked (" + why + ")", Fix: "run `postwarden check-dns " + subject + "` before sending for real"}
}

// unchecked is the WARN of a lookup that failed.
func (c *Checker) unchecked(check, subject string, err error) Check {
	return Check{Check: check, Status: Warn, Subject: subject, State: StateUnchecked,
		Detail: fmt.Sprintf("could not check: %v (via %s)", err, c.Via())}
}

// lookupCtx bounds one lookup.
func (c *Checker) lookupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.Timeout)
}

// txt looks up name's TXT records; found is false for NXDOMAIN or no TXT.
func (c *Checker) txt(ctx context.Context, name string) (txts []string, err error) {
	ctx, cancel := c.lookupCtx(ctx)
	defer cancel()
	txts, err = c.res.LookupTXT(ctx, name)
	if err = c.dnsErr(err); err != nil && !notFound(err) {
		return nil, fmt.Errorf("look up TXT %s: %w", name, err)
	}
	return txts, nil
}

// dnsErr is err of a lookup made through the Checker's resolver. Go's
// resolver names the server of /etc/resolv.conf in a *net.DNSError even when
// a Dial sent the query elsewhere: name the server that was asked.
func (c *Checker) dnsErr(err error) error {
	var de *net.DNSError
	if c.cfg.Resolver == "" || !errors.As(err, &de) {
		return err
	}
	d := *de
	d.Server = c.cfg.Resolver
	return &d
}

// notFound reports whether err only says the name or record does not exist.
func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// Domain runs the DNS checks of one domain, as check-dns does: for a From
// (signing) domain its DKIM records, SPF and DMARC; for the bounce domain its
// MX (pointing at Hostname) and SPF. It runs whatever Offline says.
func (c *Checker) Domain(ctx context.Context, domain string) []Check {
	domain = normDomain(domain)
	var out []Check
	signing := false
	for _, k := range c.cfg.Keys {
		if normDomain(k.Domain) == domain {
			signing = true
			out = append(out, c.dkimRecord(ctx, k))
		}
	}
	if signing {
		out = append(out, c.spf(ctx, domain))
		rec, chk := c.dmarcRecord(ctx, domain)
		out = append(out, chk)
		if rec != nil || chk.State == StateMissing {
			out = append(out, c.alignDKIM(domain, rec))
		}
	}
	if bd := normDomain(c.cfg.BounceDomain); bd != "" && bd == domain {
		out = append(out, c.bounceMX(ctx, bd), c.spf(ctx, bd))
	}
	return out
}

// normDomain is d in lower case without a final dot.
func normDomain(d string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
}
