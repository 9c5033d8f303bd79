package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

var t0 = time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)

func openLog(t testing.TB, path string) *Log {
	t.Helper()
	l, err := Open(path, time.Second, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// fill appends n entries, entry i (1-based) at t0 + i hours.
func fill(t testing.TB, l *Log, n int) []Entry {
	t.Helper()
	var out []Entry
	for i := 1; i <= n; i++ {
		e, err := l.Append(Entry{
			Time:    t0.Add(time.Duration(i) * time.Hour),
			Who:     "uid:1000",
			Action:  "suppress.add",
			Target:  fmt.Sprintf("u%d***@example.com", i),
			Reason:  fmt.Sprintf("ticket %d", i),
			Details: map[string]string{"list": "news"},
		})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func listAll(t testing.TB, l *Log, since time.Time) []Entry {
	t.Helper()
	var out []Entry
	if err := l.List(since, func(e Entry) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func mustVerify(t testing.TB, l *Log) VerifyResult {
	t.Helper()
	r, err := l.Verify()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// onDisk opens the closed log's file with bbolt itself, as a tamperer would.
func onDisk(t *testing.T, path string, fn func(entries, meta *bbolt.Bucket)) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		fn(tx.Bucket([]byte("entries")), tx.Bucket([]byte("meta")))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func key(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// edit decodes the stored record seq, lets fn change it and stores it again.
func edit(t *testing.T, b *bbolt.Bucket, seq uint64, fn func(*Entry)) {
	t.Helper()
	var e Entry
	if err := json.Unmarshal(b.Get(key(seq)), &e); err != nil {
		t.Fatal(err)
	}
	fn(&e)
	v, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(key(seq), v); err != nil {
		t.Fatal(err)
	}
}

func TestAppendList(t *testing.T) {
	l := openLog(t, filepath.Join(t.TempDir(), "audit.db"))
	defer l.Close()

	before := time.Now()
	e1, err := l.Append(Entry{Who: "local:alice", Action: "subject.erase", Target: "3f1c…", Reason: "request #12",
		Details: map[string]string{"request": "12"}})
	if err != nil {
		t.Fatal(err)
	}
	if e1.Seq != 1 || e1.Prev != "" || e1.Hash != Hash(e1) || e1.Time.Before(before.Add(-time.Second)) || e1.Time.Location() != time.UTC {
		t.Fatalf("first entry: %+v", e1)
	}
	// A clear address slipped into Target, Reason or Details is masked.
	e2, err := l.Append(Entry{Time: t0, Who: "http:203.0.113.9", Action: "suppress.add",
		Target: "Ana@Example.com", Reason: "asked by ana@example.com on the phone",
		Details: map[string]string{"from": "<bob@example.org>"}, Seq: 99, Prev: "x", Hash: "y"})
	if err != nil {
		t.Fatal(err)
	}
	if e2.Seq != 2 || e2.Prev != e1.Hash || e2.Hash != Hash(e2) || !e2.Time.Equal(t0) {
		t.Fatalf("second entry: %+v", e2)
	}
	if e2.Target != "A***@example.com" || e2.Reason != "asked by a***@example.com on the phone" || e2.Details["from"] != "<b***@example.org>" {
		t.Fatalf("not masked: %q %q %q", e2.Target, e2.Reason, e2.Details["from"])
	}
	if _, err := l.Append(Entry{Who: "uid:0"}); err == nil {
		t.Fatal("entry without action accepted")
	}
	if _, err := l.Append(Entry{Action: "reveal"}); err == nil {
		t.Fatal("entry without who accepted")
	}

	got := listAll(t, l, time.Time{})
	if len(got) != 2 || got[0].Hash != e1.Hash || got[1].Hash != e2.Hash || got[0].Details["request"] != "12" {
		t.Fatalf("list: %+v", got)
	}
	if got := listAll(t, l, before.Add(-time.Second)); len(got) != 1 || got[0].Seq != 1 {
		t.Fatalf("list since: %+v", got)
	}
	if seq, hash := l.Head(); seq != 2 || hash != e2.Hash {
		t.Fatalf("head %d %s", seq, hash)
	}
	if e, ok, err := l.Get(2); err != nil || !ok || e.Hash != e2.Hash {
		t.Fatalf("get 2: %v %v %+v", err, ok, e)
	}
	if _, ok, err := l.Get(3); err != nil || ok {
		t.Fatalf("get 3: %v %v", err, ok)
	}
	stop := errors.New("stop")
	if err := l.List(time.Time{}, func(Entry) error { return stop }); err != stop {
		t.Fatalf("List error from fn: %v", err)
	}
}

func TestListManyChunks(t *testing.T) {
	l := openLog(t, filepath.Join(t.TempDir(), "audit.db"))
	defer l.Close()
	fill(t, l, 2*listChunk+3)
	got := listAll(t, l, time.Time{})
	for i, e := range got {
		if e.Seq != uint64(i+1) {
			t.Fatalf("list[%d] seq %d", i, e.Seq)
		}
	}
	if len(got) != 2*listChunk+3 {
		t.Fatalf("list returned %d", len(got))
	}
	if got := listAll(t, l, t0.Add(time.Duration(2*listChunk)*time.Hour)); len(got) != 4 || got[0].Seq != 2*listChunk {
		t.Fatalf("list since: %d entries", len(got))
	}
}

func TestConcurrentAppend(t *testing.T) {
	l := openLog(t, filepath.Join(t.TempDir(), "audit.db"))
	defer l.Close()
	const workers, each = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				_, err := l.Append(Entry{Who: fmt.Sprintf("uid:%d", 1000+w), Action: "reveal", Reason: fmt.Sprint(i)})
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r := mustVerify(t, l)
	if !r.OK || r.Entries != workers*each || r.HeadSeq != workers*each {
		t.Fatalf("verify: %+v", r)
	}
	prev := ""
	for i, e := range listAll(t, l, time.Time{}) {
		if e.Seq != uint64(i+1) || e.Prev != prev {
			t.Fatalf("entry %d: seq %d prev %s", i+1, e.Seq, e.Prev)
		}
		prev = e.Hash
	}
}

func TestVerifyUntouchedAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	l := openLog(t, path)
	if r := mustVerify(t, l); !r.OK || r.Entries != 0 || r.String() != "audit log verified: empty" {
		t.Fatalf("empty log: %+v", r)
	}
	fill(t, l, 5)
	seq, hash := l.Head()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openLog(t, path)
	defer l.Close()
	if s, h := l.Head(); s != seq || h != hash {
		t.Fatalf("head after reopen %d %s, want %d %s", s, h, seq, hash)
	}
	e, err := l.Append(Entry{Who: "uid:1000", Action: "dkim.keygen", Target: "mail.example.com/s1"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Seq != 6 || e.Prev != hash {
		t.Fatalf("append after reopen: %+v", e)
	}
	r := mustVerify(t, l)
	if !r.OK || r.Entries != 6 || r.FirstBad != 0 || r.Problem != "" || r.HeadSeq != 6 || r.HeadHash != e.Hash {
		t.Fatalf("verify: %+v", r)
	}
	if want := "audit log verified: 6 entries, head entry 6 hash " + e.Hash; r.String() != want {
		t.Fatalf("summary %q", r.String())
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	l := openLog(t, path)
	defer l.Close()
	if _, err := Open(path, 50*time.Millisecond, zerolog.Nop()); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
}

// TestTamperOnDisk changes the closed file with bbolt directly and checks
// that Verify names exactly the entry that was touched.
func TestTamperOnDisk(t *testing.T) {
	tests := []struct {
		name     string
		tamper   func(t *testing.T, entries, meta *bbolt.Bucket)
		firstBad uint64
		problem  string
		noAppend bool // Append refuses rather than overwrite the evidence
	}{
		{"reason changed", func(t *testing.T, b, _ *bbolt.Bucket) {
			edit(t, b, 3, func(e *Entry) { e.Reason = "nothing to see" })
		}, 3, "entry 3: hash mismatch: content changed", false},
		{"details changed", func(t *testing.T, b, _ *bbolt.Bucket) {
			edit(t, b, 4, func(e *Entry) { e.Details["list"] = "other" })
		}, 4, "entry 4: hash mismatch: content changed", false},
		{"changed and rehashed", func(t *testing.T, b, _ *bbolt.Bucket) {
			edit(t, b, 3, func(e *Entry) { e.Who = "uid:0"; e.Hash = Hash(*e) })
		}, 4, "entry 4: prev does not match entry 3's hash", false},
		{"middle entry deleted", func(t *testing.T, b, _ *bbolt.Bucket) {
			must(t, b.Delete(key(3)))
		}, 3, "entry 3 missing: chain jumps from 2 to 4", false},
		{"two entries deleted", func(t *testing.T, b, _ *bbolt.Bucket) {
			must(t, b.Delete(key(2)))
			must(t, b.Delete(key(3)))
		}, 2, "entries 2 to 3 missing: chain jumps from 1 to 4", false},
		{"first entry deleted", func(t *testing.T, b, _ *bbolt.Bucket) {
			must(t, b.Delete(key(1)))
		}, 1, "entry 1 missing: chain jumps from 0 to 2", false},
		{"last entry deleted", func(t *testing.T, b, _ *bbolt.Bucket) {
			must(t, b.Delete(key(5)))
		}, 5, "entry 5 missing at the end: the log has issued up to 5", false},
		{"entries swapped", func(t *testing.T, b, _ *bbolt.Bucket) {
			v2, v3 := append([]byte(nil), b.Get(key(2))...), append([]byte(nil), b.Get(key(3))...)
			must(t, b.Put(key(2), v3))
			must(t, b.Put(key(3), v2))
		}, 2, "entry 2: holds the record of entry 3: moved or reordered", false},
		{"entry added behind the log's back", func(t *testing.T, b, _ *bbolt.Bucket) {
			var last Entry
			must(t, json.Unmarshal(b.Get(key(5)), &last))
			e := Entry{Seq: 6, Time: t0, Who: "uid:0", Action: "reveal", Details: map[string]string{}, Prev: last.Hash}
			e.Hash = Hash(e)
			v, _ := json.Marshal(e)
			must(t, b.Put(key(6), v))
		}, 6, "entry 6: beyond the log's sequence counter 5: added outside the log", true},
		{"record garbled", func(t *testing.T, b, _ *bbolt.Bucket) {
			must(t, b.Put(key(2), []byte("{not json")))
		}, 2, "entry 2: record damaged: ", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.db")
			l := openLog(t, path)
			fill(t, l, 5)
			if r := mustVerify(t, l); !r.OK {
				t.Fatalf("before tampering: %+v", r)
			}
			must(t, l.Close())

			onDisk(t, path, func(entries, meta *bbolt.Bucket) { tt.tamper(t, entries, meta) })

			l = openLog(t, path)
			defer l.Close()
			r := mustVerify(t, l)
			if r.OK || r.FirstBad != tt.firstBad || !strings.HasPrefix(r.Problem, tt.problem) {
				t.Fatalf("verify: %+v\nwant first bad %d, problem %q", r, tt.firstBad, tt.problem)
			}
			if !strings.Contains(r.String(), "BROKEN") {
				t.Fatalf("summary %q", r.String())
			}
			// Appends still work on a damaged log, and the damage stays reported.
			if _, err := l.Append(Entry{Who: "uid:1000", Action: "reveal"}); (err != nil) != tt.noAppend {
				t.Fatalf("append after tampering: %v", err)
			}
			if r2 := mustVerify(t, l); r2.OK || r2.FirstBad != r.FirstBad {
				t.Fatalf("after append: %+v, before: %+v", r2, r)
			}
			// Pruning must not wipe out the evidence.
			if n, err := l.Prune(t0.Add(100 * time.Hour)); err == nil || n != 0 {
				t.Fatalf("prune of a broken log: %d, %v", n, err)
			}
		})
	}
}

func TestPrune(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	l := openLog(t, path)
	pruneTime := t0.Add(1000 * time.Hour)
	l.now = func() time.Time { return pruneTime }
	all := fill(t, l, 10)

	if n, err := l.Prune(t0); err != nil || n != 0 {
		t.Fatalf("prune nothing: %d, %v", n, err)
	}
	if seq, _ := l.Head(); seq != 10 {
		t.Fatalf("a prune of nothing appended an entry: head %d", seq)
	}

	// Entries 1–4 are before t0+5h.
	n, err := l.Prune(t0.Add(5 * time.Hour))
	if err != nil || n != 4 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	got := listAll(t, l, time.Time{})
	if len(got) != 7 || got[0].Seq != 5 || got[6].Seq != 11 {
		t.Fatalf("after prune: %d entries, first %d", len(got), got[0].Seq)
	}
	p := got[6]
	if p.Action != ActionPrune || p.Who != WhoPrune || p.Details["through_seq"] != "4" ||
		p.Details["through_hash"] != all[3].Hash || p.Details["removed"] != "4" || !p.Time.Equal(pruneTime) {
		t.Fatalf("prune entry: %+v", p)
	}
	r := mustVerify(t, l)
	if !r.OK || r.Checkpoint != 4 || r.Entries != 7 || r.HeadSeq != 11 ||
		!strings.Contains(r.String(), "verified from checkpoint at entry 4: 7 entries") {
		t.Fatalf("verify after prune: %+v %s", r, r)
	}
	must(t, l.Close())

	// The checkpoint persists; appends continue the chain.
	l = openLog(t, path)
	l.now = func() time.Time { return pruneTime.Add(time.Hour) }
	if e, err := l.Append(Entry{Who: "uid:1000", Action: "queue.delete"}); err != nil || e.Seq != 12 || e.Prev != p.Hash {
		t.Fatalf("append after reopen: %+v, %v", e, err)
	}
	// A second prune moves the checkpoint past the first prune entry.
	if n, err := l.Prune(pruneTime.Add(2 * time.Hour)); err != nil || n != 8 {
		t.Fatalf("second prune: %d, %v", n, err)
	}
	if r := mustVerify(t, l); !r.OK || r.Checkpoint != 12 || r.Entries != 1 || r.HeadSeq != 13 {
		t.Fatalf("verify after second prune: %+v", r)
	}
	must(t, l.Close())

	// Tampering after a prune: the entry after the checkpoint is deleted.
	l = openLog(t, path)
	fill(t, l, 3) // 14, 15, 16
	must(t, l.Close())
	onDisk(t, path, func(b, _ *bbolt.Bucket) { must(t, b.Delete(key(13))) })
	l = openLog(t, path)
	if r := mustVerify(t, l); r.OK || r.FirstBad != 13 || r.Problem != "entry 13 missing: chain jumps from 12 to 14" {
		t.Fatalf("verify: %+v", r)
	}
	must(t, l.Close())
}

// TestForgedCheckpoint removes old entries on disk and writes a checkpoint
// that makes the rest verify: with no audit.prune entry naming it, Verify
// still objects.
func TestForgedCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	l := openLog(t, path)
	all := fill(t, l, 6)
	must(t, l.Close())
	onDisk(t, path, func(b, meta *bbolt.Bucket) {
		for seq := uint64(1); seq <= 3; seq++ {
			must(t, b.Delete(key(seq)))
		}
		v, _ := json.Marshal(checkpoint{Seq: 3, Hash: all[2].Hash, Time: all[2].Time})
		must(t, meta.Put([]byte("checkpoint"), v))
	})
	l = openLog(t, path)
	defer l.Close()
	r := mustVerify(t, l)
	if r.OK || r.FirstBad != 3 || r.Problem != "checkpoint at entry 3 is not recorded by any audit.prune entry: forged" {
		t.Fatalf("verify: %+v", r)
	}
}

// TestCanonical pins the encoding an auditor recomputes with other tools.
func TestCanonical(t *testing.T) {
	e := Entry{
		Seq:     42,
		Time:    time.Date(2026, 3, 1, 10, 30, 0, 120000000, time.FixedZone("CET", 3600)),
		Who:     "local:alice",
		Action:  "subject.erase",
		Target:  "hmac:9f86d0",
		Reason:  "Art. 17 \"request\" <#7>\n\tZoë\x01\u2028",
		Details: map[string]string{"z": "1", "a": "2", "\U0001F600": "astral", "\uFB01": "bmp"},
		Prev:    "00ff",
		Hash:    "ignored",
	}
	want := `{"action":"subject.erase","details":{"a":"2","z":"1","` + "\U0001F600" + `":"astral","` + "\uFB01" +
		`":"bmp"},"prev":"00ff","reason":"Art. 17 \"request\" <#7>\n\tZoë\u0001` + "\u2028" +
		`","seq":42,"target":"hmac:9f86d0","time":"2026-03-01T09:30:00.12Z","who":"local:alice"}`
	if got := string(Canonical(e)); got != want {
		t.Fatalf("canonical:\n got %s\nwant %s", got, want)
	}
	sum := sha256.Sum256([]byte(want))
	if Hash(e) != hex.EncodeToString(sum[:]) {
		t.Fatal("Hash is not the SHA-256 of Canonical")
	}
	// No details encodes as {}, whether nil or empty.
	e.Details = nil
	if !strings.Contains(string(Canonical(e)), `"details":{}`) {
		t.Fatalf("nil details: %s", Canonical(e))
	}
}

// TestStoredRecordRecomputes checks the auditor's recipe on a stored record:
// drop "hash", sort keys, compact JSON without HTML escaping.
func TestStoredRecordRecomputes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	l := openLog(t, path)
	e, err := l.Append(Entry{Who: "uid:1000", Action: "campaign.send", Reason: "Q1 <launch> & more",
		Details: map[string]string{"file_sha256": "abc", "count": "1200"}})
	if err != nil {
		t.Fatal(err)
	}
	must(t, l.Close())
	var raw []byte
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	must(t, db.View(func(tx *bbolt.Tx) error {
		raw = append([]byte(nil), tx.Bucket([]byte("entries")).Get(key(e.Seq))...)
		return nil
	}))
	must(t, db.Close())

	var rec map[string]any
	must(t, json.Unmarshal(raw, &rec))
	hash := rec["hash"].(string)
	delete(rec, "hash")
	var buf strings.Builder
	enc := json.NewEncoder(&buf) // map keys sorted; ASCII-only content here
	enc.SetEscapeHTML(false)
	must(t, enc.Encode(rec))
	sum := sha256.Sum256([]byte(strings.TrimSuffix(buf.String(), "\n")))
	if hex.EncodeToString(sum[:]) != hash || hash != e.Hash {
		t.Fatalf("recomputed %x, stored %s\n%s", sum, hash, buf.String())
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAppend(b *testing.B) {
	l := openLog(b, filepath.Join(b.TempDir(), "audit.db"))
	defer l.Close()
	e := Entry{Who: "uid:1000", Action: "suppress.add", Target: "a***@example.com", Reason: "manual",
		Details: map[string]string{"list": "news", "source": "cli"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Append(e); err != nil {
			b.Fatal(err)
		}
	}
}

// AppendOnce records an entry once per key, across reopenings, and the chain
// still verifies; pruning the entry frees its key.
func TestAppendOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	l := openLog(t, path)
	first, added, err := l.AppendOnce("import/r1/1", Entry{Time: t0, Who: "uid:1000", Action: "suppress.import.batch"})
	if err != nil || !added || first.Details[DetailOnce] != "import/r1/1" {
		t.Fatalf("first AppendOnce = %+v, %v, %v", first, added, err)
	}
	l.Close()
	l = openLog(t, path)
	defer l.Close()
	again, added, err := l.AppendOnce("import/r1/1", Entry{Time: t0.Add(time.Hour), Who: "uid:1001", Action: "suppress.import.batch"})
	if err != nil || added || again.Seq != first.Seq || again.Hash != first.Hash {
		t.Fatalf("second AppendOnce = %+v, %v, %v; want entry %d unchanged", again, added, err, first.Seq)
	}
	if _, added, err := l.AppendOnce("import/r1/2", Entry{Time: t0, Who: "uid:1000", Action: "suppress.import.batch"}); err != nil || !added {
		t.Fatalf("another key: %v, %v", added, err)
	}
	if r, err := l.Verify(); err != nil || !r.OK || r.Entries != 2 {
		t.Fatalf("Verify = %+v, %v", r, err)
	}
	if _, err := l.Prune(t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, added, err := l.AppendOnce("import/r1/1", Entry{Who: "uid:1000", Action: "suppress.import.batch"}); err != nil || !added {
		t.Fatalf("key of a pruned entry: %v, %v; want appended anew", added, err)
	}
	if _, _, err := l.AppendOnce("", Entry{Who: "x", Action: "y"}); err == nil {
		t.Error("AppendOnce with no key: no error")
	}
}
