package sockfile

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// shortDir is a temp folder with a path short enough for a unix socket.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Listen leaves anything but a stale socket alone, naming the path.
func TestListenRefusesWhatIsNotAStaleSocket(t *testing.T) {
	dir := shortDir(t)

	file := filepath.Join(dir, "suppression.db")
	if err := os.WriteFile(file, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	folder := filepath.Join(dir, "folder")
	if err := os.Mkdir(folder, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	for _, c := range []struct {
		path string
		want error
	}{{file, ErrNotSocket}, {folder, ErrNotSocket}, {link, ErrNotSocket}, {live, ErrInUse}} {
		l, err := Listen(c.path)
		if err == nil {
			l.Close()
			t.Errorf("Listen(%s) succeeded", c.path)
			continue
		}
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("Listen(%s) = %v, want %v naming the path", c.path, err, c.want)
		}
		if _, err := os.Lstat(c.path); err != nil {
			t.Errorf("%s is gone: %v", c.path, err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Errorf("file now %q, %v", b, err)
	}
}

// A socket file nobody answers on (a crashed daemon's) is replaced.
func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "sub", "admin.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// Close without unlinking, as a crash would leave it.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("no stale socket left: %v", err)
	}
	ln, err = Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer ln.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("new socket does not answer: %v", err)
	}
	c.Close()
}
