package proxy

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sidecar-proxy/sidecar/internal/poll"
)

// hedgeConfig is a config with one listener "app" whose route "all"
// sends everything, under policy (a YAML flow mapping), to an upstream
// of protocol with the endpoints urls, balanced round robin: the first
// request's first attempt goes to urls[0], its first hedge to urls[1].
func hedgeConfig(protocol, policy string, urls ...string) string {
	return `
version: 1
upstreams:
  up: {protocol: ` + protocol + `, load_balancing: round_robin, endpoints: ["` + strings.Join(urls, `", "`) + `"]}
policies:
  p: ` + policy + `
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: all, match: {path_prefix: /}, upstream: up, policy: p}
`
}

// stall is an upstream handler that does not answer for a while: it
// waits until its request is canceled, which it reports, or until after
// has passed, and then answers with next (nothing when nil).
type stall struct {
	after    time.Duration
	next     http.Handler
	calls    atomic.Int64
	canceled chan struct{} // closed when a request's context ended first
	once     sync.Once
}

func newStall(after time.Duration, next http.Handler) *stall {
	return &stall{after: after, next: next, canceled: make(chan struct{})}
}

func (s *stall) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	t := time.NewTimer(s.after)
	defer t.Stop()
	select {
	case <-r.Context().Done():
		s.once.Do(func() { close(s.canceled) })
	case <-t.C:
		if s.next != nil {
			s.next.ServeHTTP(w, r)
		}
	}
}

// waitCanceled fails t unless a request to s is canceled within 5 s.
func (s *stall) waitCanceled(t *testing.T, what string) {
	t.Helper()
	select {
	case <-s.canceled:
	case <-time.After(5 * time.Second):
		t.Errorf("%s: the upstream never saw its request canceled", what)
	}
}

func answerWith(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, body)
	}
}

func portOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// TestHedgeCutsLatency: a GET whose first attempt goes to an endpoint
// that does not answer is answered by the hedge sent after hedge.after to
// the other endpoint; the loser's upstream sees its request canceled
// (its connection closed) as soon as the race is decided, the retry budget counts the hedge as a retry,
// Sidecar-Attempts says 2, the loser's breaker does not count it, and
// the spans, metrics and route figures show the hedge and its win.
func TestHedgeCutsLatency(t *testing.T) {
	var answering atomic.Bool // the slow endpoint answers at once once set
	slow := newStall(10*time.Second, answerWith("slow"))
	upSlow := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if answering.Load() {
			io.WriteString(w, "slow")
			return
		}
		slow.ServeHTTP(w, r)
	})
	// The winner's body waits for the loser's cancellation: the loser is
	// canceled as the race is decided, not when the request ends.
	upFast := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		select {
		case <-slow.canceled:
			io.WriteString(w, "fast")
		case <-time.After(5 * time.Second):
			io.WriteString(w, "fast, but the loser was not canceled")
		}
	})
	o := startObserved(t, hedgeConfig("http1", `{timeout: 20s, retry: {attempts: 2}, hedge: {after: 20ms}, circuit_breaker: {}}`, "UPSTREAM0", "UPSTREAM1"), nil, upSlow, upFast)

	start := time.Now()
	resp, body := get(t, o.url("/items"))
	took := time.Since(start)
	if resp.StatusCode != 200 || body != "fast" {
		t.Fatalf("GET = %d %q, want 200 from the fast endpoint", resp.StatusCode, body)
	}
	if took > 5*time.Second {
		t.Errorf("GET took %v: the hedge did not cut the slow endpoint's 10s", took)
	}
	if got := resp.Header.Get(HeaderAttempts); got != "2" {
		t.Errorf("Sidecar-Attempts = %q, want 2 (the first attempt and the hedge)", got)
	}

	rt := o.srv.Snapshot().Route("all")
	st := rt.Stats()
	if st.Budget == nil || st.Budget.Requests != 1 || st.Budget.Retries != 1 {
		t.Errorf("retry budget = %+v, want 1 request and 1 retry (the hedge)", st.Budget)
	}
	if st.Hedge == nil || st.Hedge.Sent != 1 || st.Hedge.Wins != 1 {
		t.Errorf("hedge stats = %+v, want 1 sent, 1 win", st.Hedge)
	}
	poll.Until(t, 5*time.Second, "endpoints idle", func() bool {
		for _, ep := range rt.EndpointStats() {
			if ep.InFlight != 0 {
				return false
			}
		}
		return true
	})
	// The breakers: the winner's success counts, the canceled loser's
	// attempt counts neither way.
	eps := rt.EndpointStats()
	if c := eps[0].Breaker.Counts; c.Failures != 0 || c.Successes != 0 || c.Ignored != 1 {
		t.Errorf("the loser's breaker counts = %+v, want 1 ignored, no failure", c)
	}
	if c := eps[1].Breaker.Counts; c.Successes != 1 || c.Failures != 0 {
		t.Errorf("the winner's breaker counts = %+v, want 1 success", c)
	}

	spans := o.waitSpans(t, trace.SpanKindClient, 2)
	fastPort := portOf(t, upFast.URL)
	for _, s := range spans {
		hedge, _ := attr(s, "sidecar.hedge")
		port, _ := attr(s, "server.port")
		won := port.String() == fastPort
		if hedge.AsBool() != won {
			t.Errorf("attempt span to port %s: sidecar.hedge = %v, want %v", port.String(), hedge.AsBool(), won)
		}
		want := "canceled"
		if won {
			want = "ok"
		}
		if got := attrString(s, "sidecar.outcome"); got != want {
			t.Errorf("attempt span to port %s: sidecar.outcome = %q, want %q", port.String(), got, want)
		}
	}
	rm := o.collect(t)
	if n := intValue(rm, "sidecar.hedges", map[string]string{"route": "all"}); n != 1 {
		t.Errorf("sidecar.hedges = %d, want 1", n)
	}
	if n := intValue(rm, "sidecar.hedge.wins", map[string]string{"route": "all"}); n != 1 {
		t.Errorf("sidecar.hedge.wins = %d, want 1", n)
	}
	if n := intValue(rm, "sidecar.retries", map[string]string{"route": "all"}); n != 0 {
		t.Errorf("sidecar.retries = %d, want 0: a hedge is not a retry", n)
	}

	// The loser's connection was closed, never pooled half-used: the
	// endpoint serves the next requests on a fresh one.
	answering.Store(true)
	for i := range 4 {
		if resp, body := get(t, o.url("/items")); resp.StatusCode != 200 || (body != "slow" && body != "fast") {
			t.Errorf("GET %d after the hedge = %d %q, want 200", i, resp.StatusCode, body)
		}
	}
}

