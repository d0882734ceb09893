package jsstore_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/internal/testnet"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// TestCloseOnSilentServer: on a connection gone silent (a partition: no
// answer, no reset), Next returns after the request timeout, and Close,
// which waits for the Next calls in flight and hands a leased message
// back, within a few more; not never: the sidecar closes the spool on its
// way out (and bounds that close itself too).
func TestCloseOnSilentServer(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	u, err := url.Parse(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	relay := testnet.NewSilencer(t, u.Host)
	const timeout = time.Second
	s, err := jsstore.Open(t.Context(), jsstore.Options{URL: "nats://" + relay.Addr(), Stream: "SILENTCLOSE", Create: true,
		ConnectTimeout: 5 * time.Second, RequestTimeout: timeout})
	if err != nil {
		t.Fatalf("jsstore.Open = %v", err)
	}
	poll.Until(t, 30*time.Second, "two Appends", func() bool {
		return s.Append(t.Context(), message("r", 1)) == nil && s.Append(t.Context(), message("r", 2)) == nil
	})
	next(t, s, "r") // leased: Close hands it back
	relay.Silence()
	limit := 4*timeout + 10*time.Second // generous: a loaded machine
	within := func(what string, f func() error) {
		t.Helper()
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- f() }()
		select {
		case err := <-done:
			t.Logf("%s on a silent server = %v after %v", what, err, time.Since(start))
		case <-time.After(limit):
			t.Fatalf("%s on a silent server has not returned after %v, want it bounded by the request timeout (%v)", what, limit, timeout)
		}
	}
	within("Next", func() error { _, _, err := s.Next("r", time.Now()); return err })
	within("Close", s.Close)
}
