package main

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
)

// campaign validate of a long recipients file stops at the first SIGINT or
// SIGTERM: non-zero exit, well before it would have finished.
func TestValidateStopsOnFirstSignal(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{})
	file := h.campaign("sig-validate", bulkCSV(400000))
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		cmd := exec.Command(bin, "-c", h.cfgPath, "campaign", "validate", file)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // let it start reading
		start := time.Now()
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%v: exit 0 after the signal\n%s", sig, out.String())
			}
			t.Logf("%v: stopped %v after the signal", sig, time.Since(start))
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("%v: still running 30 s after one signal", sig)
		}
	}
}

// campaign send of a long recipients file stops at the first SIGINT or
// SIGTERM, with nothing half-written: what it enqueued stays enqueued and
// counted in its summary, and a re-run enqueues only the rest, sending nobody
// twice.
func TestSendStopsOnFirstSignal(t *testing.T) {
	bin := buildBinary(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			h := newHarness(t, mtatest.Options{})
			const n = 10000
			id := "sig-send-" + strings.ToLower(strings.ReplaceAll(sig.String(), " ", "-"))
			file := h.campaign(id, bulkCSV(n))

			cmd := exec.Command(bin, "-c", h.cfgPath, "--json", "campaign", "send", file)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// Signal once the first messages are enqueued and delivering.
			waitFor(t, "deliveries to start", func() bool { return h.sink.Count() > 0 })
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err == nil {
					t.Errorf("exit 0 after the signal\n%s\n%s", stdout.String(), stderr.String())
				}
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("still running 30 s after one signal\n%s", stderr.String())
			}

			// The interrupted run's summary counts exactly what the queue holds.
			first := lastSendResult(t, stdout.String())
			if first.Summary.Campaign != id {
				t.Fatalf("no send summary after the signal:\n%s\n%s", stdout.String(), stderr.String())
			}
			if first.Summary.Enqueued == 0 || first.Summary.Enqueued >= n {
				t.Fatalf("signal handled after %d of %d enqueued; the test proved nothing", first.Summary.Enqueued, n)
			}
			st := campaignStatusOf(t, h, id)
			if st.Enqueued != first.Summary.Enqueued {
				t.Errorf("queue holds %d messages, the interrupted run counted %d", st.Enqueued, first.Summary.Enqueued)
			}

			// The re-run continues: the rest is enqueued, nobody twice.
			rerun := exec.Command(bin, "-c", h.cfgPath, "--json", "campaign", "send", "--no-wait", file)
			out, err := rerun.Output()
			if err != nil {
				t.Fatalf("re-run: %v\n%s", err, out)
			}
			s := lastSendResult(t, string(out)).Summary
			if s.AlreadySent != first.Summary.Enqueued || s.Enqueued+s.AlreadySent != n {
				t.Errorf("re-run: enqueued %d, already sent %d; want %d already sent and %d in all", s.Enqueued, s.AlreadySent, first.Summary.Enqueued, n)
			}
			if st := campaignStatusOf(t, h, id); st.Enqueued != n {
				t.Errorf("queue holds %d messages after the re-run, want %d", st.Enqueued, n)
			}
			for rcpt, c := range h.sink.ByRecipient() {
				if c > 1 {
					t.Errorf("%s delivered %d times", rcpt, c)
				}
			}
			t.Logf("stopped after %d of %d enqueued, %d delivered", first.Summary.Enqueued, n, h.sink.Count())
		})
	}
}

// lastSendResult is the last send record of campaign send --json output.
func lastSendResult(t *testing.T, stdout string) sendResult {
	t.Helper()
	var last sendResult
	for _, r := range jsonLines[sendResult](t, stdout) {
		if r.Summary.Campaign != "" {
			last = r
		}
	}
	return last
}

// campaignStatusOf runs campaign status --json.
func campaignStatusOf(t *testing.T, h *harness, id string) campaignStatus {
	t.Helper()
	sts := jsonLines[campaignStatus](t, h.mustRun(0, "--json", "campaign", "status", id).stdout)
	if len(sts) != 1 {
		t.Fatalf("campaign status: %d records", len(sts))
	}
	return sts[0]
}

// On the first signal campaign send gives its deliveries in flight
// delivery.drain_timeout, as serve does, then cuts them off and returns them
// to the queue: a remote that never answers DATA does not hold it, and every
// message stays enqueued and counted, none left active.
func TestSendSignalCutsDeliveriesAfterDrainTimeout(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{DataDelay: 10 * time.Minute}) // answers no DATA while the test runs
	cfg := readFile(t, h.cfgPath)
	h.write("postwarden.yaml", strings.Replace(cfg, "  max_age: 120h\n", "  max_age: 120h\n  drain_timeout: 1s\n", 1))
	const n = 20
	id := "sig-drain"
	file := h.campaign(id, bulkCSV(n))

	cmd := exec.Command(bin, "-c", h.cfgPath, "--json", "campaign", "send", file)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor(t, "deliveries to start", func() bool { return h.sink.Sessions() > 0 })
	time.Sleep(500 * time.Millisecond) // let them reach DATA
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The runner's built-in default (30 s) is what a send that ignored
	// drain_timeout (1 s) would wait.
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("exit 0 after the signal\n%s\n%s", stdout.String(), stderr.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("still running 20 s after one signal with drain_timeout 1s\n%s", stderr.String())
	}

	if got := lastSendResult(t, stdout.String()).Summary.Enqueued; got != n {
		t.Errorf("summary counts %d enqueued, want %d\n%s", got, n, stdout.String())
	}
	msgs := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", id).stdout)
	if len(msgs) != n {
		t.Errorf("queue holds %d messages, want %d", len(msgs), n)
	}
	for _, m := range msgs {
		if m.State != queue.StateReady {
			t.Errorf("message %s is %s after the stop, want ready", m.ID, m.State)
		}
	}
}
