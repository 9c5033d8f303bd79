// Package storefile opens the bbolt files of postwarden's stores (queue,
// suppression, subscribers, audit) so that a bad file is an error, never a
// fresh start and never a crash:
//
//   - a file that is missing is created only when the caller says so
//     (Expect.Exist false); a 0-byte file is never a store;
//   - the file is checked before bbolt maps it: a valid meta page, a size that
//     is a whole number of pages, at least 4 pages, and every page the meta
//     page names inside the file. Mapping a truncated file and reading past
//     its end is a SIGBUS, which no recover catches, so this check is the only
//     defence against it;
//   - each file carries an id (bucket "storefile", key "id"), which the data
//     directory's manifest (stores.json, see Manifest) records, so a file
//     swapped for another store's, or recreated, is told apart;
//   - panics and memory faults inside bbolt (damaged pages) become errors
//     naming the file (Guard), at Open and at each store's transaction helper.
package storefile

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"time"

	"go.etcd.io/bbolt"
	bberrors "go.etcd.io/bbolt/errors"
)

// Errors of Check and Open; the returned errors wrap one of them and name the file.
var (
	ErrMissing = errors.New("storefile: store file does not exist")
	ErrEmpty   = errors.New("storefile: store file is empty (0 bytes)")
	ErrDamaged = errors.New("storefile: store file is damaged")
	ErrWrongID = errors.New("storefile: store file is not the one this data directory holds")
	ErrLocked  = errors.New("storefile: store file is locked by another process")
)

// bbolt's on-disk meta page (go.etcd.io/bbolt internal/common/meta.go): a
// 16-byte page header, then magic, version, page size, flags, root bucket
// (root pgid, sequence), freelist pgid, high-water pgid, txid, checksum;
// the checksum is FNV-64a over the meta fields before it.
const (
	pageHeader   = 16
	metaLen      = 64
	metaSumLen   = 56
	magic        = 0xED0CDAED
	version      = 2
	metaFlag     = 0x04
	noFreelist   = ^uint64(0)
	minPages     = 4 // two meta pages, the freelist, the root leaf
	maxProbePage = 1024 << 14
)

type meta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
}

// parseMeta reads the meta page at the start of b; ok is false if b does not
// hold a valid one.
func parseMeta(b []byte) (meta, bool) {
	if len(b) < pageHeader+metaLen {
		return meta{}, false
	}
	le := binary.LittleEndian
	if le.Uint16(b[8:10])&metaFlag == 0 {
		return meta{}, false
	}
	m := b[pageHeader : pageHeader+metaLen]
	if le.Uint32(m[0:4]) != magic || le.Uint32(m[4:8]) != version {
		return meta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:metaSumLen])
	if h.Sum64() != le.Uint64(m[56:64]) {
		return meta{}, false
	}
	return meta{pageSize: le.Uint32(m[8:12]), root: le.Uint64(m[16:24]), freelist: le.Uint64(m[32:40]),
		pgid: le.Uint64(m[40:48]), txid: le.Uint64(m[48:56])}, true
}

// readMeta reads a meta page at off; ok is false if there is none valid there.
func readMeta(f *os.File, off int64) (meta, bool) {
	buf := make([]byte, pageHeader+metaLen)
	if n, err := f.ReadAt(buf, off); n < len(buf) && err != nil {
		return meta{}, false
	}
	return parseMeta(buf)
}

