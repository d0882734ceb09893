//go:build !linux

package spool

import "os"

// datasync commits f to stable storage: fsync(2) where fdatasync(2) is
// not Linux's.
func datasync(f *os.File) error { return f.Sync() }