// TestHedgeOnlySafeRequests: a POST without the idempotency header is
// never hedged; with it, it is, as a GET is.
func TestHedgeOnlySafeRequests(t *testing.T) {
	tests := []struct {
		name         string
		method       string
		key          bool
		wantBody     string
		wantAttempts string
	}{
		{"post_without_key", "POST", false, "slow", "1"},
		{"post_with_key", "POST", true, `fast:{"n":1}`, "2"},
		{"put", "PUT", false, `fast:{"n":1}`, "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Long enough for any hedge to be sent before it answers.
			slow := newStall(time.Second, answerWith("slow"))
			upSlow := newUpstream(t, slow.ServeHTTP)
			upFast := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				io.WriteString(w, "fast:"+string(b))
			})
			sc := startSidecar(t, hedgeConfig("http1", `{timeout: 20s, retry: {attempts: 2}, hedge: {after: 20ms}}`, "UPSTREAM0", "UPSTREAM1"), upSlow, upFast)
			req, _ := http.NewRequest(tt.method, sc.url("/orders"), strings.NewReader(`{"n":1}`))
			if tt.key {
				req.Header.Set("Idempotency-Key", "k-1")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != tt.wantBody || resp.Header.Get(HeaderAttempts) != tt.wantAttempts {
				t.Errorf("%s = %q with Sidecar-Attempts %q, want %q with %q", tt.method, body, resp.Header.Get(HeaderAttempts), tt.wantBody, tt.wantAttempts)
			}
			if tt.wantAttempts == "1" && upFast.count.Load() != 0 {
				t.Errorf("the other endpoint saw %d requests, want none", upFast.count.Load())
			}
		})
	}
}