// Check looks at the file at path without mapping it. It returns an error
// wrapping ErrMissing if there is no file, ErrEmpty if it has 0 bytes, and
// ErrDamaged if bbolt could not map it safely: no valid meta page, a size
// that is not a whole number of pages or under 4 pages, or a meta page that
// names pages beyond the end of the file (a truncated file). It reads the
// page size as bbolt does: from meta page 0, else from meta page 1 probed at
// 1 KB…16 MB.
func Check(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", path, ErrMissing)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w: not a regular file", path, ErrDamaged)
	}
	size := fi.Size()
	if size == 0 {
		return fmt.Errorf("%s: %w", path, ErrEmpty)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	m0, ok0 := readMeta(f, 0)
	ps := int64(m0.pageSize)
	if !ok0 {
		for i := 0; int64(1024<<i) <= maxProbePage && int64(1024<<i) < size-1024; i++ {
			if m1, ok := readMeta(f, int64(1024<<i)); ok && int64(m1.pageSize) == int64(1024<<i) {
				ps = int64(m1.pageSize)
				break
			}
		}
	}
	if ps < 1024 || ps > maxProbePage {
		return fmt.Errorf("%s: %w: no valid meta page (%d bytes)", path, ErrDamaged, size)
	}
	if size%ps != 0 || size < minPages*ps {
		return fmt.Errorf("%s: %w: %d bytes is not a whole number of %d-byte pages, at least %d (truncated?)", path, ErrDamaged, size, ps, minPages)
	}
	m1, ok1 := readMeta(f, ps)
	// bbolt uses the valid meta page with the higher transaction id.
	var use meta
	switch {
	case ok0 && ok1:
		use = m0
		if m1.txid > m0.txid {
			use = m1
		}
	case ok0:
		use = m0
	case ok1:
		use = m1
	default:
		return fmt.Errorf("%s: %w: no valid meta page", path, ErrDamaged)
	}
	if int64(use.pageSize) != ps {
		return fmt.Errorf("%s: %w: meta pages disagree on the page size", path, ErrDamaged)
	}
	pages := uint64(size / ps)
	if use.pgid > pages || use.pgid < minPages {
		return fmt.Errorf("%s: %w: the file ends at page %d but its meta page names %d pages (truncated?)", path, ErrDamaged, pages, use.pgid)
	}
	if use.root < 2 || use.root >= use.pgid || (use.freelist != noFreelist && (use.freelist < 2 || use.freelist >= use.pgid)) {
		return fmt.Errorf("%s: %w: meta page points outside the file", path, ErrDamaged)
	}
	return nil
}

// Guard turns a panic, or a memory fault while it is armed, into an error
// naming path in *errp. Use it as
//
//	defer storefile.Guard(path, &err)()
//
// It arms debug.SetPanicOnFault for the calling goroutine, so a read of a
// damaged mapped page panics (and is recovered) instead of killing the process.
func Guard(path string, errp *error) func() {
	old := debug.SetPanicOnFault(true)
	return func() {
		r := recover()
		debug.SetPanicOnFault(old)
		if r != nil {
			*errp = fmt.Errorf("%s: %w: %v", path, ErrDamaged, r)
		}
	}
}

// Expect is what the caller knows of a store file before opening it.
type Expect struct {
	// Name is the store's name in the manifest ("queue", "suppression", …).
	Name string
	// ID is the id the file must carry; empty: any (a file without one gets a new one).
	ID string
	// Exist: the file must exist already; false lets Open create a missing file.
	Exist bool
}

// VerifyAtOpenMax is the size up to which Open runs the full consistency
// check (Verify): cheap on small files, a walk of every page on large ones,
// which `postwarden db check` does on demand.
const VerifyAtOpenMax = 4 << 20

var (
	bucketID = []byte("storefile")
	keyID    = []byte("id")
	keyName  = []byte("name")
)

