package storefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// ManifestFile is the name of the manifest in a data directory.
const ManifestFile = "stores.json"

// Manifest lists the stores a data directory holds, by name, with the id each
// file carries. It is written when the stores are created (or adopted), so a
// store that later goes missing, empty or swapped is an error, not a new store.
type Manifest struct {
	Version int               `json:"version"`
	Stores  map[string]string `json:"stores"`
}

// LoadManifest reads dir's manifest; it returns nil and no error if there is none.
func LoadManifest(dir string) (*Manifest, error) {
	path := filepath.Join(dir, ManifestFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store manifest %s: %w", path, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("store manifest %s: %w (restore it from a backup, or move it aside to adopt the store files as they are)", path, err)
	}
	if m.Version != 1 || len(m.Stores) == 0 {
		return nil, fmt.Errorf("store manifest %s: version %d with %d stores: not a manifest this postwarden reads", path, m.Version, len(m.Stores))
	}
	return &m, nil
}

// Names returns the stores of m, sorted.
func (m *Manifest) Names() []string {
	names := make([]string, 0, len(m.Stores))
	for n := range m.Stores {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Save writes m to dir durably: a temp file, fsync, rename, fsync of dir.
func (m *Manifest) Save(dir string) error {
	m.Version = 1
	path := filepath.Join(dir, ManifestFile)
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("store manifest %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("store manifest %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store manifest %s: open folder: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil { // the rename is durable only once the folder is
		return fmt.Errorf("store manifest %s: sync folder: %w", path, err)
	}
	return nil
}

// Lock takes bbolt's exclusive file lock on path without waiting, for an
// operator command that replaces the file; it fails with ErrLocked while a
// process (the daemon) has the store open. A missing file needs no lock.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w (stop `postwarden serve` first)", path, ErrLocked)
		}
		return nil, fmt.Errorf("%s: lock: %w", path, err)
	}
	return func() { f.Close() }, nil
}
