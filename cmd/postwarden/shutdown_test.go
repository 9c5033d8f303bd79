package main

import (
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// SIGTERM stops serve gracefully: no new work, the deliveries in flight finish
// and their outcomes are committed, the store is closed, exit status 0. After a
// restart every recipient has exactly one message: no loss, no duplicate.
func TestGracefulShutdownDeliversExactlyOnce(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{DataDelay: 20 * time.Millisecond})
	const n = 300
	file := h.campaign("graceful-1", bulkCSV(n))
	sock := h.config().AdminSocket

	start := func() (*exec.Cmd, *strings.Builder) {
		cmd := exec.Command(bin, "-c", h.cfgPath, "serve")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		waitFor(t, "the admin socket", func() bool { return daemonClient(sock) != nil })
		return cmd, &out
	}
	stop := func(cmd *exec.Cmd, out *strings.Builder) {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("serve after SIGTERM: %v\n%s", err, out.String())
		}
	}

	cmd, out := start()
	r := h.mustRun(0, "campaign", "send", file)
	if !strings.Contains(r.stdout, "handed to the running daemon") || !strings.Contains(r.stdout, fmt.Sprintf("enqueued       %d", n)) {
		t.Fatalf("send:\n%s", r.stdout)
	}
	waitFor(t, "deliveries to start", func() bool { return h.sink.Count() >= 30 })
	stop(cmd, out)
	atStop := h.sink.Count()
	if atStop >= n {
		t.Fatalf("SIGTERM came after every delivery (%d); the test proved nothing", atStop)
	}
	if !strings.Contains(out.String(), "shutting down") || !strings.Contains(out.String(), "stopped") {
		t.Errorf("serve log lacks the shutdown:\n%s", out.String())
	}
	// With no daemon, the CLI opens the store itself: it was closed cleanly.
	st := jsonLines[statsView](t, h.mustRun(0, "--json", "queue", "stats").stdout)[0]
	if st.ByState["active"] != 0 || st.ByState["delivered"] != atStop {
		t.Fatalf("after SIGTERM: %v active, %d delivered recorded, %d received", st.ByState["active"], st.ByState["delivered"], atStop)
	}

	cmd, out = start()
	waitFor(t, "every delivery", func() bool { return h.sink.Count() >= n })
	stop(cmd, out)
	got := h.sink.ByRecipient()
	for i := 0; i < n; i++ {
		rcpt := bulkRecipient(i)
		if got[rcpt] != 1 {
			t.Errorf("%s received %d messages, want exactly 1", rcpt, got[rcpt])
		}
	}
	t.Logf("stopped after %d of %d deliveries", atStop, n)
}

// A campaign's rate holds at the receiving sink across SIGTERM and a restart:
// no second carries more than the rate plus its burst (one second's worth),
// though the slots reserved before the stop fell due while serve was down.
func TestCampaignRateAcrossRestart(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{})
	const n, perSecond = 300, 50
	file := h.campaign("paced-restart", bulkCSV(n))
	h.write("paced-restart.yaml", readFile(t, file)+fmt.Sprintf("rate: %d/s\n", perSecond))
	sock := h.config().AdminSocket
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "-c", h.cfgPath, "serve")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		waitFor(t, "the admin socket", func() bool { return daemonClient(sock) != nil })
		return cmd
	}
	stop := func(cmd *exec.Cmd) {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("serve after SIGTERM: %v", err)
		}
	}
	cmd := start()
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "deliveries to start", func() bool { return h.sink.Count() >= perSecond })
	stop(cmd)
	time.Sleep(3 * time.Second) // the reserved slots of three seconds fall due meanwhile
	cmd = start()
	waitFor(t, "every delivery", func() bool { return h.sink.Count() >= n })
	stop(cmd)

	var times []time.Time
	for _, m := range h.sink.Messages() {
		times = append(times, m.Time)
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	most, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= time.Second {
			j++
		}
		most = max(most, i-j+1)
	}
	if limit := 2*perSecond + perSecond/10; most > limit {
		t.Fatalf("the busiest second at the sink carried %d messages; rate %d/s plus its burst allows %d", most, perSecond, limit)
	}
}

// SIGTERM with a slow sink: serve exits within delivery.drain_timeout, the
// deliveries it cut off are back in the queue (none active, none lost), and
// the next serve delivers every message.
func TestShutdownDrainDeadline(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{DataDelay: 8 * time.Second})
	h.write("postwarden.yaml", readFile(t, h.cfgPath)+"  drain_timeout: 1s\n")
	const n = 6
	file := h.campaign("slow-1", bulkCSV(n))
	sock := h.config().AdminSocket
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "-c", h.cfgPath, "serve")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		waitFor(t, "the admin socket", func() bool { return daemonClient(sock) != nil })
		return cmd
	}
	cmd := start()
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "sessions to open", func() bool { return h.sink.Sessions() >= 1 })
	time.Sleep(time.Second) // the deliveries are in DATA, waiting for the sink
	began := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("serve took %v to stop; drain_timeout is 1s", took)
	}
	st := jsonLines[statsView](t, h.mustRun(0, "--json", "queue", "stats").stdout)[0]
	if st.ByState["active"] != 0 || st.ByState["ready"]+st.ByState["delivered"] != n {
		t.Fatalf("after SIGTERM: %v", st.ByState)
	}
	cmd = start()
	h.waitDelivered("slow-1", n)
	_ = cmd.Process.Kill()
}
