package jsstore_test

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// startServer starts an embedded JetStream server on a random loopback
// port (or port, if not 0) with its data in dir, and shuts it down at the
// end of the test.
func startServer(t testing.TB, dir string, port int) *server.Server {
	t.Helper()
	if port == 0 {
		port = -1
	}
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  dir,
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatalf("server.NewServer() = %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatalf("NATS server not ready within 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

var streams atomic.Int64

// openStore opens a store on srv with a stream of its own.
func openStore(t *testing.T, srv *server.Server, opts jsstore.Options) *jsstore.Store {
	t.Helper()
	if opts.Stream == "" {
		opts.Stream = fmt.Sprintf("T%d", streams.Add(1))
	}
	opts.URL = srv.ClientURL()
	opts.Create = true
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 10 * time.Second // generous: many stores open at once on a loaded CI machine
	}
	s, err := jsstore.Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("jsstore.Open(%s) = %v, want nil", opts.Stream, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func message(route string, n int) *spool.Message {
	return &spool.Message{
		Route:  route,
		Method: http.MethodPost,
		Target: "/e",
		Header: http.Header{"Content-Type": {"text/plain"}},
		Body:   fmt.Appendf(nil, "m%d", n),
	}
}

// next polls Next until it returns a message or 5s pass.
func next(t *testing.T, s spool.Store, route string) *spool.Message {
	t.Helper()
	var (
		m   *spool.Message
		ok  bool
		err error
	)
	poll.Until(t, 5*time.Second, "Next("+route+") to return a message", func() bool {
		m, ok, err = s.Next(route, time.Now())
		return ok || err != nil
	})
	if err != nil {
		t.Fatalf("Next(%s) = %v", route, err)
	}
	return m
}

// waitConnected polls until s is connected (want true) or disconnected
// (want false), for at most 20s.
func waitConnected(t *testing.T, s *jsstore.Store, want bool) {
	t.Helper()
	poll.Until(t, 20*time.Second, fmt.Sprintf("Connected() to be %v", want), func() bool {
		return s.Connected() == want
	})
}

// nextWithin polls Next until it returns a message or d passes.
func nextWithin(t *testing.T, s spool.Store, route string, d time.Duration) (*spool.Message, bool) {
	t.Helper()
	var m *spool.Message
	found := poll.Within(d, func() bool {
		got, ok, err := s.Next(route, time.Now())
		m = got
		return err == nil && ok
	})
	if !found {
		return nil, false
	}
	return m, true
}
