package preflight

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"github.com/postwarden/postwarden/mta/dkim"
)

// dkimRecord compares the published key record of k with k.
func (c *Checker) dkimRecord(ctx context.Context, k *dkim.Key) Check {
	name := k.RecordName()
	ch := Check{Check: "dkim-dns", Subject: name, Want: k.TXTValue()}
	if !c.online() {
		return c.skipped(ch.Check, k.Domain)
	}
	txts, err := c.txt(ctx, name)
	if err != nil {
		return c.unchecked(ch.Check, name, err)
	}
	ch.Status, ch.State = Fail, StateMissing
	for _, t := range txts {
		tags := tagList(t)
		if tags["v"] != "" && tags["v"] != "DKIM1" || tags["p"] == "" { // RFC 6376 §3.6.1: v= first if present; p= required
			continue
		}
		kt := tags["k"]
		if kt == "" {
			kt = dkim.TypeRSA // RFC 6376 §3.6.1: k= defaults to rsa
		}
		ch.Found = t
		if tags["p"] == k.PublicKeyBase64() && strings.EqualFold(kt, k.Type()) {
			ch.Status, ch.State = OK, ""
			ch.Detail = "the published key is the one that signs (" + k.Type() + ")"
			return ch
		}
		ch.State = StateDifferent
	}
	if ch.State == StateDifferent {
		ch.Detail = "another key is published there: receivers will fail every signature"
		ch.Fix = "publish (replacing it): " + k.DNSRecord()
		return ch
	}
	ch.Detail = "no DKIM key record"
	ch.Fix = "publish: " + k.DNSRecord()
	return ch
}

// tagList parses "tag=value; …" (RFC 6376 §3.2), dropping white space in values.
func tagList(s string) map[string]string {
	tags := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		tags[strings.TrimSpace(k)] = strings.Join(strings.Fields(v), "")
	}
	return tags
}

// sender is one address mail leaves from, with the HELO name it says.
type sender struct {
	ip   net.IP
	helo string
}

// senders returns the addresses mail leaves from and where they come from:
// the egress sources; else the relay (it sends for us); else this host's:
// its host name's addresses (what `a:HOSTNAME` authorises), or, when the name
// does not resolve, its public interface addresses. A lookup failure other
// than "no such host" is returned with no addresses.
func (c *Checker) senders(ctx context.Context) ([]sender, string, error) {
	helo := c.cfg.Hostname
	var out []sender
	if len(c.cfg.Sources) > 0 {
		for _, s := range c.cfg.Sources {
			if ip := net.ParseIP(s); ip != nil {
				out = append(out, sender{ip, helo})
			}
		}
		return out, "the egress sources", nil
	}
	if c.cfg.Relay != "" {
		ips, err := c.hostIPs(ctx, c.cfg.Relay)
		for _, ip := range ips {
			out = append(out, sender{ip, helo})
		}
		return out, "the relay " + c.cfg.Relay, err
	}
	ips, err := c.hostIPs(ctx, c.cfg.Hostname)
	if err != nil && !notFound(err) {
		return nil, "", err
	}
	for _, ip := range ips {
		out = append(out, sender{ip, helo})
	}
	if len(out) > 0 {
		return out, "the addresses of " + c.cfg.Hostname, nil
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() && !n.IP.IsPrivate() {
				out = append(out, sender{n.IP, helo})
			}
		}
	}
	return out, "this host's public addresses (" + c.cfg.Hostname + " does not resolve)", nil
}

// hostIPs is host's addresses (host itself when it is one).
func (c *Checker) hostIPs(ctx context.Context, host string) ([]net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}, nil
	}
	ctx, cancel := c.lookupCtx(ctx)
	defer cancel()
	addrs, err := c.res.LookupIPAddr(ctx, host)
	if err = c.dnsErr(err); err != nil {
		return nil, fmt.Errorf("look up %s: %w", host, err)
	}
	out := make([]net.IP, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.IP)
	}
	return out, nil
}

// SPFRecord is the SPF record (RFC 7208) that authorises what sends for us:
// the egress source addresses; else the relay (a host name or address);
// else this host, by name.
func SPFRecord(sources []string, relay, hostname string) string {
	return "v=spf1 " + spfMechanism(sources, relay, hostname) + " ~all"
}

