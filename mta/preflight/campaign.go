package preflight

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/mail"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"golang.org/x/net/html"

	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/templates"
)

// Size limits of a message.
const (
	// MaxSize is the size most receivers accept (their SIZE, RFC 1870);
	// over it is a FAIL.
	MaxSize = templates.MaxMessageBytes
	// ClipSize is where a WARN starts: Gmail clips an HTML part over 102 KB
	// behind "[Message clipped] View entire message", hiding the footer with
	// the unsubscribe link.
	ClipSize = 100 << 10
)

// Shorteners are URL shortener domains: links through them are what spam
// filters penalise, since they hide where a link goes.
var Shorteners = []string{
	"bit.ly", "bitly.com", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly",
	"rebrand.ly", "cutt.ly", "shorturl.at", "tiny.cc", "rb.gy", "t.ly", "s.id", "v.gd",
	"shorte.st", "adf.ly", "bl.ink", "lnkd.in", "soo.gd", "clck.ru",
}

// Message is the campaign a preflight is about.
type Message struct {
	Templates  *templates.Set
	From       string // "Name <addr>"
	ReplyTo    string
	PrivacyURL string
	ListID     string // List-Id value, "list.hostname"
}

// Campaign runs every check of a campaign about to be sent: DKIM, SPF,
// DMARC and alignment (DNS, unless Offline or Capture), then public_url, the
// size and the links of a sample message rendered from m.
func (c *Checker) Campaign(ctx context.Context, m Message) []Check {
	var out []Check
	fromDomain, err := addrDomain(m.From)
	if err != nil {
		return append(out, Check{Check: "from", Status: Fail, Subject: m.From, Detail: err.Error(), Fix: "set from: to \"Name <address>\""})
	}
	envDomain := fromDomain
	if bd := normDomain(c.cfg.BounceDomain); bd != "" {
		envDomain = bd // VERP: MAIL FROM is bounce+TOKEN@bounce_domain
	}

	// DKIM: the keys the signer would use for this From (mta/dkim's rule).
	var keys []*dkim.Key
	for _, k := range c.cfg.Keys {
		if dkim.Aligned(k.Domain, fromDomain) {
			keys = append(keys, k)
		}
	}
	var pending []KeyName
	for _, k := range c.cfg.PendingKeys {
		if dkim.Aligned(k.Domain, fromDomain) {
			pending = append(pending, k)
		}
	}
	for _, k := range pending {
		out = append(out, Check{Check: "dkim", Status: Warn, Subject: fromDomain,
			Detail: fmt.Sprintf("the key d=%s s=%s does not exist yet: the first send creates it and prints its record", k.Domain, k.Selector),
			Fix:    fmt.Sprintf("run `postwarden dkim keygen --domain %s --selector %s` now and publish its record before sending to real recipients", k.Domain, k.Selector)})
	}
	if len(keys) == 0 && len(pending) == 0 {
		out = append(out, Check{Check: "dkim", Status: Fail, Subject: fromDomain,
			Detail: "no DKIM key signs for the From domain: the message cannot be sent",
			Fix:    fmt.Sprintf("add a dkim entry {domain: %s, selector: S} and run `postwarden dkim keygen --domain %s --selector S`", fromDomain, fromDomain)})
	} else {
		for _, k := range keys {
			out = append(out, Check{Check: "dkim", Status: OK, Subject: fromDomain,
				Detail: fmt.Sprintf("signed with d=%s s=%s (%s)", k.Domain, k.Selector, k.Type())})
		}
		for _, k := range keys {
			out = append(out, c.dkimRecord(ctx, k))
		}
	}
	out = append(out, c.spf(ctx, envDomain))
	rec, dm := c.dmarcRecord(ctx, fromDomain)
	out = append(out, dm, c.alignDKIM(fromDomain, rec), c.alignSPF(envDomain, fromDomain, rec))

	out = append(out, c.publicURL())
	sample, err := c.sample(m, fromDomain)
	out = append(out, sizeCheck(sample, err))
	if err == nil {
		out = append(out, c.links(ctx, sample)...)
	}
	return out
}

// addrDomain is the domain of the address in s ("Name <addr>" or addr).
func addrDomain(s string) (string, error) {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", fmt.Errorf("from %q: %w", s, err)
	}
	_, d, ok := strings.Cut(a.Address, "@")
	if !ok || d == "" {
		return "", fmt.Errorf("from %q: no domain", s)
	}
	return normDomain(d), nil
}

