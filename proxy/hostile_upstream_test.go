package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// Hostile upstreams (issue 16, item 1): upstreams that break the protocol
// or the connection in every way a real one can, written as raw TCP
// servers on loopback, or put behind toxiproxy, a real fault injector, in
// this process. Each case checks what docs/design.md ("Outcomes", "Status
// mapping") and docs/policies.md ("When a response breaks off") promise:
//
//   - the app gets a truthful answer: the proxy's own 502 reset or 504
//     timeout with Sidecar-Outcome, or, once bytes of the answer were
//     sent, a cut connection; a truncated body never reads as complete;
//   - the answer comes within the route's timeout;
//   - the endpoint's breaker counts the failure (consecutive_failures: 1,
//     so the next request gets 503 breaker_open);
//   - the sockets and goroutines the request used are released: the
//     process's descriptors and goroutines return to their count before
//     it.
//
// toxiproxy (github.com/Shopify/toxiproxy/v2) runs in this process,
// between the sidecar and a raw upstream. Its slicer and bandwidth toxics
// only pass answers through whole here: in v2.5.0, when the downstream
// peer goes away mid-stream, their goroutines stay blocked on a channel
// nobody reads, which TestMain's leak check would report.

// rawServer is a loopback TCP server that hands each connection to serve
// on a goroutine of its own, and closes them all at cleanup.
type rawServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	n     int // connections accepted
}

func newRawServer(t testing.TB, serve func(n int, c net.Conn)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.n++
			n := s.n
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				serve(n, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) addr() string { return s.ln.Addr().String() }

// answer reads one request's head from c and writes resp, as is.
func answer(resp string) func(int, net.Conn) {
	return func(_ int, c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, resp)
	}
}

// holdOpen waits until the peer closes c or the test's cleanup does.
func holdOpen(c net.Conn) { io.Copy(io.Discard, c) }

// toxic puts a toxiproxy proxy in front of addr with the toxics given (the
// JSON of toxiproxy's API: {"type": ..., "stream": ..., "attributes": ...})
// and returns its address.
func toxic(t testing.TB, addr string, toxics ...string) string {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "upstream", "127.0.0.1:0", addr)
	for _, tx := range toxics {
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(tx)); err != nil {
			t.Fatalf("toxiproxy: adding %s: %v", tx, err)
		}
	}
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return p.Listen
}

// resources are the process's open file descriptors and goroutines.
type resources struct{ fds, goroutines int }

func countResources(t testing.TB) resources {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("counting descriptors: %v", err)
	}
	return resources{fds: len(fds), goroutines: countGoroutines()}
}

// idleH2Worker starts the stack of an HTTP/2 handler goroutine that
// internal/h2server keeps idle, for the next stream, up to 10 s
// (docs/design.md, "HTTP/2 connections"): how many there are depends on
// how calls overlapped, not on what a call leaked.
const idleH2Worker = "github.com/sidecar-proxy/sidecar/internal/h2server.(*workerPool).work("

// countGoroutines counts the process's goroutines but idle HTTP/2
// handler goroutines.
func countGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		_, frames, _ := strings.Cut(g, "\n")
		if g != "" && !strings.HasPrefix(frames, idleH2Worker) {
			count++
		}
	}
	return count
}

