package main

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// tenantDNS is a real DNS server on 127.0.0.1 serving n Microsoft 365
// tenants tenantNN.example (MX tenantNN-example.mail.protection.outlook.com,
// resolving to 127.0.0.1); it returns its address and the domains.
func tenantDNS(t *testing.T, n int) (string, []string) {
	t.Helper()
	mx, hosts := map[string]string{}, map[string]bool{}
	var domains []string
	for i := range n {
		d := fmt.Sprintf("tenant%02d.example", i)
		h := fmt.Sprintf("tenant%02d-example.mail.protection.outlook.com.", i)
		mx[d+"."], hosts[h] = h, true
		domains = append(domains, d)
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 300}
		switch {
		case q.Qtype == dns.TypeMX && mx[name] != "":
			m.Answer = append(m.Answer, &dns.MX{Hdr: hdr, Preference: 10, Mx: mx[name]})
		case q.Qtype == dns.TypeA && hosts[name]:
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
		case mx[name] != "" || hosts[name]:
			m.Ns = append(m.Ns, &dns.SOA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 300},
				Ns: "ns.test.", Mbox: "hostmaster.test.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 300})
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: handler, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String(), domains
}

// TestProviderShapingThroughDaemon: a campaign to 30 Microsoft 365 tenants
// sent through `serve` in mx mode (MX lookups through delivery.resolver):
// the sink never sees more than delivery.shaping's 3 Microsoft connections,
// every message arrives once, and `providers ls` shows the daemon's live row.
func TestProviderShapingThroughDaemon(t *testing.T) {
	h := newHarness(t, mtatest.Options{DataDelay: 10 * time.Millisecond})
	resolver, domains := tenantDNS(t, 30)
	cfg := readFile(t, h.cfgPath)
	cut := strings.Index(cfg, "delivery:\n")
	h.write("postwarden.yaml", cfg[:cut]+fmt.Sprintf(`delivery:
  mode: mx
  resolver: %s
  smtp_port: %d
  tls: {default: none}
  retry: [1h]
  max_age: 120h
  concurrency_per_domain: 4
  workers: 32
  shaping:
    microsoft: {connections: 3}
`, resolver, h.sink.Port()))
	h.serve()

	var csv strings.Builder
	csv.WriteString("email,first_name,company\n")
	n := 0
	for _, d := range domains {
		for j := range 3 {
			fmt.Fprintf(&csv, "r%d@%s,R%d,Co\n", j, d, j)
			n++
		}
	}
	file := h.campaign("tenants-1", csv.String())
	h.mustRun(0, "campaign", "send", "--no-wait", file)
	h.waitDelivered("tenants-1", n)

	if got := h.sink.MaxOpen(); got > 3 {
		t.Errorf("sink saw %d connections at once, want at most delivery.shaping.microsoft's 3", got)
	}
	for rcpt, k := range h.sink.ByRecipient() {
		if k != 1 {
			t.Errorf("%s received %d times", rcpt, k)
		}
	}
	if got := h.sink.Count(); got != n {
		t.Errorf("sink accepted %d messages, want %d", got, n)
	}

	r := h.mustRun(0, "providers", "ls")
	if !strings.Contains(r.stdout, "live (daemon):") || !regexp.MustCompile(`\(default\)\s+microsoft\s+\d+\s+3\s`).MatchString(r.stdout) {
		t.Errorf("providers ls shows no live microsoft row:\n%s", r.stdout)
	}
}
