package proxy

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sidecar-proxy/sidecar/policy"
)

// attempter is the route's transport and its attempt loop. Policies
// compose in one order, written here and in docs/policies.md:
//
//	(handler)  rate limit -> in-flight cap ->
//	(here)     overall deadline around the loop:
//	           breaker allows an endpoint (open ones skipped) -> per-try
//	           deadline -> round trip -> classify -> breaker records ->
//	           retry? (safe, replayable, on-list, attempts left) ->
//	           back-off or Retry-After within the deadline -> budget -> again
//
// The overall timeout covers the whole call, response body included;
// per_try_timeout covers an attempt until its response headers arrive.
// Once a response is handed to ReverseProxy, bytes may reach the app, so
// nothing is retried after that. For a gRPC call (isGRPC) the caller's
// grpc-timeout can shorten the overall deadline, each attempt carries the
// time left as grpc-timeout, and an error answered at header time
// (Trailers-Only) is outcome status with its gRPC code.
//
// With the route's hedge policy, a request that hedgeable allows takes
// hedgeLoop instead (hedge.go): the same steps per attempt, with attempts
// racing; without it nothing of hedging runs.
//
// The async path's loop (spoolOn set) also ends on an answer that the
// route's async.spool_on lists, once no retry is left: it discards the
// answer and returns an *UpstreamError with its status, so that serveAsync
// can spool the request.
type attempter struct {
	route   *Route
	spoolOn *asyncPolicy // the async path's loop; nil on the sync path
}

var _ http.RoundTripper = (*attempter)(nil)

// attemptCounts are the Sidecar-Attempts values, shared read-only.
var attemptCounts = func() (v [11][]string) {
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

func (a *attempter) RoundTrip(req *http.Request) (*http.Response, error) {
	rt := a.route
	p := &rt.pol
	c := &call{route: rt, app: req.Context(), grpc: isGRPC(req), method: req.Method}
	c.appBody = appBodyOf(req.Body)
	if rt.accessLog {
		c.x = exchangeOf(c.app)
	}
	now := time.Now()
	if p.timeout > 0 {
		c.deadline = now.Add(p.timeout)
	}
	if v := req.Header[headerGRPCTimeout]; c.grpc && len(v) > 0 {
		// The caller's deadline and the route's: the sooner wins.
		d, err := parseGRPCTimeout(v[0])
		if err != nil {
			return nil, &UpstreamError{Route: rt.Name, Outcome: policy.BadRequest, Err: err}
		}
		if dl := now.Add(d); c.deadline.IsZero() || dl.Before(c.deadline) {
			c.deadline = dl
		}
	}
	body := newReplayBody(req, p, c.grpc)
	safe := p.attempts > 1 && (idempotent(req.Method) || p.idemHeader != "" && req.Header[p.idemHeader] != nil)
	p.budget.Request()
	if h := p.hedge; h != nil && a.hedgeable(req, &body) {
		return a.hedged(req, c, body, safe, h)
	}

	var prev *Endpoint
	for n := 1; ; n++ {
		ep, ticket, retryIn := rt.pick(prev)
		prev = ep
		if ep == nil {
			c.stop()
			return nil, &UpstreamError{Route: rt.Name, Outcome: policy.BreakerOpen, Attempts: n - 1, RetryAfter: retryIn, Err: policy.ErrBreakerOpen}
		}
		resp, outcome, code, err := c.try(req, ep, &body, n)
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		rt.Pool.observe(ep, outcome, status, code)
		if outcome == policy.OK && status != http.StatusSwitchingProtocols && !ticket.Probe() {
			// Judged when its body ends (call.judgeBody): an answer
			// whose body breaks off is the failure it is, not a success
			// (docs/policies.md, "Circuit breakers").
			c.ticket = ticket
		} else {
			ticket.Done(rt.breakerResult(outcome, status, code))
		}

		if outcome == policy.OK || !c.retry(n, outcome, status, code, resp, safe, &body) {
			if err != nil {
				c.release()
				c.stop()
				return nil, &UpstreamError{Route: rt.Name, Outcome: outcome, Attempts: n, Err: err}
			}
			if a.spoolOn != nil && outcome == policy.Status && a.spoolOn.spoolsOn(outcome, status) {
				// The async path's loop: this answer is not passed on,
				// and serveAsync spools the request instead.
				io.CopyN(io.Discard, resp.Body, 4<<10)
				resp.Body.Close()
				c.release()
				c.stop()
				return nil, &UpstreamError{Route: rt.Name, Outcome: outcome, Status: status, Attempts: n, Err: errSpoolAnswer}
			}
			return c.handOn(resp, n), nil
		}
		// Retrying: drop this attempt's answer. c.retry has slept.
		rt.tel.Retry(c.app)
		if resp != nil {
			io.CopyN(io.Discard, resp.Body, 4<<10) // lets the connection be reused
			resp.Body.Close()
		}
		c.release()
	}
}

// handOn readies resp, the call's answer after n attempts, to be passed
// to the app: Sidecar-Attempts, and the call as its body, which ends the
// call when it ends.
func (c *call) handOn(resp *http.Response, n int) *http.Response {
	if n < len(attemptCounts) {
		resp.Header[HeaderAttempts] = attemptCounts[n]
	} else {
		resp.Header.Set(HeaderAttempts, strconv.Itoa(n))
	}
	c.body, c.resp = resp.Body, resp
	if rw, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		// The timeout covered the handshake; a tunnel lives as long as
		// both sides keep it.
		c.stop()
		resp.Body = &upgradedBody{call: c, w: rw}
	} else {
		resp.Body = c
	}
	return resp
}

