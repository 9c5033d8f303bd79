package main

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
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
