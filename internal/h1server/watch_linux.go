package h1server

import (
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The disconnect watcher, on Linux.
//
// net/http learns that a client went away by keeping a one-byte read
// pending, in a goroutine of its own, while every handler runs: per
// request a goroutine start, a read syscall that finds nothing (EAGAIN)
// and two deadline changes, and a goroutine stack per request in flight.
// Here each connection is registered once, when accepted, in an epoll
// set of the server's, for EPOLLRDHUP alone (edge-triggered): the kernel
// reports a connection whose client closed or shut down its side (FIN),
// or reset it, and nothing else; a pipelined request arriving is not an
// event. One goroutine per server waits on that set, through Go's own
// poller (an epoll set is pollable), and cancels the request in flight on
// the connection reported, or marks it so that the next request is
// canceled as soon as its body has been read. A request costs the
// watcher nothing; a client that goes away is noticed at once.

const (
	epollRDHUP = 0x2000
	epollET    = 1 << 31
)

type connWatch struct {
	w     *watcher // nil: not watched
	id    uint64
	armed atomic.Pointer[response]
	gone  atomic.Bool
	// parked: 1 while the connection waits in the set with no goroutine
	// (see park), 2 once someone (watcher, idle sweep, shutdown) took it.
	parked atomic.Int32
	// A parked connection with an idle timeout is in its watcher's idle
	// queue, under the watcher's mu, until deadline (see idleQueue).
	prev, next *conn
	deadline   int64
	queued     bool
}

// parkDelay is how long a connection waits for its next request on a
// goroutine before it is parked. Short enough that few idle connections
// hold a goroutine's stack at once (at 10,000 idle connections opened
// over two seconds, a second's worth of stacks was about 35 MiB), long
// enough that a connection in use keeps its goroutine: under load one is
// reused every few milliseconds.
const parkDelay = 100 * time.Millisecond

type serverWatch struct{ w *watcher }

type watcher struct {
	f     *os.File // the epoll set, in Go's poller
	epfd  int
	mu    sync.Mutex
	conns map[uint64]*conn
	next  uint64
	// closing: the server is shutting down; the watcher closes with its
	// last connection.
	closing, closed bool
	done            chan struct{}
	idle            idleQueue
	rel             memRelease
}

// idleQueue closes the parked connections at their idle timeout, with
// one timer for them all rather than one per connection (a timer costs
// about 150 bytes, and a parked connection costs its structures alone).
// Every connection of a server parks for the same time, so the queue,
// appended to as they park, is in the order of their deadlines: the
// timer is set for the first, and closes every connection due when it
// fires, up to idleSlack late so that connections parked together are
// closed together.
type idleQueue struct {
	head, tail *conn
	start      time.Time // deadlines are nanoseconds since start
	timer      *time.Timer
}

const idleSlack = 10 * time.Millisecond

func (q *idleQueue) now() int64 { return int64(time.Since(q.start)) }

// pushLocked queues c to be closed rest from now; w.mu is held.
func (w *watcher) pushLocked(c *conn, rest time.Duration) {
	q := &w.idle
	c.watch.deadline = q.now() + int64(rest)
	c.watch.queued = true
	c.watch.prev, c.watch.next = q.tail, nil
	if q.tail != nil {
		q.tail.watch.next = c
	} else {
		q.head = c
		if q.timer == nil {
			q.timer = time.AfterFunc(rest+idleSlack, w.sweep)
		} else {
			q.timer.Reset(rest + idleSlack)
		}
	}
	q.tail = c
}

// unqueueLocked takes c off the queue if it is on it; w.mu is held.
func (w *watcher) unqueueLocked(c *conn) {
	if !c.watch.queued {
		return
	}
	q := &w.idle
	if p := c.watch.prev; p != nil {
		p.watch.next = c.watch.next
	} else {
		q.head = c.watch.next
	}
	if n := c.watch.next; n != nil {
		n.watch.prev = c.watch.prev
	} else {
		q.tail = c.watch.prev
	}
	c.watch.prev, c.watch.next, c.watch.queued = nil, nil, false
}

// sweep closes the parked connections whose idle timeout has passed.
func (w *watcher) sweep() {
	var due []*conn
	w.mu.Lock()
	q := &w.idle
	now := q.now()
	for c := q.head; c != nil && c.watch.deadline <= now; c = q.head {
		w.unqueueLocked(c)
		if c.watch.parked.CompareAndSwap(1, 2) {
			due = append(due, c)
		}
	}
	if c := q.head; c != nil {
		q.timer.Reset(time.Duration(c.watch.deadline-now) + idleSlack)
	}
	w.mu.Unlock()
	for _, c := range due {
		c.close()
	}
}

// watcherFor returns s's watcher, started on first use; nil if it cannot
// be, or s is shutting down.
func (s *Server) watcherFor() *watcher {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watch.w != nil || s.shuttingDown() {
		return s.watch.w
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil
	}
	f := os.NewFile(uintptr(epfd), "h1server-watch")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil
	}
	w := &watcher{f: f, epfd: epfd, conns: map[uint64]*conn{}, done: make(chan struct{})}
	w.idle.start = time.Now()
	w.rel.parks, w.rel.quiet, w.rel.every, w.rel.release = releaseParks, releaseQuiet, releaseEvery, debug.FreeOSMemory
	if s.releaseParks > 0 {
		w.rel.parks, w.rel.quiet, w.rel.every, w.rel.release = s.releaseParks, s.releaseQuiet, s.releaseEvery, s.testHookRelease
	}
	go w.run(raw)
	s.watch.w = w
	return w
}

