//go:build linux && (amd64 || arm64)

package spool

import (
	"errors"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// aioSyncer fdatasyncs a segment through Linux's native AIO
// (IOCB_CMD_FDSYNC, kernel 4.18 and later) and waits for it on an
// eventfd in Go's poller.
//
// A plain fsync(2) holds its goroutine's P for as long as the disk takes,
// until the runtime's monitor notices and hands the P on: with one P (a
// sidecar limited to one CPU) every goroutine of the process, the app's
// connections and their reads included, waited for each group commit,
// about one fsync in ten of the time under load. Here the writer waits in
// the poller like a network read, and the others run meanwhile
// (docs/spool.md, "How the writer waits for the disk").
type aioSyncer struct {
	ctx   uintptr  // aio_context_t
	efd   *os.File // the eventfd, in the poller
	efdNo int      // its descriptor (os.File.Fd would make it blocking)
	cb    iocb
	cbs   [1]*iocb
	ev    [1]ioEvent
	seq   uint64 // the data of the last iocb submitted
	// broken is set when a wait failed with an fsync in flight: the
	// store stops using the syncer.
	broken bool

	// The writer waits for an fsync on ready, which the reader
	// goroutine signals when the eventfd counts a completion, or on
	// kick, which poke signals when an Append sees one in the ring.
	ready, kick chan struct{}
	readErr     error         // the reader's, before it closed ready
	reading     chan struct{} // closed when the reader ends
	waiting     atomic.Bool   // an fsync is in flight
	ring        *aioRing      // nil: poke does nothing; see close
	// pokers counts the pokes about to read the ring; dead is set
	// before the context is destroyed, which unmaps the ring. A poke
	// counts itself in, then looks at dead: close either sees it
	// counted and waits, or it sees dead and reads nothing.
	pokers atomic.Int32
	dead   atomic.Bool
	// testHookPoke, set by a test, runs in poke just before it reads
	// the ring.
	testHookPoke func()
}

// aioRing is the head of the kernel's completion ring of an AIO context
// (struct aio_ring), which the kernel maps into the process at the
// context's address: completions wait between head and tail. libaio
// reads it the same way.
type aioRing struct {
	_, _              uint32 // id, nr
	head, tail, magic uint32
}

const aioRingMagic = 0xa10a10a1

// iocb is the kernel's struct iocb (little-endian layout). An fsync uses
// none of the fields named _: aio_key, aio_rw_flags, aio_reqprio,
// aio_buf, aio_nbytes, aio_offset and aio_reserved2, all zero.
type iocb struct {
	data   uint64
	_      [2]uint32
	opcode uint16
	_      int16
	fildes uint32
	_      [4]uint64
	flags  uint32
	resfd  uint32
}

// ioEvent is the kernel's struct io_event: its data and result (the
// object and second result are not used).
type ioEvent struct {
	data uint64
	_    uint64
	res  int64
	_    int64
}

const (
	iocbCmdFdsync = 3
	iocbFlagResfd = 1 << 0
)

// errAIOUnsupported is sync's answer when the kernel or the file system
// cannot sync through AIO: the store falls back to fdatasync(2).
var errAIOUnsupported = errors.New("spool: fsync through AIO not supported")

// spareSyncers are syncers of closed stores, kept for the next store:
// destroying an AIO context waits for the kernel's RCU grace period, tens
// of milliseconds.
var spareSyncers struct {
	sync.Mutex
	list []*aioSyncer
}

// maxSpareSyncers bounds spareSyncers.
const maxSpareSyncers = 4

// getAIOSyncer returns a spare syncer or a new one, or nil when AIO or
// eventfd is not available (an old kernel, a seccomp profile that refuses
// them).
func getAIOSyncer() *aioSyncer {
	spareSyncers.Lock()
	if n := len(spareSyncers.list); n > 0 {
		a := spareSyncers.list[n-1]
		spareSyncers.list = spareSyncers.list[:n-1]
		spareSyncers.Unlock()
		a.startReader()
		return a
	}
	spareSyncers.Unlock()
	return newAIOSyncer()
}

// release gives a back for another store to use, or destroys it when it
// is broken or enough are kept. Nothing of it may be in flight.
func (a *aioSyncer) release() {
	if !a.broken {
		a.stopReader() // a spare syncer has no reader
		spareSyncers.Lock()
		if len(spareSyncers.list) < maxSpareSyncers {
			spareSyncers.list = append(spareSyncers.list, a)
			spareSyncers.Unlock()
			return
		}
		spareSyncers.Unlock()
	}
	a.close()
}

func newAIOSyncer() *aioSyncer {
	a := &aioSyncer{}
	if _, _, e := syscall.Syscall(syscall.SYS_IO_SETUP, 1, uintptr(unsafe.Pointer(&a.ctx)), 0); e != 0 {
		return nil
	}
	fd, _, e := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if e != 0 {
		syscall.Syscall(syscall.SYS_IO_DESTROY, a.ctx, 0, 0)
		return nil
	}
	a.efdNo = int(fd)
	a.efd = os.NewFile(fd, "spool-fsync-eventfd") // non-blocking: in the poller
	a.cbs[0] = &a.cb
	a.kick = make(chan struct{}, 1)
	// The context's value is the ring's address, in memory the kernel
	// mapped, outside Go's heap.
	if r := *(**aioRing)(unsafe.Pointer(&a.ctx)); r != nil && atomic.LoadUint32(&r.magic) == aioRingMagic {
		a.ring = r
	}
	a.startReader()
	return a
}

// startReader starts the goroutine that waits on the eventfd.
func (a *aioSyncer) startReader() {
	a.ready, a.reading, a.readErr = make(chan struct{}, 1), make(chan struct{}), nil
	go func() {
		defer close(a.reading)
		var buf [8]byte
		for {
			if _, err := a.efd.Read(buf[:]); err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) { // not stopReader
					a.readErr = err
					close(a.ready)
				}
				return
			}
			select {
			case a.ready <- struct{}{}:
			default:
			}
		}
	}()
}

