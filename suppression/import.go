package suppression

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
)

// importBatch is how many entries Import writes per transaction (one fsync each).
const importBatch = 1000

// ImportResult counts what Import did.
type ImportResult struct {
	Rows   int     // data rows read (header excluded)
	Added  int     // entries written (new or updated), by this run and an interrupted one it resumed
	Errors []error // one per skipped row, each naming name:line
	// Run names the import run (ImportFile only); a resumed run keeps the
	// id of the interrupted one.
	Run     string
	Batches int  // batches committed, by this run and the one it resumed
	Resumed int  // of which the interrupted run had committed
	Skipped bool // ImportFile: the whole file had been imported already by that run
}

// ImportAuditor records the steps of an import before the store commits
// them (write-ahead): AuditImport must be durable when it returns nil, and
// idempotent on step.Key, because a resumed import asks again for the step
// a crash interrupted. If it fails, nothing of that step is written.
type ImportAuditor interface {
	AuditImport(step ImportStep) error
}

// ImportStep is one audited step of an import: a batch of entries about to
// be committed, or (Final) the summary once every batch is.
type ImportStep struct {
	Key        string // Run + "/" + batch number, or Run + "/done"; the same on a resumed run
	Run        string // the import run
	File       string // base name of the file
	FileSHA256 string // hex SHA-256 of the file's bytes
	Batch      int    // 1, 2, 3…; 0 on the summary
	FirstLine  int    // file line of the batch's first entry
	LastLine   int    // file line of its last
	Entries    int    // entries in the batch
	Final      bool
	Result     ImportResult // on the summary: the whole import's counts
}

// importRun is the record of an import in bucket imports, keyed by the
// digest of the file and the defaults it was imported with. It is updated
// in the transaction that commits each batch, so a re-run after a crash
// knows which batches are in and resumes with the same run id.
type importRun struct {
	Run     string    `json:"run"`
	File    string    `json:"file"` // base name
	Started time.Time `json:"started"`
	Batches int       `json:"batches"` // committed
	Added   int       `json:"added"`
	Done    bool      `json:"done"`
	Ended   time.Time `json:"ended,omitzero"`
}

var bucketImports = []byte("imports")

// ImportFile imports the CSV at path as Import does, auditing through a
// before it commits anything, and survives being killed: the file's digest
// and the defaults name the import, each batch's commit records its
// progress, and a re-run of the same file with the same defaults after an
// interruption resumes the interrupted run (same run id, same entry time):
// it skips the committed batches, asks a to audit the rest (a asks again
// for a batch audited but not committed, and must not audit it twice) and
// ends with the summary step. A re-run after a completed import is a new
// run. Only one import of the same file and defaults runs at a time in a
// process; ImportFileVia with an ImportLocker, one in the cluster.
func (s *Store) ImportFile(path string, def Entry, a ImportAuditor) (ImportResult, error) {
	return s.ImportFileVia(path, def, a, nil)
}

// ImportPublisher writes an import's batches, and the run's record, through
// a replicated log instead of straight into this store (a cluster node:
// suppression/replica), so that every node holds the run's progress and an
// import interrupted on one node resumes on any other.
type ImportPublisher interface {
	// CatchUp returns once this store has applied the log as it stands
	// (up to a bound; an error past it), so that the run's record read
	// next is the one the cluster holds.
	CatchUp() error
	// PublishImport makes a batch part of the log and returns once this
	// store has applied it, with how many entries it added. key names the
	// batch, the same on a resumed run, so a batch published again after
	// a crash is a duplicate of the log, or, applied again, writes the
	// same entries.
	PublishImport(key string, entries []Entry) (added int, err error)
	// PublishImportRun makes m (an OpImport: the run's record) part of the
	// log after everything published before it returned, and returns once
	// this store has applied it; key names the step it records ("<run>/3",
	// "<run>/start", "<run>/done"), the same on a resumed run, so that a
	// record published again is a duplicate of the log. The store's
	// refusal of m is the error.
	PublishImportRun(key string, m Mutation) error
}

