package lnset

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestSet: a tracked listener is closed by Close, Wait returns once it is
// removed, and no listener is taken once the server is closing.
func TestSet(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener = &OnceClose{Listener: ln}
	var s Set
	closing := false
	if !s.Track(&l, true, func() bool { return closing }) {
		t.Fatal("Track refused a listener before any Close")
	}
	closing = true
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v, want the first's (nil)", err)
	}
	s.Track(&l, false, nil)
	s.Wait()
	var l2 net.Listener = &OnceClose{Listener: ln}
	if s.Track(&l2, true, func() bool { return closing }) {
		t.Error("Track took a listener while the server closes")
	}
}

// flakyListener fails its first accepts with a timeout, then accepts.
type flakyListener struct {
	net.Listener
	fails int
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "accept: too many open files" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func (f *flakyListener) Accept() (net.Conn, error) {
	if f.fails > 0 {
		f.fails--
		return nil, timeoutErr{}
	}
	return f.Listener.Accept()
}

// TestAccept: a timed-out accept is logged and retried; once the server
// closes, a failure is http.ErrServerClosed; another error is returned.
func TestAccept(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			defer c.Close()
			var b [1]byte
			c.Read(b[:])
		}
	}()
	var logged []string
	logf := func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }
	c, err := Accept(&flakyListener{Listener: ln, fails: 2}, func() bool { return false }, logf, "http")
	if err != nil {
		t.Fatalf("Accept = %v, want a connection after 2 retries", err)
	}
	c.Close()
	if len(logged) != 2 || !strings.HasPrefix(logged[0], "http: Accept error: accept: too many open files; retrying in 5ms") {
		t.Errorf("logged %q, want 2 retries from 5ms", logged)
	}
	ln.Close()
	if _, err := Accept(ln, func() bool { return true }, logf, "http"); err != http.ErrServerClosed {
		t.Errorf("Accept on a closing server = %v, want http.ErrServerClosed", err)
	}
	if _, err := Accept(ln, func() bool { return false }, logf, "http"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept on a closed listener = %v, want net.ErrClosed", err)
	}
}