// call is one request's trip through the attempt loop. It owns the
// attempt's context and one timer that enforces both deadlines: armed for
// min(per_try_timeout, the overall deadline) while an attempt waits for
// its response headers, then re-armed for the overall deadline while the
// body streams. Once a response is handed on, call is its body, and Close
// ends the call.
type call struct {
	route    *Route
	app      context.Context
	deadline time.Time // overall, the route's or the gRPC caller's; zero means none
	grpc     bool      // a gRPC call (isGRPC)
	method   string    // the request's method
	appBody  *appBody  // the app's request body; nil when it has none

	mu      sync.Mutex // between the timer's fire and (re)arming
	ctx     context.Context
	cancel  context.CancelCauseFunc
	timer   *time.Timer
	headers bool // the current attempt has its response headers

	ep       *Endpoint
	body     io.ReadCloser
	resp     *http.Response // the answer handed on, whose body is body
	released atomic.Bool
	// ticket is the breaker's ticket of the answer handed on while its
	// body is read: the breaker learns how the attempt went when the
	// body ends (judgeBody). It is zero when the result was recorded at
	// header time: an error answer, an upgrade, or a half-open probe,
	// which must not hold the breaker half-open for as long as a stream
	// lasts.
	ticket policy.BreakerTicket

	// The current attempt's telemetry, recorded when it is released.
	x         *exchange // the request's exchange, with an access log
	span      trace.Span
	attrs     []attribute.KeyValue // the span's attributes until it ends
	tryStart  time.Time
	tryStatus int
	tryCode   int
	tryResult policy.Outcome
}

// try makes one attempt to ep. For a gRPC call it sends the time left
// until the overall deadline as grpc-timeout and returns the answer's gRPC
// code (grpcAnswerCode): a non-zero code at header time makes the outcome
// status; otherwise, and for plain HTTP, the code is -1.
func (c *call) try(req *http.Request, ep *Endpoint, body *replayBody, n int) (*http.Response, policy.Outcome, int, error) {
	resp, o, code, err := c.send(req, ep, body, n)
	c.tryResult, c.tryCode = o, code
	if resp != nil {
		c.tryStatus = resp.StatusCode
	}
	return resp, o, code, err
}

// send is try's round trip.
func (c *call) send(req *http.Request, ep *Endpoint, body *replayBody, n int) (*http.Response, policy.Outcome, int, error) {
	out, ctx := c.prepare(req, ep, body.next(), n, c.route.pol.perTry, false)
	return c.exchange(out, ctx)
}

