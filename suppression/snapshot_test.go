package suppression

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// snapshotSource is a store that applied a log of 6 changes: entries on
// every list and domain, a restriction, an erasure.
func snapshotSource(t *testing.T) (*Store, string) {
	t.Helper()
	s, path := newStore(t)
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	for i, m := range []Mutation{
		{Op: OpAdd, Time: at, Entry: &Entry{Target: "ann@example.com", Reason: Unsubscribed, Source: "one-click", Note: "clicked"}},
		{Op: OpAdd, Time: at, Entry: &Entry{Target: "bob@example.com", List: "news", Reason: HardBounce, Source: "bounce"}},
		{Op: OpAdd, Time: at, Entry: &Entry{Target: "@corp.example", Reason: Manual, Source: "cli"}},
		{Op: OpRestrict, Time: at, Addr: "cy@example.org", Note: "objection"},
		{Op: OpAdd, Time: at, Entry: &Entry{Target: "dee@example.net", Reason: Complaint}},
		{Op: OpErase, Time: at, Addr: "dee@example.net", Ref: "REQ-9"},
	} {
		m, err := s.NormalizeMutation(m)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := s.Apply(uint64(i+1), m); err != nil || out.Refused != nil {
			t.Fatalf("Apply(%d) = %+v, %v", i+1, out, err)
		}
	}
	return s, path
}