// ImportLocker is an ImportPublisher that also holds an import run's lock
// for the whole cluster (suppression/replica): ImportFileVia takes it
// before it reads the run's record and gives it up when it returns, so that
// the same file with the same defaults imported on two nodes at once runs
// on one of them; the per-process guard cannot see another node.
type ImportLocker interface {
	// LockImport takes the lock of the import named key (ImportProgress.Key:
	// a hash, no personal data). Another holder: *ImportRunningError. An
	// error also when the lock cannot be asked for (NATS out of reach): a
	// cluster import needs the log anyway.
	LockImport(key string) (ImportLock, error)
}

// ImportLock is a lock LockImport took.
type ImportLock interface {
	// Held is nil while the lock is still this holder's, else why not
	// (it lapsed unrenewed, another node took it): the import stops before
	// its next step, interrupted, to be resumed by whoever holds it.
	Held() error
	// Release gives the lock up; a second call does nothing.
	Release()
}

// ImportRunningError is LockImport's refusal: another node holds the lock.
type ImportRunningError struct {
	Node   string        // the holder
	Within time.Duration // the lock lapses within this unless the holder renews it
}

func (e *ImportRunningError) Error() string {
	return fmt.Sprintf("an import of this file with these defaults is running on node %s (its lock lapses within %s unless renewed)", e.Node, e.Within)
}

// ImportProgress is an import run's record as a Mutation (OpImport) carries
// it through the log: no address, no row of the file; the file's base name
// travels sealed with the rest of the change.
type ImportProgress struct {
	Key string    `json:"key"` // hex of the import's identity: the file's digest and the defaults
	Run importRun `json:"run"`
}

// ImportFileVia is ImportFile whose batches, if p is not nil, go through p,
// and so does the run's record: its start, each batch's progress (published
// once the batch is in the log, so that a node holding the record holds the
// batch's entries) and its end. Every node applies the record from the log
// (Apply, bucket imports), so the same file with the same defaults re-run on
// any node of the cluster after an interruption resumes the run there (same
// run id, same entry time): it publishes the batch in flight again (a
// duplicate, see ImportPublisher) and skips the ones recorded. If p is an
// ImportLocker, the run holds its lock from before it reads the record
// until it returns, and stops before a step once the lock is no longer held.
func (s *Store) ImportFileVia(path string, def Entry, a ImportAuditor, p ImportPublisher) (ImportResult, error) {
	if a == nil {
		return ImportResult{}, fmt.Errorf("import %s: no auditor", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return ImportResult{}, fmt.Errorf("import %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ImportResult{}, fmt.Errorf("import %s: read: %w", path, err)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return ImportResult{}, fmt.Errorf("import %s: %w", path, err)
	}
	if def.Source == "" {
		def.Source = "import:" + filepath.Base(path)
	}
	// The defaults are part of the import's identity: the same file with
	// another --list is another import.
	k := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%s\x00%s", digest, def.List, def.Reason, def.Source, def.Note))
	key := k[:]

	s.importing.Lock()
	if s.importing.m == nil {
		s.importing.m = map[string]bool{}
	}
	if s.importing.m[string(key)] {
		s.importing.Unlock()
		return ImportResult{}, fmt.Errorf("import %s: an import of this file with these defaults is already running", path)
	}
	s.importing.m[string(key)] = true
	s.importing.Unlock()
	defer func() {
		s.importing.Lock()
		delete(s.importing.m, string(key))
		s.importing.Unlock()
	}()

	var lock ImportLock
	if l, ok := p.(ImportLocker); ok { // one run in the cluster: locked before the record is read
		if lock, err = l.LockImport(hex.EncodeToString(key)); err != nil {
			return ImportResult{}, fmt.Errorf("import %s: %w", path, err)
		}
		defer lock.Release()
	}
	if p != nil { // the run's record is the cluster's: read it caught up with the log
		if err := p.CatchUp(); err != nil {
			return ImportResult{}, fmt.Errorf("import %s: %w", path, err)
		}
	}
	var (
		run     importRun
		started bool // a new run, not a resumed one
	)
	err = s.update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketImports)
		if err != nil {
			return err
		}
		if v := b.Get(key); v != nil {
			if err := json.Unmarshal(v, &run); err != nil {
				return fmt.Errorf("import record: %w", err)
			}
		}
		if run.Run != "" && !run.Done {
			return nil // resume it
		}
		id := make([]byte, 8)
		if _, err := rand.Read(id); err != nil {
			return err
		}
		run, started = importRun{Run: hex.EncodeToString(id), File: filepath.Base(path), Started: time.Now().UTC()}, true
		if !def.Time.IsZero() {
			run.Started = def.Time.UTC()
		}
		return putImportRun(tx, key, run)
	})
	if err != nil {
		return ImportResult{}, fmt.Errorf("import %s: start: %w", path, err)
	}
	imp := &importer{s: s, key: key, run: run, digest: digest, auditor: a, pub: p, lock: lock}
	if started && p != nil { // every node learns the run, and its entry time, before its first batch
		if err := imp.publish(run.Run+"/start", run); err != nil {
			return ImportResult{}, fmt.Errorf("import %s: start: %w", path, err)
		}
	}
	if run.Batches > 0 {
		s.log.Info().Str("file", run.File).Str("run", run.Run).Int("batches_done", run.Batches).Msg("resuming interrupted import")
	}
	def.Time = run.Started // a resumed run writes what the interrupted one would have
	return s.importCSV(f, path, def, imp)
}

