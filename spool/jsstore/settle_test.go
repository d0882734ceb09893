package jsstore_test

import (
	"net"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// waitConnected polls until s is connected (want true) or disconnected
// (want false), for at most 20s.
func waitConnected(t *testing.T, s *jsstore.Store, want bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for s.Connected() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Connected() stayed %v for 20s", !want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nextWithin polls Next until it returns a message or d passes.
func nextWithin(t *testing.T, s spool.Store, route string, d time.Duration) (*spool.Message, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		m, ok, err := s.Next(route, time.Now())
		if err == nil && ok {
			return m, true
		}
		if time.Now().After(deadline) {
			return nil, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFailedSettleDropsLease leases the heads of three fifo routes, shuts
// the server down, and settles them while it is down (Ack, RetryLater and
// DeadLetter fail): the store must not keep extending those leases after
// it reconnects, so the server hands each head out again after AckWait
// and the fifo routes are not blocked.
func TestFailedSettleDropsLease(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv := startServer(t, dir, 0)
	port := srv.Addr().(*net.TCPAddr).Port
	fifo := jsstore.RouteOptions{FIFO: true}
	s := openStore(t, srv, jsstore.Options{
		Stream:  "SETTLEFAIL",
		AckWait: 2 * time.Second,
		Routes:  map[string]jsstore.RouteOptions{"ack": fifo, "retry": fifo, "dead": fifo},
	})
	routes := []string{"ack", "retry", "dead"}
	ids := map[string][]string{}
	for _, r := range routes {
		for i := range 2 {
			m := message(r, i)
			if err := s.Append(t.Context(), m); err != nil {
				t.Fatalf("Append(%s) = %v", r, err)
			}
			ids[r] = append(ids[r], m.ID)
		}
		if m := next(t, s, r); m.ID != ids[r][0] {
			t.Fatalf("Next(%s) = %s, want the head %s", r, m.ID, ids[r][0])
		}
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	waitConnected(t, s, false)
	if err := s.Ack(ids["ack"][0]); err == nil {
		t.Errorf("Ack(disconnected) = nil, want an error")
	}
	if err := s.RetryLater(ids["retry"][0], time.Now(), 1); err == nil {
		t.Errorf("RetryLater(disconnected) = nil, want an error")
	}
	if err := s.DeadLetter(ids["dead"][0], "x"); err == nil {
		t.Errorf("DeadLetter(disconnected) = nil, want an error")
	}
	startServer(t, dir, port)
	waitConnected(t, s, true)
	for _, r := range routes {
		m, ok := nextWithin(t, s, r, 30*time.Second)
		if !ok {
			t.Fatalf("route %s: the head whose settlement failed was not handed out again within 30s (lease kept alive?)", r)
		}
		if m.ID != ids[r][0] {
			t.Fatalf("route %s: Next() = %s, want the head %s again", r, m.ID, ids[r][0])
		}
		if err := s.Ack(m.ID); err != nil {
			t.Fatalf("Ack(%s) = %v", m.ID, err)
		}
		m, ok = nextWithin(t, s, r, 10*time.Second)
		if !ok || m.ID != ids[r][1] {
			t.Fatalf("route %s: after the head, Next() = %v, %v, want %s (the route is blocked)", r, m, ok, ids[r][1])
		}
	}
}

// TestMaxLease: a lease that is never settled is extended for MaxLease
// only; then the server hands the message out again.
func TestMaxLease(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir(), 0)
	opts := jsstore.Options{Stream: "MAXLEASE", AckWait: 2 * time.Second, MaxLease: time.Second}
	a := openStore(t, srv, opts)
	b := openStore(t, srv, opts)
	m := message("r", 1)
	if err := a.Append(t.Context(), m); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	if got := next(t, a, "r"); got.ID != m.ID {
		t.Fatalf("Next() = %s, want %s", got.ID, m.ID)
	}
	got, ok := nextWithin(t, b, "r", 30*time.Second)
	if !ok || got.ID != m.ID {
		t.Fatalf("Next() on a second store = %v, %v; want %s handed out again once the lease outlived MaxLease", got, ok, m.ID)
	}
}