// Open checks the file at path (Check), opens it with bbolt, verifies small
// files (Verify), and checks or records its id. It returns the db and the
// file's id. A missing file is created only when x.Exist is false; an empty or
// damaged file, or one with another id, is an error naming path.
func Open(path string, opts *bbolt.Options, x Expect) (db *bbolt.DB, id string, err error) {
	created := false
	if err := Check(path); err != nil {
		if !errors.Is(err, ErrMissing) || x.Exist {
			return nil, "", err
		}
		created = true
	}
	// Runs after Guard has turned a panic into err: close what was opened
	// (bbolt's file lock), even if closing a damaged file panics too.
	defer func() {
		if err != nil && db != nil {
			func() {
				defer func() { _ = recover() }()
				db.Close()
			}()
			db = nil
		}
	}()
	defer Guard(path, &err)()
	db, err = bbolt.Open(path, 0o600, opts)
	if errors.Is(err, bberrors.ErrTimeout) {
		return nil, "", fmt.Errorf("%s: %w: %w", path, ErrLocked, err)
	}
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w: %w", path, ErrDamaged, err)
	}
	if !created {
		if fi, err := os.Stat(path); err == nil && fi.Size() <= VerifyAtOpenMax {
			if err := Verify(db, path); err != nil {
				return db, "", err
			}
		}
	}
	if err = db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketID); b != nil {
			id = string(b.Get(keyID))
		}
		return nil
	}); err != nil {
		return db, "", fmt.Errorf("%s: %w", path, err)
	}
	switch {
	case id != "" && x.ID != "" && id != x.ID:
		return db, "", fmt.Errorf("%s: %w: it has store id %s, the data directory's stores.json expects %s", path, ErrWrongID, id, x.ID)
	case id == "" && x.ID != "":
		return db, "", fmt.Errorf("%s: %w: it has no store id, the data directory's stores.json expects %s", path, ErrWrongID, x.ID)
	case id == "":
		id = NewID()
		if opts != nil && opts.ReadOnly {
			return db, "", fmt.Errorf("%s: has no store id and is opened read-only", path)
		}
		if err = db.Update(func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketID)
			if err != nil {
				return err
			}
			if err := b.Put(keyName, []byte(x.Name)); err != nil {
				return err
			}
			return b.Put(keyID, []byte(id))
		}); err != nil {
			return db, "", fmt.Errorf("%s: record store id: %w", path, err)
		}
	}
	return db, id, nil
}

// ReadID returns the id recorded in an open db ("" if none).
func ReadID(db *bbolt.DB) (id string, err error) {
	defer Guard(db.Path(), &err)()
	err = db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketID); b != nil {
			id = string(b.Get(keyID))
		}
		return nil
	})
	return id, err
}

// NewID returns a new random store id.
func NewID() string {
	var b [12]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported systems
	}
	return hex.EncodeToString(b[:])
}

// Verify reads every bucket and key of db (guarded, so a fault on a damaged
// page is an error), then runs bbolt's consistency check (Tx.Check: every
// page reachable once, freelist sane). Errors wrap ErrDamaged and name path.
func Verify(db *bbolt.DB, path string) (err error) {
	defer Guard(path, &err)()
	err = db.View(func(tx *bbolt.Tx) error {
		if err := tx.ForEach(func(_ []byte, b *bbolt.Bucket) error { return walk(b) }); err != nil {
			return err
		}
		var errs []error
		for e := range tx.Check() {
			if len(errs) < 5 {
				errs = append(errs, e)
			}
		}
		return errors.Join(errs...)
	})
	if err != nil && !errors.Is(err, ErrDamaged) {
		err = fmt.Errorf("%s: %w: %w", path, ErrDamaged, err)
	}
	return err
}

// touched keeps walk's reads from being optimised away.
var touched int

// walk touches every key and value of b and its nested buckets.
func walk(b *bbolt.Bucket) error {
	var sum byte
	err := b.ForEach(func(k, v []byte) error {
		if len(k) > 0 {
			sum ^= k[len(k)-1]
		}
		if len(v) > 0 { // touch the value's last byte: an overflow page past the map faults here
			sum ^= v[0] ^ v[len(v)-1]
		}
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				return walk(nb)
			}
		}
		return nil
	})
	touched += int(sum)
	return err
}

// Inspect checks the file at path as fully as it can without changing it:
// Check, a read-only open (which waits up to timeout for a process holding
// the file, then fails with ErrLocked), Verify, and its id against x.ID (if
// set). It returns the file's id.
func Inspect(path string, x Expect, timeout time.Duration) (id string, err error) {
	if err := Check(path); err != nil {
		return "", err
	}
	defer Guard(path, &err)()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: timeout})
	if errors.Is(err, bberrors.ErrTimeout) {
		return "", fmt.Errorf("%s: %w (a running `postwarden serve` holds it; stop it to check this store)", path, ErrLocked)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w: %w", path, ErrDamaged, err)
	}
	defer db.Close()
	if err := Verify(db, path); err != nil {
		return "", err
	}
	if id, err = ReadID(db); err != nil {
		return "", err
	}
	if x.ID != "" && id != x.ID {
		return id, fmt.Errorf("%s: %w: it has store id %q, stores.json expects %s", path, ErrWrongID, id, x.ID)
	}
	return id, nil
}
