package mtasts

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// loopbackResolver serves zone lines on a loopback DNS server and returns a
// resolver asking it alone.
func loopbackResolver(t *testing.T, records ...string) (*net.Resolver, *mtatest.Zone) {
	t.Helper()
	zone, addr := mtatest.ServeZone(t, records...)
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}, zone
}

// The policy host's address comes from the configured DNS server: a
// loopback HTTPS server found only through it serves the policy.
func TestFetchResolvesThroughResolver(t *testing.T) {
	ps := newPolicyServer(t, serve(policy1))
	res, zone := loopbackResolver(t,
		`_mta-sts.example.com. 300 IN TXT "v=STSv1; id=one"`,
		`mta-sts.example.com. 300 IN A 127.0.0.1`)
	_, port, _ := net.SplitHostPort(ps.srv.Listener.Addr().String())
	tr := ps.srv.Client().Transport.(*http.Transport).Clone() // trusts the test certificate
	dial := DialVia(res, &net.Dialer{})
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, _ := net.SplitHostPort(addr) // the test server is not on 443: keep the host, move the port
		return dial(ctx, network, net.JoinHostPort(host, port))
	}
	c := New(Config{Resolver: res, HTTPClient: &http.Client{Transport: tr}}, zerolog.New(zerolog.NewTestWriter(t)))
	p, err := c.Get(context.Background(), "example.com")
	if err != nil || p == nil || p.ID != "one" || p.Mode != ModeEnforce {
		t.Fatalf("Get = %+v, %v", p, err)
	}
	if !slices.Contains(zone.Queries(), "A mta-sts.example.com.") {
		t.Errorf("the policy host was not looked up through the resolver: %v", zone.Queries())
	}
	// A host the resolver does not know is not dialled at all.
	if _, err := dial(context.Background(), "tcp", "nowhere.example.com:443"); err == nil || !strings.Contains(err.Error(), "look up nowhere.example.com") {
		t.Errorf("dial of an unknown host: %v", err)
	}
}

// Without an HTTPClient, the Cache's own client dials through HostResolver.
func TestDefaultClientUsesHostResolver(t *testing.T) {
	res, zone := loopbackResolver(t,
		`_mta-sts.example.test. 300 IN TXT "v=STSv1; id=one"`,
		`mta-sts.example.test. 300 IN A 127.0.0.1`) // port 443 on loopback: refused, or not our server
	c := New(Config{Resolver: res, HostResolver: res}, zerolog.Nop())
	if p, err := c.Get(context.Background(), "example.test"); p != nil || err == nil {
		t.Fatalf("Get = %+v, %v; want no policy and a fetch error", p, err)
	}
	if !slices.Contains(zone.Queries(), "A mta-sts.example.test.") {
		t.Errorf("the default client did not resolve through HostResolver: %v", zone.Queries())
	}
}