// spfMechanism is the part of SPFRecord between v=spf1 and ~all.
func spfMechanism(sources []string, relay, hostname string) string {
	ip := func(s string) string {
		switch a := net.ParseIP(s); {
		case a == nil:
			return ""
		case a.To4() != nil:
			return "ip4:" + s
		default:
			return "ip6:" + s
		}
	}
	var ms []string
	for _, s := range sources {
		if m := ip(s); m != "" {
			ms = append(ms, m)
		}
	}
	if len(ms) > 0 {
		return strings.Join(ms, " ")
	}
	if relay != "" {
		if m := ip(relay); m != "" {
			return m
		}
		return "a:" + relay
	}
	return "a:" + normDomain(hostname)
}

// SPFRecord is the SPF record to publish for the envelope domains.
func (c *Checker) SPFRecord() string {
	return SPFRecord(c.cfg.Sources, c.cfg.Relay, c.cfg.Hostname)
}

// spf evaluates domain's SPF policy (RFC 7208 §4) for every sending address
// with the envelope sender postmaster@domain.
func (c *Checker) spf(ctx context.Context, domain string) Check {
	ch := Check{Check: "spf", Subject: domain, Want: c.SPFRecord()}
	if !c.online() {
		return c.skipped(ch.Check, domain)
	}
	txts, err := c.txt(ctx, domain)
	if err != nil {
		return c.unchecked(ch.Check, domain, err)
	}
	for _, t := range txts {
		if t == "v=spf1" || strings.HasPrefix(strings.ToLower(t), "v=spf1 ") { // RFC 7208 §4.5
			ch.Found = t
		}
	}
	if ch.Found == "" { // RFC 7208 §4.5: no record is the result "none"
		ch.Status, ch.State = Fail, StateMissing
		ch.Detail = "no SPF record"
		ch.Fix = fmt.Sprintf("publish TXT at %s: %q", domain, ch.Want)
		return ch
	}
	senders, from, err := c.senders(ctx)
	if err != nil && len(senders) == 0 {
		return c.unchecked(ch.Check, domain, err)
	}
	if len(senders) == 0 {
		ch.Status = Warn
		ch.Detail = "no sending address known to evaluate the record with (" + from + ")"
		ch.Fix = "set delivery.sources to the addresses mail leaves from, or publish an address for " + c.cfg.Hostname
		return ch
	}
	var bad []string
	for _, s := range senders {
		res, err := spf.CheckHostWithSender(s.ip, s.helo, "postmaster@"+domain,
			spf.WithContext(ctx), spf.WithResolver(c.res),
			spf.WithTraceFunc(func(f string, a ...any) { c.log.Debug().Str("domain", domain).Msg("spf: " + fmt.Sprintf(f, a...)) }))
		c.log.Debug().Str("domain", domain).Str("ip", s.ip.String()).Str("result", string(res)).AnErr("error", err).Msg("spf evaluated")
		switch res {
		case spf.Pass:
			continue
		case spf.TempError: // RFC 7208 §2.6.6: a transient DNS error
			return c.unchecked(ch.Check, domain, fmt.Errorf("spf temperror for %s: %w", s.ip, c.dnsErr(err)))
		case spf.None: // RFC 7208 §2.6.1: no record
			ch.Status, ch.State = Fail, StateMissing
			ch.Detail = "no SPF record"
			ch.Fix = fmt.Sprintf("publish TXT at %s: %q", domain, ch.Want)
			return ch
		case spf.PermError: // RFC 7208 §2.6.7: the record cannot be evaluated
			ch.Status, ch.State = Fail, StateDifferent
			ch.Detail = fmt.Sprintf("the SPF record is broken: %v", err)
			ch.Fix = fmt.Sprintf("replace it with %q (merged with what else sends for %s)", ch.Want, domain)
			return ch
		default: // fail, softfail, neutral: not authorised
			bad = append(bad, fmt.Sprintf("%s (%s)", s.ip, res))
		}
	}
	if len(bad) > 0 {
		ch.Status = Fail
		ch.Detail = fmt.Sprintf("does not authorise %s, from %s", strings.Join(bad, ", "), from)
		ch.Fix = fmt.Sprintf("add %s to the SPF record of %s before its all, e.g. %q", spfMechanism(c.cfg.Sources, c.cfg.Relay, c.cfg.Hostname), domain, ch.Want)
		return ch
	}
	ch.Status = OK
	ch.Detail = fmt.Sprintf("pass for %d address(es), from %s", len(senders), from)
	return ch
}

