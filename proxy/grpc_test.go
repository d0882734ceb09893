package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/internal/testnet"
	"github.com/sidecar-proxy/sidecar/policy"
)

// grpcUpstream serves h on a loopback h2c server and returns its URL. A
// *grpc.Server is an http.Handler, so tests can wrap a real gRPC service
// with grpcScript failures.
func grpcUpstream(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: protos}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// grpcConfig is a config with one listener "app" (protocol auto) sending
// every call to the gRPC upstream at url under policy (a YAML flow
// mapping); match, when not empty, replaces the route's match.
func grpcConfig(url, policy, match string) string {
	if match == "" {
		match = "{path_prefix: /}"
	}
	return `
version: 1
upstreams:
  up: {endpoints: ["` + url + `"], protocol: grpc, connect_timeout: 1s}
policies:
  p: ` + policy + `
listeners:
  - name: app
    address: 127.0.0.1:0
    protocol: auto
    routes:
      - {name: rpc, match: ` + match + `, upstream: up, policy: p}
`
}

// dialSidecar returns a gRPC client connection to the sidecar's listener.
func dialSidecar(t *testing.T, sc *sidecar) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+sc.addr["app"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// newInteropServer is grpc-go's interop TestService plus the health
// service, on one gRPC server.
func newInteropServer(t *testing.T) *grpc.Server {
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, interop.NewTestServer())
	healthgrpc.RegisterHealthServer(s, health.NewServer())
	t.Cleanup(s.Stop)
	return s
}

// TestGRPCInterop runs grpc-go's interop client cases through the sidecar
// to a real interop server: unary, client/server/bidi streaming, metadata
// and trailers both ways, status codes and messages, deadlines and
// cancellation all pass through (docs/grpc.md: gRPC streaming passes
// through). The route retries, so request bodies go through the replay
// tee: a bidi ping-pong proves nothing is read ahead. A failing case ends
// the test binary (the interop cases call grpclog's Fatal).
func TestGRPCInterop(t *testing.T) {
	// An auto listener hands gRPC's connections from internal/h1server
	// to internal/h2server; an h2c listener gives them to it at once.
	for _, proto := range []string{"auto", "h2c"} {
		t.Run(proto, func(t *testing.T) { testGRPCInterop(t, proto) })
	}
}

func testGRPCInterop(t *testing.T, proto string) {
	url := grpcUpstream(t, newInteropServer(t))
	sc := startSidecar(t, strings.Replace(grpcConfig(url, "{timeout: 20s, retry: {attempts: 3}}", ""), "protocol: auto", "protocol: "+proto, 1))
	cc := dialSidecar(t, sc)
	tc := testgrpc.NewTestServiceClient(cc)
	cases := []struct {
		name string
		run  func(context.Context)
	}{
		{"empty_unary", func(ctx context.Context) { interop.DoEmptyUnaryCall(ctx, tc) }},
		{"large_unary", func(ctx context.Context) { interop.DoLargeUnaryCall(ctx, tc) }},
		{"client_streaming", func(ctx context.Context) { interop.DoClientStreaming(ctx, tc) }},
		{"server_streaming", func(ctx context.Context) { interop.DoServerStreaming(ctx, tc) }},
		{"ping_pong", func(ctx context.Context) { interop.DoPingPong(ctx, tc) }},
		{"empty_stream", func(ctx context.Context) { interop.DoEmptyStream(ctx, tc) }},
		{"custom_metadata", func(ctx context.Context) { interop.DoCustomMetadata(ctx, tc) }},
		{"status_code_and_message", func(ctx context.Context) { interop.DoStatusCodeAndMessage(ctx, tc) }},
		{"special_status_message", func(ctx context.Context) { interop.DoSpecialStatusMessage(ctx, tc) }},
		{"unimplemented_method", func(ctx context.Context) { interop.DoUnimplementedMethod(ctx, cc) }},
		{"timeout_on_sleeping_server", func(ctx context.Context) { interop.DoTimeoutOnSleepingServer(ctx, tc) }},
		{"cancel_after_begin", func(ctx context.Context) { interop.DoCancelAfterBegin(ctx, tc) }},
		{"cancel_after_first_response", func(ctx context.Context) { interop.DoCancelAfterFirstResponse(ctx, tc) }},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tt.run(ctx)
		})
	}
	t.Run("health", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := healthgrpc.NewHealthClient(cc).Check(ctx, &healthgrpc.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthgrpc.HealthCheckResponse_SERVING {
			t.Errorf("Health.Check = %v, %v; want SERVING", resp, err)
		}
	})
}

