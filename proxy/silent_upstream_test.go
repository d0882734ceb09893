package proxy

import (
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
)

// silencer relays loopback TCP connections to an address, and can make
// the connections it relays go silent: they stay open, and nothing more
// passes either way, as when the peer vanished without a reset or a NAT
// entry was dropped. Connections made later pass again.
type silencer struct {
	ln     net.Listener
	to     string
	mu     sync.Mutex
	conns  []net.Conn
	silent map[net.Conn]bool
	wg     sync.WaitGroup
}

func newSilencer(t *testing.T, to string) *silencer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silencer{ln: ln, to: to, silent: map[net.Conn]bool{}}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", to)
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
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// pipe copies from one side to the other until either closes, and
// drops what it reads once the pair is silenced.
func (s *silencer) pipe(from, to net.Conn) {
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

// silence makes every connection relayed so far go silent.
func (s *silencer) silence() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		s.silent[c] = true
	}
}

// TestSilentH2UpstreamConnectionIsLeft: an HTTP/2 upstream connection
// that goes silent (no reset, no answer) costs the attempts that time out
// on it, not every request after them: the client PINGs it after a
// timeout, new attempts go to a new connection, and the unanswered one is
// closed (docs/design.md, "HTTP/2 to upstreams").
func TestSilentH2UpstreamConnectionIsLeft(t *testing.T) {
	up := grpcUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok "+r.URL.Path)
	}))
	relay := newSilencer(t, up[len("http://"):])
	sc := startSidecar(t, `
version: 1
upstreams:
  up: {endpoints: ["http://`+relay.ln.Addr().String()+`"], protocol: h2c, connect_timeout: 1s}
policies:
  p:
    timeout: 10s
    per_try_timeout: 300ms
    retry: {attempts: 10, backoff: {base: 10ms, max: 50ms}, on: [timeout]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: r, match: {path_prefix: /}, upstream: up, policy: p}
`)
	if resp, body := send(t, "GET", sc.url("/before"), nil); resp.StatusCode != 200 || body != "ok /before" {
		t.Fatalf("GET /before = %d %q", resp.StatusCode, body)
	}
	relay.silence()
	// The first attempt times out on the silent connection; the client
	// PINGs it, and once the PING has waited a moment (250 ms) the next
	// attempts take a new connection. Without the PING every attempt
	// would go to the silent connection until the route's timeout.
	resp, body := send(t, "GET", sc.url("/during"), nil)
	if resp.StatusCode != 200 || body != "ok /during" {
		t.Fatalf("GET /during after the connection went silent = %d %q (Sidecar-Attempts %s), want 200 on a new connection",
			resp.StatusCode, body, resp.Header.Get(HeaderAttempts))
	}
	if n := resp.Header.Get(HeaderAttempts); n == "1" || n == "" {
		t.Errorf("Sidecar-Attempts = %q, want the timed-out attempts counted", n)
	}
	for i := range 5 {
		if resp, _ := send(t, "GET", sc.url("/after"), nil); resp.StatusCode != 200 || resp.Header.Get(HeaderAttempts) != "1" {
			t.Fatalf("GET /after %d = %d (Sidecar-Attempts %s), want 200 at the first attempt", i, resp.StatusCode, resp.Header.Get(HeaderAttempts))
		}
	}
}
