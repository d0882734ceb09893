package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// The kinds of request the soak sends.
const (
	kindGet      = "http_get"       // GET /web/items through the web route
	kindPost     = "http_post"      // POST /web/orders, half with an Idempotency-Key
	kindGRPC     = "grpc_unary"     // TestService/UnaryCall through the rpc route
	kindAlways   = "async_always"   // POST /events/always: async, when: always
	kindFallback = "async_fallback" // POST /events/fallback: async, when: upstream_down
)

var kinds = []string{kindGet, kindPost, kindGRPC, kindAlways, kindFallback}

// Error classes of requests that got no answer.
const (
	errRefused = "refused"        // connection refused: the sidecar was down
	errReset   = "reset"          // the connection broke (the sidecar was killed, or cut the answer)
	errTimeout = "client_timeout" // the client gave up: well past the deadline
	errOther   = "other"
)

// answer is one request and how it ended.
type answer struct {
	kind     string
	at       time.Duration // start, from the start of the run
	dur      time.Duration
	deadline time.Duration
	status   string // "200", "grpc:OK", or "error:<class>"
	outcome  string // the Sidecar-Outcome header (or gRPC metadata), if any
	errClass string // "" when an answer arrived (see the err* constants)
	errText  string
	corrupt  bool   // a 200 whose body was not the one the upstream sent
	path     string // the request's path, unique per request (HTTP only)
}

// failed records err, if any, that ended the request: in place of a
// status, or after it when the body broke.
func (a *answer) failed(err error) {
	if err == nil {
		return
	}
	a.errClass = classify(err)
	a.errText = err.Error()
	if a.status == "" {
		a.status = "error:" + a.errClass
	} else {
		a.status += " body:" + a.errClass
	}
}

// label is how answers are grouped in the summary: status and outcome.
func (a answer) label() string {
	if a.outcome == "" {
		return a.status
	}
	return a.status + " " + a.outcome
}

// asyncMsg is one message sent to an async route.
type asyncMsg struct {
	id      string
	kind    string
	appKey  string // the app's Idempotency-Key; "" lets the sidecar stamp one
	crc     uint32 // CRC-32 of the body
	at, end time.Duration
	status  int // 0: no answer
	outcome string
	spoolID string
}

// recorder keeps every answer and async message of the run.
type recorder struct {
	start time.Time

	mu      sync.Mutex
	answers []answer
	msgs    []*asyncMsg
}

func (r *recorder) since() time.Duration { return time.Since(r.start) }

func (r *recorder) add(a answer, m *asyncMsg) {
	r.mu.Lock()
	r.answers = append(r.answers, a)
	if m != nil {
		r.msgs = append(r.msgs, m)
	}
	r.mu.Unlock()
}

// load sends the soak's traffic: each kind at its rate, by workers that
// take ticks from one ticker per kind (a tick no worker is free for is
// dropped, so a stall never piles up requests).
type load struct {
	rec       *recorder
	app       string // the sidecar's HTTP listener
	grpcAddr  string // its gRPC listener
	deadlines map[string]time.Duration
	// clientSlack is added to a request's deadline for the client's own
	// timeout, so a request past its deadline is measured, not cut.
	clientSlack time.Duration

	tr     *http.Transport
	client *http.Client

	connMu sync.Mutex
	conn   *grpc.ClientConn

	// gate is held shared by every request and exclusively by pause.
	gate sync.RWMutex
	seq  atomic.Int64
	wg   sync.WaitGroup
	stop chan struct{}
}

func newLoad(rec *recorder, app, grpcAddr string, deadlines map[string]time.Duration, clientSlack time.Duration) (*load, error) {
	l := &load{rec: rec, app: app, grpcAddr: grpcAddr, deadlines: deadlines, clientSlack: clientSlack, stop: make(chan struct{})}
	l.tr = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     10 * time.Second,
		DisableCompression:  true,
	}
	l.client = &http.Client{Transport: l.tr}
	if err := l.dialGRPC(); err != nil {
		return nil, err
	}
	return l, nil
}

// dialGRPC makes the gRPC client connection. Its reconnect back-off is
// short, so calls resume soon after the sidecar restarts.
func (l *load) dialGRPC() error {
	conn, err := grpc.NewClient(l.grpcAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return err
	}
	l.connMu.Lock()
	l.conn = conn
	l.connMu.Unlock()
	return nil
}

// run starts the workers: rates are requests per second of each kind.
func (l *load) run(httpRate, grpcRate, asyncRate float64) {
	l.spawn(httpRate, 24, func() {
		if rand.IntN(10) < 6 {
			l.doHTTP(kindGet)
		} else {
			l.doHTTP(kindPost)
		}
	})
	l.spawn(grpcRate, 24, l.doGRPC)
	l.spawn(asyncRate, 24, func() {
		if rand.IntN(3) < 2 {
			l.doAsync(kindAlways)
		} else {
			l.doAsync(kindFallback)
		}
	})
}

func (l *load) spawn(rate float64, workers int, do func()) {
	if rate <= 0 {
		return
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				l.gate.RLock()
				do()
				l.gate.RUnlock()
			}
		}()
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		wg.Wait()
		tick.Stop()
	}()
}

// pause waits for every request in flight to end, holds new ones back,
// and closes the client's idle connections (HTTP and gRPC), so that the
// sidecar can be measured at rest. resume undoes it.
func (l *load) pause() {
	l.gate.Lock()
	l.tr.CloseIdleConnections()
	l.connMu.Lock()
	_ = l.conn.Close()
	l.connMu.Unlock()
}

func (l *load) resume() error {
	err := l.dialGRPC()
	l.gate.Unlock()
	return err
}