// TestGRPCServiceRouting: grpc_service routes a call to its upstream, and
// a call that matches no route gets UNIMPLEMENTED from the proxy (docs/design.md,
// "Status mapping": no_route).
func TestGRPCServiceRouting(t *testing.T) {
	url := grpcUpstream(t, newInteropServer(t))
	sc := startSidecar(t, grpcConfig(url, "{}", "{grpc_service: grpc.health.v1.Health}"))
	cc := dialSidecar(t, sc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthgrpc.NewHealthClient(cc).Check(ctx, &healthgrpc.HealthCheckRequest{}); err != nil {
		t.Errorf("Health.Check via grpc_service route = %v, want success", err)
	}
	var trailer metadata.MD
	_, err := testgrpc.NewTestServiceClient(cc).EmptyCall(ctx, &testgrpc.Empty{}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.Unimplemented || first(trailer, "sidecar-outcome") != "no_route" {
		t.Errorf("EmptyCall with no route = %v, sidecar-outcome %q; want Unimplemented, no_route", err, first(trailer, "sidecar-outcome"))
	}
}

func first(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// deadlineServer is a TestService whose EmptyCall reports the deadline it
// got, and whose UnaryCall ignores its deadline and sleeps until release.
type deadlineServer struct {
	testgrpc.UnimplementedTestServiceServer
	left    chan time.Duration
	release chan struct{}
}

func (s *deadlineServer) EmptyCall(ctx context.Context, _ *testgrpc.Empty) (*testgrpc.Empty, error) {
	left := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	s.left <- left
	return &testgrpc.Empty{}, nil
}

func (s *deadlineServer) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	<-s.release
	return &testgrpc.SimpleResponse{}, nil
}

// TestGRPCDeadlinePropagation: the caller's grpc-timeout and the route's
// timeout combine, the smaller wins, and the upstream gets what is left as
// grpc-timeout (docs/design.md, "Retry rules", gRPC: the remaining deadline goes
// upstream as grpc-timeout); the proxy's own deadline is DEADLINE_EXCEEDED
// (docs/design.md, "Status mapping": timeout).
func TestGRPCDeadlinePropagation(t *testing.T) {
	ds := &deadlineServer{left: make(chan time.Duration, 1), release: make(chan struct{})}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, ds)
	t.Cleanup(s.Stop)
	t.Cleanup(func() { close(ds.release) })
	url := grpcUpstream(t, s)

	tests := []struct {
		name         string
		routeTimeout string
		callTimeout  time.Duration // 0: none
		wantMax      time.Duration // the upstream's deadline is at most this far
		wantMin      time.Duration // and at least this far
	}{
		{"route_smaller", "2s", 30 * time.Second, 2 * time.Second, time.Second},
		{"caller_smaller", "30s", 700 * time.Millisecond, 700 * time.Millisecond, 200 * time.Millisecond},
		{"route_only", "3s", 0, 3 * time.Second, 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := startSidecar(t, grpcConfig(url, "{timeout: "+tt.routeTimeout+"}", ""))
			tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
			ctx := context.Background()
			if tt.callTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.callTimeout)
				defer cancel()
			}
			if _, err := tc.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
				t.Fatalf("EmptyCall = %v", err)
			}
			left := <-ds.left
			if left > tt.wantMax || left < tt.wantMin {
				t.Errorf("upstream deadline in %v, want between %v and %v", left, tt.wantMin, tt.wantMax)
			}
		})
	}

	t.Run("route_deadline_hit", func(t *testing.T) {
		sc := startSidecar(t, grpcConfig(url, "{timeout: 200ms}", ""))
		tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
		var trailer metadata.MD
		start := time.Now()
		_, err := tc.UnaryCall(context.Background(), &testgrpc.SimpleRequest{}, grpc.Trailer(&trailer))
		if status.Code(err) != codes.DeadlineExceeded || first(trailer, "sidecar-outcome") != "timeout" {
			t.Errorf("UnaryCall past the route's timeout = %v, sidecar-outcome %q; want DeadlineExceeded, timeout", err, first(trailer, "sidecar-outcome"))
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("UnaryCall took %v, want about the route's 200ms", d)
		}
	})
}

