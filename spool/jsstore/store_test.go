package jsstore_test

import (
	"errors"
	"net"
	"testing"
	"time"

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

	deadline := time.Now().Add(5 * time.Second)
	for s.Connected() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
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
	deadline = time.Now().Add(15 * time.Second)
	for !s.Connected() {
		if time.Now().After(deadline) {
			t.Fatalf("store did not reconnect within 15s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Ready(); err != nil {
		t.Errorf("Ready(reconnected) = %v, want nil", err)
	}
	after := message("r", 3)
	deadline = time.Now().Add(10 * time.Second)
	for {
		err := s.Append(t.Context(), after)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Append(after reconnect) = %v, want nil", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{before.ID, after.ID} {
		if m := next(t, s, "r"); m.ID != want {
			t.Errorf("Next() after restart = %s, want %s", m.ID, want)
		}
	}
}