// expectReleased waits (bounded) until the process holds no more
// descriptors and goroutines than base, and fails t with a goroutine dump
// if it does not.
func expectReleased(t testing.TB, base resources) {
	t.Helper()
	var now resources
	if poll.Within(5*time.Second, func() bool {
		now = countResources(t)
		return now.fds <= base.fds && now.goroutines <= base.goroutines
	}) {
		return
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	t.Errorf("after the request: %d descriptors and %d goroutines, want at most the %d and %d before it\n%s",
		now.fds, now.goroutines, base.fds, base.goroutines, buf)
}

// hostileConfig is a listener "app" with a route /warm to a healthy
// upstream (UPSTREAM0) and every other path to the hostile one
// (HOSTILE), under policy, with a breaker that opens on one failure.
func hostileConfig(policy string) string {
	return `
version: 1
upstreams:
  healthy: {endpoints: ["UPSTREAM0"]}
  hostile: {endpoints: ["HOSTILE"], connect_timeout: 1s}
policies:
  p: ` + policy + `
  warm: {timeout: 5s}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: warm, match: {path_prefix: /warm}, upstream: healthy, policy: warm}
      - {name: hostile, match: {path_prefix: /}, upstream: hostile, policy: p}
`
}

// hostileBreaker is the breaker every hostile case runs with.
const hostileBreaker = `circuit_breaker: {consecutive_failures: 1, open_for: 1m}`

func TestHostileUpstreams(t *testing.T) {
	const timeout = 700 * time.Millisecond
	policy := `{timeout: 700ms, ` + hostileBreaker + `}`
	body100 := strings.Repeat("x", 100)
	tests := []struct {
		name string
		// upstream starts the hostile upstream and returns its host:port;
		// answered is closed once the app has its answer.
		upstream func(t *testing.T, answered <-chan struct{}) string
		policy   string        // default: policy
		limit    time.Duration // the deadline that ends it; default: timeout
		method   string        // default GET
		body     int64         // request body size
		// want is the status the app gets; 0: the answer started (200)
		// and its body is cut.
		want        int
		wantOutcome string
		wantBody    string // for an upstream's answer that passes whole
		breaks      bool   // the breaker counts it: the next request gets 503 breaker_open
		next        string // if set, the body the next request gets
	}{
		{
			// The upstream resets the connection (RST) in the middle of
			// a body the gate still holds: the proxy answers itself.
			name: "reset_mid_body",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, func(_ int, c net.Conn) {
					if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"+body100[:40])
					c.(*net.TCPConn).SetLinger(0)
				}).addr()
			},
			want: http.StatusBadGateway, wantOutcome: "reset", breaks: true,
		},
		{
			// The same through toxiproxy: reset_peer cuts the connection
			// with an RST as the answer comes.
			name: "toxiproxy_reset_peer",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				up := newRawServer(t, func(_ int, c net.Conn) {
					answer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"+body100[:40])(0, c)
					holdOpen(c)
				})
				return toxic(t, up.addr(), `{"type": "reset_peer", "stream": "downstream", "attributes": {"timeout": 0}}`)
			},
			want: http.StatusBadGateway, wantOutcome: "reset", breaks: true,
		},
		{
			// Once more than the gate holds went to the app, a reset
			// can only cut the app's connection.
			name: "reset_after_bytes_sent",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, func(_ int, c net.Conn) {
					if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("y", 3*gateSize))
					c.(*net.TCPConn).SetLinger(0)
				}).addr()
			},
			want: 0, breaks: true,
		},
		{
			// toxiproxy's limit_data closes the connection after the
			// head and 40 bytes of a 100-byte body.
			name: "toxiproxy_limit_data",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				const head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
				up := newRawServer(t, func(_ int, c net.Conn) {
					answer(head+body100)(0, c)
					holdOpen(c)
				})
				return toxic(t, up.addr(), fmt.Sprintf(`{"type": "limit_data", "stream": "downstream", "attributes": {"bytes": %d}}`, len(head)+40))
			},
			want: http.StatusBadGateway, wantOutcome: "reset", breaks: true,
		},
		{
			// A chunked answer that never ends: its first chunk is
			// streamed to the app at once, so the route's timeout can
			// only cut the connection.
			name: "never_ending_chunked",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, func(_ int, c net.Conn) {
					answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")(0, c)
					holdOpen(c)
				}).addr()
			},
			want: 0, breaks: true,
		},
		{
			// An answer whose body never comes: the gate still holds it
			// when the route's timeout passes.
			name: "never_ending_body",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, func(_ int, c net.Conn) {
					answer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"+body100[:10])(0, c)
					holdOpen(c)
				}).addr()
			},
			want: http.StatusGatewayTimeout, wantOutcome: "timeout", breaks: true,
		},
		{
			// No answer at all: toxiproxy's timeout toxic swallows it.
			name: "toxiproxy_timeout",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				up := newRawServer(t, func(_ int, c net.Conn) {
					answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")(0, c)
					holdOpen(c)
				})
				return toxic(t, up.addr(), `{"type": "timeout", "stream": "downstream", "attributes": {"timeout": 0}}`)
			},
			want: http.StatusGatewayTimeout, wantOutcome: "timeout", breaks: true,
		},
		{
			// The answer comes later than per_try_timeout (toxiproxy's
			// latency).
			name:   "toxiproxy_latency",
			policy: `{timeout: 700ms, per_try_timeout: 200ms, ` + hostileBreaker + `}`,
			limit:  200 * time.Millisecond,
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				up := newRawServer(t, func(_ int, c net.Conn) {
					answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")(0, c)
					holdOpen(c)
				})
				return toxic(t, up.addr(), `{"type": "latency", "stream": "downstream", "attributes": {"latency": 800}}`)
			},
			want: http.StatusGatewayTimeout, wantOutcome: "timeout", breaks: true,
		},
		{
			// A slow trickle: 16 bytes every 20ms, so the 4 KiB body
			// would take 5s; the gate still holds it when the route's
			// timeout passes.
			name: "slow_trickle",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, func(_ int, c net.Conn) {
					if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n")
					tick := time.NewTicker(20 * time.Millisecond)
					defer tick.Stop()
					for range 4096 / 16 {
						if _, err := io.WriteString(c, strings.Repeat("z", 16)); err != nil {
							return
						}
						<-tick.C
					}
				}).addr()
			},
			want: http.StatusGatewayTimeout, wantOutcome: "timeout", breaks: true,
		},
		{
			// toxiproxy's slicer cuts the answer into pieces of 1 to 5
			// bytes: the answer still comes whole, and nothing counts
			// against the upstream. (Its slicer and bandwidth toxics
			// are not used to cut an answer off: when the sidecar goes
			// away mid-stream, toxiproxy v2.5.0 leaves their goroutines
			// blocked for good.)
			name: "toxiproxy_slicer_fragments",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				up := newRawServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Spread: "+strings.Repeat("s", 200)+"\r\nConnection: close\r\n\r\n"+body100))
				return toxic(t, up.addr(), `{"type": "slicer", "stream": "downstream", "attributes": {"average_size": 3, "size_variation": 2, "delay": 100}}`)
			},
			want: http.StatusOK, wantBody: body100,
		},
		{
			name: "malformed_status_line",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, answer("HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok")).addr()
			},
			want: http.StatusBadGateway, wantOutcome: "reset", breaks: true,
		},
		{
			name: "not_http",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, answer("SSH-2.0-OpenSSH_9.6\r\n")).addr()
			},
			want: http.StatusBadGateway, wantOutcome: "reset", breaks: true,
		},
		{
			// Header fields without end, past the 1 MiB the proxy reads.
			// (A longer timeout: under the race detector, reading 1 MiB
			// of header lines can take most of a second.)
			name:   "huge_header_block",
			policy: `{timeout: 5s, ` + hostileBreaker + `}`,
			limit:  5 * time.Second,
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, func(_ int, c net.Conn) {
					if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\n")
					line := "X-Filler: " + strings.Repeat("f", 8000) + "\r\n"
					for range 512 { // 4 MiB
						if _, err := io.WriteString(c, line); err != nil {
							return
						}
					}
					holdOpen(c)
				}).addr()
			},
			want: http.StatusBadGateway, wantOutcome: "reset", breaks: true,
		},
		{
			// Content-Length shorter than what follows: the answer is
			// the 5 bytes it declares, and the rest, which would be
			// read as the next answer on that connection, is dropped
			// with the connection.
			name: "length_shorter_than_body",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, func(n int, c net.Conn) {
					if n == 1 {
						answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")(n, c)
						holdOpen(c)
						return
					}
					answer("HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecond")(n, c)
				}).addr()
			},
			want: http.StatusOK, wantBody: "hello", next: "second",
		},
		{
			// Content-Length longer than the body, then a close.
			name: "length_longer_than_body",
			upstream: func(t *testing.T, _ <-chan struct{}) string {
				return newRawServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")).addr()
			},
			want: http.StatusBadGateway, wantOutcome: "reset", breaks: true,
		},
		{
			// An upstream that accepts the connection and never reads:
			// a large upload fills the socket's buffers and stalls, and
			// per_try_timeout ends it. The app gets the upstream's
			// timeout, not its own request_timeout: the app was sending.
			name:   "never_reads",
			method: http.MethodPut,
			body:   16 << 20,
			policy: `{timeout: 5s, per_try_timeout: 500ms, ` + hostileBreaker + `}`,
			limit:  500 * time.Millisecond,
			upstream: func(t *testing.T, answered <-chan struct{}) string {
				return newRawServer(t, func(_ int, c net.Conn) {
					c.(*net.TCPConn).SetReadBuffer(4 << 10)
					<-answered
				}).addr()
			},
			want: http.StatusGatewayTimeout, wantOutcome: "timeout", breaks: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := tt.policy
			if pol == "" {
				pol = policy
			}
			limit := timeout
			if tt.limit > 0 {
				limit = tt.limit
			}
			answered := make(chan struct{})
			hostile := tt.upstream(t, answered)
			sc := startSidecar(t, strings.Replace(hostileConfig(pol), "HOSTILE", "http://"+hostile, 1), newUpstream(t, nil))
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}

			base := warmUp(t, sc)

			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			var body io.Reader
			if tt.body > 0 {
				body = io.LimitReader(zeros{}, tt.body)
			}
			req, _ := http.NewRequest(method, sc.url("/items/1"), body)
			req.ContentLength = tt.body
			start := time.Now()
			resp, err := client.Do(req)
			var got []byte
			if err == nil {
				got, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			elapsed := time.Since(start)
			close(answered)
			if bound := limit + 3*time.Second; elapsed > bound {
				t.Errorf("the app's answer took %v, want it within the route's timeout %v (bound %v)", elapsed, limit, bound)
			}
			if tt.want == 0 {
				// The answer had started: it must not read as whole.
				if err == nil {
					t.Errorf("%s = %d with a whole %d-byte body (Content-Length %d), want the body cut", method, resp.StatusCode, len(got), resp.ContentLength)
				}
			} else if tt.wantBody != "" {
				if err != nil || resp.StatusCode != tt.want || string(got) != tt.wantBody {
					t.Errorf("%s = %v (%q), %v; want %d %q", method, resp.Status, got, err, tt.want, tt.wantBody)
				}
			} else {
				if err != nil {
					t.Fatalf("%s: %v, want %d %s", method, err, tt.want, tt.wantOutcome)
				}
				if resp.StatusCode != tt.want || resp.Header.Get(HeaderOutcome) != tt.wantOutcome {
					t.Errorf("%s = %d %s=%q (%q), want %d %s", method, resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome), got, tt.want, tt.wantOutcome)
				}
				if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(got)) || !bytes.Contains(got, []byte(`"outcome"`)) {
					t.Errorf("body %q with Content-Length %q, want the proxy's own JSON error, whole", got, cl)
				}
			}

			if tt.breaks {
				resp, body := get(t, sc.url("/items/2"))
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderOutcome) != "breaker_open" {
					t.Errorf("next GET = %d %s=%q (%q), want 503 breaker_open: the breaker must count the failure", resp.StatusCode, HeaderOutcome, resp.Header.Get(HeaderOutcome), body)
				}
			}
			if tt.next != "" {
				if resp, body := get(t, sc.url("/items/2")); resp.StatusCode != http.StatusOK || body != tt.next {
					t.Errorf("next GET = %d %q, want 200 %q", resp.StatusCode, body, tt.next)
				}
			}
			http.DefaultTransport.(*http.Transport).CloseIdleConnections()
			tr.CloseIdleConnections()
			expectReleased(t, base)
		})
	}
}