// grpcScript is a gRPC upstream that answers the first fail calls with
// answer, then hands calls to the interop server.
type grpcScript struct {
	calls  atomic.Int64
	fail   int64
	answer func(w http.ResponseWriter)
	next   http.Handler
}

func (s *grpcScript) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.calls.Add(1) <= s.fail {
		io.Copy(io.Discard, r.Body)
		s.answer(w)
		return
	}
	s.next.ServeHTTP(w, r)
}

// trailersOnly answers with a gRPC error in the headers and no body.
func trailersOnly(code codes.Code, extra ...string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		h := w.Header()
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(int(code)))
		h.Set("Grpc-Message", "grpcScript")
		for i := 0; i+1 < len(extra); i += 2 {
			h.Set(extra[i], extra[i+1])
		}
		w.WriteHeader(http.StatusOK)
	}
}

// TestGRPCRetries: unary gRPC calls (POST, no idempotency header) are
// retried on a Trailers-Only UNAVAILABLE (docs/design.md, "Retry rules", gRPC
// bullet; retry.on's default lists unavailable), grpc-retry-pushback-ms
// replaces the back-off and a negative one stops retrying (docs/design.md,
// "Retry rules", back-off), and an error that arrives in the trailers of
// a normal response is never retried (first response byte rule).
func TestGRPCRetries(t *testing.T) {
	tests := []struct {
		name         string
		fail         int64
		answer       func(http.ResponseWriter)
		wantCode     codes.Code
		wantCalls    int64
		wantAttempts string
		minTime      time.Duration
	}{
		{"unavailable_then_ok", 2, trailersOnly(codes.Unavailable), codes.OK, 3, "3", 0},
		{"pushback_honoured", 2, trailersOnly(codes.Unavailable, "Grpc-Retry-Pushback-Ms", "150"), codes.OK, 3, "3", 300 * time.Millisecond},
		{"negative_pushback_stops", 2, trailersOnly(codes.Unavailable, "Grpc-Retry-Pushback-Ms", "-1"), codes.Unavailable, 1, "1", 0},
		{"code_not_listed", 2, trailersOnly(codes.InvalidArgument), codes.InvalidArgument, 1, "1", 0},
		{"error_after_headers", 2, func(w http.ResponseWriter) {
			// A normal response: headers first, the status in trailers.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			w.Header().Set("Grpc-Status", strconv.Itoa(int(codes.Unavailable)))
		}, codes.Unavailable, 1, "1", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := &grpcScript{fail: tt.fail, answer: tt.answer, next: newInteropServer(t)}
			url := grpcUpstream(t, up)
			sc := startSidecar(t, grpcConfig(url, "{timeout: 10s, retry: {attempts: 3, backoff: {base: 1ms, max: 2ms}}}", ""))
			tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
			var header, trailer metadata.MD
			start := time.Now()
			_, err := tc.EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.Header(&header), grpc.Trailer(&trailer))
			took := time.Since(start)
			if status.Code(err) != tt.wantCode {
				t.Errorf("EmptyCall = %v, want code %v", err, tt.wantCode)
			}
			if got := up.calls.Load(); got != tt.wantCalls {
				t.Errorf("upstream saw %d calls, want %d", got, tt.wantCalls)
			}
			attempts := first(header, "sidecar-attempts")
			if attempts == "" {
				attempts = first(trailer, "sidecar-attempts")
			}
			if attempts != tt.wantAttempts {
				t.Errorf("sidecar-attempts = %q, want %q", attempts, tt.wantAttempts)
			}
			if took < tt.minTime {
				t.Errorf("EmptyCall took %v, want at least %v of pushback", took, tt.minTime)
			}
		})
	}
}

// TestGRPCRetryReplaysBody: a retried unary call reaches the upstream with
// its request message intact (the replay tee).
func TestGRPCRetryReplaysBody(t *testing.T) {
	up := &grpcScript{fail: 1, answer: trailersOnly(codes.Unavailable), next: newInteropServer(t)}
	url := grpcUpstream(t, up)
	sc := startSidecar(t, grpcConfig(url, "{timeout: 10s, retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}}", ""))
	tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
	resp, err := tc.UnaryCall(context.Background(), &testgrpc.SimpleRequest{ResponseSize: 1234, Payload: &testgrpc.Payload{Body: make([]byte, 5000)}})
	if err != nil || len(resp.GetPayload().GetBody()) != 1234 || up.calls.Load() != 2 {
		t.Errorf("UnaryCall = %d bytes, %v after %d calls; want 1234 bytes after 2", len(resp.GetPayload().GetBody()), err, up.calls.Load())
	}
}

