package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/sidecar-proxy/sidecar/policy"
)

// hedgePolicy is a route's compiled hedge block, with its counters; a
// reload keeps it while the route's policy is unchanged.
type hedgePolicy struct {
	after    time.Duration // between hedges; > 0
	maxExtra int           // hedges a request may send, 1 to config.MaxHedges
	onPerTry bool          // a per-try timeout sends a hedge instead of failing the attempt
	sent     atomic.Int64  // hedges sent
	wins     atomic.Int64  // requests answered by a hedge
}

// HedgeStats are a route's hedging settings and counts since the policy
// was built, for the admin API.
type HedgeStats struct {
	After    string `json:"after"`
	MaxExtra int    `json:"max_extra"`
	Sent     int64  `json:"sent"` // hedges sent
	Wins     int64  `json:"wins"` // requests answered by a hedge
}

// errHedgeLost is the cause of a hedged call's attempt that the loop
// canceled because another attempt answered first.
var errHedgeLost = errors.New("another attempt of the request answered first")

// hedgeable reports whether req may be hedged by the loop a with the
// request body body (docs/policies.md, "Hedged requests"): not on an
// async route (neither its first tries nor the deliveries of its spooled
// messages, which nobody waits for), a request safe to send twice (an
// idempotent method, or one carrying the idempotency header), no
// upgrade, and a body that is either buffered whole or kept by a tee (a
// hedge then goes out only once it is whole).
func (a *attempter) hedgeable(req *http.Request, body *replayBody) bool {
	if a.route.async != nil || req.Header["Upgrade"] != nil || !idempotent(req.Method) && req.Header[a.route.pol.idemHeader] == nil {
		return false
	}
	return body.orig == nil || body.buf != nil || body.tee != nil
}

// hedgeTry is one attempt of a hedged call, which runs on a goroutine
// of its own (hedgeGroup.run) until it has its response headers or
// failed.
type hedgeTry struct {
	c      *call // the attempt's state: endpoint, context, timer, span
	ctx    context.Context
	ticket policy.BreakerTicket
	hedge  bool      // sent while an earlier attempt still waited
	perTry time.Time // with on_per_try_timeout, when its per-try timeout passes; zero: none, or handled

	// How it ended, set by run.
	resp    *http.Response
	outcome policy.Outcome
	code    int
	err     error
}

func (t *hedgeTry) status() int {
	if t.resp == nil {
		return 0
	}
	return t.resp.StatusCode
}

// discard ends an attempt whose answer is not passed on: its breaker
// learns how it went (nothing, when the loop canceled it), its answer is
// dropped and the attempt released.
func (t *hedgeTry) discard() {
	rt := t.c.route
	if t.err != nil && context.Cause(t.ctx) == errHedgeLost {
		// Canceled by the loop: nothing said about the upstream.
		t.c.tryResult = policy.Canceled
		t.ticket.Done(policy.BreakerIgnore)
	} else {
		t.ticket.Done(rt.breakerResult(t.outcome, t.status(), t.code))
	}
	t.ticket = policy.BreakerTicket{}
	if t.resp != nil {
		io.CopyN(io.Discard, t.resp.Body, 4<<10) // lets the connection be reused
		t.resp.Body.Close()
	}
	t.c.release()
	t.c.stop()
}

// hedgeGroup hands the hedged call's finished attempts to its loop until
// the loop has decided; an attempt that finishes after that discards
// itself.
type hedgeGroup struct {
	mu      sync.Mutex
	decided bool
	done    chan *hedgeTry // room for every attempt the call may make
}