// prepare readies attempt n to ep, with body, and starts its span: it
// returns the request to send and the attempt's context. The attempt may
// wait perTry for its headers (0: no per-try deadline); a hedged call's
// attempts (cancelable) always get a context of their own, which the
// loop can cancel.
func (c *call) prepare(req *http.Request, ep *Endpoint, body io.ReadCloser, n int, perTry time.Duration, cancelable bool) (*http.Request, context.Context) {
	c.ep = ep
	c.released.Store(false)
	c.tryStatus, c.tryCode, c.tryResult = 0, -1, policy.OK
	if c.route.tel != nil {
		c.tryStart = time.Now()
	}
	if c.x != nil {
		c.x.endpoint = ep.URL.Host
	}
	ctx := c.app
	if d := c.tryDeadline(perTry); d > 0 || cancelable {
		ctx = c.arm(d)
	}
	out := req.WithContext(ctx)
	if c.grpc && !c.deadline.IsZero() {
		out.Header = req.Header.Clone()
		out.Header[headerGRPCTimeout] = []string{formatGRPCTimeout(time.Until(c.deadline))}
	}
	u := *req.URL
	u.Scheme, u.Host = ep.URL.Scheme, ep.URL.Host
	out.URL = &u
	if ep.host != "" && out.Host == "" {
		// A resolved endpoint: its URL holds the address, and the
		// upstream gets the name (docs/policies.md, "DNS re-resolution").
		out.Host = ep.host
	}
	out.Body = body
	c.span = c.attemptSpan(out, ep, n, c.grpc && !c.deadline.IsZero())
	return out, ctx
}

// exchange sends out, prepared with its context ctx, and classifies how
// it went.
func (c *call) exchange(out *http.Request, ctx context.Context) (*http.Response, policy.Outcome, int, error) {
	ep := c.ep
	transport := c.route.Pool.rt
	if ep.rt != nil {
		transport = ep.rt // a resolved endpoint's own connections
	}
	ep.inFlight.Add(1)
	resp, err := transport.RoundTrip(out)
	if err == nil && !c.gotHeaders() {
		// The per-try deadline passed as the headers came in: the body
		// would fail anyway, so call it a timeout now.
		resp.Body.Close()
		resp, err = nil, errPerTryTimeout
	}
	if err != nil {
		return nil, classify(err, c.app, ctx, c.appBody), -1, err
	}
	code := -1
	if c.grpc {
		code = grpcAnswerCode(resp)
	}
	if resp.StatusCode >= 400 || code > 0 {
		return resp, policy.Status, code, nil
	}
	return resp, policy.OK, code, nil
}

// tryDeadline is how long the next attempt may wait for its headers:
// per_try_timeout capped by what is left of the overall deadline; 0 when
// neither applies.
func (c *call) tryDeadline(perTry time.Duration) time.Duration {
	if c.deadline.IsZero() {
		return perTry
	}
	left := max(time.Until(c.deadline), time.Nanosecond)
	if perTry > 0 && perTry < left {
		return perTry
	}
	return left
}

// arm gives the next attempt a fresh context and starts its timer for d;
// none when d is 0.
func (c *call) arm(d time.Duration) context.Context {
	ctx, cancel := context.WithCancelCause(c.app)
	c.mu.Lock()
	c.ctx, c.cancel, c.headers = ctx, cancel, false
	switch {
	case d <= 0:
	case c.timer == nil:
		c.timer = time.AfterFunc(d, c.fire)
	default:
		c.timer.Reset(d)
	}
	c.mu.Unlock()
	return ctx
}

// fire is the timer: before headers it ends the attempt as a per-try (or
// overall) timeout; after them, only the overall deadline remains.
func (c *call) fire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel == nil {
		return
	}
	if c.headers {
		c.cancel(context.DeadlineExceeded)
		return
	}
	c.cancel(errPerTryTimeout)
}

