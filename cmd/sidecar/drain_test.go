package main

// The drain on SIGTERM/SIGINT (docs/operations.md, "Signals";
// docs/design.md, "Drain"), through the real binary: HTTP/2 connections get
// GOAWAY and their streams in flight finish, idle keep-alive connections
// are closed at once, gRPC streams in flight finish, deliverers stop
// between messages, and shutdown_delay keeps serving with /readyz at 503.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
)

// exitWatch waits for a started sidecar's exit once, so that a test can
// both await it and ask whether it still runs.
type exitWatch struct {
	done chan struct{}
	err  error // cmd.Wait's, once done is closed
}

// watchExit starts waiting for cmd; at the test's end a sidecar still
// running is killed and reaped.
func watchExit(t *testing.T, cmd *exec.Cmd) *exitWatch {
	t.Helper()
	w := &exitWatch{done: make(chan struct{})}
	go func() {
		w.err = cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-w.done
	})
	return w
}

func (w *exitWatch) running() bool {
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// wait returns cmd.Wait's result, failing the test if the sidecar has
// not exited within d.
func (w *exitWatch) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-w.done:
		return w.err
	case <-time.After(d):
		t.Fatalf("sidecar still running %v after it was told to stop", d)
		return nil
	}
}

// blockingUpstream answers "ok" at once, except on paths under /slow,
// which it holds until release (or until the request is canceled), then
// answers "finished". It sends on arrived as each held request comes in.
type blockingUpstream struct {
	*httptest.Server
	arrived chan string
	release func()
}

func newBlockingUpstream(t *testing.T) *blockingUpstream {
	t.Helper()
	release := make(chan struct{})
	u := &blockingUpstream{arrived: make(chan string, 16), release: sync.OnceFunc(func() { close(release) })}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/slow") {
			io.WriteString(w, "ok")
			return
		}
		u.arrived <- r.URL.Path
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "finished")
	}))
	t.Cleanup(u.Close)
	t.Cleanup(u.release) // before Close, which waits for the handlers
	return u
}

// awaitArrival waits up to 10 s for a held request to reach u.
func (u *blockingUpstream) awaitArrival(t *testing.T) string {
	t.Helper()
	select {
	case p := <-u.arrived:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the upstream within 10s")
		return ""
	}
}

// bodyResult is what a client got for one request.
type bodyResult struct {
	status int
	body   string
	err    error
}

