package jsstore_test

import (
	"net"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

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