// warmUp sends the sidecar's listener "app" a first request, to the
// route /warm, and returns the count of descriptors and goroutines after
// it: the first request starts what the sidecar starts once (its
// connection watcher) and pools a connection to the healthy upstream. It
// asks for the connection to be closed and reads until the sidecar has
// closed it, so the count does not include that connection.
func warmUp(t testing.TB, sc *sidecar) resources {
	t.Helper()
	c, err := net.Dial("tcp", sc.addr["app"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /warm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	got, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(got, []byte("HTTP/1.1 200 ")) {
		t.Fatalf("warm-up request = %q, %v; want 200 and the connection closed", got, err)
	}
	c.Close()
	return countResources(t)
}

// zeros reads zero bytes without end.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// rawH2Server is a loopback h2c server (prior knowledge) written with
// x/net/http2's Framer, for answers no real server would give: it
// answers each request's HEADERS with answer, on its reading goroutine,
// and otherwise only acknowledges SETTINGS and PINGs.
func rawH2Server(t *testing.T, answer func(c net.Conn, fr *http2.Framer, enc *h2HeaderWriter, id uint32)) string {
	t.Helper()
	return newRawServer(t, func(_ int, c net.Conn) {
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
			return
		}
		fr := http2.NewFramer(c, c)
		hw := &h2HeaderWriter{fr: fr}
		hw.enc = hpack.NewEncoder(&hw.buf)
		if fr.WriteSettings() != nil {
			return
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					fr.WritePing(true, f.Data)
				}
			case *http2.HeadersFrame:
				answer(c, fr, hw, f.StreamID)
			}
		}
	}).addr()
}

