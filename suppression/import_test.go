package suppression

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/suppression/address"
)

// onceAuditor is an ImportAuditor that keeps each key once, like
// audit.Log.AppendOnce; failAfter makes the call for that key fail after it
// was recorded, as a crash between the audit and the commit would.
type onceAuditor struct {
	steps     map[string]ImportStep
	calls     []string
	failAfter string
}

func (a *onceAuditor) AuditImport(st ImportStep) error {
	a.calls = append(a.calls, st.Key)
	if _, ok := a.steps[st.Key]; !ok {
		a.steps[st.Key] = st
	}
	if st.Key == a.failAfter {
		return errors.New("killed")
	}
	return nil
}

// An import interrupted after a batch was audited and before it was
// committed resumes on the re-run: same run, the committed batches neither
// rewritten nor audited again, the interrupted one asked for again (the
// auditor's key makes it one entry), every row in. A further run of the same
// file is a new run.
func TestImportFileResumesInterruptedRun(t *testing.T) {
	s, _ := newStore(t)
	var b strings.Builder
	b.WriteString("email\n")
	for i := 0; i < 3500; i++ {
		fmt.Fprintf(&b, "user%d@example.com\n", i)
	}
	path := filepath.Join(t.TempDir(), "list.csv")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &onceAuditor{steps: map[string]ImportStep{}}
	if _, err := s.ImportFile(path, Entry{}, &failAt{a, 3}); err == nil {
		t.Fatal("interrupted import: no error")
	}
	if n, _ := s.Count(); n != 2000 {
		t.Fatalf("after the interruption %d entries, want the 2 committed batches", n)
	}
	run := a.steps[a.calls[0]].Run
	a.calls, a.failAfter = nil, ""
	res, err := s.ImportFile(path, Entry{}, a)
	if err != nil {
		t.Fatal(err)
	}
	if res.Run != run || res.Resumed != 2 || res.Batches != 4 || res.Added != 3500 {
		t.Errorf("re-run = %+v; want run %s resumed after 2 of 4 batches, 3500 added", res, run)
	}
	want := []string{run + "/3", run + "/4", run + "/done"}
	if strings.Join(a.calls, " ") != strings.Join(want, " ") {
		t.Errorf("re-run asked to audit %v, want %v", a.calls, want)
	}
	if len(a.steps) != 5 || a.steps[run+"/3"].FirstLine != 2002 || a.steps[run+"/4"].LastLine != 3501 {
		t.Errorf("steps %v", a.steps)
	}
	if n, _ := s.Count(); n != 3500 {
		t.Errorf("%d entries, want 3500", n)
	}
	again, err := s.ImportFile(path, Entry{}, a)
	if err != nil || again.Run == run || again.Resumed != 0 {
		t.Errorf("import after a completed one = %+v, %v; want a new run", again, err)
	}
}

// failAt makes batch n's audit call fail after recording it.
type failAt struct {
	*onceAuditor
	n int
}

func (f *failAt) AuditImport(st ImportStep) error {
	if st.Batch == f.n {
		f.onceAuditor.failAfter = st.Key
	}
	return f.onceAuditor.AuditImport(st)
}

// An import reads its header by the one rule: a duplicated column is refused
// (it was kept first before), nothing is imported.
func TestImportHeaderRule(t *testing.T) {
	s, _ := newStore(t)
	_, err := s.Import(strings.NewReader("email,list,List\nana@example.com,news,promo\n"), "dup.csv", Entry{Reason: Unsubscribed})
	if err == nil || !strings.Contains(err.Error(), `dup.csv:1: header: column "list" appears twice`) {
		t.Fatalf("err = %v", err)
	}
	if _, sup, _ := s.Check("ana@example.com", "news"); sup {
		t.Fatal("a refused file imported a row")
	}
}

