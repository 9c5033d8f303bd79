package mta

import (
	"context"
	"slices"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// With DNSServer set and no MTASTSClient, the MTA-STS policy host is looked
// up on that server too (delivery.resolver), not on the system's.
func TestMTASTSFetchUsesDNSServer(t *testing.T) {
	ts := newTestServer(t, nil)
	zone, addr := mtatest.ServeZone(t,
		`example.com. 300 IN MX 10 mx.test.`,
		`mx.test. 300 IN A 127.0.0.1`,
		`_mta-sts.example.com. 300 IN TXT "v=STSv1; id=20260101"`,
		`mta-sts.example.com. 300 IN A 127.0.0.1`) // nothing of ours on 443: the fetch fails, delivery goes on
	s := newSender(t, Config{Mode: ModeMX, SMTPPort: ts.Port, DNSServer: addr, MTASTS: true}, false)
	if err := s.Deliver(context.Background(), "q", "b@example.com", "ana@example.com", []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(zone.Queries(), "A mta-sts.example.com.") {
		t.Errorf("policy host not looked up through DNSServer: %v", zone.Queries())
	}
}