// h2HeaderWriter writes header blocks with one connection's HPACK encoder.
type h2HeaderWriter struct {
	fr  *http2.Framer
	buf bytes.Buffer
	enc *hpack.Encoder
}

func (w *h2HeaderWriter) write(id uint32, endStream bool, kv ...string) error {
	w.buf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		w.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: w.buf.Bytes(), EndHeaders: true, EndStream: endStream})
}

// grpcMessage is a gRPC length-prefixed message of m.
func grpcMessage(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b))), b...)
}

// TestHostileGRPCUpstreams: a gRPC upstream that breaks the call after
// its response headers. The app never gets OK for a call whose status
// never came; it gets a gRPC error, within the route's timeout; the
// breaker counts the failure (failure_on lists reset and timeout); and
// what the call used is released.
func TestHostileGRPCUpstreams(t *testing.T) {
	serving := grpcMessage(t, &healthgrpc.HealthCheckResponse{Status: healthgrpc.HealthCheckResponse_SERVING})
	head := []string{":status", "200", "content-type", "application/grpc"}
	tests := []struct {
		name    string
		answer  func(c net.Conn, fr *http2.Framer, hw *h2HeaderWriter, id uint32)
		want    codes.Code
		outcome string // Sidecar-Outcome, when the sidecar answers itself
	}{
		{
			// The response's message, then END_STREAM on the DATA: no
			// trailers, so no status.
			name: "no_trailers",
			answer: func(_ net.Conn, fr *http2.Framer, hw *h2HeaderWriter, id uint32) {
				hw.write(id, false, head...)
				fr.WriteData(id, true, serving)
			},
			want: codes.Internal,
		},
		{
			// Headers, then the stream is reset before any message.
			name: "headers_then_reset",
			answer: func(_ net.Conn, fr *http2.Framer, hw *h2HeaderWriter, id uint32) {
				hw.write(id, false, head...)
				fr.WriteRSTStream(id, http2.ErrCodeInternal)
			},
			want: codes.Unavailable, outcome: "reset",
		},
		{
			// The message, then the connection closes: the sidecar ends
			// the call with its own status in the trailers.
			name: "message_then_close",
			answer: func(c net.Conn, fr *http2.Framer, hw *h2HeaderWriter, id uint32) {
				hw.write(id, false, head...)
				fr.WriteData(id, false, serving)
				c.Close()
			},
			want: codes.Unavailable, outcome: "reset",
		},
		{
			// The message, then nothing: the route's timeout ends it.
			name: "message_then_nothing",
			answer: func(c net.Conn, fr *http2.Framer, hw *h2HeaderWriter, id uint32) {
				hw.write(id, false, head...)
				fr.WriteData(id, false, serving)
			},
			want: codes.DeadlineExceeded, outcome: "timeout",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			healthy := grpcUpstream(t, newInteropServer(t))
			hostile := rawH2Server(t, tt.answer)
			cfg := `
version: 1
upstreams:
  healthy: {endpoints: ["` + healthy + `"], protocol: grpc}
  hostile: {endpoints: ["http://` + hostile + `"], protocol: grpc, idle_conn_timeout: 100ms}
policies:
  p: {timeout: 500ms, circuit_breaker: {consecutive_failures: 1, open_for: 1m}}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: warm, match: {path_prefix: /, headers: {x-route: warm}}, upstream: healthy}
      - {name: hostile, match: {path_prefix: /}, upstream: hostile, policy: p}
`
			sc := startSidecar(t, cfg)
			cc := dialSidecar(t, sc)
			hc := healthgrpc.NewHealthClient(cc)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := hc.Check(metadata.AppendToOutgoingContext(ctx, "x-route", "warm"), &healthgrpc.HealthCheckRequest{}); err != nil {
				t.Fatalf("warm-up Check: %v", err)
			}
			base := countResources(t)

			var hdr, trl metadata.MD
			start := time.Now()
			resp, err := hc.Check(ctx, &healthgrpc.HealthCheckRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
			if el := time.Since(start); el > 500*time.Millisecond+3*time.Second {
				t.Errorf("the call ended after %v, want it within the route's 500ms timeout (and a margin)", el)
			}
			outcome := append(hdr.Get("sidecar-outcome"), trl.Get("sidecar-outcome")...)
			t.Logf("Check = %v, %v; outcome %q", resp, err, outcome)
			if got := status.Code(err); got != tt.want {
				t.Errorf("Check = %v, %v; want code %v", resp, err, tt.want)
			}
			if tt.outcome != "" && (len(outcome) != 1 || outcome[0] != tt.outcome) {
				t.Errorf("sidecar-outcome = %q, want %q", outcome, tt.outcome)
			}

			_, err = hc.Check(ctx, &healthgrpc.HealthCheckRequest{}, grpc.Trailer(&trl))
			if status.Code(err) != codes.Unavailable || len(trl.Get("sidecar-outcome")) == 0 || trl.Get("sidecar-outcome")[0] != "breaker_open" {
				t.Errorf("next Check = %v (sidecar-outcome %q), want UNAVAILABLE breaker_open: the breaker must count the failure", err, trl.Get("sidecar-outcome"))
			}
			expectReleased(t, base)
		})
	}
}