func (w *watcher) run(raw syscall.RawConn) {
	defer close(w.done)
	var evs [64]syscall.EpollEvent
	raw.Read(func(uintptr) bool {
		for {
			n, err := syscall.EpollWait(w.epfd, evs[:], 0)
			if err == syscall.EINTR {
				continue
			}
			for _, ev := range evs[:max(n, 0)] {
				id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
				w.mu.Lock()
				c := w.conns[id]
				w.mu.Unlock()
				if c == nil {
					continue
				}
				if c.watch.parked.Load() == 1 && c.watch.parked.CompareAndSwap(1, 2) {
					if ev.Events&(epollRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
						c.watch.gone.Store(true)
					}
					go c.unpark()
					continue
				}
				c.peerGone()
			}
			if n < len(evs) {
				return false // drained: wait for the set to be readable
			}
		}
	})
}

// shutdown lets the watcher end with the server's last connection.
func (w *watcher) shutdown() {
	w.mu.Lock()
	w.closing = true
	last := w.lastLocked()
	w.mu.Unlock()
	if last {
		w.f.Close()
	}
}

// lastLocked reports whether the watcher is done, and marks it closed:
// the caller then closes its set, without w.mu (which run takes while
// the set's read lock is held), which wakes run, which returns.
func (w *watcher) lastLocked() bool {
	if w.closing && !w.closed && len(w.conns) == 0 {
		w.closed = true
		if w.idle.timer != nil {
			w.idle.timer.Stop()
		}
		if w.rel.timer != nil {
			w.rel.timer.Stop()
		}
		return true
	}
	return false
}

// watchShutdown is called when s starts shutting down.
func (s *Server) watchShutdown() {
	s.mu.Lock()
	w := s.watch.w
	s.mu.Unlock()
	if w != nil {
		w.shutdown()
	}
}

// watchStart registers the connection with the server's watcher.
func (c *conn) watchStart() {
	if c.raw == nil {
		return
	}
	w := c.srv.watcherFor()
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.next++
	id := w.next
	var err error
	c.raw.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: epollRDHUP | epollET, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
		err = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil {
		return
	}
	w.conns[id] = c
	c.watch.w, c.watch.id = w, id
}

// watchEnd unregisters the connection; keep is set when the socket stays
// open (hijacked, handed off), and must leave the epoll set.
func (c *conn) watchEnd(keep bool) {
	w := c.watch.w
	if w == nil {
		return
	}
	c.watch.w = nil
	w.mu.Lock()
	delete(w.conns, c.watch.id)
	w.unqueueLocked(c)
	if keep && !w.closed {
		c.raw.Control(func(fd uintptr) {
			syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
		})
	}
	last := w.lastLocked()
	w.mu.Unlock()
	if last {
		w.f.Close()
	}
}

// peerGone: the client closed or reset the connection.
func (c *conn) peerGone() {
	c.watch.gone.Store(true)
	if w := c.watch.armed.Load(); w != nil {
		w.cancel()
	}
}

// armWatch starts watching for w, whose body has been read (or which
// has none): from then on the client going away cancels it. Until then
// a client that goes away makes the body's read fail, which cancels it
// too.
func (c *conn) armWatch(w *response) {
	c.watch.armed.Store(w)
	if c.watch.gone.Load() {
		w.cancel()
	}
}

// stopWatch ends the watch of the request in flight.
func (c *conn) stopWatch() {
	c.watch.armed.Store(nil)
}

// Parking. A connection that has waited parkDelay for its next request
// gives up its goroutine: it is set to report readability once
// (EPOLLIN, EPOLLONESHOT) in the watcher's set, and its goroutine ends.
// An idle connection then costs its structures alone, about 800 bytes
// of heap with the socket's (its connIO went back to the pool), and no
// stack nor buffer. When bytes (or the client's close) arrive, the
// watcher starts a goroutine that resumes it (unpark); the watcher's
// idle queue closes it at IdleTimeout; Shutdown and Close close it at
// once. Whoever moves parked from 1 to 2 owns the connection. A connection busy enough to
// be idle less than parkDelay at a time never parks, and pays nothing.

func (c *conn) canPark() bool { return c.watch.w != nil }