// getAsync sends GET url on a connection of its own and delivers the
// result on the returned channel.
func getAsync(url string) <-chan bodyResult {
	out := make(chan bodyResult, 1)
	go func() {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			out <- bodyResult{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- bodyResult{resp.StatusCode, string(b), err}
	}()
	return out
}

// awaitBody waits up to 10 s for r and checks it is 200 with want.
func awaitBody(t *testing.T, what string, r <-chan bodyResult, want string) {
	t.Helper()
	select {
	case got := <-r:
		if got.err != nil || got.status != http.StatusOK || got.body != want {
			t.Errorf("%s = %d %q, %v; want 200 %q", what, got.status, got.body, got.err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no answer within 10s", what)
	}
}

// refused reports whether a TCP connect to addr is refused.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// h2Event is one frame an HTTP/2 client read, copied out of the framer's
// buffers, or the end of the connection (kind "closed").
type h2Event struct {
	kind       string // "goaway", "headers", "data", "rst", "closed"
	stream     uint32
	endStream  bool
	status     string // headers: :status
	data       []byte
	lastStream uint32        // goaway
	code       http2.ErrCode // goaway, rst
	err        error         // closed
}

func (e h2Event) String() string {
	switch e.kind {
	case "goaway":
		return fmt.Sprintf("GOAWAY last stream %d, %v", e.lastStream, e.code)
	case "headers":
		return fmt.Sprintf("HEADERS stream %d :status %q end_stream %t", e.stream, e.status, e.endStream)
	case "data":
		return fmt.Sprintf("DATA stream %d %q end_stream %t", e.stream, e.data, e.endStream)
	case "rst":
		return fmt.Sprintf("RST_STREAM stream %d, %v", e.stream, e.code)
	}
	return fmt.Sprintf("connection ended: %v", e.err)
}

// TestDrainHTTP2GOAWAY: an HTTP/2 (h2c, prior knowledge) connection with a
// stream in flight gets GOAWAY (NO_ERROR) on SIGTERM, whose last stream ID
// covers that stream; the stream's response still arrives whole, then the
// sidecar closes the connection and exits 0.
func TestDrainHTTP2GOAWAY(t *testing.T) {
	up := newBlockingUpstream(t)
	r := startRunning(t, oneRouteConfig(t, up.URL, "127.0.0.1:0", "10s"))
	exit := watchExit(t, r.cmd)
	addr := r.addrs["app"]

	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var wmu sync.Mutex // the reader acknowledges SETTINGS while the test writes
	write := func(f func() error) {
		t.Helper()
		wmu.Lock()
		defer wmu.Unlock()
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	write(func() error { _, err := io.WriteString(conn, http2.ClientPreface); return err })
	write(func() error { return fr.WriteSettings() })

	events := make(chan h2Event, 64)
	quit := make(chan struct{})
	t.Cleanup(func() { close(quit) })
	go func() {
		send := func(e h2Event) bool {
			select {
			case events <- e:
				return true
			case <-quit:
				return false
			}
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				send(h2Event{kind: "closed", err: err})
				return
			}
			var e h2Event
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					wmu.Lock()
					fr.WriteSettingsAck()
					wmu.Unlock()
				}
				continue
			case *http2.GoAwayFrame:
				e = h2Event{kind: "goaway", lastStream: f.LastStreamID, code: f.ErrCode}
			case *http2.MetaHeadersFrame:
				e = h2Event{kind: "headers", stream: f.StreamID, endStream: f.StreamEnded(), status: f.PseudoValue("status")}
			case *http2.DataFrame:
				e = h2Event{kind: "data", stream: f.StreamID, endStream: f.StreamEnded(), data: bytes.Clone(f.Data())}
			case *http2.RSTStreamFrame:
				e = h2Event{kind: "rst", stream: f.StreamID, code: f.ErrCode}
			default: // WINDOW_UPDATE, PING: not part of the check
				continue
			}
			if !send(e) {
				return
			}
		}
	}()
	next := func(what string) h2Event {
		t.Helper()
		select {
		case e := <-events:
			return e
		case <-time.After(10 * time.Second):
			t.Fatalf("no frame within 10s waiting for %s", what)
			return h2Event{}
		}
	}

	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", addr}, {":path", "/slow/h2"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	write(func() error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	})
	up.awaitArrival(t)

	r.cmd.Process.Signal(syscall.SIGTERM)
	e := next("GOAWAY")
	if e.kind != "goaway" {
		t.Fatalf("first frame after SIGTERM with stream 1 in flight = %v, want GOAWAY", e)
	}
	if e.code != http2.ErrCodeNo || e.lastStream < 1 {
		t.Fatalf("GOAWAY code %v, last stream %d; want NO_ERROR covering stream 1", e.code, e.lastStream)
	}
	if !exit.running() {
		t.Fatalf("sidecar exited (%v) with stream 1 in flight", exit.err)
	}

	up.release()
	e = next("the response HEADERS")
	if e.kind != "headers" || e.stream != 1 || e.status != "200" {
		t.Fatalf("frame after the upstream answered = %v, want HEADERS :status 200 on stream 1", e)
	}
	var body []byte
	for end := e.endStream; !end; {
		e = next("the response DATA")
		if e.kind != "data" || e.stream != 1 {
			t.Fatalf("frame while reading the body = %v, want DATA on stream 1", e)
		}
		body = append(body, e.data...)
		end = e.endStream
	}
	if string(body) != "finished" {
		t.Errorf("stream 1 body = %q, want %q", body, "finished")
	}
	e = next("the connection to close")
	if e.kind != "closed" {
		t.Errorf("frame after stream 1 ended = %v, want the connection closed", e)
	} else if !errors.Is(e.err, io.EOF) && !errors.Is(e.err, syscall.ECONNRESET) {
		t.Errorf("connection ended with %v, want EOF", e.err)
	}
	if err := exit.wait(t, 10*time.Second); err != nil {
		t.Errorf("exit after draining = %v, want 0", err)
	}
}

// TestDrainClosesIdleKeepAlive: on SIGTERM an HTTP/1.1 keep-alive
// connection that sits idle is closed at once, while a request in flight
// on another connection keeps the sidecar draining and then completes.
func TestDrainClosesIdleKeepAlive(t *testing.T) {
	up := newBlockingUpstream(t)
	r := startRunning(t, oneRouteConfig(t, up.URL, "127.0.0.1:0", "10s"))
	exit := watchExit(t, r.cmd)
	addr := r.addrs["app"]

	idle, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idle.Close() })
	idle.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(idle, "GET /fast HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(b) != "ok" || resp.Close {
		t.Fatalf("GET /fast on the keep-alive connection = %d %q (close %t), %v; want 200 ok kept alive", resp.StatusCode, b, resp.Close, err)
	}

	slow := getAsync("http://" + addr + "/slow/one")
	up.awaitArrival(t)
	r.cmd.Process.Signal(syscall.SIGTERM)
	sent := time.Now()
	// The idle connection ends well before the 10 s grace.
	idle.SetReadDeadline(sent.Add(3 * time.Second))
	n, err := br.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read on the idle keep-alive connection after SIGTERM = %d bytes, %v after %v; want EOF within 3s", n, err, time.Since(sent))
	}
	t.Logf("idle connection closed %v after SIGTERM", time.Since(sent).Round(time.Millisecond))
	if !exit.running() {
		t.Fatalf("sidecar exited (%v) with a request in flight: the idle connection was closed by the exit, not the drain", exit.err)
	}
	select {
	case got := <-slow:
		t.Fatalf("request in flight answered before the upstream did: %+v", got)
	default:
	}
	up.release()
	awaitBody(t, "the request in flight during the drain", slow, "finished")
	if err := exit.wait(t, 10*time.Second); err != nil {
		t.Errorf("exit after draining = %v, want 0", err)
	}
}

