package providers_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/mta/providers"
)

// testTable is a small table shaped like the shipped one.
func testTable(t *testing.T, shaping map[string]providers.Limits) *providers.Table {
	t.Helper()
	tb, err := providers.New(providers.Config{
		Default:       providers.Limits{Connections: 4, Rate: 1, MessagesPerConnection: 100},
		DefaultSource: "test default",
		Providers: []providers.Provider{
			{Name: "microsoft", Suffixes: []string{"mail.protection.outlook.com", "MX.Microsoft."}, Limits: providers.Limits{Connections: 5, Rate: 5, MessagesPerConnection: 50}},
			{Name: "outlook", Suffixes: []string{"olc.protection.outlook.com"}, Limits: providers.Limits{Connections: 5}},
			{Name: "google", Suffixes: []string{"aspmx.l.google.com", "google.com"}, Limits: providers.Limits{MessagesPerConnection: 50}},
			{Name: "proofpoint", Suffixes: []string{"pphosted.com", "ppe-hosted.com"}},
		},
		Shaping: shaping,
	})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestMatch(t *testing.T) {
	tb := testTable(t, nil)
	cases := []struct {
		hosts []string
		want  string
	}{
		{[]string{"contoso-com.mail.protection.outlook.com."}, "microsoft"},
		{[]string{"CONTOSO-COM.Mail.Protection.Outlook.COM"}, "microsoft"},
		{[]string{"contoso-com.l-v1.mx.microsoft"}, "microsoft"},
		{[]string{"hotmail-com.olc.protection.outlook.com"}, "outlook"},
		{[]string{"aspmx.l.google.com", "alt1.aspmx.l.google.com"}, "google"},
		{[]string{"smtp.google.com"}, "google"},
		{[]string{"mx0a-001.pphosted.com"}, "proofpoint"},
		// the suffix must end at a label: notpphosted.com is not Proofpoint
		{[]string{"mx.notpphosted.com"}, "site:mx.notpphosted.com"},
		// the most preferred host that matches a rule decides
		{[]string{"mx.own.example", "backup.pphosted.com"}, "proofpoint"},
		// no rule: a site of the sorted, deduplicated host set
		{[]string{"mx2.example.net.", "MX1.example.net", "mx1.example.net"}, "site:mx1.example.net+mx2.example.net"},
		{[]string{"protection.outlook.com"}, "site:protection.outlook.com"},
	}
	for _, c := range cases {
		if got := tb.Match(c.hosts).Name; got != c.want {
			t.Errorf("Match(%v) = %s, want %s", c.hosts, got, c.want)
		}
	}
	a, b := tb.Match([]string{"mx1.example.net", "mx2.example.net"}), tb.Match([]string{"MX2.example.net.", "mx1.example.net"})
	if a.Name != b.Name || !a.Site {
		t.Errorf("same MX set, different sites: %s, %s", a.Name, b.Name)
	}
	if s := tb.Match([]string{"x.pphosted.com"}).Limits; s != (providers.Limits{Connections: 4, Rate: 1, MessagesPerConnection: 100}) {
		t.Errorf("proofpoint with no limits of its own = %+v, want the default", s)
	}
	if s := tb.Match([]string{"x.olc.protection.outlook.com"}).Limits; s != (providers.Limits{Connections: 5, Rate: 1, MessagesPerConnection: 100}) {
		t.Errorf("outlook = %+v, want connections 5 and the default's rest", s)
	}
}

func TestNewRefuses(t *testing.T) {
	for name, cfg := range map[string]providers.Config{
		"duplicate suffix": {Providers: []providers.Provider{{Name: "a", Suffixes: []string{"x.com"}}, {Name: "b", Suffixes: []string{"X.com."}}}},
		"duplicate name":   {Providers: []providers.Provider{{Name: "a", Suffixes: []string{"x.com"}}, {Name: "A", Suffixes: []string{"y.com"}}}},
		"reserved name":    {Providers: []providers.Provider{{Name: "default", Suffixes: []string{"x.com"}}}},
		"site name":        {Providers: []providers.Provider{{Name: "site:x", Suffixes: []string{"x.com"}}}},
		"no suffix":        {Providers: []providers.Provider{{Name: "a"}}},
		"negative":         {Shaping: map[string]providers.Limits{"a.com": {Connections: -1}}},
	} {
		if _, err := providers.New(cfg); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

func TestShapingLayers(t *testing.T) {
	tb := testTable(t, map[string]providers.Limits{
		"microsoft":   {Connections: 20, Rate: 5},
		"example.org": {Connections: 2},
		"default":     {MessagesPerConnection: 10},
	})
	ms := tb.Match([]string{"t.mail.protection.outlook.com"})
	if got := tb.Shaping("contoso.com", ms); got != (providers.Limits{Connections: 20, Rate: 5, MessagesPerConnection: 50}) {
		t.Errorf("microsoft by name: %+v", got)
	}
	// the domain's entry wins over the provider's, field by field
	e := tb.Explain("Example.ORG.", ms)
	if e.Limits != (providers.Limits{Connections: 2, Rate: 5, MessagesPerConnection: 50}) || e.ByProvider != "microsoft" || e.ByDomain != "example.org" {
		t.Errorf("example.org at microsoft: %+v", e)
	}
	if e.Shipped != (providers.Limits{Connections: 5, Rate: 5, MessagesPerConnection: 50}) {
		t.Errorf("shipped: %+v", e.Shipped)
	}
	site := tb.Match([]string{"mx.own.example"})
	if e := tb.Explain("own.example", site); e.Limits != (providers.Limits{Connections: 4, Rate: 1, MessagesPerConnection: 10}) || e.ByProvider != "default" || e.ByDomain != "" {
		t.Errorf("site with shaping.default: %+v", e)
	}
	g := tb.Match([]string{"aspmx.l.google.com"})
	if e := tb.Explain("acme.example", g); e.ByProvider != "" || e.ByDomain != "" || e.Limits != e.Shipped {
		t.Errorf("google, no override: %+v", e)
	}
}

func TestFormatRate(t *testing.T) {
	for in, want := range map[float64]string{0: "", 5: "300/m", 1: "60/m", 100.0 / 60: "100/m", 90.0 / 3600: "90/h", 0.001: "0.001/s"} {
		if got := providers.FormatRate(in); got != want {
			t.Errorf("FormatRate(%g) = %q, want %q", in, got, want)
		}
	}
}

// zone is what the test DNS server serves; it may change while it runs.
type zone struct {
	mu    sync.Mutex
	mx    map[string][]*dns.MX // fqdn → records
	asked map[string]int       // fqdn → MX queries seen
}

func (z *zone) set(domain string, ttl uint32, hosts ...string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	var rrs []*dns.MX
	for i, h := range hosts {
		rrs = append(rrs, &dns.MX{Hdr: dns.RR_Header{Name: dns.Fqdn(domain), Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: ttl}, Preference: uint16(10 * (i + 1)), Mx: dns.Fqdn(h)})
	}
	z.mx[dns.Fqdn(domain)] = rrs
}

func (z *zone) queries(domain string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.asked[dns.Fqdn(domain)]
}

// ServeDNS answers MX queries from the zone: a listed name with no records
// is NODATA with an SOA, an unlisted one NXDOMAIN.
func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	q := req.Question[0]
	z.mu.Lock()
	z.asked[strings.ToLower(q.Name)]++
	rrs, ok := z.mx[strings.ToLower(q.Name)]
	z.mu.Unlock()
	switch {
	case !ok:
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeMX && len(rrs) > 0:
		for _, rr := range rrs {
			m.Answer = append(m.Answer, rr)
		}
	default:
		m.Ns = append(m.Ns, &dns.SOA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 3600},
			Ns: "ns.test.", Mbox: "hostmaster.test.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 300})
	}
	w.WriteMsg(m)
}

// startDNS runs a real DNS server for z on 127.0.0.1 (UDP) and returns its address.
func startDNS(t *testing.T, z *zone) string {
	t.Helper()
	addr, stop, err := mtatest.StartDNS(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

func newZone() *zone { return &zone{mx: map[string][]*dns.MX{}, asked: map[string]int{}} }

func TestResolverThirtyTenantsAreMicrosoft(t *testing.T) {
	z := newZone()
	var domains []string
	for i := range 30 {
		d := fmt.Sprintf("tenant%02d.example", i)
		z.set(d, 3600, fmt.Sprintf("tenant%02d-example.mail.protection.outlook.com", i))
		domains = append(domains, d)
	}
	z.set("acme.example", 300, "mx2.acme-hosting.example", "mx1.acme-hosting.example")
	z.set("globex.example", 300, "MX1.acme-hosting.example.", "mx2.acme-hosting.example")
	z.set("gw.example", 300, "mx0a-0042.pphosted.com", "mx0b-0042.pphosted.com")
	z.set("null.example", 300, ".")
	z.set("nomx.example", 300) // NODATA
	addr := startDNS(t, z)
	r, err := providers.NewResolver(providers.ResolverConfig{Server: addr}, testTable(t, nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make(chan error, len(domains))
	for _, d := range domains {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dest, err := r.Resolve(ctx, d)
			if err != nil {
				errs <- err
				return
			}
			if dest.Provider.Name != "microsoft" || dest.TTL != time.Hour {
				errs <- fmt.Errorf("%s: provider %s ttl %v, want microsoft 1h", d, dest.Provider.Name, dest.TTL)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	acme, err := r.Resolve(ctx, "ACME.example.")
	if err != nil {
		t.Fatal(err)
	}
	globex, err := r.Resolve(ctx, "globex.example")
	if err != nil {
		t.Fatal(err)
	}
	if acme.Provider.Name != "site:mx1.acme-hosting.example+mx2.acme-hosting.example" || globex.Provider.Name != acme.Provider.Name {
		t.Errorf("acme %s, globex %s: want one shared site", acme.Provider.Name, globex.Provider.Name)
	}
	if acme.MX[0].Host != "mx2.acme-hosting.example" || acme.MX[0].Pref != 10 {
		t.Errorf("acme MX not by preference: %+v", acme.MX)
	}
	if gw, err := r.Resolve(ctx, "gw.example"); err != nil || gw.Provider.Name != "proofpoint" {
		t.Errorf("gw.example: %+v %v", gw.Provider, err)
	}
	if n, err := r.Resolve(ctx, "null.example"); err != nil || !n.NullMX || n.Provider.Name != "" {
		t.Errorf("null MX: %+v %v", n, err)
	}
	if n, err := r.Resolve(ctx, "nomx.example"); err != nil || !n.Implicit || n.TTL != 300*time.Second || n.Provider.Name != "site:nomx.example" {
		t.Errorf("no MX: %+v %v", n, err)
	}
	if _, err := r.Resolve(ctx, "missing.example"); !errors.Is(err, providers.ErrNoDomain) {
		t.Errorf("NXDOMAIN: %v", err)
	}
}

// fakeClock is a clock the test moves; no sleeps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestResolverCachesForTTL(t *testing.T) {
	z := newZone()
	z.set("moving.example", 600, "mx.own.example")
	z.set("short.example", 5, "mx.short.example")
	addr := startDNS(t, z)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r, err := providers.NewResolver(providers.ResolverConfig{Server: addr, Now: clock.Now, MinTTL: time.Minute, MaxTTL: time.Hour}, testTable(t, nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	resolve := func(d string) providers.Destination {
		t.Helper()
		dest, err := r.Resolve(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		return dest
	}
	if d := resolve("moving.example"); d.Provider.Name != "site:mx.own.example" || d.Cached {
		t.Fatalf("first: %+v", d)
	}
	// The domain moves to Microsoft 365; the cached answer stands until its TTL ends.
	z.set("moving.example", 600, "moving-example.mail.protection.outlook.com")
	clock.advance(599 * time.Second)
	if d := resolve("moving.example"); d.Provider.Name != "site:mx.own.example" || !d.Cached {
		t.Fatalf("within the TTL: %+v", d)
	}
	if n := z.queries("moving.example"); n != 1 {
		t.Fatalf("%d queries within the TTL, want 1", n)
	}
	clock.advance(time.Second)
	if d := resolve("moving.example"); d.Provider.Name != "microsoft" || d.Cached {
		t.Fatalf("after the TTL: %+v", d)
	}

	// A 5 s TTL is held for MinTTL (1m).
	resolve("short.example")
	clock.advance(59 * time.Second)
	if d := resolve("short.example"); !d.Cached || d.TTL != 5*time.Second {
		t.Fatalf("short TTL inside MinTTL: %+v", d)
	}
	clock.advance(time.Second)
	if d := resolve("short.example"); d.Cached {
		t.Fatalf("short TTL after MinTTL: %+v", d)
	}
	if n := z.queries("short.example"); n != 2 {
		t.Fatalf("short.example asked %d times, want 2", n)
	}
}

func TestResolverMaxTTL(t *testing.T) {
	z := newZone()
	z.set("long.example", 7*24*3600, "mx.long.example")
	addr := startDNS(t, z)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r, err := providers.NewResolver(providers.ResolverConfig{Server: addr, Now: clock.Now, MaxTTL: time.Hour}, testTable(t, nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Resolve(context.Background(), "long.example")
	if err != nil || d.Expires != clock.Now().Add(time.Hour) {
		t.Fatalf("expires %v (%v), want now+1h", d.Expires, err)
	}
	clock.advance(time.Hour)
	if d, err := r.Resolve(context.Background(), "long.example"); err != nil || d.Cached {
		t.Fatalf("after MaxTTL: cached %v (%v)", d.Cached, err)
	}
}

func TestResolverServerDown(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close() // nothing answers there
	r, err := providers.NewResolver(providers.ResolverConfig{Server: addr, Timeout: 2 * time.Second}, testTable(t, nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Resolve(context.Background(), "acme.example")
	if err == nil || errors.Is(err, providers.ErrNoDomain) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("server down: %v", err)
	}
}

func TestMatchRuleNamesTheRule(t *testing.T) {
	tb := testTable(t, nil)
	p, host, suffix := tb.MatchRule([]string{"mx.own.example", "ALT1.aspmx.l.google.com."})
	if p.Name != "google" || host != "alt1.aspmx.l.google.com" || suffix != "aspmx.l.google.com" {
		t.Errorf("MatchRule = %s %s %s", p.Name, host, suffix)
	}
	if p, host, suffix := tb.MatchRule([]string{"mx.own.example"}); !p.Site || host != "" || suffix != "" {
		t.Errorf("site: %s %q %q", p.Name, host, suffix)
	}
}

func TestResolverOneQueryPerDomain(t *testing.T) {
	z := newZone()
	z.set("busy.example", 300, "busy-example.mail.protection.outlook.com")
	addr := startDNS(t, z)
	r, err := providers.NewResolver(providers.ResolverConfig{Server: addr}, testTable(t, nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d, err := r.Resolve(context.Background(), "busy.example"); err != nil || d.Provider.Name != "microsoft" {
				t.Errorf("%+v %v", d, err)
			}
		}()
	}
	wg.Wait()
	// whether a caller waited for the query under way or found the cache, one query
	if n := z.queries("busy.example"); n != 1 {
		t.Errorf("%d queries, want 1", n)
	}
}

// A truncated UDP answer is asked again over TCP (RFC 7766 §5).
func TestResolverTCPOnTruncation(t *testing.T) {
	z := newZone()
	z.set("big.example", 300, "mx1.big.example", "mx2.big.example")
	var ln net.Listener
	var pc net.PacketConn
	for range 10 { // the same port for both; another process may hold it for UDP
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if p, err := net.ListenPacket("udp", l.Addr().String()); err == nil {
			ln, pc = l, p
			break
		}
		l.Close()
	}
	if ln == nil {
		t.Fatal("no loopback port free for both TCP and UDP")
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m := new(dns.Msg)
			m.SetReply(req)
			m.Truncated = true
			w.WriteMsg(m)
			return
		}
		z.ServeDNS(w, req)
	})
	for _, srv := range []*dns.Server{{Listener: ln, Handler: handler}, {PacketConn: pc, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	r, err := providers.NewResolver(providers.ResolverConfig{Server: ln.Addr().String()}, testTable(t, nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Resolve(context.Background(), "big.example")
	if err != nil || len(d.MX) != 2 || d.Provider.Name != "site:mx1.big.example+mx2.big.example" {
		t.Fatalf("%+v %v", d, err)
	}
}