// OrgDomain is d's organizational domain (RFC 7489 §3.2): its public suffix
// and one label more; d itself when that cannot be told.
func OrgDomain(d string) string {
	d = normDomain(d)
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return org
}

// aligned reports whether a and b align under mode (RFC 7489 §3.1): equal
// when strict, the same organizational domain when relaxed.
func aligned(a, b string, mode dmarc.AlignmentMode) bool {
	a, b = normDomain(a), normDomain(b)
	if mode == dmarc.AlignmentStrict {
		return a == b
	}
	return OrgDomain(a) == OrgDomain(b)
}

// dmarcRecord looks up the DMARC record of domain, then of its
// organizational domain (RFC 7489 §6.6.3).
func (c *Checker) dmarcRecord(ctx context.Context, domain string) (*dmarc.Record, Check) {
	want := "v=DMARC1; p=none; rua=mailto:dmarc-reports@" + OrgDomain(domain)
	ch := Check{Check: "dmarc", Subject: "_dmarc." + domain, Want: want}
	if !c.online() {
		return nil, c.skipped(ch.Check, domain)
	}
	names := []string{domain}
	if org := OrgDomain(domain); org != domain {
		names = append(names, org)
	}
	for _, d := range names {
		var lookErr error
		rec, err := dmarc.LookupWithOptions(d, &dmarc.LookupOptions{LookupTXT: func(name string) ([]string, error) {
			txts, err := c.txt(ctx, name)
			lookErr = err
			if err == nil && len(txts) == 0 {
				return nil, &net.DNSError{Err: "no record", Name: name, IsNotFound: true}
			}
			return txts, err
		}})
		switch {
		case lookErr != nil:
			return nil, c.unchecked(ch.Check, ch.Subject, lookErr)
		case errors.Is(err, dmarc.ErrNoPolicy):
			continue
		case err != nil:
			ch.Status, ch.State, ch.Subject = Fail, StateDifferent, "_dmarc."+d
			ch.Detail = fmt.Sprintf("the DMARC record does not parse: %v", err)
			ch.Fix = fmt.Sprintf("replace it with %q", want)
			return nil, ch
		}
		ch.Status, ch.Subject, ch.Found = OK, "_dmarc."+d, fmt.Sprintf("p=%s adkim=%s aspf=%s", rec.Policy, mode(rec.DKIMAlignment), mode(rec.SPFAlignment))
		ch.Detail = "DMARC record found: " + ch.Found
		return rec, ch
	}
	ch.Status, ch.State = Fail, StateMissing
	ch.Detail = "no DMARC record for " + domain + " or its organizational domain"
	ch.Fix = fmt.Sprintf("publish TXT at _dmarc.%s: %q (Gmail and Yahoo require DMARC of bulk senders)", domain, want)
	return nil, ch
}

// mode is m with its default (relaxed, RFC 7489 §6.3) filled in.
func mode(m dmarc.AlignmentMode) dmarc.AlignmentMode {
	if m == "" {
		return dmarc.AlignmentRelaxed
	}
	return m
}

