package mta

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/adaptive"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/mta/providers"
)

// mxZone is a real DNS zone on loopback: MX records by domain, and every MX
// host resolving to 127.0.0.1.
type mxZone struct {
	mu    sync.Mutex
	mx    map[string][]string // fqdn → MX host fqdns
	hosts map[string]bool     // MX host fqdns
	mxQ   atomic.Int64        // MX queries answered
}

func (z *mxZone) set(domain string, hosts ...string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, h := range hosts {
		z.hosts[dns.Fqdn(h)] = true
	}
	z.mx[dns.Fqdn(domain)] = hosts
}

// ServeDNS answers MX from the zone, A of MX hosts with 127.0.0.1, AAAA
// with no records, and NXDOMAIN for any other name.
func (z *mxZone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	z.mu.Lock()
	mxs, isDomain := z.mx[name]
	isHost := z.hosts[name]
	z.mu.Unlock()
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 300}
	}
	if q.Qtype == dns.TypeMX {
		z.mxQ.Add(1)
	}
	switch {
	case q.Qtype == dns.TypeMX && isDomain && len(mxs) == 1 && mxs[0] == ".":
		m.Answer = append(m.Answer, &dns.MX{Hdr: hdr(dns.TypeMX), Preference: 0, Mx: "."})
	case q.Qtype == dns.TypeMX && isDomain:
		for i, h := range mxs {
			m.Answer = append(m.Answer, &dns.MX{Hdr: hdr(dns.TypeMX), Preference: uint16(10 * (i + 1)), Mx: dns.Fqdn(h)})
		}
	case q.Qtype == dns.TypeA && isHost:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: net.IPv4(127, 0, 0, 1)})
	case isDomain || isHost:
		m.Ns = append(m.Ns, &dns.SOA{Hdr: hdr(dns.TypeSOA), Ns: "ns.test.", Mbox: "hostmaster.test.",
			Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 300})
	default:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// startMXZone runs z on 127.0.0.1 (UDP) and returns its address.
