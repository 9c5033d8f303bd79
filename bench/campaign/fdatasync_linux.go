package main

import (
	"os"
	"syscall"
)

func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }

// syncAll flushes every dirty page to disk, so the copy of a run's seed is
// not written back during the timed run, competing with its fsyncs.
func syncAll() { syscall.Sync() }
