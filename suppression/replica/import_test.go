package replica

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/suppression"
)

// stepAuditor records each audited step once per key (as audit.Log's
// AppendOnce does), with the keys asked for in order; killAt makes the
// audit of that batch fail once recorded, as a kill between the audit and
// the batch's commit would.
type stepAuditor struct {
	steps  map[string]suppression.ImportStep
	calls  []string
	killAt int
}

func (a *stepAuditor) AuditImport(st suppression.ImportStep) error {
	a.calls = append(a.calls, st.Key)
	if _, ok := a.steps[st.Key]; !ok {
		a.steps[st.Key] = st
	}
	if !st.Final && st.Batch == a.killAt {
		return errors.New("killed")
	}
	return nil
}

// countingPub counts the batches published through a node's writer.
type countingPub struct {
	*Store
	keys []string
}

func (c *countingPub) PublishImport(key string, es []suppression.Entry) (int, error) {
	c.keys = append(c.keys, key)
	return c.Store.PublishImport(key, es)
}

// TestImportResumesOnAnotherNode: an import killed on node A after two of
// its three batches resumes when the same file is imported on node B: the
// run's record reached B through the stream with the batches, so B keeps
// A's run id and entry time, publishes and audits only batch 3 (audited on
// A, never committed), and the stream holds every row once. Once B
// finished, the run is done on A too: a further import there is a new run.
func TestImportResumesOnAnotherNode(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startNode(t, js, box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "A caught up", caughtUp(a))
	const rows = 2500 // three batches
	var sb strings.Builder
	sb.WriteString("email\n")
	for i := range rows {
		fmt.Fprintf(&sb, "v%d@example.net\n", i)
	}
	// Each node reads its own copy of the file: the same bytes.
	pathA, pathB := filepath.Join(dir, "a-supp.csv"), filepath.Join(dir, "b-supp.csv")
	for _, p := range []string{pathA, pathB} {
		if err := os.WriteFile(p, []byte(sb.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	def := suppression.Entry{Reason: suppression.Manual, Source: "import:supp.csv"}

	audA := &stepAuditor{steps: map[string]suppression.ImportStep{}, killAt: 3}
	if _, err := a.store.ImportFileVia(pathA, def, audA, a.rep.Writer()); err == nil {
		t.Fatal("the interrupted import succeeded")
	}
	run := audA.steps[audA.calls[0]].Run
	if c, _ := a.store.Count(); c != 2000 {
		t.Fatalf("A holds %d after the kill; want the 2 committed batches", c)
	}
	first, ok, err := a.store.Lookup("v0@example.net", "")
	if err != nil || !ok {
		t.Fatalf("A: first row not in: %v", err)
	}
	time.Sleep(20 * time.Millisecond) // a new run's entry time would differ

	audB := &stepAuditor{steps: map[string]suppression.ImportStep{}}
	pubB := &countingPub{Store: b.rep.Writer()}
	res, err := b.store.ImportFileVia(pathB, def, audB, pubB)
	if err != nil {
		t.Fatalf("import on B: %v", err)
	}
	if res.Run != run || res.Resumed != 2 || res.Batches != 3 || res.Added != rows || res.Rows != rows {
		t.Errorf("import on B = %+v; want run %s resumed after 2 of 3 batches, %d added", res, run, rows)
	}
	if want := []string{run + "/3"}; !slices.Equal(pubB.keys, want) {
		t.Errorf("B published batches %v; want %v (1 and 2 not again)", pubB.keys, want)
	}
	if want := []string{run + "/3", run + "/done"}; !slices.Equal(audB.calls, want) {
		t.Errorf("B audited %v; want %v", audB.calls, want)
	}
	last, ok, err := b.store.Lookup(fmt.Sprintf("v%d@example.net", rows-1), "")
	if err != nil || !ok {
		t.Fatalf("B: last row not in: %v", err)
	}
	if !last.Time.Equal(first.Time) {
		t.Errorf("B wrote entry time %v; want the run's %v", last.Time, first.Time)
	}
	// Rows once each, and the run's records: start, 1, 2 (A); 3, done (B).
	if got := streamLast(t, js); got != rows+5 {
		t.Errorf("stream holds %d; want %d rows and 5 run records", got, rows)
	}
	eventually(t, "A holds every row", func() bool { c, _ := a.store.Count(); return c == rows })

	again, err := a.store.ImportFileVia(pathA, def, &stepAuditor{steps: map[string]suppression.ImportStep{}}, a.rep.Writer())
	if err != nil || again.Run == run || again.Resumed != 0 {
		t.Errorf("import on A after B finished = %+v, %v; want a new run", again, err)
	}
}
