package httplimit

import (
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

func TestClientIP(t *testing.T) {
	px := Proxies{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:1::/48")}
	for _, tc := range []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"untrusted peer: header ignored", "192.0.2.7:4000", []string{"203.0.113.9"}, "192.0.2.7"},
		{"trusted peer, no header", "127.0.0.1:4000", nil, "127.0.0.1"},
		{"trusted peer", "127.0.0.1:4000", []string{"203.0.113.9"}, "203.0.113.9"},
		{"chain: rightmost untrusted wins over a spoofed left", "127.0.0.1:1", []string{"1.1.1.1, 203.0.113.9, 10.1.2.3"}, "203.0.113.9"},
		{"two headers are one list", "127.0.0.1:1", []string{"1.1.1.1", "203.0.113.9, 10.1.2.3"}, "203.0.113.9"},
		{"all trusted: the leftmost", "127.0.0.1:1", []string{"10.9.9.9, 10.1.2.3"}, "10.9.9.9"},
		{"garbage ends the walk at the hop that reported it", "127.0.0.1:1", []string{"203.0.113.9, nonsense, 10.1.2.3"}, "10.1.2.3"},
		{"ports and brackets", "127.0.0.1:1", []string{"[2001:db8:9::5]:443"}, "2001:db8:9::5"},
		{"v6 proxy", "[2001:db8:1::7]:80", []string{"198.51.100.4"}, "198.51.100.4"},
		{"mapped v4 peer", "[::ffff:127.0.0.1]:80", []string{"198.51.100.4"}, "198.51.100.4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/subscribe", nil)
			r.RemoteAddr = tc.peer
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := px.ClientIP(r); got != tc.want {
				t.Errorf("ClientIP = %q, want %q", got, tc.want)
			}
		})
	}
	// No proxies configured: never read the header.
	r := httptest.NewRequest("POST", "/", nil)
	r.RemoteAddr = "127.0.0.1:5"
	r.Header.Set("X-Forwarded-For", "203.0.113.9")
	if got := Proxies(nil).ClientIP(r); got != "127.0.0.1" {
		t.Errorf("no proxies: %q", got)
	}
}

func TestNetwork(t *testing.T) {
	for in, want := range map[string]string{
		"198.51.100.77":        "198.51.100.0/24",
		"::ffff:198.51.100.77": "198.51.100.0/24",
		"2001:db8:1:2:3::9":    "2001:db8:1:2::/64",
		"nonsense":             "nonsense",
	} {
		if got := Network(in); got != want {
			t.Errorf("Network(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTakeAllIsAllOrNothing(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	wide := NewBuckets(Per(1, time.Hour, 10), 0)
	narrow := NewBuckets(Per(1, time.Hour, 2), 0)
	for i := 0; i < 2; i++ {
		if ok, _, _ := TakeAll(now, Take{wide, "k", "wide"}, Take{narrow, "k", "narrow"}); !ok {
			t.Fatalf("take %d refused", i)
		}
	}
	ok, wait, by := TakeAll(now, Take{wide, "k", "wide"}, Take{narrow, "k", "narrow"})
	if ok || wait < 59*time.Minute || wait > time.Hour || by != "narrow" {
		t.Fatalf("third take: ok %v wait %v by %q", ok, wait, by)
	}
	// The refused take gave its token from wide back: 8 remain.
	n := 0
	for ok, _ := wide.Allow("k", now); ok; ok, _ = wide.Allow("k", now) {
		n++
	}
	if n != 8 {
		t.Errorf("wide had %d tokens left, want 8", n)
	}
	if RetryAfter(wait) != "3600" || RetryAfter(0) != "1" {
		t.Errorf("RetryAfter %s %s", RetryAfter(wait), RetryAfter(0))
	}
	if ok, _, _ := TakeAll(now, Take{NewBuckets(Rate{}, 0), "x", ""}, Take{nil, "y", ""}); !ok {
		t.Error("unlimited refused")
	}
}

func TestBucketsStayBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := NewBuckets(Per(1, time.Second, 1), 100)
	for i := 0; i < 1000; i++ {
		b.Allow(fmt.Sprint("key", i), now) // each bucket is left empty: busy
	}
	if n := b.Len(); n > 100 {
		t.Errorf("%d keys held, cap 100", n)
	}
	// Idle buckets (full again) are dropped at the next sweep.
	b.Allow("late", now.Add(2*time.Minute))
	if n := b.Len(); n != 1 {
		t.Errorf("%d keys after the sweep, want 1", n)
	}
}

func TestPeerIP(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		want string
	}{
		{nil, ""},
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 25}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 25}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 25, Zone: "eth0"}, "2001:db8::1"},
		{&net.UnixAddr{Name: "/run/pw.sock", Net: "unix"}, "/run/pw.sock"},
	} {
		if got := PeerIP(c.addr); got != c.want {
			t.Errorf("PeerIP(%v) = %q, want %q", c.addr, got, c.want)
		}
	}
}
