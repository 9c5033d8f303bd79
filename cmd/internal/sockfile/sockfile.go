// Package sockfile creates a unix socket at a configured path without ever
// removing anything but a stale socket there: a path that is a regular file,
// a folder, a link or a socket some process answers on is an error naming it,
// so a typo in the config cannot delete a store.
package sockfile

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrInUse is the error of a path where a live socket answers.
var ErrInUse = errors.New("sockfile: a process answers on the socket")

// ErrNotSocket is the error of a path that exists and is not a socket.
var ErrNotSocket = errors.New("sockfile: exists and is not a socket")

// Listen listens on a unix socket at path, mode 0600, creating its folder
// (0700) if missing. A socket file left there by a crashed process, one that
// nobody answers on, is removed first; anything else at path is left alone
// and the error names it.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := RemoveStale(path); err != nil {
		return nil, err
	}
	old := syscall.Umask(0o177) // no moment where others may connect
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return ln, nil
}

// RemoveStale removes path if it is a socket nobody answers on; it does
// nothing if path does not exist. Anything else at path is an error naming
// it: ErrNotSocket (regular file, folder, symlink, ...) or ErrInUse.
func RemoveStale(path string) error {
	fi, err := os.Lstat(path) // Lstat: a link is not followed, nor removed
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket %s: %w (%s)", path, ErrNotSocket, kind(fi.Mode()))
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("socket %s: %w", path, ErrInUse)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("socket %s: remove stale socket: %w", path, err)
	}
	return nil
}

// kind names a file type for an error message.
func kind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a folder"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "type " + m.Type().String()
	}
}