func TestImportRow(t *testing.T) {
	hd, err := address.ReadHeader("in.csv", []string{"Email", "list", "reason", "note"})
	if err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	def := Entry{List: "news", Reason: Complaint, Source: "import:in.csv", Note: "default", Time: when}
	for _, tc := range []struct {
		name    string
		rec     []string
		want    Entry
		wantErr string
	}{
		{"defaults", []string{" A@Example.com ", "", "", ""},
			Entry{Target: "a@example.com", List: "news", Reason: Complaint, Source: "import:in.csv", Note: "default", Time: when}, ""},
		{"row values", []string{"b@example.com", "promo", "manual", "asked"},
			Entry{Target: "b@example.com", List: "promo", Reason: Manual, Source: "import:in.csv", Note: "asked", Time: when}, ""},
		{"domain", []string{"@Example.org", "", "", ""},
			Entry{Target: "@example.org", List: "news", Reason: Complaint, Source: "import:in.csv", Note: "default", Time: when}, ""},
		{"width", []string{"c@example.com", "news"}, Entry{}, "in.csv:7: row has 2 fields, header has 4"},
		{"empty", []string{" \t", "", "", ""}, Entry{}, "in.csv:7: email is empty"},
		{"bad reason", []string{"d@example.com", "", "bored", ""}, Entry{}, `in.csv:7: reason "bored": unknown`},
		{"bad address", []string{"not an address", "", "", ""}, Entry{}, "in.csv:7: target:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := importRow(hd, tc.rec, def, "in.csv", 7)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want prefix %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestImportDefaults(t *testing.T) {
	now := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	set := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		def, want Entry
		name      string
	}{
		{Entry{}, Entry{Source: "import:list.csv", Time: now}, "/tmp/x/list.csv"},
		{Entry{Source: "crm", Time: set}, Entry{Source: "crm", Time: set}, "list.csv"},
	} {
		if got := importDefaults(tc.def, tc.name, now); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("importDefaults(%+v, %q) = %+v, want %+v", tc.def, tc.name, got, tc.want)
		}
	}
}

// TestApplyImportRecord: a run's record from the log (OpImport) is checked
// (a malformed one refused, nothing kept), filed under no address, never
// moves its run back, and makes the store's next import of the file resume
// that run.
func TestApplyImportRecord(t *testing.T) {
	s, _ := newStore(t)
	var b strings.Builder
	b.WriteString("email\n")
	for i := 0; i < 2500; i++ {
		fmt.Fprintf(&b, "rec%d@example.com\n", i)
	}
	path := filepath.Join(t.TempDir(), "list.csv")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// The record another node's run would publish: its identity as
	// ImportFileVia makes it (file digest, defaults).
	digest := sha256.Sum256([]byte(b.String()))
	def := Entry{Source: "import:list.csv"}
	key := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%s\x00%s", hex.EncodeToString(digest[:]), def.List, def.Reason, def.Source, def.Note))
	started := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	rec := func(batches int) Mutation {
		return Mutation{Op: OpImport, Import: &ImportProgress{Key: hex.EncodeToString(key[:]),
			Run: importRun{Run: "00aa11bb22cc33dd", File: "list.csv", Started: started, Batches: batches, Added: 1000 * batches}}}
	}
	for _, bad := range []Mutation{
		{Op: OpImport},
		{Op: OpImport, Import: &ImportProgress{Key: "abc", Run: rec(1).Import.Run}},
		{Op: OpImport, Import: &ImportProgress{Key: rec(1).Import.Key, Run: importRun{Run: "not hex", Started: started}}},
	} {
		if _, err := s.NormalizeMutation(bad); err == nil {
			t.Errorf("NormalizeMutation(%+v): no error", bad.Import)
		}
	}
	if out, err := s.Apply(1, Mutation{Op: OpImport, Import: &ImportProgress{Key: "zz"}}); err != nil || out.Refused == nil {
		t.Errorf("Apply of a malformed record = %+v, %v; want refused", out, err)
	}
	m, err := s.NormalizeMutation(rec(2))
	if err != nil {
		t.Fatal(err)
	}
	if ix := s.MutationIndex(m); ix == "" || strings.Contains(ix, m.Import.Key) {
		t.Errorf("record filed under %q", ix)
	}
	if _, err := s.Apply(2, m); err != nil {
		t.Fatal(err)
	}
	if out, err := s.Apply(3, rec(1)); err != nil || out.Refused != nil { // late: kept out
		t.Fatalf("Apply(older record) = %+v, %v", out, err)
	}
	a := &onceAuditor{steps: map[string]ImportStep{}}
	res, err := s.ImportFile(path, def, a)
	if err != nil || res.Run != "00aa11bb22cc33dd" || res.Resumed != 2 || res.Batches != 3 {
		t.Fatalf("import after the record = %+v, %v; want run 00aa11bb22cc33dd resumed after 2 of 3", res, err)
	}
	if e, ok, _ := s.Lookup("rec2400@example.com", ""); !ok || !e.Time.Equal(started) {
		t.Errorf("batch 3 entry = %+v, %v; want the run's time %v", e, ok, started)
	}
}
