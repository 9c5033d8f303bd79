//go:build !linux

package main

import (
	"os"
	"time"
)

func fdatasync(f *os.File) error { return f.Sync() }

func syncAll() {}

// processCPU is not measured here.
func processCPU() time.Duration { return 0 }
