package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
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
	addr, stop, err := mtatest.StartDNS(handler)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr, domains
}

// tenantConfig points the harness at n Microsoft 365 tenants on a loopback
// DNS server, delivering in mx mode to the sink, Microsoft held to 3
// connections; it returns the domains.
func (h *harness) tenantConfig(n int) []string {
	h.t.Helper()
	resolver, domains := tenantDNS(h.t, n)
	cfg := readFile(h.t, h.cfgPath)
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
	return domains
}

// tenantCSV is a recipients file of perDomain recipients at each domain.
func tenantCSV(domains []string, perDomain int) (string, int) {
	var csv strings.Builder
	csv.WriteString("email,first_name,company\n")
	n := 0
	for _, d := range domains {
		for j := range perDomain {
			fmt.Fprintf(&csv, "r%d@%s,R%d,Co\n", j, d, j)
			n++
		}
	}
	return csv.String(), n
}

// TestProviderShapingThroughDaemon: a campaign to 30 Microsoft 365 tenants
// sent through `serve` in mx mode (MX lookups through delivery.resolver):
// the sink never sees more than delivery.shaping's 3 Microsoft connections,
// every message arrives once, and `providers ls` shows the daemon's live row.
func TestProviderShapingThroughDaemon(t *testing.T) {
	h := newHarness(t, mtatest.Options{DataDelay: 10 * time.Millisecond})
	domains := h.tenantConfig(30)
	h.serve()
	csv, n := tenantCSV(domains, 3)
	h.mustRun(0, "campaign", "send", "--offline", "--no-wait", h.campaign("tenants-1", csv))
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

// TestAdaptiveThroughDaemon: the sink answers "451 4.7.1 rate limited" to the
// first RCPTs; the shipped rule throttles the (default source, microsoft)
// pair, which /metrics and `providers ls` show with the rule that did it;
// after `queue retry ALL` every message is delivered exactly once, and the
// sink never sees more than 3 connections.
func TestAdaptiveThroughDaemon(t *testing.T) {
	var rcpts atomic.Int64
	h := newHarness(t, mtatest.Options{Rcpt: func(string, int) error {
		if rcpts.Add(1) <= 5 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1},
				Message: "Rate limit exceeded for your IP, slow down"}
		}
		return nil
	}})
	domains := h.tenantConfig(30)
	addr := listenAddr(t)
	h.appendConfig("metrics_listen: " + addr + "\n")
	h.serve()
	csv, n := tenantCSV(domains, 1)
	h.mustRun(0, "campaign", "send", "--offline", "--no-wait", h.campaign("tenants-2", csv))
	waitFor(t, "the first attempts", func() bool {
		done := 0
		for _, v := range jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", "tenants-2").stdout) {
			if v.State == queue.StateDelivered || v.State == queue.StateDeferred {
				done++
			}
		}
		return done >= n
	})

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`postwarden_adaptive_changes_total{kind="throttle",provider="microsoft",source=""} 1`,
		`postwarden_adaptive_factor{limit="connections",provider="microsoft",source=""} 0.5`,
		`postwarden_adaptive_suspended{provider="microsoft",source=""} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(string(body), "postwarden_adaptive"))
		}
	}
	ls := h.mustRun(0, "providers", "ls").stdout
	if !regexp.MustCompile(`\(default\)\s+microsoft\s+\d+\s+1\s.*conn×0\.50.*throttle .*any provider: 4yz naming a rate`).MatchString(ls) {
		t.Errorf("providers ls does not show the throttle:\n%s", ls)
	}

	h.mustRun(0, "queue", "retry", "ALL")
	h.waitDelivered("tenants-2", n)
	for rcpt, k := range h.sink.ByRecipient() {
		if k != 1 {
			t.Errorf("%s received %d times", rcpt, k)
		}
	}
	if got := len(h.sink.ByRecipient()); got != n {
		t.Errorf("%d recipients received mail, want %d", got, n)
	}
	if got := h.sink.MaxOpen(); got > 3 {
		t.Errorf("sink saw %d connections at once, want at most 3", got)
	}
}
