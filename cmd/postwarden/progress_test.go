package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// slowCSV is n recipients at the harness's domains.
func slowCSV(n int) string {
	var b strings.Builder
	b.WriteString("email,first_name,company\n")
	for i := range n {
		fmt.Fprintf(&b, "p%d@%s,P,Co\n", i, testDomains[i%len(testDomains)])
	}
	return b.String()
}

// On a terminal, campaign send shows the delivery, in recipients: a bar
// with delivered / deferred / bounced / pending counts, the rate and the
// time left; elsewhere a plain "delivery:" line; nothing with --json.
func TestSendProgressCoversDelivery(t *testing.T) {
	h := newHarness(t, mtatest.Options{DataDelay: 40 * time.Millisecond})
	file := h.campaign("prog-1", slowCSV(80))

	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	var screen bytes.Buffer
	read := make(chan struct{})
	go func() { io.Copy(&screen, ptmx); close(read) }()
	var stdout bytes.Buffer
	code := run(context.Background(), []string{"-c", h.cfgPath, "campaign", "send", file}, strings.NewReader(""), &stdout, tty)
	tty.Close()
	<-read
	if code != 0 {
		t.Fatalf("send: exit %d\n%s\n%s", code, stdout.String(), screen.String())
	}
	got := screen.String()
	for _, want := range []string{"delivered ", "deferred 0", "bounced 0", "pending "} {
		if !strings.Contains(got, want) {
			t.Errorf("the terminal lacks %q:\n%q", want, got)
		}
	}
	if !strings.Contains(stdout.String(), "delivery: delivered 80") {
		t.Errorf("summary:\n%s", stdout.String())
	}

	// Not a terminal: a plain line; --json: none.
	plain := h.mustRun(0, "campaign", "send", h.campaign("prog-2", slowCSV(20)))
	if !strings.Contains(plain.stderr, "delivery: delivered ") {
		t.Errorf("plain stderr:\n%s", plain.stderr)
	}
	if js := h.mustRun(0, "--json", "campaign", "send", h.campaign("prog-3", slowCSV(5))); strings.Contains(js.stderr, "delivery:") {
		t.Errorf("--json stderr:\n%s", js.stderr)
	}
}
