package spooltest

import (
	"io/fs"
	"sync"

	"github.com/sidecar-proxy/sidecar/spool"
)

// StallFS is the real file system whose file syncs wait while a stall is
// on, like a disk that stops answering: for the tests of what the
// sidecar does meanwhile (docs/spool.md, "A disk that stalls").
type StallFS struct {
	spool.OSFS
	mu      sync.Mutex
	stall   chan struct{} // closed to end the stall; nil: none
	stalled chan struct{}
}

// OpenFile opens name on the real file system, its syncs stalled while
// a stall is on.
func (f *StallFS) OpenFile(name string, flag int, perm fs.FileMode) (spool.File, error) {
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &stallFile{File: file, fs: f}, nil
}

// Stall makes the syncs from now on wait until release is called (once
// or more); each sync that waits sends on stalled first (room for 16).
func (f *StallFS) Stall() (stalled <-chan struct{}, release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stall, f.stalled = make(chan struct{}), make(chan struct{}, 16)
	stall := f.stall
	return f.stalled, sync.OnceFunc(func() {
		f.mu.Lock()
		f.stall = nil
		f.mu.Unlock()
		close(stall)
	})
}

type stallFile struct {
	spool.File
	fs *StallFS
}

func (f *stallFile) Sync() error {
	f.fs.mu.Lock()
	stall, stalled := f.fs.stall, f.fs.stalled
	f.fs.mu.Unlock()
	if stall != nil {
		stalled <- struct{}{}
		<-stall
	}
	return f.File.Sync()
}
