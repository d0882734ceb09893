package spool

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// faultFS wraps the real file system, counts file syncs, records removed
// segments' contents and fails writes or syncs on demand.
type faultFS struct {
	OSFS
	syncs atomic.Int64
	// failZeros makes writes of zeros alone (the writer's zeros ahead)
	// fail with ENOSPC, like a disk that has just filled up.
	failZeros atomic.Bool

	mu       sync.Mutex
	writeErr error
	syncErr  error
	removed  []removedFile
	// With stall set, Sync sends on stalled and waits until stall is
	// closed, like a disk that stops answering.
	stall, stalled chan struct{}
	// readStall and readStalled do the same for ReadAt.
	readStall, readStalled chan struct{}
}

// stallReads makes the next ReadAt calls wait until the returned
// release is called; stalled receives once per read that waits.
func (f *faultFS) stallReads() (stalled <-chan struct{}, release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readStall, f.readStalled = make(chan struct{}), make(chan struct{}, 16)
	stall := f.readStall
	return f.readStalled, sync.OnceFunc(func() {
		f.mu.Lock()
		f.readStall = nil
		f.mu.Unlock()
		close(stall)
	})
}

// stallSyncs makes the next syncs wait until the returned release is
// called; stalled receives once per sync that waits.
func (f *faultFS) stallSyncs() (stalled <-chan struct{}, release func()) {
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

type removedFile struct {
	path string
	data []byte
}

func (f *faultFS) fail(writeErr, syncErr error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writeErr, f.syncErr = writeErr, syncErr
}

func (f *faultFS) errs() (error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writeErr, f.syncErr
}

func (f *faultFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

func (f *faultFS) Remove(name string) error {
	data, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.removed = append(f.removed, removedFile{name, data})
	f.mu.Unlock()
	return f.OSFS.Remove(name)
}

type faultFile struct {
	File
	fs *faultFS
}

// Write writes half of b and fails when a write error is set, like a disk
// that fills up mid-write.
func (f *faultFile) Write(b []byte) (int, error) {
	if err, _ := f.fs.errs(); err != nil {
		n, _ := f.File.Write(b[:len(b)/2])
		return n, err
	}
	return f.File.Write(b)
}

// WriteAt is Write at an offset: the writer's.
func (f *faultFile) WriteAt(b []byte, off int64) (int, error) {
	if f.fs.failZeros.Load() && allZero(b) {
		return 0, syscall.ENOSPC
	}
	if err, _ := f.fs.errs(); err != nil {
		n, _ := f.File.WriteAt(b[:len(b)/2], off)
		return n, err
	}
	return f.File.WriteAt(b, off)
}

func (f *faultFile) ReadAt(b []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	stall, stalled := f.fs.readStall, f.fs.readStalled
	f.fs.mu.Unlock()
	if stall != nil {
		stalled <- struct{}{}
		<-stall
	}
	return f.File.ReadAt(b, off)
}

func (f *faultFile) Sync() error {
	f.fs.mu.Lock()
	stall, stalled := f.fs.stall, f.fs.stalled
	f.fs.mu.Unlock()
	if stall != nil {
		stalled <- struct{}{}
		<-stall
	}
	if _, err := f.fs.errs(); err != nil {
		return err
	}
	f.fs.syncs.Add(1)
	return f.File.Sync()
}

// open opens a store in dir and closes it at the end of the test.
func open(t testing.TB, dir string, opts FileOptions) *FileStore {
	t.Helper()
	s, err := OpenFile(dir, opts)
	if err != nil {
		t.Fatalf("OpenFile(%q) = %v, want nil", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func reopen(t testing.TB, s *FileStore, opts FileOptions) *FileStore {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v, want nil", err)
	}
	return open(t, s.dir, opts)
}

var testEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func testMessage(route string, i int, bodySize int) *Message {
	return &Message{
		ID:      fmt.Sprintf("%016x%08x", testEpoch.UnixNano()+int64(i), i),
		Route:   route,
		Method:  "POST",
		Target:  fmt.Sprintf("/events/%d?q=1", i),
		Header:  map[string][]string{"Content-Type": {"application/json"}},
		Body:    []byte(strings.Repeat(string(rune('a'+i%26)), bodySize)),
		Arrived: testEpoch.Add(time.Duration(i) * time.Millisecond),
	}
}

func appendN(t testing.TB, s *FileStore, route string, n, bodySize int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		m := testMessage(route, i, bodySize)
		if err := s.Append(t.Context(), m); err != nil {
			t.Fatalf("Append(%s) = %v, want nil", m.ID, err)
		}
		ids[i] = m.ID
	}
	return ids
}

// ids lists the IDs of the store's messages in state, sorted.
func ids(t testing.TB, s *FileStore, state State) []string {
	t.Helper()
	infos, err := s.List("", state, "", 0)
	if err != nil {
		t.Fatalf("List() = %v, want nil", err)
	}
	out := make([]string, len(infos))
	for i, in := range infos {
		out[i] = in.ID
	}
	return out
}

func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if _, ok := parseSegmentName(de.Name()); ok {
			out = append(out, filepath.Join(dir, de.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// copyDir copies the segment files of src into a new temporary directory.
func copyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, p := range segmentFiles(t, src) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(p)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}