// gotHeaders moves the attempt to its body phase: the per-try deadline no
// longer applies, the overall one does. It reports false if the attempt's
// timer had already fired.
func (c *call) gotHeaders() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel == nil {
		return true
	}
	if c.ctx.Err() != nil {
		return false
	}
	c.headers = true
	switch {
	case c.timer == nil:
		// No deadline at all: a hedged call's attempt, with a context
		// of its own only.
	case c.deadline.IsZero():
		c.timer.Stop()
	default:
		c.timer.Reset(max(time.Until(c.deadline), time.Nanosecond))
	}
	return true
}

// release ends the current attempt: it frees the endpoint's in-flight slot
// and cancels the attempt's context. It runs once per attempt.
func (c *call) release() {
	if c.released.Swap(true) {
		return
	}
	c.ep.inFlight.Add(-1)
	if t := c.route.tel; t != nil {
		t.Attempt(c.app, c.method, c.tryStatus, c.tryResult, time.Since(c.tryStart))
	}
	if c.span != nil {
		c.endAttemptSpan()
	}
	c.mu.Lock()
	if c.cancel != nil {
		c.cancel(context.Canceled)
		c.cancel = nil
	}
	c.mu.Unlock()
}

// stop stops the timer at the end of the call.
func (c *call) stop() {
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
}

// Read reads the response body of the call's last attempt.
func (c *call) Read(p []byte) (int, error) {
	n, err := c.body.Read(p)
	if err != nil {
		c.judgeBody(err)
	}
	return n, err
}

// Close closes the response body and ends the call.
func (c *call) Close() error {
	err := c.body.Close()
	c.judge(policy.BreakerSuccess) // closed before its end: nothing against the upstream
	c.release()
	c.stop()
	return err
}

// judgeBody records, once the body of the answer handed on has ended with
// err, how the attempt went, for the breaker and the attempt's telemetry:
// a body that broke off is reset, or timeout once the overall deadline
// passed (canceled when the app went away, which the breaker ignores); a
// gRPC call that ended without a grpc-status in its trailers is reset
// too, and one whose trailers carry an error code is judged by that code
// as at header time (docs/grpc.md, "Retries and breakers").
func (c *call) judgeBody(err error) {
	o, code := policy.OK, -1
	if err == io.EOF {
		if c.grpc && c.resp != nil && c.resp.Header[headerGRPCStatus] == nil {
			// Not a Trailers-Only answer, whose status was its headers'.
			if v := c.resp.Trailer[headerGRPCStatus]; len(v) == 0 {
				o = policy.Reset
			} else if n, perr := strconv.Atoi(v[0]); perr != nil || n < 0 {
				o, code = policy.Status, policy.GRPCUnknown
			} else if n > 0 {
				o, code = policy.Status, n
			}
		}
	} else {
		c.mu.Lock()
		ctx := c.ctx
		c.mu.Unlock()
		if ctx == nil {
			ctx = c.app
		}
		o = classify(err, c.app, ctx, c.appBody)
	}
	if o != policy.OK {
		c.tryResult, c.tryCode = o, code
	}
	c.judge(c.route.breakerResult(o, 0, code))
}

// judge records r on the ticket of the answer handed on, if it has not
// been recorded yet.
func (c *call) judge(r policy.BreakerResult) {
	c.mu.Lock()
	t := c.ticket
	c.ticket = policy.BreakerTicket{}
	c.mu.Unlock()
	t.Done(r)
}

// upgradedBody keeps a 101 response's body writable, as ReverseProxy needs
// to splice an upgraded (WebSocket) connection.
type upgradedBody struct {
	*call
	w io.Writer
}