// alignDKIM checks that a key signing for fromDomain aligns with it under
// rec's adkim (relaxed without a record).
func (c *Checker) alignDKIM(fromDomain string, rec *dmarc.Record) Check {
	m := dmarc.AlignmentMode(dmarc.AlignmentRelaxed)
	if rec != nil {
		m = mode(rec.DKIMAlignment)
	}
	ch := Check{Check: "dmarc-dkim", Subject: fromDomain}
	domains := make([]string, 0, len(c.cfg.Keys)+len(c.cfg.PendingKeys))
	for _, k := range c.cfg.Keys {
		domains = append(domains, k.Domain)
	}
	for _, k := range c.cfg.PendingKeys {
		domains = append(domains, k.Domain)
	}
	var signing []string
	for _, d := range domains {
		if !dkim.Aligned(d, fromDomain) { // the keys the signer uses for this From
			continue
		}
		signing = append(signing, "d="+d)
		if aligned(d, fromDomain, m) {
			ch.Status = OK
			ch.Detail = fmt.Sprintf("DKIM d=%s aligns with From %s (adkim=%s)", d, fromDomain, m)
			return ch
		}
	}
	ch.Status = Fail
	if len(signing) == 0 {
		ch.Detail = "no DKIM key signs for " + fromDomain
	} else {
		ch.Detail = fmt.Sprintf("%s does not align with From %s under adkim=%s", strings.Join(signing, ", "), fromDomain, m)
	}
	ch.Fix = fmt.Sprintf("add a DKIM key for %s (`postwarden dkim keygen --domain %s --selector S` and a dkim entry)", fromDomain, fromDomain)
	return ch
}

// alignSPF checks that the envelope domain aligns with fromDomain under
// rec's aspf. It is a WARN at worst: DKIM alignment alone passes DMARC
// (RFC 7489 §4.2).
func (c *Checker) alignSPF(envDomain, fromDomain string, rec *dmarc.Record) Check {
	m := dmarc.AlignmentMode(dmarc.AlignmentRelaxed)
	if rec != nil {
		m = mode(rec.SPFAlignment)
	}
	ch := Check{Check: "dmarc-spf", Subject: envDomain}
	if aligned(envDomain, fromDomain, m) {
		ch.Status = OK
		ch.Detail = fmt.Sprintf("envelope domain %s aligns with From %s (aspf=%s)", envDomain, fromDomain, m)
		return ch
	}
	ch.Status = Warn
	ch.Detail = fmt.Sprintf("envelope domain %s does not align with From %s under aspf=%s: DMARC rests on DKIM alone", envDomain, fromDomain, m)
	if m == dmarc.AlignmentStrict {
		ch.Fix = "relax aspf (aspf=r) in the DMARC record, or use a bounce_domain under " + fromDomain
	} else {
		ch.Fix = "use a bounce_domain under " + OrgDomain(fromDomain)
	}
	return ch
}

// bounceMX checks that the bounce domain's MX points at Hostname, so
// bounces and reports come back here.
func (c *Checker) bounceMX(ctx context.Context, bd string) Check {
	host := normDomain(c.cfg.Hostname)
	ch := Check{Check: "mx", Subject: bd, Want: "10 " + host + "."}
	if !c.online() {
		return c.skipped(ch.Check, bd)
	}
	lctx, cancel := c.lookupCtx(ctx)
	defer cancel()
	mxs, err := c.res.LookupMX(lctx, bd)
	if err = c.dnsErr(err); err != nil && !notFound(err) {
		return c.unchecked(ch.Check, bd, fmt.Errorf("look up MX %s: %w", bd, err))
	}
	var hosts []string
	for _, mx := range mxs {
		h := normDomain(mx.Host)
		hosts = append(hosts, h)
		if h == host {
			ch.Status, ch.Detail = OK, "MX "+h
		}
	}
	ch.Found = strings.Join(hosts, ", ")
	if ch.Status == OK {
		return ch
	}
	ch.Status, ch.State = Fail, StateMissing
	if len(hosts) > 0 {
		ch.State = StateDifferent
	}
	ch.Detail = "bounces and feedback reports would not reach this host"
	ch.Fix = fmt.Sprintf("publish %s. IN MX 10 %s.", bd, host)
	return ch
}

// resolves reports whether host has an address; an error is a lookup that
// failed (nothing known).
func (c *Checker) resolves(ctx context.Context, host string) (bool, error) {
	if net.ParseIP(host) != nil {
		return true, nil
	}
	ctx, cancel := c.lookupCtx(ctx)
	defer cancel()
	_, err := c.res.LookupIPAddr(ctx, host)
	err = c.dnsErr(err)
	if notFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", host, err)
	}
	return true, nil
}

// hostOf is u's host in lower case.
func hostOf(u *url.URL) string { return normDomain(u.Hostname()) }
