// Package compact rewrites a bbolt file into a fresh one. bbolt reuses freed
// pages without wiping them, so bytes of deleted records (an erased person's
// data) stay in the file until it is rewritten; after Rewrite they are gone
// from it. The old file's blocks go back to the file system unwiped, which is
// why the stores seal personal data as well.
package compact

import (
	"fmt"
	"os"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/atomicfile"
	"github.com/postwarden/postwarden/suppression/storefile"
)

// txMaxSize bounds one copy transaction of bbolt.Compact.
const txMaxSize = 64 << 20

// Rewrite copies the open db into <path>.compact, fsyncs it, renames it over
// path and fsyncs the folder. The caller holds off every other use of db,
// and closes and reopens it afterwards: db still reads the old (unlinked)
// file. On error path is untouched.
func Rewrite(db *bbolt.DB, path string, timeout time.Duration) error {
	tmp := path + ".compact"
	os.Remove(tmp) // a leftover from a crash
	dst, err := bbolt.Open(tmp, 0o600, &bbolt.Options{Timeout: timeout})
	if err != nil {
		return fmt.Errorf("compact %s: %w", path, err)
	}
	if err := bbolt.Compact(dst, db, txMaxSize); err != nil {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact %s: %w", path, err)
	}
	err = dst.Sync() // every Compact commit fsyncs already; this covers NoSync builds
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compact %s: %w", path, err)
	}
	// The old file stays open (and locked) until the new one is in place.
	if err := atomicfile.Rename(tmp, path); err != nil {
		return fmt.Errorf("compact %s: %w", path, err)
	}
	return nil
}

// File is a bbolt database that Compact can rewrite and swap while a store
// uses it: every transaction holds a read lock; Compact and Close take the
// write lock, so no transaction runs on a file being replaced. A panic or
// fault inside a transaction (a damaged page) is an error naming the file.
type File struct {
	mu      sync.RWMutex
	db      *bbolt.DB
	path    string
	timeout time.Duration
	reopen  func() (*bbolt.DB, error)
	closed  error
}

// NewFile wraps an open db. reopen opens path again after a rewrite (with
// whatever checks the store makes); closed is the error returned once the
// file is closed.
func NewFile(db *bbolt.DB, path string, timeout time.Duration, reopen func() (*bbolt.DB, error), closed error) *File {
	return &File{db: db, path: path, timeout: timeout, reopen: reopen, closed: closed}
}

// View runs fn in a read transaction.
func (f *File) View(fn func(*bbolt.Tx) error) (err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		return f.closed
	}
	defer storefile.Guard(f.path, &err)()
	return f.db.View(fn)
}

// Update runs fn in a write transaction, committed with fsync.
func (f *File) Update(fn func(*bbolt.Tx) error) (err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		return f.closed
	}
	defer storefile.Guard(f.path, &err)()
	return f.db.Update(fn)
}

// Batch runs fn in a write transaction shared with concurrent callers.
func (f *File) Batch(fn func(*bbolt.Tx) error) (err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		return f.closed
	}
	defer storefile.Guard(f.path, &err)()
	return f.db.Batch(fn)
}

// Compact rewrites the file (see Rewrite) and reopens it.
func (f *File) Compact() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return f.closed
	}
	if err := Rewrite(f.db, f.path, f.timeout); err != nil {
		return err
	}
	f.db.Close() // it reads the old, unlinked file
	f.db = nil
	db, err := f.reopen()
	if err != nil {
		return fmt.Errorf("compact %s: reopen: %w", f.path, err)
	}
	f.db = db
	return nil
}

// Close closes the file; later calls return the closed error.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil
	}
	err := f.db.Close()
	f.db = nil
	return err
}
