//go:build unix && !linux

package h1server

import (
	"sync"
	"syscall"
	"time"
)

// The disconnect watcher where there is no epoll (see watch_linux.go).
//
// net/http learns that a client went away by keeping a read of one byte
// pending in a goroutine of its own while every handler runs, started
// per request. That costs a goroutine start, a read syscall that finds
// nothing (EAGAIN) and two deadline changes per request. The watcher
// here starts only once a request has been in flight for watchDelay with
// its body read (until then a disconnect shows as a failed body read),
// from a timer the connection keeps; it peeks (MSG_PEEK) rather than
// reads, so that a pipelined next request stays in the socket. A request
// shorter than watchDelay never starts it: a client that goes away is
// noticed up to watchDelay late (see docs/operations.md).

// watchDelay is how long a request must have been in flight, its body
// read, before the server starts watching its connection for the client
// going away.
const watchDelay = 5 * time.Millisecond

type connWatch struct {
	wmu      sync.Mutex
	wstate   int
	wlast    *response // the last request armed for
	wtimer   *time.Timer
	wdone    chan struct{}
	waborted bool
	pbuf     [1]byte
	pn       int
	perr     error
}

type serverWatch struct{}

func (s *Server) watchShutdown()   { _ = s.watch }
func (c *conn) watchStart()        {}
func (c *conn) watchEnd(keep bool) {}

const (
	watchOff = iota
	watchArmed
	watchRunning
)

// armWatch arms the watcher for w, once its body is read (or it has
// none), if w is still in flight.
func (c *conn) armWatch(w *response) {
	if c.raw == nil {
		return
	}
	c.watch.wmu.Lock()
	if c.cur.Load() == w && c.watch.wstate == watchOff && c.watch.wlast != w {
		c.watch.wlast = w
		c.watch.wstate = watchArmed
		if c.watch.wtimer == nil {
			c.watch.wtimer = time.AfterFunc(watchDelay, c.peekWatch)
		} else {
			c.watch.wtimer.Reset(watchDelay)
		}
	}
	c.watch.wmu.Unlock()
}

// peekWatch runs on the timer's goroutine: it waits for the socket to have
// something to say, and cancels the request if that is its end.
func (c *conn) peekWatch() {
	c.watch.wmu.Lock()
	if c.watch.wstate != watchArmed || c.cur.Load() == nil {
		c.watch.wmu.Unlock()
		return
	}
	c.watch.wstate = watchRunning
	w := c.cur.Load()
	done := make(chan struct{})
	c.watch.wdone = done
	c.watch.wmu.Unlock()

	err := c.raw.Read(c.doPeek)
	n, errno := c.watch.pn, c.watch.perr

	c.watch.wmu.Lock()
	aborted := c.watch.waborted
	c.watch.wstate = watchOff
	c.watch.wdone = nil
	c.watch.wmu.Unlock()
	close(done)
	// Bytes waiting (a pipelined request) say nothing of the client: stop
	// watching, as net/http does. The end of the stream or an error is
	// the client gone.
	if !aborted && (err != nil || errno != nil || n == 0) {
		w.cancel()
	}
}

// doPeek is c.peekFn.
func (c *conn) doPeek(fd uintptr) bool {
	for {
		n, _, err := syscall.Recvfrom(int(fd), c.watch.pbuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return false
		}
		c.watch.pn, c.watch.perr = n, err
		return true
	}
}

// stopWatch ends the watch of the request in flight, waiting for a
// running watcher to return; the socket's read deadline is then cleared.
func (c *conn) stopWatch() {
	c.watch.wmu.Lock()
	switch c.watch.wstate {
	case watchArmed:
		c.watch.wtimer.Stop()
		c.watch.wstate = watchOff
	case watchRunning:
		c.watch.waborted = true
		done := c.watch.wdone
		c.watch.wmu.Unlock()
		c.rwc.SetReadDeadline(aLongTimeAgo)
		<-done
		c.rwc.SetReadDeadline(time.Time{})
		c.watch.wmu.Lock()
		c.watch.waborted = false
	}
	c.watch.wmu.Unlock()
}

func (c *conn) canPark() bool { return false }
func (c *conn) park(time.Duration) bool {
	return false
}
func (c *conn) takeParked() bool { return false }

const parkDelay = time.Second

// aLongTimeAgo is a deadline in the past: setting it wakes a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

func (c *conn) canParkHere() bool { return false }