// TestGRPCBreaker: a dead gRPC upstream trips the breaker on
// connect_error, and the caller sees UNAVAILABLE throughout (docs/design.md,
// "Status mapping": connect_error and breaker_open are UNAVAILABLE); a gRPC code
// named in failure_on counts as a failure; a code that blames the caller
// never does, even when listed (docs/design.md, "Outcomes": the app's
// own malformed request trips no breaker).
func TestGRPCBreaker(t *testing.T) {
	dead := func() string { return "http://" + testnet.RefusedAddr(t) }
	tests := []struct {
		name     string
		url      func(*grpcScript) string
		answer   func(http.ResponseWriter)
		failOn   string
		want     []string // sidecar-outcome of each call ("" for the upstream's answer)
		wantCode []codes.Code
	}{
		{"dead_upstream", func(*grpcScript) string { return dead() }, nil, "[connect_error]",
			[]string{"connect_error", "connect_error", "breaker_open", "breaker_open"},
			[]codes.Code{codes.Unavailable, codes.Unavailable, codes.Unavailable, codes.Unavailable}},
		{"unavailable_answers", func(s *grpcScript) string { return grpcUpstream(t, s) }, trailersOnly(codes.Unavailable), "[unavailable]",
			[]string{"", "", "breaker_open", "breaker_open"},
			[]codes.Code{codes.Unavailable, codes.Unavailable, codes.Unavailable, codes.Unavailable}},
		{"client_codes_not_failures", func(s *grpcScript) string { return grpcUpstream(t, s) }, trailersOnly(codes.InvalidArgument), "[invalid_argument, 5xx]",
			[]string{"", "", "", ""},
			[]codes.Code{codes.InvalidArgument, codes.InvalidArgument, codes.InvalidArgument, codes.InvalidArgument}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := &grpcScript{fail: 1 << 30, answer: tt.answer}
			sc := startSidecar(t, grpcConfig(tt.url(up), "{circuit_breaker: {consecutive_failures: 2, open_for: 1m, failure_on: "+tt.failOn+"}}", ""))
			tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
			for i := range tt.want {
				var trailer metadata.MD
				_, err := tc.EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.Trailer(&trailer))
				if got := first(trailer, "sidecar-outcome"); status.Code(err) != tt.wantCode[i] || got != tt.want[i] {
					t.Errorf("call %d: EmptyCall = %v, sidecar-outcome %q; want %v, %q", i+1, err, got, tt.wantCode[i], tt.want[i])
				}
			}
		})
	}
}

// TestGRPCProxyErrors: every error the proxy makes for a gRPC caller is a
// gRPC status grpc-go decodes to the code of docs/design.md ("Status
// mapping"), with Sidecar-Outcome in its trailers.
func TestGRPCProxyErrors(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	blocking := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	reset := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic(http.ErrAbortHandler) })
	interopURL := grpcUpstream(t, newInteropServer(t))
	tests := []struct {
		name    string
		url     string
		policy  string
		match   string
		before  func(t *testing.T, sc *sidecar, tc testgrpc.TestServiceClient) // runs first
		outcome string
		code    codes.Code
	}{
		{name: "no_route", url: interopURL, policy: "{}", match: "{grpc_service: other.Service}", outcome: "no_route", code: codes.Unimplemented},
		{name: "connect_error", url: "http://127.0.0.1:1", policy: "{}", outcome: "connect_error", code: codes.Unavailable},
		{name: "reset", url: grpcUpstream(t, reset), policy: "{}", outcome: "reset", code: codes.Unavailable},
		{name: "timeout", url: grpcUpstream(t, blocking), policy: "{timeout: 100ms}", outcome: "timeout", code: codes.DeadlineExceeded},
		{name: "rate_limited", url: interopURL, policy: "{rate_limit: {rps: 0.01, burst: 1}}", outcome: "rate_limited", code: codes.ResourceExhausted,
			before: func(t *testing.T, sc *sidecar, tc testgrpc.TestServiceClient) {
				tc.EmptyCall(context.Background(), &testgrpc.Empty{})
			}},
		{name: "overloaded", url: grpcUpstream(t, blocking), policy: "{max_in_flight: 1}", outcome: "overloaded", code: codes.Unavailable,
			before: func(t *testing.T, sc *sidecar, tc testgrpc.TestServiceClient) {
				// One call holds the only slot until the test ends.
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() {
					defer close(done)
					tc.EmptyCall(ctx, &testgrpc.Empty{})
				}()
				t.Cleanup(func() { cancel(); <-done })
				inFlight := sc.srv.Snapshot().routes["rpc"].pol.inFlight
				poll.Until(t, 10*time.Second, "the first call in flight", func() bool { return inFlight.Current() == 1 })
			}},
		{name: "breaker_open", url: "http://127.0.0.1:1", policy: "{circuit_breaker: {consecutive_failures: 1, open_for: 1m}}", outcome: "breaker_open", code: codes.Unavailable,
			before: func(t *testing.T, sc *sidecar, tc testgrpc.TestServiceClient) {
				tc.EmptyCall(context.Background(), &testgrpc.Empty{})
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := startSidecar(t, grpcConfig(tt.url, tt.policy, tt.match))
			tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
			if tt.before != nil {
				tt.before(t, sc, tc)
			}
			var trailer metadata.MD
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := tc.EmptyCall(ctx, &testgrpc.Empty{}, grpc.Trailer(&trailer))
			if got := first(trailer, "sidecar-outcome"); status.Code(err) != tt.code || got != tt.outcome {
				t.Errorf("EmptyCall = %v, sidecar-outcome %q; want %v, %q", err, got, tt.code, tt.outcome)
			}
		})
	}
}