// pacedStreamer is a TestService whose StreamingOutputCall sends n
// messages, the first at once and each later one when the test sends on
// next; it reports on ended what the call returned.
type pacedStreamer struct {
	testgrpc.UnimplementedTestServiceServer
	n     int
	next  chan struct{}
	ended chan error // buffered
}

func (s *pacedStreamer) StreamingOutputCall(_ *testgrpc.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) (err error) {
	defer func() { s.ended <- err }()
	for i := range s.n {
		if i > 0 {
			select {
			case <-s.next:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: []byte(strconv.Itoa(i))}}); err != nil {
			return err
		}
	}
	return nil
}

// TestDrainGRPCStreamFinishes: a server-streaming gRPC call in flight at
// SIGTERM gets every message and status OK, and the sidecar exits 0 after
// it; a call started during the drain fails UNAVAILABLE at once, on the
// client connection that got GOAWAY and on a new one alike.
func TestDrainGRPCStreamFinishes(t *testing.T) {
	const messages = 5
	svc := &pacedStreamer{n: messages, next: make(chan struct{}), ended: make(chan error, 1)}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, svc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)

	cfg := writeConfig(t, fmt.Sprintf(`
version: 1
shutdown_grace: 10s
admin: {address: "127.0.0.1:0"}
upstreams:
  up: {endpoints: ["http://%s"], protocol: grpc}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: rpc, upstream: up}
`, ln.Addr()))
	r := startRunning(t, cfg)
	exit := watchExit(t, r.cmd)
	addr := r.addrs["app"]
	dial := func() *grpc.ClientConn {
		t.Helper()
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	cc := dial()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := testgrpc.NewTestServiceClient(cc).StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recv := func(i int) {
		t.Helper()
		m, err := stream.Recv()
		if err != nil || string(m.GetPayload().GetBody()) != strconv.Itoa(i) {
			t.Fatalf("message %d of the stream = %q, %v", i, m.GetPayload().GetBody(), err)
		}
	}
	recv(0)
	if cc.GetState() != connectivity.Ready {
		t.Fatalf("client connection %v with a stream open, want READY", cc.GetState())
	}

	r.cmd.Process.Signal(syscall.SIGTERM)
	// The listener stops accepting, and the client's connection leaves
	// READY once its GOAWAY arrives.
	poll.Until(t, 5*time.Second, "the listener to refuse connections after SIGTERM", func() bool { return refused(addr) })
	poll.Until(t, 5*time.Second, "the client connection to get GOAWAY (leave READY)", func() bool { return cc.GetState() != connectivity.Ready })

	// New calls are refused, not queued and not hung.
	for _, c := range []struct {
		name string
		cc   *grpc.ClientConn
	}{{"the connection that got GOAWAY", cc}, {"a new connection", dial()}} {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		began := time.Now()
		_, err := testgrpc.NewTestServiceClient(c.cc).EmptyCall(cctx, &testgrpc.Empty{})
		ccancel()
		if status.Code(err) != codes.Unavailable {
			t.Errorf("EmptyCall on %s during the drain = %v after %v, want UNAVAILABLE", c.name, err, time.Since(began))
		}
	}
	if !exit.running() {
		t.Fatalf("sidecar exited (%v) with a stream in flight", exit.err)
	}

	for i := 1; i < messages; i++ {
		select {
		case svc.next <- struct{}{}:
		case err := <-svc.ended:
			t.Fatalf("the upstream's stream ended before message %d: %v", i, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("the upstream's stream did not ask for message %d within 10s", i)
		}
		recv(i)
	}
	if m, err := stream.Recv(); err != io.EOF {
		t.Fatalf("after %d messages: Recv = %v, %v; want the end of the stream with status OK", messages, m, err)
	}
	if err := exit.wait(t, 10*time.Second); err != nil {
		t.Errorf("exit after the stream finished = %v, want 0", err)
	}
}

// deliveryRecorder is an upstream that records each delivery's
// Idempotency-Key in order of arrival and, until release, holds it.
type deliveryRecorder struct {
	*httptest.Server
	arrived chan string
	release func()

	mu   sync.Mutex
	keys []string
}

func newDeliveryRecorder(t *testing.T) *deliveryRecorder {
	t.Helper()
	release := make(chan struct{})
	u := &deliveryRecorder{arrived: make(chan string, 64), release: sync.OnceFunc(func() { close(release) })}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		u.mu.Lock()
		u.keys = append(u.keys, key)
		u.mu.Unlock()
		select {
		case u.arrived <- key:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(u.Close)
	t.Cleanup(u.release)
	return u
}

func (u *deliveryRecorder) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.keys)
}

