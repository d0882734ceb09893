package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

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
// nothing is retried after that.
type attempter struct{ route *Route }

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
	app := req.Context()
	ctx, cancel := app, context.CancelFunc(nil)
	if p.timeout > 0 {
		ctx, cancel = context.WithTimeout(app, p.timeout)
	}
	body := newReplayBody(req, p)
	safe := p.attempts > 1 && (idempotent(req.Method) || p.idemHeader != "" && req.Header[p.idemHeader] != nil)
	p.budget.Request()

	for n := 1; ; n++ {
		ep, done, retryIn := rt.pick()
		if ep == nil {
			if cancel != nil {
				cancel()
			}
			return nil, &UpstreamError{Route: rt.Name, Outcome: policy.BreakerOpen, Attempts: n - 1, RetryAfter: retryIn, Err: policy.ErrBreakerOpen}
		}
		resp, outcome, at, err := a.try(ctx, app, req, ep, body)
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		done(rt.breakerResult(outcome, status))

		if outcome == policy.OK || !a.retry(ctx, n, outcome, status, resp, safe, body) {
			if err != nil {
				at.release()
				if cancel != nil {
					cancel()
				}
				return nil, &UpstreamError{Route: rt.Name, Outcome: outcome, Attempts: n, Err: err}
			}
			at.cancel = cancel
			resp.Body = at.wrap(resp)
			if n < len(attemptCounts) {
				resp.Header[HeaderAttempts] = attemptCounts[n]
			} else {
				resp.Header.Set(HeaderAttempts, strconv.Itoa(n))
			}
			return resp, nil
		}
		// Retrying: drop this attempt's answer. a.retry has slept.
		if resp != nil {
			io.CopyN(io.Discard, resp.Body, 4<<10) // lets the connection be reused
			resp.Body.Close()
		}
		at.release()
	}
}

// try makes one attempt to ep under the per-try deadline.
func (a *attempter) try(ctx, app context.Context, req *http.Request, ep *Endpoint, body *replayBody) (*http.Response, policy.Outcome, *attempt, error) {
	p := &a.route.pol
	at := &attempt{ep: ep}
	attemptCtx := ctx
	var tryTimer *time.Timer
	if p.perTry > 0 && (p.timeout == 0 || p.perTry < p.timeout) {
		attemptCtx, at.cancelTry = context.WithCancelCause(ctx)
		tryTimer = time.AfterFunc(p.perTry, func() { at.cancelTry(errPerTryTimeout) })
	}
	out := req.WithContext(attemptCtx)
	u := *req.URL
	u.Scheme, u.Host = ep.URL.Scheme, ep.URL.Host
	out.URL = &u
	out.Body = body.next()

	ep.inFlight.Add(1)
	resp, err := a.route.Pool.transport.RoundTrip(out)
	if tryTimer != nil && !tryTimer.Stop() && err == nil {
		// The per-try deadline passed as the headers came in: the body
		// would fail anyway, so call it a timeout now.
		resp.Body.Close()
		resp, err = nil, errPerTryTimeout
	}
	if err != nil {
		return nil, classify(err, app, attemptCtx), at, err
	}
	if resp.StatusCode >= 400 {
		return resp, policy.Status, at, nil
	}
	return resp, policy.OK, at, nil
}