// publicURL checks that the one-click unsubscribe URL is https (RFC 8058 §3.1).
func (c *Checker) publicURL() Check {
	ch := Check{Check: "public-url", Subject: c.cfg.PublicURL}
	u, err := url.Parse(c.cfg.PublicURL)
	switch {
	case err != nil || u.Host == "":
		ch.Status, ch.Detail = Fail, "public_url is not an absolute URL"
		ch.Fix = "set public_url to the https address of the unsubscribe pages"
	case u.Scheme == "https":
		ch.Status, ch.Detail = OK, "https: one-click unsubscribe (RFC 8058) is offered"
	case isLoopback(u.Hostname()):
		// A loopback URL reaches no recipient anyway: a local test.
		ch.Status, ch.Detail = Warn, "not https, on this host only: fine for a local test, no recipient can reach it"
		ch.Fix = "set public_url to an https address before sending to real recipients"
	default:
		ch.Status = Fail
		ch.Detail = "not https: RFC 8058 one-click unsubscribe needs https, so mailbox providers will not offer it"
		ch.Fix = "serve the unsubscribe pages over https (a TLS proxy in front of http_listen) and set public_url to https://" + u.Host
	}
	return ch
}

// isLoopback reports whether host is localhost or a loopback address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sampleUnsubscribe stands for a recipient's token: as long as a real one.
const sampleUnsubscribe = "/u/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"

// sample renders, and signs, one message as a recipient with every field
// filled would get it.
func (c *Checker) sample(m Message, fromDomain string) ([]byte, error) {
	if m.Templates == nil {
		return nil, errors.New("preflight: no templates")
	}
	unsub := strings.TrimSuffix(c.cfg.PublicURL, "/") + sampleUnsubscribe
	d := templates.Data{
		FirstName: "Alexandra", LastName: "Sample-Recipient", Company: "Sample Company International",
		JobTitle: "Head of Procurement", Country: "DE", Email: "alexandra.sample@recipient.example",
		UnsubscribeURL: unsub, PrivacyURL: m.PrivacyURL,
	}
	env := templates.Envelope{
		From: m.From, ReplyTo: m.ReplyTo, To: d.Email, ToName: d.FirstName + " " + d.LastName,
		MessageID: "preflight.sample@" + normDomain(c.cfg.Hostname), Date: time.Now(), ListID: m.ListID,
		Unsubscribe: []string{unsub},
	}
	msg, err := m.Templates.Render(d, env)
	if err != nil {
		return nil, fmt.Errorf("render a sample message: %w", err)
	}
	if len(c.cfg.Keys) > 0 {
		if signed, err := dkim.NewSigner(c.cfg.Keys).Sign(msg); err == nil {
			msg = signed // the signatures count towards the size too
		}
	}
	return msg, nil
}

// sizeCheck judges the sample's size; err is the render's.
func sizeCheck(msg []byte, err error) Check {
	ch := Check{Check: "size", Subject: "message"}
	if errors.Is(err, templates.ErrTooLarge) {
		ch.Status, ch.Detail = Fail, fmt.Sprintf("over %d MB: most receivers refuse it (RFC 1870 SIZE)", MaxSize>>20)
		ch.Fix = "link to large content instead of embedding it"
		return ch
	}
	if err != nil { // a template problem: templates.Validate reports it
		ch.Status, ch.Detail = Warn, "not checked: "+err.Error()
		ch.Fix = "fix the templates (`postwarden campaign validate` names the problem)"
		return ch
	}
	htmlSize := partSize(msg, "text/html")
	ch.Detail = fmt.Sprintf("%s (HTML part %s)", kb(len(msg)), kb(htmlSize))
	switch {
	case len(msg) > MaxSize:
		ch.Status, ch.Fix = Fail, "link to large content instead of embedding it"
	case len(msg) > ClipSize || htmlSize > ClipSize:
		ch.Status = Warn
		ch.Detail += ": Gmail clips an HTML part over 102 KB, hiding what follows (the unsubscribe link among it)"
		ch.Fix = "keep the message under 100 KB: fewer inline styles and images, link to the rest"
	default:
		ch.Status = OK
	}
	return ch
}