// importer carries ImportFile's state through importCSV.
type importer struct {
	s       *Store
	key     []byte
	run     importRun
	digest  string
	auditor ImportAuditor
	pub     ImportPublisher // nil: batches written here
	lock    ImportLock      // nil: no cluster lock (a single node, or a publisher without one)
	resumed int
}

// held is nil while the run may take its next step: its lock, if it has
// one, is still held.
func (im *importer) held() error {
	if im.lock == nil {
		return nil
	}
	if err := im.lock.Held(); err != nil {
		return fmt.Errorf("stopped, interrupted (a re-run resumes it): %w", err)
	}
	return nil
}

// step makes the audit step of batch n.
func (im *importer) step(n int) ImportStep {
	return ImportStep{Key: fmt.Sprintf("%s/%d", im.run.Run, n), Run: im.run.Run, File: im.run.File, FileSHA256: im.digest, Batch: n}
}

// next is the run's record once batch n, which added added entries, is in.
func (im *importer) next(n, added int) importRun {
	r := im.run
	r.Batches, r.Added = n, r.Added+added
	return r
}

// commit records the run's progress in tx, the transaction that writes
// batch n's entries (a single node).
func (im *importer) commit(tx *bbolt.Tx, n, added int) error {
	r := im.next(n, added)
	if err := putImportRun(tx, im.key, r); err != nil {
		return err
	}
	im.run = r
	return nil
}

// publish makes r the run's record on every node, through the log (a
// cluster node), once what it counts is in the log.
func (im *importer) publish(step string, r importRun) error {
	p := ImportProgress{Key: hex.EncodeToString(im.key), Run: r}
	if err := im.pub.PublishImportRun(step, Mutation{Op: OpImport, Import: &p}); err != nil {
		return fmt.Errorf("record run progress %s: %w", step, err)
	}
	im.run = r
	return nil
}

// finish audits the summary and marks the run done.
func (im *importer) finish(res *ImportResult) error {
	res.Run, res.Added, res.Batches, res.Resumed = im.run.Run, im.run.Added, im.run.Batches, im.resumed
	res.Skipped = im.resumed > 0 && im.resumed == im.run.Batches
	st := ImportStep{Key: im.run.Run + "/done", Run: im.run.Run, File: im.run.File, FileSHA256: im.digest, Final: true, Result: *res}
	if err := im.auditor.AuditImport(st); err != nil {
		return err
	}
	r := im.run
	r.Done, r.Ended = true, time.Now().UTC()
	if im.pub != nil {
		return im.publish(r.Run+"/done", r)
	}
	im.run = r
	return im.s.update(func(tx *bbolt.Tx) error { return putImportRun(tx, im.key, r) })
}

// putImportRun keeps r as the record of the import named key, unless the
// record kept is the same run further on: a record from the log arriving
// after this node wrote a later one (a step published again by a resumed
// run) never moves a run back, so a run counts each batch once.
func putImportRun(tx *bbolt.Tx, key []byte, r importRun) error {
	b, err := tx.CreateBucketIfNotExists(bucketImports)
	if err != nil {
		return err
	}
	if v := b.Get(key); v != nil {
		var old importRun
		if err := json.Unmarshal(v, &old); err == nil && old.Run == r.Run &&
			(old.Done && !r.Done || old.Batches > r.Batches) {
			return nil
		}
	}
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Put(key, v)
}

