// Package atomicfile writes files durably: a temp file in the target's
// folder, fsync, rename (or link) into place, fsync the folder.
//
// Contract: when a call returns nil the file is whole under its name and
// survives a crash. When it returns an error the name holds what it held
// before (unless only the last step, the folder's fsync, failed: then the
// new file is in place but may not survive a crash), and no temp file is
// left behind; a crash can leave one, named ".<name>.tmp-*", never the name
// itself half-written. Modes are set exactly, without the umask. After
// chasquid's internal/safeio.
package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File is a temp file that becomes path on Commit.
type File struct {
	*os.File
	path string
	done bool
}

// Create starts a file that replaces path on Commit; perm is its mode.
// Close without Commit discards it, so `defer f.Close()` is always safe.
func Create(path string, perm fs.FileMode) (*File, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return &File{File: f, path: path}, nil
}

// Commit fsyncs the file, renames it over path and fsyncs the folder.
func (f *File) Commit() error { return f.commit(os.Rename) }

// commitNew is Commit that never replaces: a hard link fails with
// fs.ErrExist when path exists, where a rename would clobber it.
func (f *File) commitNew() error {
	return f.commit(func(tmp, path string) error {
		if err := os.Link(tmp, path); err != nil {
			return err
		}
		return os.Remove(tmp)
	})
}

func (f *File) commit(place func(tmp, path string) error) error {
	if f.done {
		return fmt.Errorf("atomicfile: %s: already committed or closed", f.path)
	}
	f.done = true
	tmp := f.Name()
	err := f.Sync()
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = place(tmp, f.path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(f.path))
}

// Close discards the file unless it was committed.
func (f *File) Close() error {
	if f.done {
		return nil
	}
	f.done = true
	err := f.File.Close()
	if rerr := os.Remove(f.Name()); err == nil {
		err = rerr
	}
	return err
}

// WriteFile writes data to path with mode perm, replacing any file there.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return write(path, data, perm, (*File).Commit)
}

// WriteNew is WriteFile that never replaces: when path exists it returns an
// error matching fs.ErrExist and leaves the file alone. Two racing writers
// cannot both win, and a reader never sees the file half-written.
func WriteNew(path string, data []byte, perm fs.FileMode) error {
	if _, err := os.Lstat(path); err == nil {
		return &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
	}
	return write(path, data, perm, (*File).commitNew)
}

func write(path string, data []byte, perm fs.FileMode, commit func(*File) error) error {
	f, err := Create(path, perm)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return commit(f)
}

// Rename moves tmp, a complete and synced file, over path and fsyncs the
// folder; on error tmp is removed. For files a library writes itself (bbolt).
func Rename(tmp, path string) error {
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs the folder dir, making the names created, renamed or
// removed in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync folder: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync folder %s: %w", dir, err)
	}
	return nil
}