// TestGRPCErrorShape checks the wire form of a proxy-made gRPC error with
// a plain HTTP/2 client: a Trailers-Only response (HTTP 200, no body) with
// grpc-status and a percent-encoded grpc-message; bad_request (a malformed
// grpc-timeout) is INTERNAL. Over HTTP/1.1 a gRPC content type gets the
// JSON error, as gRPC cannot run there.
func TestGRPCErrorShape(t *testing.T) {
	url := grpcUpstream(t, newInteropServer(t))
	sc := startSidecar(t, grpcConfig(url, "{}", "{grpc_service: grpc.testing.TestService}"))
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{Protocols: protos}}
	t.Cleanup(h2.CloseIdleConnections) // else the sidecar's shutdown waits 1s for its GOAWAY

	call := func(c *http.Client, path string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", sc.url(path), strings.NewReader("\x00\x00\x00\x00\x00"))
		req.Header.Set("Content-Type", "application/grpc+proto")
		req.Header.Set("Te", "trailers")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}

	resp, body := call(h2, "/no.Such/Method")
	if resp.StatusCode != 200 || body != "" || resp.Header.Get("Content-Type") != "application/grpc" ||
		resp.Header.Get("Grpc-Status") != strconv.Itoa(int(codes.Unimplemented)) || resp.Header.Get(HeaderOutcome) != "no_route" {
		t.Errorf("no route over h2 = %d %q, headers %v; want a Trailers-Only UNIMPLEMENTED", resp.StatusCode, body, resp.Header)
	}
	if got := resp.Header.Get("Grpc-Message"); got != "sidecar: no route" {
		t.Errorf("grpc-message = %q, want %q", got, "sidecar: no route")
	}

	resp, _ = call(h2, "/grpc.testing.TestService/EmptyCall", "Grpc-Timeout", "1x")
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != strconv.Itoa(int(codes.Internal)) || resp.Header.Get(HeaderOutcome) != "bad_request" {
		t.Errorf("malformed grpc-timeout = %d, headers %v; want grpc-status INTERNAL, bad_request", resp.StatusCode, resp.Header)
	}

	resp, body = call(http.DefaultClient, "/no.Such/Method")
	if resp.StatusCode != 404 || !strings.Contains(body, `"outcome":"no_route"`) {
		t.Errorf("no route over HTTP/1.1 = %d %q, want the JSON 404", resp.StatusCode, body)
	}
}

// cancelServer's FullDuplexCall reports when it starts and when its
// context ends.
type cancelServer struct {
	testgrpc.UnimplementedTestServiceServer
	started, ended chan struct{}
}

func (s *cancelServer) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	close(s.started)
	<-stream.Context().Done()
	close(s.ended)
	return stream.Context().Err()
}