// applyImport applies an OpImport from the log: the run's record, in the
// transaction that records the change's sequence.
func applyImport(tx *bbolt.Tx, p *ImportProgress) error {
	key, _ := hex.DecodeString(p.Key) // checked by NormalizeMutation
	return putImportRun(tx, key, p.Run)
}

// checkImport checks an OpImport's record.
func checkImport(p *ImportProgress) error {
	if p == nil {
		return errors.New("no run record")
	}
	if k, err := hex.DecodeString(p.Key); err != nil || len(k) != sha256.Size {
		return fmt.Errorf("key %q: want %d hex bytes", p.Key, sha256.Size)
	}
	if id, err := hex.DecodeString(p.Run.Run); err != nil || len(id) == 0 || len(id) > 32 {
		return fmt.Errorf("run %q: want a hex id", p.Run.Run)
	}
	if p.Run.Batches < 0 || p.Run.Added < 0 || p.Run.Started.IsZero() {
		return fmt.Errorf("run %s: negative counts or no start time", p.Run.Run)
	}
	return checkText("file name", p.Run.File, 255)
}

// Import reads a CSV with a header row and adds one entry per row. The
// target column is "email" (or "address" / "target"; "@domain" allowed);
// optional columns are "list", "reason", "source" and "note"; empty values
// come from def, and Source defaults to "import:"+basename(name). Targets
// and notes are sealed as Add seals them; a row never changes an erased
// address. Invalid rows are skipped and reported in ImportResult.Errors; the
// returned error is for problems that stop the whole import (no header,
// unreadable input, store). Import has no audit hook and does not resume:
// ImportFile is the import an operator runs.
func (s *Store) Import(r io.Reader, name string, def Entry) (ImportResult, error) {
	return s.importCSV(r, name, def, nil)
}

// importCSV is Import, and with im ImportFile's audited, resumable batches.
func (s *Store) importCSV(r io.Reader, name string, def Entry, im *importer) (ImportResult, error) {
	var res ImportResult
	def = importDefaults(def, name, time.Now())
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1 // we report width mismatches ourselves, per row
	hd, err := readImportHeader(cr, name)
	if err != nil {
		return res, err
	}
	b := &importBatches{s: s, name: name, im: im, res: &res, batch: make([]Entry, 0, importBatch)}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			res.Rows++
			res.Errors = append(res.Errors, fmt.Errorf("%s:%d: %w", name, pe.StartLine, pe.Err))
			continue
		}
		if err != nil {
			return res, fmt.Errorf("import %s: read: %w", name, err)
		}
		res.Rows++
		line, _ := cr.FieldPos(0)
		e, err := importRow(hd, rec, def, name, line)
		if err != nil {
			res.Errors = append(res.Errors, err)
			continue
		}
		if err := b.add(e, line); err != nil {
			return res, err
		}
	}
	if err := b.flush(); err != nil {
		return res, err
	}
	if im != nil {
		if err := im.held(); err != nil {
			return res, fmt.Errorf("import %s: summary: %w", name, err)
		}
		if err := im.finish(&res); err != nil {
			return res, fmt.Errorf("import %s: audit summary: %w", name, err)
		}
	}
	s.log.Info().Str("file", filepath.Base(name)).Int("rows", res.Rows).Int("added", res.Added).
		Int("errors", len(res.Errors)).Msg("suppressions imported")
	return res, nil
}

// importDefaults fills def's Source ("import:"+basename(name)) and Time (now)
// when they are empty.
func importDefaults(def Entry, name string, now time.Time) Entry {
	if def.Source == "" {
		def.Source = "import:" + filepath.Base(name)
	}
	if def.Time.IsZero() {
		def.Time = now
	}
	return def
}

