package main

import (
	"os"
	"syscall"
	"time"
)

func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }

// syncAll flushes every dirty page to disk, so the copy of a run's seed is
// not written back during the timed run, competing with its fsyncs.
func syncAll() { syscall.Sync() }

// processCPU is the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
