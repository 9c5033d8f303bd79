package mtatest

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Zone is a dns.Handler answering from records given in zone-file form, for
// StartDNS. A name it holds with no record of the asked type gets an empty
// answer (NOERROR, NODATA); a name it does not hold gets Missing. Safe for
// concurrent use; records may be added while it serves.
type Zone struct {
	mu      sync.Mutex
	missing int                 // rcode for names not held (0: NXDOMAIN)
	rrs     map[string][]dns.RR // by lower-case owner name with its final dot
	queries []string            // "TYPE name." in arrival order
}

// NewZone returns a Zone holding records, each one zone-file line such as
// `example.test. 300 IN TXT "v=spf1 -all"`.
func NewZone(records ...string) (*Zone, error) {
	z := &Zone{rrs: map[string][]dns.RR{}}
	return z, z.Add(records...)
}

// Add puts more records in the zone.
func (z *Zone) Add(records ...string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			return fmt.Errorf("mtatest: zone record %q: %w", s, err)
		}
		if rr == nil {
			continue
		}
		name := strings.ToLower(rr.Header().Name)
		z.rrs[name] = append(z.rrs[name], rr)
	}
	return nil
}

// SetMissing sets the rcode for names the zone does not hold (default
// NXDOMAIN); dns.RcodeServerFailure makes every unknown name a lookup
// failure, as of a resolver that cannot answer.
func (z *Zone) SetMissing(rcode int) {
	z.mu.Lock()
	z.missing = rcode
	z.mu.Unlock()
}

// Queries returns the questions asked so far, each "TYPE name." (e.g.
// "A mta-sts.example.test.").
func (z *Zone) Queries() []string {
	z.mu.Lock()
	defer z.mu.Unlock()
	return append([]string(nil), z.queries...)
}

// ServeDNS answers req from the zone.
func (z *Zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	z.mu.Lock()
	z.queries = append(z.queries, dns.TypeToString[q.Qtype]+" "+name)
	rrs, held := z.rrs[name]
	missing := z.missing
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME {
			c := dns.Copy(rr)
			c.Header().Name = q.Name
			m.Answer = append(m.Answer, c)
		}
	}
	z.mu.Unlock()
	switch {
	case !held && missing != 0:
		m.Rcode = missing
	case !held:
		m.Rcode = dns.RcodeNameError
	}
	if m.Rcode == dns.RcodeNameError || (held && len(m.Answer) == 0) { // RFC 2308 §3: the SOA tells a negative answer's TTL
		m.Ns = append(m.Ns, &dns.SOA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns: "ns.test.", Mbox: "hostmaster.test.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 60})
	}
	w.WriteMsg(m)
}

// ServeZone serves records (zone-file lines) on a loopback DNS server for
// the test's lifetime: the zone (to add records, set the missing answer or
// read the queries) and the server's address.
func ServeZone(t testing.TB, records ...string) (*Zone, string) {
	t.Helper()
	z, err := NewZone(records...)
	if err != nil {
		t.Fatal(err)
	}
	addr, stop, err := StartDNS(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return z, addr
}