// entries lists every entry of s.
func entries(t *testing.T, s *Store) []Entry {
	t.Helper()
	var out []Entry
	if err := s.List(func(e Entry) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSnapshotRoundTrip: a snapshot loaded into an empty store gives the
// same entries, applied sequence and erased sequence.
func TestSnapshotRoundTrip(t *testing.T) {
	src, path := snapshotSource(t)
	var buf bytes.Buffer
	seq, err := src.WriteSnapshot(&buf, nil)
	if err != nil || seq != 6 {
		t.Fatalf("WriteSnapshot = %d, %v; want 6", seq, err)
	}
	if bytes.Contains(buf.Bytes(), []byte("ann@example.com")) || bytes.Contains(buf.Bytes(), []byte("clicked")) {
		t.Fatal("the snapshot holds a clear address or note")
	}
	dst := openTest(t, filepath.Join(filepath.Dir(path), "joined.db")) // same data key
	defer dst.Close()
	if ok, err := dst.Empty(); err != nil || !ok {
		t.Fatalf("fresh store Empty = %v, %v", ok, err)
	}
	got, err := dst.LoadSnapshot(bytes.NewReader(buf.Bytes()))
	if err != nil || got != 6 {
		t.Fatalf("LoadSnapshot = %d, %v; want 6", got, err)
	}
	if a, b := entries(t, src), entries(t, dst); !reflect.DeepEqual(a, b) || len(a) != 5 {
		t.Fatalf("entries differ:\n src %+v\n dst %+v", a, b)
	}
	if s, _ := dst.AppliedSeq(); s != 6 {
		t.Errorf("AppliedSeq = %d; want 6", s)
	}
	if s, _ := dst.ErasedSeq(); s != 6 {
		t.Errorf("ErasedSeq = %d; want 6", s)
	}
	wantCheck(t, dst, "ann@example.com", "", "unsubscribed", true)
	wantCheck(t, dst, "x@corp.example", "", "manual", true)
	wantCheck(t, dst, "dee@example.net", "", "erased", true)
	// The next change of the log applies after the snapshot's sequence only.
	rm, _ := dst.NormalizeMutation(Mutation{Op: OpRemove, Addr: "ann@example.com"})
	if out, _ := dst.Apply(6, rm); !out.Skipped {
		t.Error("a change at the snapshot's sequence applied again")
	}
	if ok, _ := dst.Empty(); ok {
		t.Error("a loaded store says it is empty")
	}
}

// TestSnapshotRefusesNonEmpty: only an empty store loads a snapshot; a
// store with a pending change, or one that applied the log, refuses and
// keeps what it had.
func TestSnapshotRefusesNonEmpty(t *testing.T) {
	src, path := snapshotSource(t)
	var buf bytes.Buffer
	if _, err := src.WriteSnapshot(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := src.LoadSnapshot(bytes.NewReader(buf.Bytes())); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("LoadSnapshot into the source = %v; want ErrNotEmpty", err)
	}
	other := openTest(t, filepath.Join(filepath.Dir(path), "pending.db"))
	defer other.Close()
	m, _ := other.NormalizeMutation(Mutation{Op: OpAdd, Entry: &Entry{Target: "eve@example.com", Reason: Unsubscribed}})
	if _, err := other.AddPending("k1", []byte("sealed"), m); err != nil {
		t.Fatal(err)
	}
	if _, err := other.LoadSnapshot(bytes.NewReader(buf.Bytes())); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("LoadSnapshot into a store with a pending change = %v; want ErrNotEmpty", err)
	}
	if got := entries(t, other); len(got) != 1 {
		t.Fatalf("the refusing store changed: %+v", got)
	}
	// And a store with a pending change writes no snapshot.
	if _, err := other.WriteSnapshot(&bytes.Buffer{}, nil); !errors.Is(err, ErrSnapshotPending) {
		t.Fatalf("WriteSnapshot with a pending change = %v; want ErrSnapshotPending", err)
	}
}

// TestSnapshotCorrupt: a truncated, altered or foreign snapshot is refused
// with a clear error and leaves the store empty.
func TestSnapshotCorrupt(t *testing.T) {
	src, path := snapshotSource(t)
	var buf bytes.Buffer
	if _, err := src.WriteSnapshot(&buf, nil); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	dst := openTest(t, filepath.Join(filepath.Dir(path), "joined.db"))
	defer dst.Close()
	try := func(name string, data []byte, want error, wantText string) {
		t.Helper()
		_, err := dst.LoadSnapshot(bytes.NewReader(data))
		if err == nil || (want != nil && !errors.Is(err, want)) || !strings.Contains(err.Error(), wantText) {
			t.Errorf("%s: LoadSnapshot = %v; want %v (%q)", name, err, want, wantText)
		}
		if ok, err := dst.Empty(); err != nil || !ok {
			t.Fatalf("%s: store not empty after a refused load: %v", name, err)
		}
		if got := entries(t, dst); len(got) != 0 {
			t.Fatalf("%s: store holds %d entries after a refused load", name, len(got))
		}
	}
	for cut := 0; cut < len(good); cut += 1 + len(good)/60 {
		try("truncated", good[:cut], ErrSnapshotCorrupt, "")
	}
	try("no end checksum", good[:len(good)-1], ErrSnapshotCorrupt, "unexpected EOF")
	flipped := bytes.Clone(good)
	flipped[len(flipped)-40] ^= 0x20 // inside the last entry's value, before the end frame
	try("one byte altered", flipped, ErrSnapshotCorrupt, "checksum mismatch")
	try("bytes after the end", append(bytes.Clone(good), 0), ErrSnapshotCorrupt, "after the end")
	try("not a snapshot", []byte("hello, world, this is not a snapshot"), ErrSnapshotCorrupt, "not a postwarden snapshot")
	newer := bytes.Clone(good)
	newer[len(snapMagic)] = 3
	try("newer version", newer, nil, "snapshot version 3")

	// Written under another data key.
	foreign := openTest(t, filepath.Join(t.TempDir(), "other.db"))
	defer foreign.Close()
	if _, err := foreign.LoadSnapshot(bytes.NewReader(good)); err == nil || !strings.Contains(err.Error(), "another data key") {
		t.Errorf("LoadSnapshot under another key = %v", err)
	}
	if ok, _ := foreign.Empty(); !ok {
		t.Error("the foreign store is not empty after a refused load")
	}

	// And the good one still loads.
	if seq, err := dst.LoadSnapshot(bytes.NewReader(good)); err != nil || seq != 6 {
		t.Fatalf("LoadSnapshot after refusals = %d, %v", seq, err)
	}
}

// withVersion returns snap with version v, its end checksum made again.
func withVersion(snap []byte, v byte) []byte {
	out := bytes.Clone(snap)
	out[len(snapMagic)] = v
	sum := sha256.Sum256(out[:len(out)-sha256.Size])
	copy(out[len(out)-sha256.Size:], sum[:])
	return out
}

// TestSnapshotConsentSection: a snapshot carries the consent section it
// was given, records as written; one without it (version 1, or version 2
// written without a consent store) still loads and says it has none; a
// version 1 snapshot with a consent section is refused.
func TestSnapshotConsentSection(t *testing.T) {
	src, path := snapshotSource(t)
	recs := []record{{[]byte("a"), []byte{0, 0, 0, 0, 0, 0, 0, 4}}, {[]byte("e\x01key"), []byte("sealed value")}, {[]byte("m"), nil}}
	var with, without bytes.Buffer
	if _, err := src.WriteSnapshot(&with, func(put func(k, v []byte) error) error {
		for _, r := range recs {
			if err := put(r.k, r.v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.WriteSnapshot(&without, nil); err != nil {
		t.Fatal(err)
	}
	dst := openTest(t, filepath.Join(filepath.Dir(path), "joined.db"))
	defer dst.Close()
	sn, err := dst.ReadSnapshot(bytes.NewReader(with.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var got []record
	for k, v := range sn.Consent() {
		got = append(got, record{k, v})
	}
	if !sn.HasConsent() || sn.Version != 2 || sn.Seq != 6 || len(got) != len(recs) {
		t.Fatalf("read: consent %v, version %d, seq %d, %d records; want true, 2, 6, %d", sn.HasConsent(), sn.Version, sn.Seq, len(got), len(recs))
	}
	for i := range recs {
		if !bytes.Equal(got[i].k, recs[i].k) || !bytes.Equal(got[i].v, recs[i].v) {
			t.Errorf("consent record %d = %q %q; want %q %q", i, got[i].k, got[i].v, recs[i].k, recs[i].v)
		}
	}
	if _, err := dst.ReadSnapshot(bytes.NewReader(withVersion(with.Bytes(), 1))); err == nil || !strings.Contains(err.Error(), `section "consent" (version 1)`) {
		t.Errorf("version 1 with a consent section = %v; want refused", err)
	}
	for name, data := range map[string][]byte{"version 1": withVersion(without.Bytes(), 1), "version 2 without consent": without.Bytes()} {
		sn, err := dst.ReadSnapshot(bytes.NewReader(data))
		if err != nil || sn.HasConsent() || sn.Seq != 6 {
			t.Fatalf("%s: %v, consent %v", name, err, sn != nil && sn.HasConsent())
		}
	}
	if seq, err := dst.LoadSnapshot(bytes.NewReader(withVersion(without.Bytes(), 1))); err != nil || seq != 6 {
		t.Fatalf("load version 1 = %d, %v", seq, err)
	}
	if got, want := entries(t, dst), entries(t, src); !reflect.DeepEqual(got, want) {
		t.Errorf("loaded from version 1: %+v; want %+v", got, want)
	}
}

// TestSnapshotCarriesInterruptedImport: a node joining from a snapshot
// resumes an import interrupted before it (same run, the committed batch
// skipped); a done run is not in the snapshot (its file's next import is a
// new run either way).
func TestSnapshotCarriesInterruptedImport(t *testing.T) {
	src, path := newStore(t)
	var b strings.Builder
	b.WriteString("email\n")
	for i := 0; i < 1500; i++ {
		fmt.Fprintf(&b, "snap%d@example.com\n", i)
	}
	file := filepath.Join(t.TempDir(), "list.csv")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &onceAuditor{steps: map[string]ImportStep{}}
	if _, err := src.ImportFile(file, Entry{}, &failAt{a, 2}); err == nil {
		t.Fatal("interrupted import: no error")
	}
	run := a.steps[a.calls[0]].Run
	var buf bytes.Buffer
	if _, err := src.WriteSnapshot(&buf, nil); err != nil {
		t.Fatal(err)
	}
	dst := openTest(t, filepath.Join(filepath.Dir(path), "joined.db"))
	defer dst.Close()
	if _, err := dst.LoadSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	a.calls, a.failAfter = nil, ""
	res, err := dst.ImportFile(file, Entry{}, a)
	if err != nil || res.Run != run || res.Resumed != 1 || res.Batches != 2 || res.Added != 1500 {
		t.Fatalf("import on the joined store = %+v, %v; want run %s resumed after 1 of 2 batches", res, err, run)
	}
	if strings.Join(a.calls, " ") != run+"/2 "+run+"/done" {
		t.Errorf("joined store audited %v; want batch 2 and the summary", a.calls)
	}
	buf.Reset()
	if _, err := dst.WriteSnapshot(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte(secImports)) {
		t.Error("a done run is in the snapshot")
	}
}
