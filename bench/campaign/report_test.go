package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrintReport(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "report.txt"))
	if err != nil {
		t.Fatal(err)
	}
	rep := &report{Options: options{N: 1000, Sig: "ed25519"}, Sink: "loopback", Complete: "all runs",
		Summary: summary{Rate: stat{Median: 900, Min: 800, Max: 1000}, VsTransport: 0.5},
		Stages:  []stage{{Name: "render", P50Us: 12.5, P99Us: 30}},
		Notes:   []string{"a note"},
		Profile: "PROFILE TEXT",
	}
	printReport(f, rep)
	f.Close()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	want := []string{"postwarden end-to-end bench", "N=1000", "msgs/s end to end", "900", "ratio to transport ref",
		"stage (in-process)", "render", "completion", "all runs", "note", "a note"}
	last := 0
	for _, w := range want {
		i := strings.Index(out[last:], w)
		if i < 0 {
			t.Fatalf("report lacks %q after offset %d:\n%s", w, last, out)
		}
		last += i
	}
	if !strings.HasSuffix(out, "\nPROFILE TEXT\n") {
		t.Errorf("the profile is not printed last:\n%s", out)
	}
	if strings.Contains(out, "ratio to send floor") {
		t.Errorf("ratio to an unmeasured send floor printed:\n%s", out)
	}
}