// TestHedgeNeverAfterHeaders: once an attempt has its response headers,
// no hedge is sent, however slowly its body comes.
func TestHedgeNeverAfterHeaders(t *testing.T) {
	upSlowBody := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		time.Sleep(500 * time.Millisecond) // the body is late, not the headers
		io.WriteString(w, "slow body")
	})
	upFast := newUpstream(t, answerWith("fast"))
	sc := startSidecar(t, hedgeConfig("http1", `{timeout: 20s, retry: {attempts: 2}, hedge: {after: 150ms}}`, "UPSTREAM0", "UPSTREAM1"), upSlowBody, upFast)
	resp, body := get(t, sc.url("/x"))
	if body != "slow body" || resp.Header.Get(HeaderAttempts) != "1" {
		t.Errorf("GET = %q with Sidecar-Attempts %q, want the first answer's whole body, 1 attempt", body, resp.Header.Get(HeaderAttempts))
	}
	if n := upFast.count.Load(); n != 0 {
		t.Errorf("the other endpoint saw %d requests, want none: no hedge after headers", n)
	}
	if st := sc.srv.Snapshot().Route("all").Stats(); st.Hedge.Sent != 0 {
		t.Errorf("hedges sent = %d, want 0", st.Hedge.Sent)
	}
}

// TestHedgeComposition: how hedges compose with failures, the retry
// rules, the budget and per-try timeouts (docs/policies.md, "Hedged
// requests"). The first endpoint gets the first attempt; where its
// answer must come after the hedge went out, it waits for the second
// endpoint's first call (hedged) rather than for a time.
func TestHedgeComposition(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		// first and second are the two endpoints' handlers for their
		// calls-th call; hedged is closed once the second was called.
		first        func(calls int64, hedged <-chan struct{}) http.HandlerFunc
		second       func(calls int64) http.HandlerFunc
		wantStatus   int
		wantBody     string
		wantAttempts string
		wantSent     int64
	}{
		{
			// The hedge's 503 does not end the call while the first
			// attempt still waits: its answer wins.
			name:   "failed_hedge_waits_for_the_other",
			policy: `{timeout: 20s, retry: {attempts: 2}, hedge: {after: 20ms}}`,
			first: func(_ int64, hedged <-chan struct{}) http.HandlerFunc {
				return afterHedge(hedged, answerWith("first"))
			},
			second:       func(int64) http.HandlerFunc { return statusOnly(503) },
			wantStatus:   200,
			wantBody:     "first",
			wantAttempts: "2",
			wantSent:     1,
		},
		{
			// Both fail: the retry rules take over, and the retry goes
			// to another endpoint than the hedge's.
			name:   "all_failed_then_retry",
			policy: `{timeout: 20s, retry: {attempts: 3, backoff: {base: 1ms, max: 2ms}}, hedge: {after: 20ms}}`,
			first: func(calls int64, hedged <-chan struct{}) http.HandlerFunc {
				if calls == 1 {
					return afterHedge(hedged, statusOnly(503))
				}
				return answerWith("first, retried")
			},
			second:       func(int64) http.HandlerFunc { return statusOnly(503) },
			wantStatus:   200,
			wantBody:     "first, retried",
			wantAttempts: "3",
			wantSent:     1,
		},
		{
			// Both fail and no attempt is left: the failure is the
			// answer.
			name:   "all_failed_no_retry_left",
			policy: `{timeout: 20s, retry: {attempts: 2}, hedge: {after: 20ms}}`,
			first: func(_ int64, hedged <-chan struct{}) http.HandlerFunc {
				return afterHedge(hedged, statusOnly(503))
			},
			second:       func(int64) http.HandlerFunc { return statusOnly(503) },
			wantStatus:   503,
			wantAttempts: "2",
			wantSent:     1,
		},
		{
			// A fatal answer (not in retry.on) from the hedge is the
			// answer: the first response wins.
			name:   "fatal_answer_wins",
			policy: `{timeout: 20s, retry: {attempts: 2}, hedge: {after: 20ms}}`,
			first: func(int64, <-chan struct{}) http.HandlerFunc {
				return newStall(10*time.Second, nil).ServeHTTP
			},
			second:       func(int64) http.HandlerFunc { return statusOnly(404) },
			wantStatus:   404,
			wantAttempts: "2",
			wantSent:     1,
		},
		{
			// The budget refuses the hedge: it is not sent.
			name:   "budget_refuses",
			policy: `{timeout: 20s, retry: {attempts: 2, budget: {ratio: 0, min_per_second: 0}}, hedge: {after: 20ms}}`,
			first: func(int64, <-chan struct{}) http.HandlerFunc {
				return newStall(200*time.Millisecond, answerWith("first")).ServeHTTP
			},
			second:       func(int64) http.HandlerFunc { return answerWith("second") },
			wantStatus:   200,
			wantBody:     "first",
			wantAttempts: "1",
			wantSent:     0,
		},
		{
			// on_per_try_timeout: at the per-try timeout the first
			// attempt keeps waiting and a hedge goes out (hedge.after
			// being far off); the first attempt's answer still wins.
			name:   "on_per_try_timeout_keeps_the_attempt",
			policy: `{timeout: 20s, per_try_timeout: 50ms, retry: {attempts: 2}, hedge: {after: 10s, on_per_try_timeout: true}}`,
			first: func(_ int64, hedged <-chan struct{}) http.HandlerFunc {
				return afterHedge(hedged, answerWith("first"))
			},
			second: func(int64) http.HandlerFunc {
				return newStall(10*time.Second, nil).ServeHTTP
			},
			wantStatus:   200,
			wantBody:     "first",
			wantAttempts: "2",
			wantSent:     1,
		},
		{
			// Without it, the per-try timeout fails the first attempt
			// and the retry's answer comes.
			name:   "per_try_timeout_fails_the_attempt",
			policy: `{timeout: 20s, per_try_timeout: 50ms, retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}, hedge: {after: 10s}}`,
			first: func(int64, <-chan struct{}) http.HandlerFunc {
				return newStall(10*time.Second, nil).ServeHTTP
			},
			second:       func(int64) http.HandlerFunc { return answerWith("second") },
			wantStatus:   200,
			wantBody:     "second",
			wantAttempts: "2",
			wantSent:     0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var firstCalls, secondCalls atomic.Int64
			hedged := make(chan struct{})
			up0 := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				tt.first(firstCalls.Add(1), hedged)(w, r)
			})
			up1 := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				n := secondCalls.Add(1)
				tt.second(n)(w, r)
				if n == 1 {
					close(hedged)
				}
			})
			sc := startSidecar(t, hedgeConfig("http1", tt.policy, "UPSTREAM0", "UPSTREAM1"), up0, up1)
			resp, body := get(t, sc.url("/x"))
			if resp.StatusCode != tt.wantStatus || tt.wantBody != "" && body != tt.wantBody {
				t.Errorf("GET = %d %q, want %d %q", resp.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
			if got := resp.Header.Get(HeaderAttempts); got != tt.wantAttempts {
				t.Errorf("Sidecar-Attempts = %q, want %q", got, tt.wantAttempts)
			}
			if st := sc.srv.Snapshot().Route("all").Stats(); st.Hedge.Sent != tt.wantSent {
				t.Errorf("hedges sent = %d, want %d", st.Hedge.Sent, tt.wantSent)
			}
		})
	}
}