// stopReader ends the reader: a read deadline in the past ends its wait.
func (a *aioSyncer) stopReader() {
	a.efd.SetReadDeadline(time.Unix(1, 0))
	<-a.reading
	a.efd.SetReadDeadline(time.Time{})
}

// poke wakes the writer when the fsync it waits for has ended: an Append
// calls it before it waits for its own commit. A goroutine woken by the
// network poller, as the writer is on the eventfd, runs only after every
// runnable goroutine, and the poller is looked at only when none is left:
// under load the writer would learn of the end late, and the disk idle
// meanwhile. One woken by a channel runs next.
func (a *aioSyncer) poke() {
	if !a.waiting.Load() {
		return
	}
	// The writer may release the syncer meanwhile, to be destroyed
	// (this Append loaded FileStore.poker before the writer cleared it).
	a.pokers.Add(1)
	defer a.pokers.Add(-1)
	if a.dead.Load() {
		return
	}
	r := a.ring // after dead: close clears it once no poke counts
	if r == nil {
		return
	}
	if h := a.testHookPoke; h != nil {
		h()
	}
	if atomic.LoadUint32(&r.head) != atomic.LoadUint32(&r.tail) {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

// sync fdatasyncs f and returns the result, or errAIOUnsupported
// before anything was submitted. Only one sync runs at a time: the
// writer's.
func (a *aioSyncer) sync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return errAIOUnsupported
	}
	var serr syscall.Errno
	cerr := rc.Control(func(fd uintptr) {
		a.seq++
		a.cb = iocb{data: a.seq, opcode: iocbCmdFdsync, fildes: uint32(fd), flags: iocbFlagResfd, resfd: uint32(a.efdNo)}
		for {
			_, _, e := syscall.Syscall(syscall.SYS_IO_SUBMIT, a.ctx, 1, uintptr(unsafe.Pointer(&a.cbs[0])))
			if e != syscall.EINTR {
				serr = e
				return
			}
		}
	})
	switch {
	case cerr != nil:
		return cerr
	case serr == syscall.EINVAL || serr == syscall.ENOSYS || serr == syscall.EPERM || serr == syscall.EOPNOTSUPP:
		return errAIOUnsupported
	case serr != 0:
		return serr
	}
	// The fsync is in flight: wait for its completion, which the kernel
	// counts on the eventfd, or an Append sees in the ring, then reap it.
	a.waiting.Store(true)
	defer a.waiting.Store(false)
	for {
		select {
		case _, ok := <-a.ready:
			if !ok {
				a.broken = true
				return a.readErr
			}
		case <-a.kick:
		}
		ts := syscall.Timespec{}
		n, _, e := syscall.Syscall6(syscall.SYS_IO_GETEVENTS, a.ctx, 0, 1, uintptr(unsafe.Pointer(&a.ev[0])), uintptr(unsafe.Pointer(&ts)), 0)
		switch {
		case e == syscall.EINTR:
		case e != 0:
			a.broken = true
			return e
		case n == 1 && a.ev[0].data == a.seq:
			if res := a.ev[0].res; res < 0 {
				return syscall.Errno(-res)
			}
			return nil
		}
	}
}

// close releases the AIO context and the eventfd, which ends the reader.
// It waits for a poke that is reading the ring (a few instructions).
func (a *aioSyncer) close() {
	a.dead.Store(true)
	for a.pokers.Load() != 0 {
		runtime.Gosched()
	}
	// No pointer to the unmapped ring is left for the garbage collector
	// to meet (the heap could grow over its addresses).
	a.ring = nil
	syscall.Syscall(syscall.SYS_IO_DESTROY, a.ctx, 0, 0)
	a.efd.Close()
}