func startMXZone(t *testing.T, z *mxZone) string {
	t.Helper()
	addr, stop, err := mtatest.StartDNS(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// tenants serves n domains tenantNN.example whose MX hosts are Microsoft 365
// tenants, tenantNN-example.mail.protection.outlook.com.
func tenants(n int) (*mxZone, []string) {
	z := &mxZone{mx: map[string][]string{}, hosts: map[string]bool{}}
	var domains []string
	for i := range n {
		d := fmt.Sprintf("tenant%02d.example", i)
		z.set(d, fmt.Sprintf("tenant%02d-example.mail.protection.outlook.com", i))
		domains = append(domains, d)
	}
	return z, domains
}

// microsoftTable is a provider table with Microsoft 365 limited to conns
// connections, and sites to siteConns.
func microsoftTable(t *testing.T, conns, siteConns int) *providers.Table {
	t.Helper()
	tab, err := providers.New(providers.Config{
		Providers: []providers.Provider{{Name: "microsoft", Title: "Microsoft 365", Suffixes: []string{"mail.protection.outlook.com"}}},
		Shaping: map[string]providers.Limits{
			"microsoft":           {Connections: conns},
			providers.DefaultName: {Connections: siteConns},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func shapedSender(t *testing.T, cfg Config) *Sender {
	t.Helper()
	cfg.Mode, cfg.Hostname = ModeMX, "out.example.com"
	cfg.TLSPolicy = map[string]string{"default": TLSNone}
	s, err := New(cfg, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// deliverAll delivers perDomain messages to every domain at once and
// returns the errors by recipient.
func deliverAll(s *Sender, domains []string, perDomain int) map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for _, d := range domains {
		for i := range perDomain {
			rcpt := fmt.Sprintf("user%d@%s", i, d)
			wg.Go(func() {
				err := s.Deliver(context.Background(), "q"+fmt.Sprint(i), "news@sender.example", rcpt, []byte("Subject: hi\r\n\r\nhello\r\n"))
				mu.Lock()
				errs[rcpt] = err
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return errs
}

// TestProviderConnectionRollup: 30 Microsoft 365 tenants, each its own MX
// host, 4 sessions allowed per domain: the sink never sees more than the
// provider's 3 connections (idle pooled ones included); without the table
// the same load opens far more.
func TestProviderConnectionRollup(t *testing.T) {
	z, domains := tenants(30)
	dnsAddr := startMXZone(t, z)
	sink, err := mtatest.Start(mtatest.Options{DataDelay: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })

	s := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: sink.Port(), ConcurrencyPerDomain: 4,
		Providers: microsoftTable(t, 3, 0)})
	for rcpt, err := range deliverAll(s, domains, 4) {
		if err != nil {
			t.Errorf("%s: %v", rcpt, err)
		}
	}
	if got := sink.MaxOpen(); got > 3 {
		t.Errorf("sink saw %d connections at once, want at most microsoft's 3", got)
	}
	if n := sink.Count(); n != 120 {
		t.Errorf("sink accepted %d messages, want 120", n)
	}
	for rcpt, n := range sink.ByRecipient() {
		if n != 1 {
			t.Errorf("%s received %d times", rcpt, n)
		}
	}

	// Without the rollup the per-domain limit alone allows 30 × 4.
	free, err := mtatest.Start(mtatest.Options{DataDelay: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { free.Close() })
	u := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: free.Port(), ConcurrencyPerDomain: 4})
	deliverAll(u, domains, 4)
	if got := free.MaxOpen(); got <= 3 {
		t.Errorf("without provider shaping the sink saw only %d connections at once", got)
	}
}

// TestSiteSharesLimits: two domains behind the same unlisted MX host are
// one site: one connection limit, and one pooled connection carries both.
func TestSiteSharesLimits(t *testing.T) {
	z := &mxZone{mx: map[string][]string{}, hosts: map[string]bool{}}
	z.set("alpha.example", "mx.shared-host.example")
	z.set("beta.example", "mx.shared-host.example")
	dnsAddr := startMXZone(t, z)
	sink, err := mtatest.Start(mtatest.Options{DataDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	s := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: sink.Port(), ConcurrencyPerDomain: 4,
		Providers: microsoftTable(t, 3, 1)})
	for rcpt, err := range deliverAll(s, []string{"alpha.example", "beta.example"}, 10) {
		if err != nil {
			t.Errorf("%s: %v", rcpt, err)
		}
	}
	if got := sink.MaxOpen(); got != 1 {
		t.Errorf("sink saw %d connections at once, want the site's 1", got)
	}
	if got := sink.Sessions(); got != 1 {
		t.Errorf("%d sessions, want 1 carrying both domains' mail", got)
	}
	if n := sink.Count(); n != 20 {
		t.Errorf("sink accepted %d messages, want 20", n)
	}
}

// TestProviderBacksOff: the sink answers RCPT with Microsoft's 451 4.7.650;
// the adaptive engine (the shipped rule suspends the pair for 15 minutes) stops new
// attempts to all 30 tenants, each refused with RetryAt at the hold's end
// and without a connection; after the period the provider recovers and
// every message is delivered exactly once.
func TestProviderBacksOff(t *testing.T) {
	z, domains := tenants(30)
	dnsAddr := startMXZone(t, z)
	var failing atomic.Bool
	var rcpts atomic.Int64
	failing.Store(true)
	sink, err := mtatest.Start(mtatest.Options{Rcpt: func(string, int) error {
		rcpts.Add(1)
		if failing.Load() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 650},
				Message: "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation."}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })

	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	eng, err := adaptive.New(adaptive.DefaultRules(), adaptive.Config{Now: clock.now}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	s := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: sink.Port(), ConcurrencyPerDomain: 4,
		Providers: microsoftTable(t, 3, 0), Adaptive: eng})
	until := clock.now().Add(15 * time.Minute) // the shipped rule's period

	// Round 1: the first replies suspend the pair; whatever was not yet
	// under way is held.
	replied := 0
	for rcpt, err := range deliverAll(s, domains, 1) {
		var de *DeliveryError
		if !errors.As(err, &de) || !de.Temp {
			t.Fatalf("%s: %v, want a temporary error", rcpt, err)
		}
		switch de.Stage {
		case StageRcpt:
			replied++
		case StageHold:
			if !de.RetryAt().Equal(until) {
				t.Errorf("%s: RetryAt %v, want the hold's end %v", rcpt, de.RetryAt(), until)
			}
		default:
			t.Errorf("%s: stage %s: %v", rcpt, de.Stage, err)
		}
	}
	if replied == 0 {
		t.Fatal("no delivery reached the sink")
	}

	// Round 2, within the period: no attempt to any of the 30 domains.
	before, sessions := rcpts.Load(), sink.Sessions()
	clock.add(10 * time.Minute)
	for rcpt, err := range deliverAll(s, domains, 1) {
		var de *DeliveryError
		if !errors.As(err, &de) || de.Stage != StageHold || !de.RetryAt().Equal(until) {
			t.Errorf("%s: %v, want held until %v", rcpt, err, until)
		}
	}
	if n := rcpts.Load() - before; n != 0 {
		t.Errorf("%d RCPTs reached the sink while the provider was suspended", n)
	}
	if n := sink.Sessions() - sessions; n != 0 {
		t.Errorf("%d sessions opened while the provider was suspended", n)
	}

	// Round 3, after the period, the sink healthy: all delivered, once.
	failing.Store(false)
	clock.add(6 * time.Minute)
	for rcpt, err := range deliverAll(s, domains, 1) {
		if err != nil {
			t.Errorf("%s: %v", rcpt, err)
		}
	}
	got := sink.ByRecipient()
	if len(got) != 30 {
		t.Errorf("%d recipients delivered, want 30", len(got))
	}
	for rcpt, n := range got {
		if n != 1 {
			t.Errorf("%s delivered %d times", rcpt, n)
		}
	}
	if got := sink.MaxOpen(); got > 3 {
		t.Errorf("sink saw %d connections at once, want at most 3", got)
	}
}

// TestProviderMessagesPerConnection: the provider's messages_per_connection
// closes a connection after that many messages, below the Sender's own limit.
func TestProviderMessagesPerConnection(t *testing.T) {
	z := &mxZone{mx: map[string][]string{}, hosts: map[string]bool{}}
	z.set("alpha.example", "mx.shared-host.example")
	dnsAddr := startMXZone(t, z)
	sink, err := mtatest.Start(mtatest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	tab, err := providers.New(providers.Config{Shaping: map[string]providers.Limits{
		providers.DefaultName: {Connections: 1, MessagesPerConnection: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	s := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: sink.Port(), Providers: tab})
	for i := range 20 {
		if err := s.Deliver(context.Background(), fmt.Sprint("m", i), "news@sender.example", fmt.Sprintf("u%d@alpha.example", i),
			[]byte("Subject: hi\r\n\r\nhello\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if got := sink.Sessions(); got != 4 {
		t.Errorf("%d sessions for 20 messages at 5 per connection, want 4", got)
	}
}