// afterHedge answers with next once hedged is closed (the other
// endpoint has answered the hedge) and 50 ms more, for the sidecar to
// take that answer in first; or not at all if its request is canceled
// or 10 s pass.
func afterHedge(hedged <-chan struct{}, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(10 * time.Second)
		defer t.Stop()
		select {
		case <-hedged:
		case <-r.Context().Done():
			return
		case <-t.C:
			return
		}
		time.Sleep(50 * time.Millisecond) // an order that holds on a quiet machine; either order gives the wanted answer
		next(w, r)
	}
}

func statusOnly(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(code)
	}
}

// TestGRPCHedge: unary gRPC calls carrying the idempotency key as
// metadata are hedged with gRFC A6's semantics, through real grpc-go
// clients and servers: the hedge's answer wins and the loser's stream is
// reset (its server sees the call canceled); a hedge's UNAVAILABLE lets
// the next hedge go out at once; a negative grpc-retry-pushback-ms stops
// further hedges, and a valid one delays the next by as much. A call
// without the key is never hedged.
func TestGRPCHedge(t *testing.T) {
	tests := []struct {
		name         string
		key          bool
		firstAfter   time.Duration // when the first endpoint answers unless canceled; 0: after the second's answer
		pushback     string        // the second endpoint's UNAVAILABLE carries this pushback
		wantAttempts string
		wantThird    int64 // calls the third endpoint sees
		minGap       time.Duration
	}{
		{"hedge_wins", true, 10 * time.Second, "", "3", 1, 0},
		{"pushback_stops_hedges", true, 0, "-1", "2", 0, 0},
		{"pushback_delays_next_hedge", true, 10 * time.Second, "300", "3", 1, 250 * time.Millisecond},
		{"no_key_no_hedge", false, 300 * time.Millisecond, "", "1", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newInteropServer(t)
			slow := newStall(tt.firstAfter, srv)
			hedged := make(chan struct{})
			var firstHandler http.Handler = slow
			if tt.firstAfter == 0 {
				firstHandler = afterHedge(hedged, srv.ServeHTTP)
			}
			var secondAt, thirdAt atomic.Int64 // unix nanoseconds
			var secondCalls, thirdCalls atomic.Int64
			extra := []string{}
			if tt.pushback != "" {
				extra = []string{"Grpc-Retry-Pushback-Ms", tt.pushback}
			}
			second := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := secondCalls.Add(1)
				io.Copy(io.Discard, r.Body)
				secondAt.Store(time.Now().UnixNano())
				trailersOnly(codes.Unavailable, extra...)(w)
				if n == 1 {
					close(hedged)
				}
			})
			third := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				thirdCalls.Add(1)
				thirdAt.Store(time.Now().UnixNano())
				srv.ServeHTTP(w, r)
			})
			urls := []string{grpcUpstream(t, firstHandler), grpcUpstream(t, second), grpcUpstream(t, third)}
			sc := startSidecar(t, hedgeConfig("grpc", `{timeout: 20s, retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}, hedge: {after: 30ms, max_extra: 2}}`, urls...))
			tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
			ctx := context.Background()
			if tt.key {
				ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", "call-1")
			}
			var header, trailer metadata.MD
			resp, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 8, Payload: &testgrpc.Payload{Body: []byte("hedged request body")}}, grpc.Header(&header), grpc.Trailer(&trailer))
			if err != nil || len(resp.GetPayload().GetBody()) != 8 {
				t.Fatalf("UnaryCall = %v, %v; want an 8-byte payload", resp, err)
			}
			if got := first(header, "sidecar-attempts"); got != tt.wantAttempts {
				t.Errorf("sidecar-attempts = %q, want %q", got, tt.wantAttempts)
			}
			if got := thirdCalls.Load(); got != tt.wantThird {
				t.Errorf("the third endpoint saw %d calls, want %d", got, tt.wantThird)
			}
			if tt.wantAttempts == "1" && secondCalls.Load() != 0 {
				t.Errorf("the second endpoint saw %d calls, want none", secondCalls.Load())
			}
			if tt.firstAfter > 5*time.Second {
				slow.waitCanceled(t, "the first attempt's stream")
			}
			if tt.minGap > 0 {
				if gap := time.Duration(thirdAt.Load() - secondAt.Load()); gap < tt.minGap {
					t.Errorf("the next hedge went out %v after the pushback of %sms, want at least %v", gap, tt.pushback, tt.minGap)
				}
			}
		})
	}
}