// run makes attempt t with out, its request, and hands it over.
func (g *hedgeGroup) run(t *hedgeTry, out *http.Request) {
	c := t.c
	t.resp, t.outcome, t.code, t.err = c.exchange(out, t.ctx)
	c.tryResult, c.tryCode = t.outcome, t.code
	c.tryStatus = t.status()
	if t.err == nil || context.Cause(t.ctx) != errHedgeLost {
		// Outlier ejection learns how it went, as in RoundTrip; an
		// attempt the loop canceled says nothing of its endpoint.
		c.route.Pool.observe(c.ep, t.outcome, t.status(), t.code)
	}
	g.mu.Lock()
	if !g.decided {
		g.done <- t
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	t.discard()
}

// hedgeLoop is the attempt loop of a hedged call: the attempts race, the
// first answer wins, and the loop sends hedges on a timer
// (docs/policies.md, "Hedged requests"):
//
//	attempt 1 -> (after, no headers) hedge -> ... up to max_extra hedges;
//	an answer (headers) that is not a failure retry.on lists wins at once;
//	a failure that retry.on lists, while others wait, is dropped and the
//	next hedge goes out at once (gRFC A6; a gRPC pushback delays it, or
//	stops hedging); when every attempt failed, the retry rules decide,
//	and a retry is hedged in turn while hedges are left.
//
// Every hedge draws on the retry budget and counts in Sidecar-Attempts.
type hedgeLoop struct {
	rt   *Route
	h    *hedgePolicy
	c    *call         // the call: its deadline and retry decisions
	req  http.Request  // a shallow copy: the caller's request stays off the heap when not hedged
	app  noClientTrace // c.app without the app's client trace; &app is the attempts' parent context
	body replayBody
	safe bool // retries allowed whatever the outcome (retry's rule)

	g       hedgeGroup
	live    []*hedgeTry // attempts still waiting for an answer
	liveBuf [2]*hedgeTry
	// The first attempt's state, kept here rather than allocated apart.
	firstTry  hedgeTry
	firstCall call
	n         int       // attempts sent
	hedges    int       // hedges sent
	stopped   bool      // no more hedges: pushback, budget, or a body not whole
	next      time.Time // when the next hedge is due; zero: none
	prev      *Endpoint // the last attempt's
	timer     *time.Timer
}

// hedged is RoundTrip for a request that hedgeable allows on a route
// with a hedge policy h; c is the call, whose request the budget has
// counted.
func (a *attempter) hedged(req *http.Request, c *call, body replayBody, safe bool, h *hedgePolicy) (*http.Response, error) {
	rt := a.route
	l := &hedgeLoop{rt: rt, h: h, c: c, req: *req, app: noClientTrace{c.app}, body: body, safe: safe}
	l.live = l.liveBuf[:0]
	l.g.done = make(chan *hedgeTry, rt.pol.attempts+h.maxExtra)
	ep, ticket, retryIn := rt.pick(nil)
	if ep == nil {
		return nil, &UpstreamError{Route: rt.Name, Outcome: policy.BreakerOpen, RetryAfter: retryIn, Err: policy.ErrBreakerOpen}
	}
	l.send(ep, ticket, l.body.next(), false)
	l.next = time.Now().Add(h.after)
	l.timer = time.NewTimer(h.after)
	defer l.timer.Stop()
	l.rearm()
	for {
		select {
		case t := <-l.g.done:
			l.drop(t)
			if resp, err := l.settle(t); resp != nil || err != nil {
				return resp, err
			}
		case <-l.timer.C:
		}
		l.tick(time.Now())
		l.rearm()
	}
}

// settle decides what attempt t's end means: the call's answer or its
// failure, or neither when the loop goes on.
func (l *hedgeLoop) settle(t *hedgeTry) (*http.Response, error) {
	p := &l.rt.pol
	status := t.status()
	if t.outcome == policy.OK || t.outcome.CallersFault() || !p.retryOn.Match(t.outcome, status, t.code) {
		// An answer, or a failure that ends the call (fatal, in A6's
		// words).
		return l.commit(t)
	}
	now := time.Now()
	pushed := false
	if v := t.resp; v != nil && l.c.grpc && len(v.Header[headerGRPCPushback]) > 0 {
		if pb, ok := policy.ParseGRPCPushback(v.Header[headerGRPCPushback][0]); ok {
			l.next, pushed = now.Add(pb), true
		} else {
			l.stopped = true // the upstream asks for no more attempts
		}
	}
	if len(l.live) > 0 {
		// Others still wait: this failure does not end the call, and
		// the next hedge, if any, goes out now.
		t.discard()
		if !pushed {
			l.next = now
		}
		return nil, nil
	}
	// Every attempt failed: the retry rules decide.
	if !l.c.retry(l.n, t.outcome, status, t.code, t.resp, l.safe, &l.body) {
		return l.commit(t)
	}
	l.rt.tel.Retry(l.c.app)
	t.discard()
	ep, ticket, retryIn := l.rt.pick(l.prev)
	if ep == nil {
		l.decide()
		return nil, &UpstreamError{Route: l.rt.Name, Outcome: policy.BreakerOpen, Attempts: l.n, RetryAfter: retryIn, Err: policy.ErrBreakerOpen}
	}
	l.send(ep, ticket, l.body.next(), false)
	l.next = time.Now().Add(l.h.after)
	return nil, nil
}

// tick sends what is due at now: for each attempt whose per-try timeout
// passed (on_per_try_timeout), a hedge instead of failing it, or its
// failure when no hedge is left; then the hedge the timer was set for.
func (l *hedgeLoop) tick(now time.Time) {
	for _, t := range l.live {
		if t.perTry.IsZero() || now.Before(t.perTry) {
			continue
		}
		t.perTry = time.Time{}
		if l.hedge(now) {
			l.next = now.Add(l.h.after)
			continue // t keeps waiting
		}
		t.c.expire()
	}
	if !l.next.IsZero() && !now.Before(l.next) {
		l.next = time.Time{}
		if l.hedge(now) {
			l.next = now.Add(l.h.after)
		}
	}
}

// hedge sends a hedge if one is allowed now: hedges left, no pushback
// against it, the deadline not passed, the body whole at hand, an
// endpoint whose breaker allows it, and the retry budget. It reports
// whether one was sent.
func (l *hedgeLoop) hedge(now time.Time) bool {
	if l.stopped || l.hedges >= l.h.maxExtra || l.c.app.Err() != nil || !l.c.deadline.IsZero() && !now.Before(l.c.deadline) {
		return false
	}
	body, ok := l.body.hedge()
	if !ok {
		l.stopped = true // still arriving, or too large: never hedged
		return false
	}
	ep, ticket, _ := l.pick()
	if ep == nil {
		return false
	}
	if !l.rt.pol.budget.TryRetry() {
		ticket.Done(policy.BreakerIgnore)
		l.rt.tel.BudgetExhausted(l.c.app)
		l.stopped = true
		return false
	}
	l.send(ep, ticket, body, true)
	l.hedges++
	l.h.sent.Add(1)
	l.rt.tel.Hedge(l.c.app)
	return true
}

// pick returns the endpoint of the next hedge: the route's choice
// (Route.pick), asked again while it names an endpoint that a waiting
// attempt uses and others are left to try.
func (l *hedgeLoop) pick() (*Endpoint, policy.BreakerTicket, time.Duration) {
	prev := l.prev
	for i, n := 0, len(l.rt.Pool.endpoints().list); ; i++ {
		ep, ticket, retryIn := l.rt.pick(prev)
		if ep == nil || i+1 >= n || !l.inUse(ep) {
			return ep, ticket, retryIn
		}
		ticket.Done(policy.BreakerIgnore)
		prev = ep
	}
}

func (l *hedgeLoop) inUse(ep *Endpoint) bool {
	for _, t := range l.live {
		if t.c.ep == ep {
			return true
		}
	}
	return false
}

// send starts the next attempt to ep, with body, on a goroutine of its
// own; hedge says it is a hedge.
func (l *hedgeLoop) send(ep *Endpoint, ticket policy.BreakerTicket, body io.ReadCloser, hedge bool) {
	p := &l.rt.pol
	l.n++
	c, t := &l.firstCall, &l.firstTry
	if l.n > 1 {
		c, t = new(call), new(hedgeTry)
	}
	*c = call{route: l.rt, app: &l.app, deadline: l.c.deadline, grpc: l.c.grpc, method: l.c.method, appBody: l.c.appBody}
	*t = hedgeTry{c: c, ticket: ticket, hedge: hedge}
	perTry := p.perTry
	if l.h.onPerTry && perTry > 0 {
		// The loop acts on the per-try timeout (tick); the attempt's own
		// timer keeps the overall deadline only.
		if at := time.Now().Add(perTry); c.deadline.IsZero() || at.Before(c.deadline) {
			t.perTry = at
		}
		perTry = 0
	}
	out, ctx := c.prepare(&l.req, ep, body, l.n, perTry, true)
	if hedge && c.span != nil {
		c.attrs = append(c.attrs, attribute.Bool("sidecar.hedge", true))
	}
	t.ctx = ctx
	l.prev = ep
	l.live = append(l.live, t)
	go l.g.run(t, out)
}

// drop removes t from the attempts still waiting.
func (l *hedgeLoop) drop(t *hedgeTry) {
	for i, x := range l.live {
		if x == t {
			l.live = append(l.live[:i], l.live[i+1:]...)
			return
		}
	}
}

// rearm sets the timer for the next hedge or per-try timeout, if any.
func (l *hedgeLoop) rearm() {
	at := l.next
	if l.stopped || l.hedges >= l.h.maxExtra {
		at = time.Time{}
	}
	for _, t := range l.live {
		if !t.perTry.IsZero() && (at.IsZero() || t.perTry.Before(at)) {
			at = t.perTry
		}
	}
	if at.IsZero() {
		l.timer.Stop()
		return
	}
	l.timer.Reset(max(time.Until(at), 0))
}

// decide ends the race: no attempt hands itself over from now on, those
// still waiting are canceled (their connections closed, their streams
// reset), and those already handed over are discarded.
func (l *hedgeLoop) decide() {
	l.g.mu.Lock()
	l.g.decided = true
	l.g.mu.Unlock()
	for _, t := range l.live {
		t.c.abandon()
	}
	l.live = l.live[:0]
	for {
		select {
		case t := <-l.g.done:
			t.discard()
		default:
			return
		}
	}
}

// commit makes attempt t's end the call's: its answer, passed on with
// the attempts sent in Sidecar-Attempts, or its failure.
func (l *hedgeLoop) commit(t *hedgeTry) (*http.Response, error) {
	l.decide()
	rt, c := l.rt, t.c
	if x := l.c.x; x != nil {
		x.endpoint = c.ep.URL.Host
	}
	if t.err != nil {
		t.discard()
		return nil, &UpstreamError{Route: rt.Name, Outcome: t.outcome, Attempts: l.n, Err: t.err}
	}
	resp := t.resp
	if t.outcome == policy.OK && resp.StatusCode != http.StatusSwitchingProtocols && !t.ticket.Probe() {
		c.ticket = t.ticket // judged when its body ends, as in RoundTrip
	} else {
		t.ticket.Done(rt.breakerResult(t.outcome, resp.StatusCode, t.code))
	}
	if t.hedge {
		l.h.wins.Add(1)
		rt.tel.HedgeWin(l.c.app)
	}
	return c.handOn(resp, l.n), nil
}

// abandon cancels the attempt because another answered first.
func (c *call) abandon() {
	c.mu.Lock()
	if c.cancel != nil {
		c.cancel(errHedgeLost)
	}
	c.mu.Unlock()
}

// expire ends the attempt as its per-try timeout does, unless its
// response headers came (on_per_try_timeout with no hedge left).
func (c *call) expire() {
	c.mu.Lock()
	if c.cancel != nil && !c.headers {
		c.cancel(errPerTryTimeout)
	}
	c.mu.Unlock()
}

// noClientTrace is a hedged call's context for its attempts: the app's,
// without the httptrace.ClientTrace that passes informational (1xx)
// answers on to the app, since several attempts race and none may reach
// the app before one has won.
type noClientTrace struct{ context.Context }

func (c noClientTrace) Value(key any) any {
	v := c.Context.Value(key)
	if _, ok := v.(*httptrace.ClientTrace); ok {
		return nil
	}
	return v
}
