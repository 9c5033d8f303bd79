package main

import (
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// startServe runs the built binary's serve with h's config until its admin socket answers.
func startServe(t *testing.T, bin string, h *harness) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "-c", h.cfgPath, "serve")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	sock := h.config().AdminSocket
	waitFor(t, "the admin socket", func() bool { return daemonClient(sock) != nil })
	return cmd
}

// stopServe sends SIGTERM to serve and waits for its clean exit; it returns
// when the signal was sent.
func stopServe(t *testing.T, cmd *exec.Cmd) time.Time {
	t.Helper()
	at := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v", err)
	}
	return at
}

// busiestSecond is the most messages any one-second window at the sink
// carried, counting only those whose recipient keep selects (nil: all).
func busiestSecond(sink *mtatest.Sink, keep func(rcpt string) bool) int {
	var times []time.Time
	for _, m := range sink.Messages() {
		if keep == nil || keep(m.To[0]) {
			times = append(times, m.Time)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	most, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= time.Second {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

// SIGTERM while deliveries wait for their domain's rate (delivery.rates):
// the waits end with the stop, so no delivery starts after it, none is left
// active, and the next serve delivers the rest, each recipient exactly once.
func TestSigtermEndsDomainRateWaits(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{})
	h.write("postwarden.yaml", readFile(t, h.cfgPath)+"  rates: {default: 1/s}\n")
	const n = 12 // three per domain: one goes at once, the next ones wait 1 s and 2 s
	file := h.campaign("waiting-1", bulkCSV(n))
	cmd := startServe(t, bin, h)
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "each domain's first message", func() bool { return h.sink.Count() >= len(testDomains) })
	time.Sleep(200 * time.Millisecond) // the workers wait for each domain's next slot
	sigAt := stopServe(t, cmd)
	sent := 0
	for _, m := range h.sink.Messages() {
		if m.Time.After(sigAt) {
			t.Errorf("a delivery to %s reached the sink %v after SIGTERM", m.To[0], m.Time.Sub(sigAt))
		}
		sent++
	}
	st := jsonLines[statsView](t, h.mustRun(0, "--json", "queue", "stats").stdout)[0]
	if st.ByState["active"] != 0 || st.ByState["delivered"] != sent {
		t.Fatalf("after SIGTERM: %v; the sink got %d", st.ByState, sent)
	}
	cmd = startServe(t, bin, h)
	h.waitDelivered("waiting-1", n)
	stopServe(t, cmd)
	for i := range n {
		if got := h.sink.ByRecipient()[bulkRecipient(i)]; got != 1 {
			t.Errorf("%s received %d messages, want exactly 1", bulkRecipient(i), got)
		}
	}
}

// A domain's rate (delivery.rates) holds at the receiving sink across SIGTERM
// and a restart and after `queue retry ALL` of the backlog its limiter handed
// back (throttled, deferred): no second carries more than the rate plus its
// burst (one second's worth).
func TestDomainRateAcrossRestartAndRetryAll(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{})
	const perSecond = 10
	h.write("postwarden.yaml", readFile(t, h.cfgPath)+"  rates: {default: 0, acme.example: 10/s}\n")
	const n = 240 // 60 to acme.example: most of them wait past the limiter's 2 s and are handed back
	file := h.campaign("domain-paced", bulkCSV(n))
	acme := func(rcpt string) bool { return strings.HasSuffix(rcpt, "@acme.example") }
	acmeCount := func() int {
		c := 0
		for _, m := range h.sink.Messages() {
			if acme(m.To[0]) {
				c++
			}
		}
		return c
	}
	cmd := startServe(t, bin, h)
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "acme.example deliveries", func() bool { return acmeCount() >= perSecond })
	stopServe(t, cmd)
	time.Sleep(2 * time.Second) // the handed-back messages' times pass while serve is down
	cmd = startServe(t, bin, h)
	h.mustRun(0, "queue", "retry", "ALL")
	h.waitDelivered("domain-paced", n)
	stopServe(t, cmd)
	if got := acmeCount(); got != n/len(testDomains) {
		t.Fatalf("acme.example received %d messages, want %d", got, n/len(testDomains))
	}
	if most, limit := busiestSecond(h.sink, acme), 2*perSecond+perSecond/10; most > limit {
		t.Fatalf("the busiest second at the sink carried %d acme.example messages; rate %d/s plus its burst allows %d", most, perSecond, limit)
	}
}
