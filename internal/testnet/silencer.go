package testnet

import (
	"net"
	"sync"
	"testing"
)

// Silencer relays loopback TCP connections to an address, and can make
// the connections it relays go silent: they stay open, and nothing more
// passes either way, as when the peer vanished without a reset or a NAT
// entry was dropped. Connections made later pass again.
type Silencer struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	silent map[net.Conn]bool
	wg     sync.WaitGroup
}

// NewSilencer relays to addr until the test ends.
func NewSilencer(t testing.TB, addr string) *Silencer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Silencer{ln: ln, silent: map[net.Conn]bool{}}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			s.mu.Lock()
			s.conns = append(s.conns, c, up)
			s.mu.Unlock()
			s.wg.Go(func() { s.pipe(c, up) })
			s.wg.Go(func() { s.pipe(up, c) })
		}
	})
	t.Cleanup(s.close)
	return s
}

// Addr is the relay's address ("127.0.0.1:port").
func (s *Silencer) Addr() string { return s.ln.Addr().String() }

// Silence makes every connection relayed so far go silent.
func (s *Silencer) Silence() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		s.silent[c] = true
	}
}

// close ends the relay and every connection it made.
func (s *Silencer) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// pipe copies from one side to the other until either closes, and
// drops what it reads once the pair is silenced.
func (s *Silencer) pipe(from, to net.Conn) {
	defer to.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		s.mu.Lock()
		silent := s.silent[from]
		s.mu.Unlock()
		if n > 0 && !silent {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
