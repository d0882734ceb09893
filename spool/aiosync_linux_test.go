//go:build linux && (amd64 || arm64)

package spool

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
	"unsafe"
)

// TestAIOSync: a segment's fsync through AIO completes, reports the
// kernel's result, and the store uses it by default.
func TestAIOSync(t *testing.T) {
	a := newAIOSyncer()
	if a == nil {
		t.Skip("no AIO here (kernel or seccomp): the store uses fsync(2)")
	}
	defer a.close()
	f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 3 {
		if _, err := f.Write([]byte("record")); err != nil {
			t.Fatal(err)
		}
		if err := a.sync(f); err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
	}
	if a.broken {
		t.Error("syncer broken after successful syncs")
	}
	f.Close()
	if err := a.sync(f); err == nil || err == errAIOUnsupported {
		t.Errorf("sync of a closed file = %v, want its error", err)
	}

	// A store syncs through AIO; a closed store's syncer serves the next.
	dir := t.TempDir()
	for i := range 3 {
		st, err := OpenFile(dir, FileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if st.aio == nil {
			t.Error("a store on the OS's file system does not sync through AIO")
		}
		if err := st.Append(t.Context(), testMessage("r", i, 10)); err != nil {
			t.Fatal(err)
		}
		if got := st.syncs.Load(); got == 0 {
			t.Error("no fsync counted for an appended message")
		}
		if st.aio != nil && st.aio.broken {
			t.Error("the store's syncer broke")
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	st, err := OpenFile(dir, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := st.Stats().Total.Pending; got != 3 {
		t.Errorf("after reopening: %d pending, want the 3 appended", got)
	}
}

// TestAIOLayout: the structures match the kernel's sizes and offsets.
func TestAIOLayout(t *testing.T) {
	var cb iocb
	var ev ioEvent
	var ring aioRing
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(iocb)", unsafe.Sizeof(cb), 64},
		{"iocb.aio_lio_opcode", unsafe.Offsetof(cb.opcode), 16},
		{"iocb.aio_fildes", unsafe.Offsetof(cb.fildes), 20},
		{"iocb.aio_flags", unsafe.Offsetof(cb.flags), 56},
		{"iocb.aio_resfd", unsafe.Offsetof(cb.resfd), 60},
		{"sizeof(io_event)", unsafe.Sizeof(ev), 32},
		{"io_event.res", unsafe.Offsetof(ev.res), 16},
		{"aio_ring.head", unsafe.Offsetof(ring.head), 8},
		{"aio_ring.tail", unsafe.Offsetof(ring.tail), 12},
		{"aio_ring.magic", unsafe.Offsetof(ring.magic), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestAIOPoke: the writer learns of an fsync's end from the completion
// ring when an Append pokes, without the eventfd's reader.
func TestAIOPoke(t *testing.T) {
	a := newAIOSyncer()
	if a == nil {
		t.Skip("no AIO here (kernel or seccomp): the store uses fsync(2)")
	}
	defer a.close()
	if a.ring == nil {
		t.Fatal("the AIO context's completion ring was not found")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("record")); err != nil {
		t.Fatal(err)
	}
	a.stopReader() // only poke can wake the wait now
	errc := make(chan error, 1)
	go func() { errc <- a.sync(f) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		a.poke()
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("fsync woken by poke = %v, want nil", err)
			}
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("poke did not wake the fsync's wait in 10 s")
		}
		runtime.Gosched()
	}
}

// TestAIOPokeWhileDestroyed: an Append's poke that loaded the store's
// syncer while its fsync was in flight may read the completion ring after
// the writer has released the syncer; the syncer must not be destroyed
// (io_destroy unmaps the ring) until that read is done, or the process
// faults.
func TestAIOPokeWhileDestroyed(t *testing.T) {
	a := newAIOSyncer()
	if a == nil || a.ring == nil {
		t.Skip("no AIO completion ring here")
	}
	inside, proceed := make(chan struct{}), make(chan struct{})
	a.testHookPoke = func() {
		close(inside)
		<-proceed
	}
	a.waiting.Store(true) // an fsync in flight, as the poke sees it
	poked := make(chan struct{})
	go func() {
		defer close(poked)
		a.poke()
	}()
	<-inside
	// The fsync ends, and the writer releases the syncer for good (a
	// broken one, or one too many to keep).
	a.waiting.Store(false)
	a.broken = true
	released := make(chan struct{})
	go func() {
		defer close(released)
		a.release()
	}()
	select {
	case <-released:
		// Letting the poke go on would fault: it stays blocked.
		t.Fatal("the AIO context was destroyed, its ring unmapped, while a poke was about to read the ring")
	case <-time.After(time.Second):
	}
	close(proceed)
	<-poked
	<-released
}