// TestGRPCCancellationReachesUpstream: when the app cancels a call, the
// upstream's call ends at once (docs/design.md, "Outcomes":
// canceled), not at some deadline.
func TestGRPCCancellationReachesUpstream(t *testing.T) {
	cs := &cancelServer{started: make(chan struct{}), ended: make(chan struct{})}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, cs)
	t.Cleanup(s.Stop)
	sc := startSidecar(t, grpcConfig(grpcUpstream(t, s), "{timeout: 1m}", ""))
	tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := tc.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&testgrpc.StreamingOutputCallRequest{})
	select {
	case <-cs.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the call did not reach the upstream")
	}
	cancel()
	select {
	case <-cs.ended:
	case <-time.After(2 * time.Second):
		t.Fatal("the upstream's call was still running 2s after the app canceled")
	}
}

func TestGRPCTimeoutFormat(t *testing.T) {
	parse := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"1S", time.Second, false},
		{"100m", 100 * time.Millisecond, false},
		{"99999999n", 99999999, false},
		{"2H", 2 * time.Hour, false},
		{"3M", 3 * time.Minute, false},
		{"7u", 7 * time.Microsecond, false},
		{"99999999H", maxDuration, false},
		{"123456789S", 0, true},
		{"S", 0, true},
		{"1s", 0, true},
		{"-1S", 0, true},
		{"", 0, true},
	}
	for _, tt := range parse {
		got, err := parseGRPCTimeout(tt.in)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
	format := []struct {
		in   time.Duration
		want string
	}{
		{0, "0n"},
		{-time.Second, "0n"},
		{time.Second, "1000000u"},
		{99999999, "99999999n"},
		{10 * time.Second, "10000000u"},
		{100 * time.Second, "100000m"},
		{time.Hour, "3600000m"},
		{1000 * time.Hour, "3600000S"},
		{maxDuration, "2562048H"},
	}
	for _, tt := range format {
		got := formatGRPCTimeout(tt.in)
		if got != tt.want {
			t.Errorf("formatGRPCTimeout(%v) = %q, want %q", tt.in, got, tt.want)
		}
		if back, err := parseGRPCTimeout(got); err != nil || back < tt.in {
			t.Errorf("parseGRPCTimeout(formatGRPCTimeout(%v)) = %v, %v; want at least the input", tt.in, back, err)
		}
	}
}

func TestGRPCPercentEncode(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain text", "plain text"},
		{"100%", "100%25"},
		{"tab\there", "tab%09here"},
		{"☺", "%E2%98%BA"},
	}
	for _, tt := range tests {
		if got := grpcPercentEncode(tt.in); got != tt.want {
			t.Errorf("grpcPercentEncode(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestGRPCStatusOf pins the table of docs/design.md, "Status mapping", for every proxy-made outcome.
func TestGRPCStatusOf(t *testing.T) {
	want := map[policy.Outcome]codes.Code{
		policy.Timeout:      codes.DeadlineExceeded,
		policy.ConnectError: codes.Unavailable,
		policy.Reset:        codes.Unavailable,
		policy.BreakerOpen:  codes.Unavailable,
		policy.Overloaded:   codes.Unavailable,
		policy.SpoolFull:    codes.Unavailable,
		policy.SpoolError:   codes.Unavailable,
		policy.RateLimited:  codes.ResourceExhausted,
		policy.TooLarge:     codes.ResourceExhausted,
		policy.NoRoute:      codes.Unimplemented,
		policy.BadRequest:   codes.Internal,
	}
	for o, c := range want {
		if got := grpcStatusOf(o); got != int(c) {
			t.Errorf("grpcStatusOf(%v) = %d, want %d (%v)", o, got, c, c)
		}
	}
}

// TestGRPCResetAfterHeaders: an upstream that sends its response headers
// and then resets the stream, before any message, gets the caller the
// proxy's own UNAVAILABLE with sidecar-outcome reset, in gRPC's form: the
// gate held the headers back, so the call can still be answered.
func TestGRPCResetAfterHeaders(t *testing.T) {
	up := grpcUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}))
	sc := startSidecar(t, grpcConfig(up, "{}", ""))
	tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var trailer metadata.MD
	_, err := tc.EmptyCall(ctx, &testgrpc.Empty{}, grpc.Trailer(&trailer))
	if got := first(trailer, "sidecar-outcome"); status.Code(err) != codes.Unavailable || got != "reset" {
		t.Fatalf("EmptyCall = %v, sidecar-outcome %q; want Unavailable, reset", err, got)
	}
}
