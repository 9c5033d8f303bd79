package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// names lists dir, failing the test on temp files left behind.
func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temp file %s left in %s", e.Name(), dir)
		}
		out = append(out, e.Name())
	}
	return out
}

func check(t *testing.T, path, want string, perm fs.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || string(b) != want {
		t.Fatalf("%s = %q, %v; want %q", path, b, err, want)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != perm {
		t.Fatalf("mode of %s = %v, %v; want %v", path, fi.Mode().Perm(), err, perm)
	}
}

func TestWrites(t *testing.T) {
	for _, c := range []struct {
		name  string
		write func(path string, data []byte, perm fs.FileMode) error
		// existing is in the file before; replace says whether the write wins.
		existing string
		replace  bool
		perm     fs.FileMode
	}{
		{"WriteFile new", WriteFile, "", true, 0o600},
		{"WriteFile over", WriteFile, "old", true, 0o600},
		{"WriteFile 0644", WriteFile, "", true, 0o644},
		{"WriteNew new", WriteNew, "", true, 0o600},
		{"WriteNew over", WriteNew, "old", false, 0o600},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if c.existing != "" {
				if err := os.WriteFile(path, []byte(c.existing), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			err := c.write(path, []byte("new data"), c.perm)
			switch {
			case c.replace && err != nil:
				t.Fatal(err)
			case c.replace:
				check(t, path, "new data", c.perm)
			case !errors.Is(err, fs.ErrExist):
				t.Fatalf("err = %v, want fs.ErrExist", err)
			default:
				check(t, path, c.existing, 0o600)
			}
			if n := names(t, dir); len(n) != 1 {
				t.Errorf("files %v, want only f", n)
			}
		})
	}
}

// TestFailedWrite: a write that fails leaves the old file and no temp file.
func TestFailedWrite(t *testing.T) {
	dir := t.TempDir()
	// A rename over a non-empty folder fails after the temp file is written.
	path := filepath.Join(dir, "busy")
	if err := os.MkdirAll(filepath.Join(path, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("data"), 0o600); err == nil {
		t.Fatal("WriteFile over a folder succeeded")
	}
	if err := WriteFile(filepath.Join(dir, "missing", "f"), []byte("data"), 0o600); err == nil {
		t.Fatal("WriteFile into a missing folder succeeded")
	}
	// A streamed file closed without Commit is discarded.
	f, err := Create(filepath.Join(dir, "stream"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("half")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err == nil {
		t.Error("Commit after Close succeeded")
	}
	if n := names(t, dir); len(n) != 1 || n[0] != "busy" {
		t.Errorf("files %v, want only busy", n)
	}
}

func TestCreateCommit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stream")
	f, err := Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, s := range []string{"one ", "two"} {
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s visible before Commit: %v", path, err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close after Commit: %v", err)
	}
	check(t, path, "one two", 0o600)
	names(t, dir)
}

func TestRename(t *testing.T) {
	dir := t.TempDir()
	tmp, path := filepath.Join(dir, "db.compact"), filepath.Join(dir, "db")
	for _, p := range []string{tmp, path} {
		if err := os.WriteFile(p, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	check(t, path, tmp, 0o600)
	if err := Rename(tmp, path); err == nil {
		t.Error("Rename of a missing file succeeded")
	}
	if n := names(t, dir); len(n) != 1 {
		t.Errorf("files %v, want only db", n)
	}
}