// spoolRoutes is the "routes" object of GET /v1/spool: per route, the
// pending depth and the deliverer, nil when none runs for the route.
type spoolRoutes struct {
	Routes map[string]struct {
		Depth    int64 `json:"depth"`
		Delivery *struct {
			Delivered int64 `json:"delivered"`
		} `json:"delivery"`
	} `json:"routes"`
}

// TestDrainDeliverersStopBetweenMessages: with messages spooled and
// deliveries held by the upstream, SIGTERM stops the deliverers between
// messages: the deliveries in flight finish and are acknowledged, no other
// starts, and the rest stay pending in the spool, delivered by the next
// start, each once.
func TestDrainDeliverersStopBetweenMessages(t *testing.T) {
	for _, tc := range []struct {
		ordering string
		inFlight int
	}{{"fifo", 1}, {"none", 2}} {
		t.Run(tc.ordering, func(t *testing.T) {
			const messages = 5
			up := newDeliveryRecorder(t)
			dir := t.TempDir()
			async := "{when: always, ordering: fifo}"
			if tc.ordering == "none" {
				async = fmt.Sprintf("{when: always, ordering: none, max_in_flight: %d}", tc.inFlight)
			}
			cfg := writeConfig(t, fmt.Sprintf(`
version: 1
shutdown_grace: 10s
admin: {address: "127.0.0.1:0"}
spool: {dir: %q}
upstreams:
  up: {endpoints: [%q]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: ev, upstream: up, async: %s}
`, dir, up.URL, async))
			r := startRunning(t, cfg)
			exit := watchExit(t, r.cmd)

			keyOf := map[string]string{} // spool ID → Idempotency-Key
			for i := range messages {
				key := "msg-" + strconv.Itoa(i)
				req, _ := http.NewRequest("POST", "http://"+r.addrs["app"]+"/ev", strings.NewReader(key))
				req.Header.Set("Idempotency-Key", key)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				id := resp.Header.Get("Sidecar-Spool-Id")
				if resp.StatusCode != http.StatusAccepted || id == "" {
					t.Fatalf("POST %s = %d, spool id %q; want 202 with an id", key, resp.StatusCode, id)
				}
				keyOf[id] = key
			}
			for range tc.inFlight {
				select {
				case <-up.arrived:
				case <-time.After(10 * time.Second):
					t.Fatalf("%d deliveries reached the upstream within 10s, want %d", len(up.seen()), tc.inFlight)
				}
			}

			r.cmd.Process.Signal(syscall.SIGTERM)
			// The deliverers are stopped once /v1/spool shows none for the
			// route (the admin API serves until the drain ends).
			poll.Until(t, 10*time.Second, "the route's deliverer to stop after SIGTERM", func() bool {
				var st spoolRoutes
				getJSON(t, "http://"+r.admin+"/v1/spool", &st)
				return st.Routes["ev"].Delivery == nil
			})
			if !exit.running() {
				t.Fatalf("sidecar exited (%v) with deliveries in flight", exit.err)
			}
			up.release()
			if err := exit.wait(t, 10*time.Second); err != nil {
				t.Fatalf("exit after draining = %v, want 0", err)
			}
			first := up.seen()
			if len(first) != tc.inFlight {
				t.Fatalf("deliveries before the exit = %v, want only the %d in flight at SIGTERM", first, tc.inFlight)
			}

			// What is pending is exactly what was not delivered: the
			// deliveries in flight were acknowledged.
			st, err := spool.OpenFile(dir, spool.FileOptions{})
			if err != nil {
				t.Fatal(err)
			}
			infos, err := st.List("ev", spool.Pending, "", 100)
			st.Close()
			if err != nil {
				t.Fatal(err)
			}
			var pending, wantPending []string
			for _, in := range infos {
				pending = append(pending, keyOf[in.ID])
			}
			for _, k := range keyOf {
				if !slices.Contains(first, k) {
					wantPending = append(wantPending, k)
				}
			}
			slices.Sort(pending)
			slices.Sort(wantPending)
			if !slices.Equal(pending, wantPending) {
				t.Fatalf("pending after the drain = %v, want %v (delivered: %v)", pending, wantPending, first)
			}

			// The next start delivers the rest, each once.
			r2 := startRunning(t, cfg)
			exit2 := watchExit(t, r2.cmd)
			poll.Until(t, 10*time.Second, "the next start to deliver the rest", func() bool {
				var st spoolRoutes
				getJSON(t, "http://"+r2.admin+"/v1/spool", &st)
				return len(up.seen()) >= messages && st.Routes["ev"].Depth == 0
			})
			second := up.seen()[len(first):]
			slices.Sort(second)
			if !slices.Equal(second, wantPending) {
				t.Errorf("delivered by the next start = %v, want %v once each", second, wantPending)
			}
			r2.cmd.Process.Signal(syscall.SIGTERM)
			if err := exit2.wait(t, 10*time.Second); err != nil {
				t.Errorf("exit of the next start = %v, want 0", err)
			}
		})
	}
}

