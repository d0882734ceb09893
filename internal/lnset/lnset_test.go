package lnset

import (
	"errors"
	"net"
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
