package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
)

// TestSourcesAndWarmupEndToEnd: delivery.sources on 127.0.0.2 and
// 127.0.0.3, both in the default pool, each with a warm-up cap of 10 a day.
// A campaign to 25 Microsoft 365 tenants (MX on a loopback DNS server):
// the sink sees exactly 10 messages from each address, each with its
// source's EHLO name, and 5 wait for the next UTC day; `queue ls --source`
// and `--provider` find them. A second run (a new process, as after a
// restart) sends nothing more today: the day's counts come back from
// queue.db. `providers ls` on the daemon shows no room left.
func TestSourcesAndWarmupEndToEnd(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	domains := h.tenantConfig(25)
	h.appendConfig(`  sources:
    - {name: ip2, address: 127.0.0.2, ehlo: mta2.example.com}
    - {name: ip3, address: 127.0.0.3, ehlo: mta3.example.com}
  pools: {default: [ip2, {source: ip3, weight: 1}]}
  warmup: {ip2: [10, 100], ip3: [10, 100]}
`)
	csv, n := tenantCSV(domains, 1)
	file := h.campaign("warm-1", csv)
	h.mustRun(0, "campaign", "send", "--offline", file) // about delivery: its loopback DNS publishes no SPF or DMARC

	byClient := map[string]int{}
	for _, m := range h.sink.Messages() {
		byClient[m.Client+" "+m.Helo]++
	}
	if byClient["127.0.0.2 mta2.example.com"] != 10 || byClient["127.0.0.3 mta3.example.com"] != 10 || len(byClient) != 2 {
		t.Fatalf("sink saw %v, want 10 from each source with its EHLO name", byClient)
	}
	msgs := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", "warm-1").stdout)
	states := map[queue.State]int{}
	for _, m := range msgs {
		states[m.State]++
		if m.Provider != "microsoft" || m.Pool != "default" {
			t.Errorf("%s: pool %q provider %q, want default and microsoft", m.ID, m.Pool, m.Provider)
		}
	}
	if states[queue.StateDelivered] != 20 || states[queue.StateDeferred] != n-20 {
		t.Fatalf("states %v, want 20 delivered and %d waiting for tomorrow", states, n-20)
	}
	for _, src := range []string{"ip2", "ip3"} {
		got := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--source", src, "--state", "delivered").stdout)
		if len(got) != 10 {
			t.Errorf("queue ls --source %s --state delivered: %d messages, want 10", src, len(got))
		}
	}
	if got := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--provider", "microsoft").stdout); len(got) != n {
		t.Errorf("queue ls --provider microsoft: %d messages, want %d", len(got), n)
	}

	// A new process: the warm-up counts of today come from queue.db.
	h.mustRun(0, "queue", "retry", "ALL")
	h.mustRun(0, "campaign", "send", "--offline", file)
	if got := h.sink.Count(); got != 20 {
		t.Fatalf("after a second run the sink has %d messages, want still 20 (caps spent today)", got)
	}

	h.serve()
	ls := h.mustRun(0, "providers", "ls").stdout
	for _, src := range []string{"ip2", "ip3"} {
		if !regexp.MustCompile(src + `\s+1 of 2\s+10\s+microsoft: 0 \(sent 10\)`).MatchString(ls) {
			t.Errorf("providers ls lacks %s's warm-up day and room:\n%s", src, ls)
		}
	}
	if !strings.Contains(ls, "warm-up (daemon):") {
		t.Errorf("providers ls:\n%s", ls)
	}
}
