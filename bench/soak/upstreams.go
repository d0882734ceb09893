package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// webBodySize is the size of every answer of the web upstream: the request
// id, a colon and padding, so the client can tell a truncated body from a
// complete one.
const webBodySize = 512

// webBody is the body the web upstream answers for request id.
func webBody(id string) string {
	s := id + ":"
	if len(s) >= webBodySize {
		return s
	}
	return s + strings.Repeat("w", webBodySize-len(s))
}

// webHandler is the synchronous HTTP upstream: 200 with webBody(id) after a
// short random delay, for GET and POST alike (a POST's body is read first).
func webHandler(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return // the sidecar went away mid-body
		}
	}
	delay := time.NewTimer(time.Duration(rand.IntN(3000)) * time.Microsecond)
	select {
	case <-delay.C:
	case <-r.Context().Done():
		delay.Stop()
		return
	}
	body := webBody(path.Base(r.URL.Path))
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = io.WriteString(w, body)
}

// asyncBody is the JSON body of one async message.
type asyncBody struct {
	ID  string `json:"id"`
	Pad string `json:"pad"`
}

// delivery is what the sink saw of one message id.
type delivery struct {
	delivered int      // requests answered 2xx
	attempts  int      // requests received with a whole, valid body
	keys      []string // distinct Idempotency-Key values of the 2xx deliveries, in order
	crc       uint32   // CRC-32 of the first body
	badBody   bool     // a later request carried another body
	first     time.Time
}

// sink is the async routes' upstream. It records every request by the id
// in its body and answers 200, or 503 to failPct percent of requests so
// that deliveries are retried.
type sink struct {
	failPct int

	mu      sync.Mutex
	seen    map[string]*delivery
	bad     int // bodies that did not parse (answered 400)
	failed  int // requests answered 503 on purpose
	total   int // requests with a whole body
	aborted int // requests whose body broke off
}

func newSink(failPct int) *sink {
	return &sink{failPct: failPct, seen: map[string]*delivery{}}
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		s.mu.Lock()
		s.aborted++
		s.mu.Unlock()
		return
	}
	var m asyncBody
	if err := json.Unmarshal(b, &m); err != nil || m.ID == "" {
		s.mu.Lock()
		s.bad++
		s.mu.Unlock()
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	delay := time.NewTimer(time.Duration(rand.IntN(3000)) * time.Microsecond)
	select {
	case <-delay.C:
	case <-r.Context().Done():
		delay.Stop()
		return
	}
	fail := rand.IntN(100) < s.failPct
	key := r.Header.Get("Idempotency-Key")
	crc := crc32.ChecksumIEEE(b)
	s.mu.Lock()
	s.total++
	d := s.seen[m.ID]
	if d == nil {
		d = &delivery{crc: crc, first: time.Now()}
		s.seen[m.ID] = d
	}
	d.attempts++
	if crc != d.crc {
		d.badBody = true
	}
	if fail {
		s.failed++
	} else {
		d.delivered++
		if !contains(d.keys, key) {
			d.keys = append(d.keys, key)
		}
	}
	s.mu.Unlock()
	if fail {
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// upstream is one server of the soak that can be stopped and started again
// on the same address: an HTTP server (web, sink) or a gRPC server.
type upstream struct {
	name    string
	addr    string
	handler http.Handler // nil: the gRPC interop TestService

	mu   sync.Mutex
	http *http.Server
	grpc *grpc.Server
	done chan struct{} // closed when the running server's Serve returned
}

// start listens on u.addr and serves in the background. Binding the same
// port again right after a stop can fail for a moment; start retries for
// up to 5 s.
func (u *upstream) start() error {
	var ln net.Listener
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err = net.Listen("tcp", u.addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("upstream %s: %w", u.name, err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	done := make(chan struct{})
	u.done = done
	if u.handler != nil {
		u.http = &http.Server{Handler: u.handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second}
		srv := u.http
		go func() {
			defer close(done)
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fmt.Printf("soak: upstream %s: %v\n", u.name, err)
			}
		}()
		return nil
	}
	u.grpc = grpc.NewServer()
	testgrpc.RegisterTestServiceServer(u.grpc, interop.NewTestServer())
	srv := u.grpc
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return nil
}

// stop closes the listener and every connection at once (in-flight
// requests are cut, as when a process dies) and waits for Serve to return.
func (u *upstream) stop() {
	u.mu.Lock()
	hs, gs, done := u.http, u.grpc, u.done
	u.http, u.grpc, u.done = nil, nil, nil
	u.mu.Unlock()
	if hs != nil {
		_ = hs.Close()
	}
	if gs != nil {
		gs.Stop()
	}
	if done != nil {
		<-done
	}
}