// TestGRPCHedgeStatus: a gRPC call that fails with a code not in
// retry.on (fatal, in A6's words) ends the call at once, with that code.
func TestGRPCHedgeStatus(t *testing.T) {
	srv := newInteropServer(t)
	slow := newStall(10*time.Second, srv)
	second := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		trailersOnly(codes.InvalidArgument)(w)
	})
	sc := startSidecar(t, hedgeConfig("grpc", `{timeout: 20s, retry: {attempts: 2}, hedge: {after: 30ms}}`, grpcUpstream(t, slow), grpcUpstream(t, second)))
	tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", "call-1")
	_, err := tc.EmptyCall(ctx, &testgrpc.Empty{})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("EmptyCall = %v, want InvalidArgument from the hedge", err)
	}
	slow.waitCanceled(t, "the first attempt's stream")
}

// TestGRPCHedgeNeverStreams: a client stream still sending when the
// hedge is due is never hedged (its request is not whole at hand), even
// with the idempotency key.
func TestGRPCHedgeNeverStreams(t *testing.T) {
	srv := newInteropServer(t)
	var otherCalls atomic.Int64
	other := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherCalls.Add(1)
		srv.ServeHTTP(w, r)
	})
	sc := startSidecar(t, hedgeConfig("grpc", `{timeout: 20s, retry: {attempts: 2}, hedge: {after: 30ms}}`, grpcUpstream(t, srv), grpcUpstream(t, other)))
	tc := testgrpc.NewTestServiceClient(dialSidecar(t, sc))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", "stream-1")
	var header metadata.MD
	stream, err := tc.StreamingInputCall(ctx, grpc.Header(&header))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := stream.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, 10)}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the app's pace: the stream outlasts hedge.after
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || resp.GetAggregatedPayloadSize() != 30 {
		t.Fatalf("StreamingInputCall = %v, %v; want 30 bytes aggregated", resp, err)
	}
	if got := first(header, "sidecar-attempts"); got != "1" {
		t.Errorf("sidecar-attempts = %q, want 1", got)
	}
	if n := otherCalls.Load(); n != 0 {
		t.Errorf("the other endpoint saw %d calls, want none: a stream is never hedged", n)
	}
}