// TestDrainShutdownDelay: during shutdown_delay /readyz answers 503 while
// the listener still accepts and serves new connections; after it the
// listener refuses them while the request in flight drains, then
// completes.
func TestDrainShutdownDelay(t *testing.T) {
	const delay = time.Second
	up := newBlockingUpstream(t)
	cfg := writeConfig(t, fmt.Sprintf(`
version: 1
shutdown_delay: %v
shutdown_grace: 5s
admin: {address: "127.0.0.1:0"}
upstreams:
  up: {endpoints: [%q]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, upstream: up}
`, delay, up.URL))
	r := startRunning(t, cfg)
	exit := watchExit(t, r.cmd)
	addr := r.addrs["app"]
	slow := getAsync("http://" + addr + "/slow/one")
	up.awaitArrival(t)

	sent := time.Now()
	r.cmd.Process.Signal(syscall.SIGTERM)
	poll.Until(t, 5*time.Second, "/readyz to turn 503 after SIGTERM", func() bool {
		return readyzCode(r.admin) == http.StatusServiceUnavailable
	})
	// At once: within the delay, not after it.
	if el := time.Since(sent); el >= delay {
		t.Errorf("/readyz turned 503 %v after SIGTERM, not before shutdown_delay %v ended", el, delay)
	}
	// Still serving, on a new connection.
	awaitBody(t, fmt.Sprintf("GET on a new connection %v after SIGTERM, within shutdown_delay %v", time.Since(sent).Round(time.Millisecond), delay), getAsync("http://"+addr+"/fast"), "ok")

	poll.Until(t, delay+5*time.Second, "the listener to refuse connections after shutdown_delay", func() bool { return refused(addr) })
	if el := time.Since(sent); el < delay {
		t.Errorf("listener refused connections %v after SIGTERM, before shutdown_delay %v", el, delay)
	}
	if !exit.running() {
		t.Fatalf("sidecar exited (%v) with a request in flight", exit.err)
	}
	if code := readyzCode(r.admin); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining = %d, want 503", code)
	}
	up.release()
	awaitBody(t, "the request in flight across shutdown_delay", slow, "finished")
	if err := exit.wait(t, 10*time.Second); err != nil {
		t.Errorf("exit after draining = %v, want 0", err)
	}
}
