package mta

import (
	"bytes"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Outbox is the folder capture mode writes: one <queue id>.eml per message,
// the exact signed bytes, so each holds its recipient in clear. mta owns the
// names; erasure and retention go through these methods, never through the
// names themselves. The zero Outbox (no folder) holds nothing.
type Outbox struct{ dir string }

// NewOutbox returns the capture folder dir ("" when not in capture mode).
func NewOutbox(dir string) Outbox { return Outbox{dir: dir} }

const (
	captureExt = ".eml"
	// captureTmp marks a file suppression/atomicfile was writing when it
	// crashed: ".<id>.eml.tmp-*", never the final name.
	captureTmp = captureExt + ".tmp-"
)

// Path returns the file capture mode writes for queue id.
func (o Outbox) Path(id string) string { return filepath.Join(o.dir, id+captureExt) }

// isCapture reports whether name is a capture file or one a crash left half
// written.
func isCapture(name string) bool {
	return strings.HasSuffix(name, captureExt) || isCaptureTmp(name)
}

func isCaptureTmp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, captureTmp)
}

// Remove deletes the capture file of queue id and any temp file a crash left
// for it, returning how many it removed. An id that capture would refuse has
// no file.
func (o Outbox) Remove(id string) (int, error) {
	if o.dir == "" || !idPattern.MatchString(id) {
		return 0, nil
	}
	// idPattern admits no glob metacharacter: the id matches only itself.
	tmps, err := filepath.Glob(filepath.Join(o.dir, "."+id+captureTmp+"*"))
	if err != nil {
		return 0, fmt.Errorf("mta: outbox %s: %w", o.dir, err)
	}
	n := 0
	for _, p := range append([]string{o.Path(id)}, tmps...) {
		err := os.Remove(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("mta: remove capture file: %w", err)
		}
		n++
	}
	return n, nil
}

// RemoveMentioning deletes every capture file, temp files included, whose
// bytes contain addr in any case: a message whose queue record is gone
// (pruned) is found only by its content. It returns how many it removed.
func (o Outbox) RemoveMentioning(addr string) (int, error) {
	needle := bytes.ToLower([]byte(addr))
	return o.removeIf(func(p string, _ os.DirEntry) (bool, error) {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil // a concurrent remove or rename
		}
		if err != nil {
			return false, err
		}
		return bytes.Contains(bytes.ToLower(b), needle), nil
	})
}

// RemoveAddressed deletes every capture file whose header names, in To, Cc
// or Bcc, an address for which match says true, and returns how many it
// removed: the erasure of a person known only by a keyed index (a cluster
// node erasing for another) finds a file whose queue record was pruned by
// its header this way. A file whose header does not parse (one a crash
// left half written) is kept.
func (o Outbox) RemoveAddressed(match func(addr string) bool) (int, error) {
	return o.removeIf(func(p string, _ os.DirEntry) (bool, error) {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil // a concurrent remove or rename
		}
		if err != nil {
			return false, err
		}
		m, err := mail.ReadMessage(bytes.NewReader(b))
		if err != nil {
			return false, nil
		}
		for _, h := range []string{"To", "Cc", "Bcc"} {
			list, err := m.Header.AddressList(h)
			if err != nil {
				continue
			}
			for _, a := range list {
				if match(a.Address) {
					return true, nil
				}
			}
		}
		return false, nil
	})
}

// Mentioning calls fn with the name and bytes of every capture file, temp
// files included, whose bytes contain addr in any case: a data subject's
// copy of what was sent to them. An error from fn stops it and is returned.
func (o Outbox) Mentioning(addr string, fn func(name string, body []byte) error) error {
	if o.dir == "" {
		return nil
	}
	entries, err := os.ReadDir(o.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mta: read outbox: %w", err)
	}
	needle := bytes.ToLower([]byte(addr))
	for _, de := range entries {
		if de.IsDir() || !isCapture(de.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(o.dir, de.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // a concurrent remove or rename
		}
		if err != nil {
			return fmt.Errorf("mta: read capture file: %w", err)
		}
		if bytes.Contains(bytes.ToLower(b), needle) {
			if err := fn(de.Name(), b); err != nil {
				return err
			}
		}
	}
	return nil
}

// Prune deletes capture files, and temp files a crash left, last written
// before cut: they are copies of finished messages, kept no longer than
// the messages. It returns how many it removed.
func (o Outbox) Prune(cut time.Time) (int, error) {
	return o.removeIf(func(_ string, de os.DirEntry) (bool, error) {
		fi, err := de.Info()
		if err != nil {
			return false, nil // gone since the listing
		}
		return fi.ModTime().Before(cut), nil
	})
}

// removeIf deletes the capture files for which match says so.
func (o Outbox) removeIf(match func(path string, de os.DirEntry) (bool, error)) (int, error) {
	if o.dir == "" {
		return 0, nil
	}
	entries, err := os.ReadDir(o.dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("mta: read outbox: %w", err)
	}
	n := 0
	for _, de := range entries {
		if de.IsDir() || !isCapture(de.Name()) {
			continue
		}
		p := filepath.Join(o.dir, de.Name())
		ok, err := match(p, de)
		if err != nil {
			return n, fmt.Errorf("mta: read capture file: %w", err)
		}
		if !ok {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return n, fmt.Errorf("mta: remove capture file: %w", err)
		}
		n++
	}
	return n, nil
}