// park parks the connection, for at most rest (zero: no bound); false if
// it cannot be.
func (c *conn) park(rest time.Duration) bool {
	w := c.watch.w
	if h := c.srv.testHookPark; h != nil {
		h(c)
	}
	c.watch.parked.Store(1)
	w.mu.Lock()
	var err error = syscall.EBADF
	if !w.closed {
		c.raw.Control(func(fd uintptr) {
			ev := syscall.EpollEvent{Events: syscall.EPOLLIN | epollRDHUP | syscall.EPOLLONESHOT, Fd: int32(uint32(c.watch.id)), Pad: int32(uint32(c.watch.id >> 32))}
			err = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		})
	}
	if err == nil {
		if rest > 0 {
			w.pushLocked(c, rest)
		}
		w.parkedLocked()
	}
	w.mu.Unlock()
	if err != nil && c.watch.parked.CompareAndSwap(1, 0) {
		return false
	}
	// From here on the connection may be another goroutine's already.
	return true
}

// unpark resumes a parked connection, on a new goroutine.
func (c *conn) unpark() {
	w := c.watch.w
	w.mu.Lock()
	w.unqueueLocked(c)
	if !w.closed {
		c.raw.Control(func(fd uintptr) {
			ev := syscall.EpollEvent{Events: epollRDHUP | epollET, Fd: int32(uint32(c.watch.id)), Pad: int32(uint32(c.watch.id >> 32))}
			syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		})
	}
	w.mu.Unlock()
	c.watch.parked.Store(0)
	c.attachIO()
	c.rwc.SetReadDeadline(time.Time{})
	c.headDL = false
	c.run(false)
}

// takeParked takes a parked connection away from the watcher, for
// Shutdown or Close; the caller closes it (which takes it off the idle
// queue). false if it is not parked.
func (c *conn) takeParked() bool {
	return c.watch.parked.Load() == 1 && c.watch.parked.CompareAndSwap(1, 2)
}

// canParkHere reports whether this system parks connections (for tests).
func (c *conn) canParkHere() bool { return true }

// Handing memory back after a burst. A connection's first request grows
// its goroutine's stack (16 or 32 KiB through the proxy) and leaves
// garbage; when it parks, the stack is freed, but the runtime keeps the
// freed memory, up to the heap goal of its last collection (twice what
// was live then, with GOGC=100), and an idle process makes no garbage
// that would start a collection: after thousands of connections open
// and go idle, the process would stay at the size of the burst for as
// long as it is idle. So when at least releaseParks connections have
// parked since the last time, and none has for releaseQuiet (the burst
// is over), the watcher has the runtime collect and hand its free memory
// back to the system (debug.FreeOSMemory), at most once per releaseEvery
// in the process: one collection a minute at most, and none while the
// server is busy. See docs/design.md, "The app-facing HTTP/1.1 server".
const (
	releaseParks = 1000
	releaseQuiet = 500 * time.Millisecond
	releaseEvery = time.Minute
)

var (
	releaseEpoch = time.Now()
	// lastRelease is when the process last handed memory back, in
	// nanoseconds since releaseEpoch; 0: never.
	lastRelease atomic.Int64
)

// memRelease is a watcher's part of handing memory back, under its mu.
type memRelease struct {
	parks   int           // parks that make it worth it (releaseParks)
	quiet   time.Duration // releaseQuiet
	every   time.Duration // releaseEvery
	release func()        // debug.FreeOSMemory

	n     int   // parks since the last hand-back
	last  int64 // the last park, on the idle queue's clock
	armed bool  // timer is set
	timer *time.Timer
}

// parkedLocked counts a park; w.mu is held.
func (w *watcher) parkedLocked() {
	r := &w.rel
	r.n++
	r.last = w.idle.now()
	if r.armed || r.n < r.parks {
		return
	}
	r.armed = true
	if r.timer == nil {
		r.timer = time.AfterFunc(r.quiet, w.releaseCheck)
	} else {
		r.timer.Reset(r.quiet)
	}
}

// releaseCheck hands memory back if the burst is over and the process
// has not done so lately; otherwise it looks again when it might be.
func (w *watcher) releaseCheck() {
	w.mu.Lock()
	r := &w.rel
	if w.closed {
		r.armed = false
		w.mu.Unlock()
		return
	}
	if wait := time.Duration(r.last-w.idle.now()) + r.quiet; wait > 0 {
		r.timer.Reset(wait) // still parking
		w.mu.Unlock()
		return
	}
	now := int64(time.Since(releaseEpoch))
	last := lastRelease.Load()
	if wait := time.Duration(last-now) + r.every; last != 0 && wait > 0 || !lastRelease.CompareAndSwap(last, now) {
		r.timer.Reset(max(wait, r.quiet)) // done lately, here or by another server
		w.mu.Unlock()
		return
	}
	r.n, r.armed = 0, false
	w.mu.Unlock()
	r.release()
}
