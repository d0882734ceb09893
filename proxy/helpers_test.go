package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/h1guard"
	"github.com/sidecar-proxy/sidecar/spool"
)

// upstream is a real loopback HTTP server that counts and records requests.
type upstream struct {
	*httptest.Server
	count atomic.Int64
	mu    sync.Mutex
	last  *http.Request
}

func newUpstream(t testing.TB, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.count.Add(1)
		u.mu.Lock()
		u.last = r.Clone(context.Background())
		u.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "hello from %s", r.URL.Path)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) lastRequest() *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

// sidecar is a running Server built from YAML, on loopback ports.
type sidecar struct {
	srv  *Server
	addr map[string]string // listener name -> host:port
	logs *syncBuffer       // warn and error logs
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startSidecar builds and serves cfgYAML; "UPSTREAM<n>" in it is replaced
// by the URL of ups[n].
func startSidecar(t testing.TB, cfgYAML string, ups ...*upstream) *sidecar {
	t.Helper()
	return startSidecarWith(t, cfgYAML, nil, ups...)
}

// startSidecarWith is startSidecar with options for NewServer.
func startSidecarWith(t testing.TB, cfgYAML string, opts []Option, ups ...*upstream) *sidecar {
	t.Helper()
	return startSidecarBuilt(t, cfgYAML, nil, opts, ups...)
}

// startSidecarBuilt is startSidecarWith with options for Build too.
func startSidecarBuilt(t testing.TB, cfgYAML string, bopts []BuildOption, opts []Option, ups ...*upstream) *sidecar {
	t.Helper()
	for i, u := range ups {
		cfgYAML = strings.ReplaceAll(cfgYAML, fmt.Sprintf("UPSTREAM%d", i), u.URL)
	}
	cfg, err := config.Parse("test.yaml", []byte(cfgYAML), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config.Parse:\n%v", err)
	}
	logs := &syncBuffer{}
	level := slog.LevelWarn
	if cfg.Telemetry.AccessLog {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))
	snap, err := Build(cfg, nil, logger, bopts...)
	if err != nil {
		t.Fatalf("Build = %v", err)
	}
	srv := NewServer(snap, logger, opts...)
	if err := srv.Listen(); err != nil {
		t.Fatalf("Listen = %v", err)
	}
	srv.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	sc := &sidecar{srv: srv, addr: map[string]string{}, logs: logs}
	for name, a := range srv.Addrs() {
		sc.addr[name] = a.String()
	}
	return sc
}

func (s *sidecar) url(path string) string { return "http://" + s.addr["app"] + path }

// oneRoute is a config with one listener "app" forwarding everything to
// UPSTREAM0 under the policy given (YAML flow mapping).
func oneRoute(policy string) string {
	return `
version: 1
upstreams:
  up: {endpoints: ["UPSTREAM0"]}
policies:
  p: ` + policy + `
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up, policy: p}
`
}

// sendRaw dials addr, sends raw, and returns the connection, with a 10 s
// deadline against a hang, and a reader of its answers.
func sendRaw(t *testing.T, addr, raw string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c, bufio.NewReader(c)
}

// rawRequest sends raw bytes on a new connection and returns the first
// response and, when the response announced "Connection: close", whether
// the server then really closed the connection.
func rawRequest(t *testing.T, addr, req string) (*http.Response, string, bool) {
	t.Helper()
	c, br := sendRaw(t, addr, req)
	defer c.Close()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response to %q: %v", req, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	closed := false
	if resp.Close {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = br.ReadByte()
		closed = err == io.EOF
	}
	return resp, string(body), closed
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp, string(body)
}

// guardedContext is the context of a request that came through the
// listeners' framing guard on an HTTP/2 connection, for benchmarks and
// tests that call a handler directly: h1guard.ConnContext registers a
// real guarded connection, whose preface makes every Next nil from then
// on, as on an h2c connection.
func guardedContext(tb testing.TB) context.Context {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	gl := h1guard.Listen(ln)
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	conn, err := gl.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	if _, err := io.WriteString(client, preface); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, len(preface))); err != nil {
		tb.Fatal(err)
	}
	return h1guard.ConnContext(context.Background(), conn)
}

// newHandler compiles cfgYAML, with UPSTREAM0 at a refused address, and
// returns the handler of its listener "app" with the snapshot it serves,
// for tests and benchmarks that call ServeHTTP directly. st, if not nil,
// is the spool of its async routes; bopts go to Build.
func newHandler(tb testing.TB, cfgYAML string, st spool.Store, bopts ...BuildOption) (*handler, *Snapshot) {
	tb.Helper()
	yaml := strings.Replace(cfgYAML, "UPSTREAM0", "http://127.0.0.1:1", 1)
	cfg, err := config.Parse("t.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		tb.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	snap, err := Build(cfg, nil, logger, bopts...)
	if err != nil {
		tb.Fatal(err)
	}
	cur := new(atomic.Pointer[Snapshot])
	cur.Store(snap)
	h := &handler{listener: "app", snap: cur, log: logger, spool: new(atomic.Pointer[spooler])}
	if st != nil {
		h.spool.Store(&spooler{store: st, group: newDeliveryGroup(), log: logger})
	}
	return h, snap
}