// finish stops the workers, waits for them (every request is bounded by
// its client timeout) and closes every client connection.
func (l *load) finish() {
	close(l.stop)
	l.wg.Wait()
	l.tr.CloseIdleConnections()
	l.connMu.Lock()
	_ = l.conn.Close()
	l.connMu.Unlock()
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return errRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.EPIPE), strings.Contains(err.Error(), "server closed"):
		return errReset
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return errTimeout
	}
	return errOther
}

func (l *load) doHTTP(kind string) {
	n := l.seq.Add(1)
	a := answer{kind: kind, deadline: l.deadlines[kind]}
	var req *http.Request
	var id string
	ctx, cancel := context.WithTimeout(context.Background(), a.deadline+l.clientSlack)
	defer cancel()
	if kind == kindGet {
		id = fmt.Sprintf("g-%d", n)
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://"+l.app+"/web/items/"+id, nil)
	} else {
		id = fmt.Sprintf("p-%d", n)
		body := `{"order":"` + id + `","pad":"` + strings.Repeat("o", 256) + `"}`
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, "http://"+l.app+"/web/orders/"+id, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if n%2 == 0 {
			req.Header.Set("Idempotency-Key", "k-"+id)
		}
	}
	a.path = req.URL.Path
	a.at = l.rec.since()
	start := time.Now()
	resp, err := l.client.Do(req)
	var b []byte
	if err == nil {
		a.status = fmt.Sprint(resp.StatusCode)
		a.outcome = resp.Header.Get("Sidecar-Outcome")
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode == http.StatusOK && string(b) != webBody(id) {
			a.corrupt = true
		}
	}
	a.dur = time.Since(start)
	a.failed(err)
	l.rec.add(a, nil)
}

func (l *load) doGRPC() {
	l.connMu.Lock()
	client := testgrpc.NewTestServiceClient(l.conn)
	l.connMu.Unlock()
	a := answer{kind: kindGRPC, deadline: l.deadlines[kindGRPC]}
	ctx, cancel := context.WithTimeout(context.Background(), a.deadline+l.clientSlack)
	defer cancel()
	const respSize = 256
	var header, trailer metadata.MD
	a.at = l.rec.since()
	start := time.Now()
	resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{
		ResponseSize: respSize,
		Payload:      &testgrpc.Payload{Body: bytes.Repeat([]byte{'g'}, 64)},
	}, grpc.Header(&header), grpc.Trailer(&trailer))
	a.dur = time.Since(start)
	st := status.Convert(err)
	a.status = "grpc:" + st.Code().String()
	for _, md := range []metadata.MD{header, trailer} {
		if v := md.Get("sidecar-outcome"); len(v) > 0 {
			a.outcome = v[0]
		}
	}
	switch {
	case err == nil:
		if len(resp.GetPayload().GetBody()) != respSize {
			a.corrupt = true
		}
	case a.outcome == "":
		// Not the sidecar's answer: the client's own view of the
		// connection (refused while the sidecar was down, cut when it
		// was killed) or its own deadline.
		msg := st.Message()
		switch {
		case st.Code() == codes.DeadlineExceeded:
			a.errClass = errTimeout
		case strings.Contains(msg, "connection refused"):
			a.errClass = errRefused
		case st.Code() == codes.Unavailable:
			a.errClass = errReset
		default:
			a.errClass = errOther
		}
		a.errText = msg
		a.status = "error:" + a.errClass
	}
	l.rec.add(a, nil)
}

func (l *load) doAsync(kind string) { l.doAsyncPad(kind, 128+rand.IntN(256)) }

// asyncBurst POSTs up to n async requests (when: always) of pad bytes
// each, one at a time, until the sidecar refuses one with 503
// spool_error or spool_full; it reports whether one was refused. The
// disk-full fault sends it to use up what room the spool holds on the
// full disk: the zeros it writes ahead of its records (docs/spool.md).
func (l *load) asyncBurst(ctx context.Context, n, pad int) bool {
	for range n {
		if ctx.Err() != nil {
			return false
		}
		status, outcome := l.doAsyncPad(kindAlways, pad)
		if status == "503" && (outcome == "spool_error" || outcome == "spool_full") {
			return true
		}
	}
	return false
}

// doAsyncPad sends one async request whose body carries pad bytes of
// padding, records it, and returns its status and outcome.
func (l *load) doAsyncPad(kind string, pad int) (status, outcome string) {
	n := l.seq.Add(1)
	m := &asyncMsg{id: fmt.Sprintf("a-%d", n), kind: kind}
	route := "/events/always"
	if kind == kindFallback {
		route = "/events/fallback"
	}
	body, _ := json.Marshal(asyncBody{ID: m.id, Pad: strings.Repeat("e", pad)})
	m.crc = crc32.ChecksumIEEE(body)
	a := answer{kind: kind, deadline: l.deadlines[kind]}
	ctx, cancel := context.WithTimeout(context.Background(), a.deadline+l.clientSlack)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+l.app+route+"/"+m.id, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if n%2 == 0 {
		m.appKey = "k-" + m.id
		req.Header.Set("Idempotency-Key", m.appKey)
	}
	a.path = req.URL.Path
	a.at = l.rec.since()
	m.at = a.at
	start := time.Now()
	resp, err := l.client.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		a.status = fmt.Sprint(resp.StatusCode)
		a.outcome = resp.Header.Get("Sidecar-Outcome")
		if err == nil {
			m.status = resp.StatusCode
			m.outcome = a.outcome
			m.spoolID = resp.Header.Get("Sidecar-Spool-Id")
		}
	}
	a.dur = time.Since(start)
	m.end = l.rec.since()
	a.failed(err)
	l.rec.add(a, m)
	return a.status, a.outcome
}