// readImportHeader reads and checks the header row of an import.
func readImportHeader(cr *csv.Reader, name string) (*address.Header, error) {
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("import %s: empty file, want a header row", name)
	}
	if err != nil {
		return nil, fmt.Errorf("import %s: header: %w", name, err)
	}
	hd, err := address.ReadHeader(name, header)
	if err != nil {
		return nil, fmt.Errorf("import %w", err)
	}
	return hd, nil
}

// importRow is the entry of one CSV row, its empty values taken from def, or
// the row's problem as "name:line: …".
func importRow(hd *address.Header, rec []string, def Entry, name string, line int) (Entry, error) {
	if len(rec) != len(hd.Names) {
		return Entry{}, fmt.Errorf("%s:%d: row has %d fields, header has %d", name, line, len(rec), len(hd.Names))
	}
	raw := strings.Trim(rec[hd.Address], " \t")
	if raw == "" {
		return Entry{}, fmt.Errorf("%s:%d: %s is empty", name, line, hd.Names[hd.Address])
	}
	or := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	e, err := normalize(Entry{
		Target: raw,
		List:   or(hd.Field(rec, "list"), def.List),
		Reason: Reason(or(hd.Field(rec, "reason"), string(def.Reason))),
		Source: or(hd.Field(rec, "source"), def.Source),
		Note:   or(hd.Field(rec, "note"), def.Note),
		Time:   def.Time,
	})
	if err != nil {
		return Entry{}, fmt.Errorf("%s:%d: %w", name, line, err)
	}
	return e, nil
}

// importBatches gathers an import's entries into batches of importBatch, each
// written in one transaction and, for ImportFile, audited before it is written.
type importBatches struct {
	s                   *Store
	name                string
	im                  *importer // nil: Import, no audit, no resume
	res                 *ImportResult
	batch               []Entry
	batchNo             int
	firstLine, lastLine int
}

// add batches e, read at line, and flushes a full batch.
func (b *importBatches) add(e Entry, line int) error {
	if len(b.batch) == 0 {
		b.firstLine = line
	}
	b.lastLine = line
	if b.batch = append(b.batch, e); len(b.batch) == importBatch {
		return b.flush()
	}
	return nil
}

// flush audits and writes the batch, or skips it when the interrupted run
// this one resumes committed it already.
func (b *importBatches) flush() error {
	if len(b.batch) == 0 {
		return nil
	}
	b.batchNo++
	defer func() { b.batch = b.batch[:0] }()
	im := b.im
	if im != nil && b.batchNo <= im.run.Batches {
		im.resumed++ // committed by the interrupted run
		return nil
	}
	if im != nil { // write-ahead: the audit entry is on disk before the entries
		if err := im.held(); err != nil {
			return fmt.Errorf("import %s: batch %d: %w", b.name, b.batchNo, err)
		}
		st := im.step(b.batchNo)
		st.FirstLine, st.LastLine, st.Entries = b.firstLine, b.lastLine, len(b.batch)
		if err := im.auditor.AuditImport(st); err != nil {
			return fmt.Errorf("import %s: audit batch %d (lines %d-%d): %w", b.name, b.batchNo, b.firstLine, b.lastLine, err)
		}
	}
	n, err := b.write()
	if err != nil {
		return fmt.Errorf("import %s: write: %w", b.name, err)
	}
	b.res.Added += n
	return nil
}

// write puts the batch's entries, and ImportFile's progress, in one
// transaction and returns how many entries it wrote.
func (b *importBatches) write() (int, error) {
	if b.im != nil && b.im.pub != nil {
		key := b.im.step(b.batchNo).Key
		n, err := b.im.pub.PublishImport(key, b.batch)
		if err != nil {
			return 0, err
		}
		// After the batch's acks: a node that holds this record holds the
		// batch (the log applies in order, each change with its sequence).
		return n, b.im.publish(key, b.im.next(b.batchNo, n))
	}
	n := 0
	err := b.s.update(func(tx *bbolt.Tx) error {
		bk := tx.Bucket(bucketEntries)
		n = 0
		for _, e := range b.batch {
			wrote, err := b.s.put(bk, e)
			if err != nil {
				return err
			}
			if wrote {
				n++
			}
		}
		if b.im != nil {
			return b.im.commit(tx, b.batchNo, n)
		}
		return nil
	})
	return n, err
}
