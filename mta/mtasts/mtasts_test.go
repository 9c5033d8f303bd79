package mtasts

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestParse(t *testing.T) {
	good := "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n"
	p, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if p.Version != "STSv1" || p.Mode != ModeEnforce || p.MaxAge != 604800*time.Second ||
		len(p.MX) != 2 || p.MX[0] != "mail.example.com" || p.MX[1] != "*.example.net" {
		t.Fatalf("Parse = %+v", p)
	}

	ok := []struct{ name, text string }{
		{"LF line ends, extension key, blanks", "version: STSv1\nmode: testing\nfoo: bar\n\nmx: mx.example.com\nmax_age:86400"},
		{"mode none without mx", "version: STSv1\nmode: none\nmax_age: 0\n"},
		{"max_age capped", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 9999999999\n"},
	}
	for _, c := range ok {
		p, err := Parse([]byte(c.text))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if p.MaxAge > MaxAgeLimit {
			t.Errorf("%s: max_age %v above the limit", c.name, p.MaxAge)
		}
	}

	bad := []struct{ name, text string }{
		{"empty", ""},
		{"no version", "mode: enforce\nmx: a.example\nmax_age: 1\n"},
		{"wrong version", "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n"},
		{"bad mode", "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n"},
		{"no max_age", "version: STSv1\nmode: enforce\nmx: a.example\n"},
		{"negative max_age", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n"},
		{"max_age too long", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n"},
		{"enforce without mx", "version: STSv1\nmode: enforce\nmax_age: 1\n"},
		{"bad mx", "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n"},
		{"wildcard inside", "version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n"},
		{"no colon", "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n"},
		{"html", "<html><body>not found</body></html>"},
	}
	for _, c := range bad {
		if p, err := Parse([]byte(c.text)); err == nil {
			t.Errorf("%s: Parse = %+v, want an error", c.name, p)
		}
	}
}

func TestMatchHost(t *testing.T) {
	cases := []struct {
		pattern, host string
		want          bool
	}{
		{"mx.example.com", "mx.example.com", true},
		{"mx.example.com", "MX.Example.com.", true},
		{"mx.example.com", "mx2.example.com", false},
		{"*.example.com", "mx.example.com", true},
		{"*.example.com", "mx.example.com.", true},
		{"*.example.com", "example.com", false},         // one label, not zero
		{"*.example.com", "a.mx.example.com", false},    // one label, not two
		{"*.example.com", "mx.example.com.evil", false}, // suffix only
		{"*.example.com", "mxexample.com", false},
		{"*.example.com", ".example.com", false},
		{"", "", false},
	}
	for _, c := range cases {
		if got := MatchHost(c.pattern, c.host); got != c.want {
			t.Errorf("MatchHost(%q, %q) = %v, want %v", c.pattern, c.host, got, c.want)
		}
	}
	p := &Policy{MX: []string{"mx1.example.com", "*.backup.example.com"}}
	if !p.Match("mx1.example.com") || !p.Match("b1.backup.example.com") || p.Match("mx2.example.com") {
		t.Fatal("Policy.Match")
	}
}

func TestParseRecords(t *testing.T) {
	cases := []struct {
		txts []string
		id   string // "" = ErrNoRecord
	}{
		{[]string{"v=STSv1; id=20160831085700Z;"}, "20160831085700Z"},
		{[]string{"v=STSv1;id=abc"}, "abc"},
		{[]string{"v=spf1 -all", "v=STSv1 ; id=abc ; ext=1"}, "abc"},
		{[]string{}, ""},
		{[]string{"v=STSv1; id=a", "v=STSv1; id=b"}, ""}, // two records: none (§3.1)
		{[]string{"v=STSv1;"}, ""},
		{[]string{"v=STSv1; id="}, ""},
		{[]string{"v=STSv1; id=has-dash"}, ""},
		{[]string{"v=STSv1; id=" + strings.Repeat("a", 33)}, ""},
		{[]string{"v=STSv10; id=abc"}, ""},
		{[]string{"v=STSv1; ;id=abc"}, ""},
	}
	for _, c := range cases {
		id, err := ParseRecords(c.txts)
		if c.id == "" {
			if !errors.Is(err, ErrNoRecord) {
				t.Errorf("%q: id %q err %v, want ErrNoRecord", c.txts, id, err)
			}
			continue
		}
		if err != nil || id != c.id {
			t.Errorf("%q: id %q err %v, want %q", c.txts, id, err, c.id)
		}
	}
}

// txtResolver answers TXT lookups from a map; a missing name is "not found".
type txtResolver struct {
	mu  sync.Mutex
	txt map[string][]string
}

func (r *txtResolver) set(name string, v ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v == nil {
		delete(r.txt, name)
	} else {
		r.txt[name] = v
	}
}

func (r *txtResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.txt[name]; ok {
		return v, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// policyServer is an httptest TLS server answering for every mta-sts.* host.
type policyServer struct {
	srv     *httptest.Server
	fetches atomic.Int32
	mu      sync.Mutex
	hosts   []string
	handler http.HandlerFunc
}

func newPolicyServer(t *testing.T, h http.HandlerFunc) *policyServer {
	t.Helper()
	ps := &policyServer{handler: h}
	ps.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ps.fetches.Add(1)
		ps.mu.Lock()
		ps.hosts = append(ps.hosts, r.Host)
		h := ps.handler
		ps.mu.Unlock()
		if r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	}))
	t.Cleanup(ps.srv.Close)
	return ps
}

func (ps *policyServer) setHandler(h http.HandlerFunc) {
	ps.mu.Lock()
	ps.handler = h
	ps.mu.Unlock()
}

// client trusts the server's certificate (valid for *.example.com) and dials it for any host.
func (ps *policyServer) client() *http.Client {
	c := ps.srv.Client()
	tr := c.Transport.(*http.Transport).Clone()
	addr := ps.srv.Listener.Addr().String()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	c.Transport = tr
	return c
}

func serve(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte(body))
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

const policy1 = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.mx.example.com\nmax_age: 3600\n"

func TestCacheFetchesAndCaches(t *testing.T) {
	ps := newPolicyServer(t, serve(policy1))
	res := &txtResolver{txt: map[string][]string{"_mta-sts.example.com": {"v=STSv1; id=one"}}}
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	c := New(Config{Resolver: res, HTTPClient: ps.client(), Now: clk.now}, zerolog.New(zerolog.NewTestWriter(t)))
	ctx := context.Background()

	p, err := c.Get(ctx, "example.com")
	if err != nil || p == nil || p.Mode != ModeEnforce || p.ID != "one" || !p.Match("a.mx.example.com") {
		t.Fatalf("Get = %+v, %v", p, err)
	}
	ps.mu.Lock()
	hosts := ps.hosts
	ps.mu.Unlock()
	if len(hosts) != 1 || !strings.HasPrefix(hosts[0], "mta-sts.example.com") {
		t.Fatalf("fetched from %v", hosts)
	}
	// Cached: no fetch before max_age, whether or not the TXT is re-read.
	for _, d := range []time.Duration{time.Second, 2 * time.Minute, 10 * time.Minute} {
		clk.add(d)
		if p2, err := c.Get(ctx, "example.com"); err != nil || p2 != p {
			t.Fatalf("after %v: %+v %v, want the cached policy", d, p2, err)
		}
	}
	if n := ps.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}

	// A new id in the TXT record: refetch at the next recheck.
	ps.setHandler(serve(strings.Replace(policy1, "enforce", "testing", 1)))
	res.set("_mta-sts.example.com", "v=STSv1; id=two")
	clk.add(2 * time.Minute)
	p, err = c.Get(ctx, "example.com")
	if err != nil || p.ID != "two" || p.Mode != ModeTesting || ps.fetches.Load() != 2 {
		t.Fatalf("after id change: %+v %v, %d fetches", p, err, ps.fetches.Load())
	}

	// The server breaks: the cached policy stands until max_age, then none.
	ps.setHandler(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", 503) })
	res.set("_mta-sts.example.com", "v=STSv1; id=three")
	clk.add(2 * time.Minute)
	p, err = c.Get(ctx, "example.com")
	if p == nil || p.ID != "two" || err == nil {
		t.Fatalf("fetch failing, cache valid: %+v %v, want cached policy and the error", p, err)
	}
	clk.add(time.Hour)
	if p, err = c.Get(ctx, "example.com"); p != nil || err == nil {
		t.Fatalf("fetch failing, cache expired: %+v %v, want no policy and the error", p, err)
	}
	// Remembered as "no policy" for NegativeTTL: no fetch meanwhile.
	n := ps.fetches.Load()
	if p, _ = c.Get(ctx, "example.com"); p != nil || ps.fetches.Load() != n {
		t.Fatal("negative result not cached")
	}
}

func TestCacheNoRecord(t *testing.T) {
	ps := newPolicyServer(t, serve(policy1))
	res := &txtResolver{txt: map[string][]string{"_mta-sts.two.example.com": {"v=STSv1; id=a", "v=STSv1; id=b"}}}
	c := New(Config{Resolver: res, HTTPClient: ps.client()}, zerolog.Nop())
	for _, d := range []string{"none.example.com", "two.example.com"} {
		if p, err := c.Get(context.Background(), d); p != nil || err != nil {
			t.Errorf("%s: %+v %v, want no policy and no error", d, p, err)
		}
	}
	if ps.fetches.Load() != 0 {
		t.Fatal("fetched without a usable TXT record")
	}
}

func TestCacheFetchRules(t *testing.T) {
	cases := []struct {
		name string
		h    http.HandlerFunc
	}{
		{"redirect not followed", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/.well-known/mta-sts.txt?again", http.StatusFound)
		}},
		{"404", http.NotFound},
		{"too large", serve(policy1 + strings.Repeat("x: y\n", MaxPolicySize/5+1))},
		{"bad policy", serve("version: STSv1\nmode: enforce\n")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ps := newPolicyServer(t, c.h)
			res := &txtResolver{txt: map[string][]string{"_mta-sts.example.com": {"v=STSv1; id=1"}}}
			cache := New(Config{Resolver: res, HTTPClient: ps.client()}, zerolog.Nop())
			p, err := cache.Get(context.Background(), "example.com")
			if p != nil || err == nil {
				t.Fatalf("Get = %+v, %v; want no policy and an error", p, err)
			}
			if n := ps.fetches.Load(); n != 1 {
				t.Fatalf("%d requests, want 1 (redirects not followed)", n)
			}
		})
	}
}

func TestCacheUntrustedCertificate(t *testing.T) {
	ps := newPolicyServer(t, serve(policy1))
	res := &txtResolver{txt: map[string][]string{"_mta-sts.example.com": {"v=STSv1; id=1"}}}
	client := ps.client()
	client.Transport.(*http.Transport).TLSClientConfig.RootCAs = nil // system roots: the test cert is unknown
	c := New(Config{Resolver: res, HTTPClient: client}, zerolog.Nop())
	if p, err := c.Get(context.Background(), "example.com"); p != nil || err == nil {
		t.Fatalf("Get = %+v, %v; want an error", p, err)
	}
}
