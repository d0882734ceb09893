// Package lnset keeps the listeners a server serves on, as net/http's
// Server does, for internal/h1server and internal/h2server: Serve tracks
// its listener while it accepts (Accept), Shutdown and Close close every
// one and wait until each Serve has returned.
package lnset

import (
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// Set is a server's listeners. The zero value is ready.
type Set struct {
	mu sync.Mutex
	m  map[*net.Listener]struct{}
	wg sync.WaitGroup
}

// Track adds ln (add) or removes it. Adding fails once closing reports
// true: the server is shutting down, and Serve must not start. A server
// sets what closing reads before it calls Close, so a listener is either
// refused here or closed there.
func (s *Set) Track(ln *net.Listener, add bool, closing func() bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[*net.Listener]struct{}{}
	}
	if add {
		if closing() {
			return false
		}
		s.m[ln] = struct{}{}
		s.wg.Add(1)
	} else {
		delete(s.m, ln)
		s.wg.Done()
	}
	return true
}

// Close closes every listener tracked and returns the first error.
func (s *Set) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	for ln := range s.m {
		if cerr := (*ln).Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// Wait waits until every listener tracked has been removed: every Serve
// has returned.
func (s *Set) Wait() { s.wg.Wait() }

// OnceClose wraps a listener so that closing it twice (Serve's deferred
// Close and Shutdown's) closes it once, and both get its error.
type OnceClose struct {
	net.Listener
	once     sync.Once
	closeErr error
}

func (oc *OnceClose) Close() error {
	oc.once.Do(func() { oc.closeErr = oc.Listener.Close() })
	return oc.closeErr
}

// Accept accepts a connection from l as net/http's Serve does: an
// accept that timed out (too many open files, say) is logged through
// logf with name and tried again after a pause that doubles from 5 ms to
// 1 s; once closing reports true, any failure is http.ErrServerClosed.
func Accept(l net.Listener, closing func() bool, logf func(format string, args ...any), name string) (net.Conn, error) {
	var delay time.Duration
	for {
		rw, err := l.Accept()
		if err == nil {
			return rw, nil
		}
		if closing() {
			return nil, http.ErrServerClosed
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return nil, err
		}
		if delay == 0 {
			delay = 5 * time.Millisecond
		} else {
			delay = min(2*delay, time.Second)
		}
		logf("%s: Accept error: %v; retrying in %v", name, err, delay)
		time.Sleep(delay)
	}
}