func (b *upgradedBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// retry decides whether attempt n, which ended with outcome, HTTP status
// and gRPC code, is retried, and if so waits the back-off. It follows
// the retry rules of docs/design.md. A gRPC call, whatever its method, is safe to retry
// after an error answer at header time (Trailers-Only or a non-200
// status: the upstream sent no message), as grpc-go's own retry is; a
// grpc-retry-pushback-ms in that answer replaces the back-off, and a
// negative or malformed one stops retrying.
func (c *call) retry(n int, outcome policy.Outcome, status, code int, resp *http.Response, safe bool, body *replayBody) bool {
	p := &c.route.pol
	if n >= p.attempts || outcome.CallersFault() || !p.retryOn.Match(outcome, status, code) {
		return false
	}
	if !(safe || outcome == policy.ConnectError || c.grpc && outcome == policy.Status) || !body.replayable(outcome) {
		return false
	}
	now := time.Now()
	delay := p.backoff.Delay(n-1, nil)
	if resp != nil {
		if ra, ok := policy.ParseRetryAfter(resp.Header.Get("Retry-After"), now); ok {
			delay = ra
		}
		if v := resp.Header[headerGRPCPushback]; c.grpc && len(v) > 0 {
			pb, ok := policy.ParseGRPCPushback(v[0])
			if !ok {
				return false // the upstream asks not to retry
			}
			delay = pb
		}
	}
	if !c.deadline.IsZero() && !now.Add(delay).Before(c.deadline) {
		return false // no back-off sleeps, and no attempt starts, past the deadline
	}
	if !p.budget.TryRetry() {
		c.route.tel.BudgetExhausted(c.app)
		return false // the app gets the last real answer
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.app.Done():
			return false
		}
	}
	return true
}

// breakerResult says how an attempt counts for the endpoint's breaker: a
// failure when failure_on lists it, never for the app's own cancellation,
// a 4xx answer or a gRPC code that blames the caller (grpcClientCode).
func (rt *Route) breakerResult(o policy.Outcome, status, code int) policy.BreakerResult {
	switch {
	case o.CallersFault():
		return policy.BreakerIgnore
	case status >= 400 && status < 500, code >= 0 && grpcClientCode(code):
		return policy.BreakerSuccess
	case rt.pol.failureOn.Match(o, status, code):
		return policy.BreakerFailure
	}
	return policy.BreakerSuccess
}

// pick returns an endpoint whose breaker lets a request through, starting
// from the load balancer's choice and skipping open breakers, with the
// ticket that records the attempt's result. A retry avoids the endpoint
// that just failed (prev) when there is another. Endpoints that failed
// their health checks or are ejected are skipped too, but never all of
// them: when no other endpoint's breaker lets the request through, they
// are tried as if they were healthy (docs/policies.md, "Active health
// checks"). When every breaker is open it returns nil and the time until
// the first probe. It reads the pool's endpoint set once.
func (rt *Route) pick(prev *Endpoint) (*Endpoint, policy.BreakerTicket, time.Duration) {
	pool := rt.Pool
	set := pool.endpoints()
	eps := set.list
	i := pool.pick(pool, eps)
	if eps[i] == prev && len(eps) > 1 {
		i = (i + 1) % len(eps)
	}
	if rt.pol.breakers == nil && !pool.gated {
		return eps[i], policy.BreakerTicket{}, 0
	}
	var brs []*policy.Breaker
	if rt.pol.breakers != nil {
		brs = rt.pol.breakers.of(set)
	}
	var retryIn time.Duration
	skipped := false
	// The first pass asks the usable endpoints. When one was skipped and
	// none could take the request, the second asks the unhealthy and
	// ejected ones, whose breakers still apply.
	for pass := 0; pass < 2 && (pass == 0 || skipped); pass++ {
		for k := range eps {
			j := (i + k) % len(eps)
			if pool.gated && pool.usable(eps[j]) == (pass == 1) {
				skipped = true // passed over now, or asked in the first pass
				continue
			}
			if brs == nil {
				return eps[j], policy.BreakerTicket{}, 0
			}
			ticket, err := brs[j].Allow()
			if err == nil {
				return eps[j], ticket, 0
			}
			if ri := brs[j].RetryIn(); retryIn == 0 || ri < retryIn {
				retryIn = ri
			}
		}
	}
	return nil, policy.BreakerTicket{}, retryIn
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}