// retry decides whether attempt n, which ended with outcome, is retried,
// and if so waits the back-off. It follows DESIGN's retry rules.
func (a *attempter) retry(ctx context.Context, n int, outcome policy.Outcome, status int, resp *http.Response, safe bool, body *replayBody) bool {
	p := &a.route.pol
	if n >= p.attempts || outcome == policy.Canceled || !p.retryOn.Match(outcome, status, -1) {
		return false
	}
	if !(safe || outcome == policy.ConnectError) || !body.replayable(outcome) {
		return false
	}
	now := time.Now()
	delay := p.backoff.Delay(n-1, nil)
	if resp != nil {
		if ra, ok := policy.ParseRetryAfter(resp.Header.Get("Retry-After"), now); ok {
			delay = ra
		}
	}
	if deadline, ok := ctx.Deadline(); ok && now.Add(delay).After(deadline) {
		return false // no back-off sleeps, and no attempt starts, past the deadline
	}
	if !p.budget.TryRetry() {
		return false // the app gets the last real answer
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// breakerResult says how an attempt counts for the endpoint's breaker: a
// failure when failure_on lists it, never for the app's own cancellation
// or a 4xx answer.
func (rt *Route) breakerResult(o policy.Outcome, status int) policy.BreakerResult {
	switch {
	case o == policy.Canceled:
		return policy.BreakerIgnore
	case status >= 400 && status < 500:
		return policy.BreakerSuccess
	case rt.pol.failureOn.Match(o, status, -1):
		return policy.BreakerFailure
	}
	return policy.BreakerSuccess
}

// pick returns an endpoint whose breaker lets a request through, starting
// from the load balancer's choice and skipping open breakers, with the
// function that records the attempt's result. When every breaker is open it
// returns nil and the time until the first probe.
func (rt *Route) pick() (*Endpoint, func(policy.BreakerResult), time.Duration) {
	ep := rt.Pool.pick(rt.Pool)
	brs := rt.pol.breakers
	if brs == nil {
		return ep, noBreaker, 0
	}
	eps := rt.Pool.Endpoints
	var retryIn time.Duration
	for k := range eps {
		i := (ep.index + k) % len(eps)
		done, err := brs[i].Allow()
		if err == nil {
			return eps[i], done, 0
		}
		if ri := brs[i].RetryIn(); retryIn == 0 || ri < retryIn {
			retryIn = ri
		}
	}
	return nil, nil, retryIn
}

func noBreaker(policy.BreakerResult) {}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// attempt is one round trip's resources: the endpoint's in-flight slot and
// its contexts, released once.
type attempt struct {
	ep        *Endpoint
	cancel    context.CancelFunc // the overall deadline, owned by the last attempt
	cancelTry context.CancelCauseFunc
	released  atomic.Bool
}

func (at *attempt) release() {
	if at.released.Swap(true) {
		return
	}
	at.ep.inFlight.Add(-1)
	if at.cancelTry != nil {
		at.cancelTry(context.Canceled)
	}
	if at.cancel != nil {
		at.cancel()
	}
}

// wrap returns resp's body made to release the attempt on Close. A 101
// response's body stays writable, as ReverseProxy needs to splice an
// upgraded (WebSocket) connection.
func (at *attempt) wrap(resp *http.Response) io.ReadCloser {
	b := &attemptBody{ReadCloser: resp.Body, at: at}
	if rw, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		return &upgradedBody{attemptBody: b, w: rw}
	}
	return b
}

// attemptBody ends the attempt when the proxy closes the response body.
type attemptBody struct {
	io.ReadCloser
	at *attempt
}

func (b *attemptBody) Close() error {
	err := b.ReadCloser.Close()
	b.at.release()
	return err
}

type upgradedBody struct {
	*attemptBody
	w io.Writer
}

func (b *upgradedBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// replayBody gives each attempt the request body. Up to buffer_limit it is
// buffered and replayed; a larger body streams and can be retried only
// after a connect_error that read none of it. The server closes the app's
// body when the handler returns.
type replayBody struct {
	orig    io.ReadCloser // nil when the request has no body
	buf     []byte        // the whole body, when buffered
	stream  *countingBody // the body streamed with a byte count, when retries are on
	noRetry bool
}

func newReplayBody(req *http.Request, p *routePolicy) *replayBody {
	b := &replayBody{orig: req.Body}
	switch {
	case req.Body == nil || req.Body == http.NoBody:
		b.orig = nil
		return b
	case p.attempts <= 1:
		b.noRetry = true // one attempt: the body streams as it is
		return b
	}
	if req.ContentLength <= p.bufferLimit {
		limit := p.bufferLimit
		if req.ContentLength >= 0 {
			limit = req.ContentLength
		}
		buf, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
		switch {
		case err != nil:
			// The app's body broke: send what came, then the error.
			b.stream = &countingBody{r: io.MultiReader(bytes.NewReader(buf), errReader{err})}
			b.noRetry = true
		case int64(len(buf)) <= limit:
			b.buf = buf
		default:
			b.stream = &countingBody{r: io.MultiReader(bytes.NewReader(buf), req.Body)}
			b.noRetry = true // read past the limit: it cannot be replayed
		}
		return b
	}
	b.stream = &countingBody{r: req.Body}
	return b
}

// next returns the body for the next attempt.
func (b *replayBody) next() io.ReadCloser {
	switch {
	case b.orig == nil:
		return nil
	case b.buf != nil:
		return io.NopCloser(bytes.NewReader(b.buf))
	case b.stream == nil:
		return b.orig
	}
	return b.stream
}

// replayable reports whether the body can be sent again after outcome.
func (b *replayBody) replayable(o policy.Outcome) bool {
	switch {
	case b.orig == nil || b.buf != nil:
		return true
	case b.noRetry:
		return false
	}
	// A streamed body is intact only if nothing was read from it, which a
	// connect_error guarantees: the connection never existed.
	return o == policy.ConnectError && b.stream.n.Load() == 0
}

// countingBody streams a body, counting bytes read, and ignores Close so
// the transport cannot close it under a later attempt.
type countingBody struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingBody) Close() error { return nil }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