// kb formats n bytes.
func kb(n int) string {
	if n < 1<<10 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%.1f KB", float64(n)/(1<<10))
}

// parts returns the decoded bodies of msg's parts of mediaType.
func parts(msg []byte, mediaType string) [][]byte {
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) {
		return nil
	}
	var out [][]byte
	_ = e.Walk(func(_ []int, p *message.Entity, err error) error {
		if err != nil {
			return nil
		}
		mt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		if mt == mediaType {
			if b, err := io.ReadAll(p.Body); err == nil {
				out = append(out, b)
			}
		}
		return nil
	})
	return out
}

// partSize is the decoded size of msg's parts of mediaType.
func partSize(msg []byte, mediaType string) int {
	n := 0
	for _, p := range parts(msg, mediaType) {
		n += len(p)
	}
	return n
}

// textURL finds URLs in plain text.
var textURL = regexp.MustCompile(`(?i)\bhttps?://[^\s<>"']+`)

// extractLinks returns the links of msg's HTML part (href and src) and
// text part, each once, in order.
func extractLinks(msg []byte) []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		s = strings.TrimSpace(s)
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, p := range parts(msg, "text/html") {
		z := html.NewTokenizer(bytes.NewReader(p))
		for tt := z.Next(); tt != html.ErrorToken; tt = z.Next() {
			if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
				continue
			}
			for _, a := range z.Token().Attr {
				if a.Key == "href" || a.Key == "src" {
					add(a.Val)
				}
			}
		}
	}
	for _, p := range parts(msg, "text/plain") {
		for _, m := range textURL.FindAllString(string(p), -1) {
			add(strings.TrimRight(m, ".,;:!?)]}"))
		}
	}
	return out
}

// links checks every link of the sample but the unsubscribe link (the
// public-url check's): https, no shortener, a host that resolves.
func (c *Checker) links(ctx context.Context, msg []byte) []Check {
	var out []Check
	unsubPrefix := strings.TrimSuffix(c.cfg.PublicURL, "/") + "/u/"
	var hosts []string
	hostLinks := map[string]string{}
	n := 0
	for _, l := range extractLinks(msg) {
		if strings.HasPrefix(l, unsubPrefix) {
			continue
		}
		u, err := url.Parse(l)
		if err != nil {
			out = append(out, Check{Check: "link", Status: Fail, Subject: l, Detail: "does not parse: " + err.Error(), Fix: "correct the link in the template"})
			continue
		}
		switch strings.ToLower(u.Scheme) {
		case "mailto", "tel", "cid", "data":
			continue
		case "":
			if strings.HasPrefix(l, "#") {
				continue // an anchor within the message
			}
		}
		n++
		if u.Scheme != "https" || u.Host == "" {
			out = append(out, Check{Check: "link", Status: Fail, Subject: l, Detail: "not an https link",
				Fix: "link to https:// addresses only: plain http links are marked as unsafe by mailbox providers"})
			continue
		}
		h := hostOf(u)
		if s := shortener(h); s != "" {
			out = append(out, Check{Check: "link", Status: Fail, Subject: l, Detail: "goes through the URL shortener " + s,
				Fix: "link to the destination itself: spam filters penalise shortened links"})
			continue
		}
		if _, ok := hostLinks[h]; !ok {
			hostLinks[h] = l
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	if c.online() {
		for _, h := range hosts {
			ok, err := c.resolves(ctx, h)
			switch {
			case err != nil:
				out = append(out, c.unchecked("link", hostLinks[h], err))
			case !ok:
				out = append(out, Check{Check: "link", Status: Fail, Subject: hostLinks[h], Detail: "its domain " + h + " does not resolve",
					Fix: "correct the link's domain in the template"})
			}
		}
	}
	if len(out) == 0 {
		d := fmt.Sprintf("%d link(s), all https on %d domain(s), none shortened", n, len(hosts))
		if c.online() {
			d += ", every domain resolves"
		} else {
			d += " (domains not resolved: offline)"
		}
		out = append(out, Check{Check: "link", Status: OK, Subject: "links", Detail: d})
	}
	return out
}

// shortener is the shortener domain host is or is under ("" if none).
func shortener(host string) string {
	for _, s := range Shorteners {
		if host == s || strings.HasSuffix(host, "."+s) {
			return s
		}
	}
	return ""
}
