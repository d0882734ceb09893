package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The upstream's behaviours, which the demo switches between phases.
const (
	healthy = iota
	blips   // every blipEvery-th request is answered 503
)

// blipEvery is how often a blipping upstream fails: every 3rd request.
const blipEvery = 3

// event is a POST /events the upstream received.
type event struct {
	Path string
	Key  string // its Idempotency-Key
	Body string
	At   time.Time
}

// request is a request the upstream received.
type request struct {
	method, path string
	at           time.Time
}

// upstream is the deliberately flaky service behind the sidecar: an
// in-process HTTP server on a loopback port. It serves GET /orders/N and
// POST /events, and can blip (answer 503 to every 3rd request), go down
// (its port refuses connections) and come back on the same port.
type upstream struct {
	mode     atomic.Int32
	requests atomic.Int64 // every request it answered, blips included
	seen     atomic.Int64 // requests since the mode was set, to pick the blips
	blipped  atomic.Int64 // 503s served as blips

	mu      sync.Mutex
	addr    string // 127.0.0.1:port, fixed at the first start
	srv     *http.Server
	held    io.Closer // the port, held while down; nil while up
	events  []event
	log     []request
	stopped chan struct{} // closed when the current server's Serve returns
}

func (u *upstream) setMode(m int32) {
	u.seen.Store(0)
	u.mode.Store(m)
}

// start serves on a free loopback port the first time, and on the same
// port after stop.
func (u *upstream) start() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.srv != nil {
		return errors.New("upstream already up")
	}
	addr := u.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	if u.held != nil {
		u.held.Close()
		u.held = nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("upstream: listen on %s: %w", addr, err)
	}
	u.addr = ln.Addr().String()
	u.srv = &http.Server{Handler: http.HandlerFunc(u.serve), ReadHeaderTimeout: 5 * time.Second}
	u.stopped = make(chan struct{})
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		srv.Serve(ln)
	}(u.srv, u.stopped)
	return nil
}

// stop takes the upstream down: its listener and every connection are
// closed, and its port is held by a socket that does not listen, so a
// connection attempt is refused (as for a crashed process) and no other
// program can take the port before start binds it again.
func (u *upstream) stop() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.srv == nil {
		return nil
	}
	err := u.srv.Close()
	<-u.stopped
	u.srv = nil
	held, herr := holdPort(u.addr)
	if herr != nil {
		// Refused all the same, but the port could be taken meanwhile.
		return errors.Join(err, fmt.Errorf("upstream: cannot hold port %s while down: %w", u.addr, herr))
	}
	u.held = held
	return err
}

// close stops the upstream and releases its port.
func (u *upstream) close() {
	u.mu.Lock()
	srv, stopped, held := u.srv, u.stopped, u.held
	u.srv, u.held = nil, nil
	u.mu.Unlock()
	if srv != nil {
		// Unlocked: the requests it waits for take the lock.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		srv.Shutdown(ctx)
		cancel()
		srv.Close()
		<-stopped
	}
	if held != nil {
		held.Close()
	}
}

// requestsSince returns the requests received after t.
func (u *upstream) requestsSince(t time.Time) []request {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []request
	for _, r := range u.log {
		if r.at.After(t) {
			out = append(out, r)
		}
	}
	return out
}

// receivedEvents returns the POST /events received so far.
func (u *upstream) receivedEvents() []event {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]event(nil), u.events...)
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	u.requests.Add(1)
	u.mu.Lock()
	u.log = append(u.log, request{method: r.Method, path: r.URL.Path, at: time.Now()})
	u.mu.Unlock()
	n := u.seen.Add(1)
	if u.mode.Load() == blips && n%blipEvery == 0 {
		u.blipped.Add(1)
		http.Error(w, "blip: try again", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodPost {
		u.mu.Lock()
		u.events = append(u.events, event{Path: r.URL.Path, Key: r.Header.Get("Idempotency-Key"), Body: string(body), At: time.Now()})
		u.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"received": r.URL.Path})
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"order": r.URL.Path, "status": "shipped"})
}
