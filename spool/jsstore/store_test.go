package jsstore_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// TestDisconnect shuts the server down under a store: Append fails at once
// and never reports success; a new server on the same data and port takes
// over and the earlier messages are still there.
func TestDisconnect(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir, 0)
	p := srv.Addr().(*net.TCPAddr).Port
	s := openStore(t, srv, jsstore.Options{Stream: "DISC"})
	before := message("r", 1)
	if err := s.Append(t.Context(), before); err != nil {
		t.Fatalf("Append() = %v", err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()

	poll.Until(t, 5*time.Second, "the store to see the server gone", func() bool { return !s.Connected() })
	if err := s.Ready(); !errors.Is(err, jsstore.ErrDisconnected) {
		t.Errorf("Ready(disconnected) = %v, want %v", err, jsstore.ErrDisconnected)
	}
	start := time.Now()
	err := s.Append(t.Context(), message("r", 2))
	if err == nil || !errors.Is(err, jsstore.ErrDisconnected) {
		t.Errorf("Append(disconnected) = %v, want %v", err, jsstore.ErrDisconnected)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Append(disconnected) took %v, want it to fail fast", d)
	}

	startServer(t, dir, p)
	poll.Until(t, 15*time.Second, "the store to reconnect", s.Connected)
	if err := s.Ready(); err != nil {
		t.Errorf("Ready(reconnected) = %v, want nil", err)
	}
	after := message("r", 3)
	if !poll.Within(10*time.Second, func() bool { err = s.Append(t.Context(), after); return err == nil }) {
		t.Fatalf("Append(after reconnect) = %v for 10s, want nil", err)
	}
	for _, want := range []string{before.ID, after.ID} {
		if m := next(t, s, "r"); m.ID != want {
			t.Errorf("Next() after restart = %s, want %s", m.ID, want)
		}
	}
}
