package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/internal/inmem"
	"github.com/sidecar-proxy/sidecar/policy"
	"github.com/sidecar-proxy/sidecar/spool"
)

// maxIdle bounds how long a deliverer sleeps without looking at the store:
// a message made due by something other than an append (a replay, the
// clock) is found within it.
const maxIdle = time.Second

// farFuture makes spool.Next return a route's head whatever its due time.
var farFuture = time.Unix(0, math.MaxInt64)

// deliverer delivers one async route's spooled messages through the
// route's attempt loop (breakers, retries and deadlines apply), in the
// background. With ordering fifo one message is in flight and the head of
// the route blocks the rest until it is settled; with ordering none up to
// max_in_flight deliveries run at once, in any order.
//
// A delivery answered 2xx is acknowledged. 408, 429, 5xx and failures
// without an answer (connect_error, reset, timeout, breaker_open) are
// retried later: after the answer's Retry-After if it has one, else a
// full-jitter back-off min(max, base*2^attempts) from async.backoff.
// Other answers are permanent: the message is dead-lettered at once, as it
// is when max_attempts deliveries failed or it is older than max_age.
type deliverer struct {
	route string
	store spool.Store
	snap  func() *Snapshot // the current snapshot: the route is looked up per delivery
	log   *slog.Logger
	wake  chan struct{}
	async *config.Async   // what the deliverer was started for: a reload that changes it starts a new one
	stop  chan struct{}   // closed when no more deliveries may start: by the group's shutdown, or when a reload retires the deliverer
	after <-chan struct{} // the route's previous deliverer's done: run starts once it is closed (nil: none)
	done  chan struct{}   // closed when run has returned and the deliveries it started have ended
	ctx   context.Context // the group's: canceled to end deliveries in flight
	wg    sync.WaitGroup  // deliveries in flight (ordering none)
	slots chan struct{}   // one per delivery in flight (ordering none)

	// Figures for Server.Deliveries, read without locks. The counts are
	// the route's, kept across the deliverers that reloads start for it.
	counts *deliveryCounts
	head   atomic.Pointer[HeadStatus] // fifo: the held head; nil when none

	// now is the deliverer's clock for pacing; nil means time.Now.
	now func() time.Time
	// pacer paces the deliveries with async.rate; the loop's alone.
	pacer *rate.Limiter
	// rate is the async.rate the pacer has; nil: none.
	rate atomic.Pointer[deliveryRate]
}

// deliveryCounts are a route's delivery results since the Server started,
// and its requests de-duplicated.
type deliveryCounts struct {
	delivered, retried, dead atomic.Int64
	// paced counts delivery attempts that waited for async.rate.
	paced atomic.Int64
	// deduplicated counts requests answered with an earlier request's
	// 202 (async.dedupe_window).
	deduplicated atomic.Int64
}

// deliveryGroup owns a server's deliverers, one per async route: the
// context that cancels their deliveries in flight, and the wait for them.
// A reload (reconcile) retires the deliverers of routes removed or whose
// async block changed, and starts deliverers for routes added or changed.
type deliveryGroup struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // running deliverer loops

	mu      sync.Mutex
	byRoute map[string]*deliverer      // the current deliverer of each route
	counts  map[string]*deliveryCounts // by route, kept across reloads
	closed  bool

	wakes sync.Map // route name → chan struct{} (buffered 1), kept across reloads

}

// countsFor returns route's counts, made on first use.
func (g *deliveryGroup) countsFor(route string) *deliveryCounts {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.counts[route]
	if c == nil {
		c = new(deliveryCounts)
		g.counts[route] = c
	}
	return c
}

// sameDeliverer reports whether a deliverer started for async a can go
// on for async b: they differ at most in keys the running deliverer
// takes from the current snapshot (rate) or that do not concern it
// (dedupe_window).
func sameDeliverer(a, b *config.Async) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.Rate, y.Rate = nil, nil
	x.DedupeWindow, y.DedupeWindow = 0, 0
	return reflect.DeepEqual(&x, &y)
}

func newDeliveryGroup() *deliveryGroup {
	ctx, cancel := context.WithCancel(context.Background())
	return &deliveryGroup{ctx: ctx, cancel: cancel, byRoute: map[string]*deliverer{}, counts: map[string]*deliveryCounts{}}
}

// wake returns route's wake channel (buffered 1), which an append
// signals. It is made once per route name and kept across reloads.
func (g *deliveryGroup) wake(route string) chan struct{} {
	if c, ok := g.wakes.Load(route); ok {
		return c.(chan struct{})
	}
	c, _ := g.wakes.LoadOrStore(route, make(chan struct{}, 1))
	return c.(chan struct{})
}

// reconcile makes the running deliverers those of snap's async routes: a
// route whose async block is unchanged keeps its deliverer; a route
// added gets one; a route removed (or no longer async) has its deliverer
// retired between messages, and its messages stay in the store; a route
// whose async block changed gets a new deliverer, which starts once the
// retired one has returned, so that an ordering fifo route never has two
// heads in flight. After shutdown it does nothing.
func (g *deliveryGroup) reconcile(snap *Snapshot, newDeliverer func(route string) *deliverer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	want := map[string]*Route{}
	for _, rt := range snap.Routes {
		if rt.async != nil {
			want[rt.Name] = rt
		}
	}
	for name, d := range g.byRoute {
		if rt := want[name]; rt == nil || !sameDeliverer(d.async, rt.asyncConfig) {
			d.retire()
			if rt == nil {
				delete(g.byRoute, name)
			}
		}
	}
	for name, rt := range want {
		prev := g.byRoute[name]
		if prev != nil && sameDeliverer(prev.async, rt.asyncConfig) {
			prev.async = rt.asyncConfig
			continue
		}
		d := newDeliverer(name)
		d.async, d.wake = rt.asyncConfig, g.wake(name)
		if prev != nil {
			d.after = prev.done
		}
		g.startLocked(d)
	}
}

// startLocked runs d in the group until shutdown or until retired.
func (g *deliveryGroup) startLocked(d *deliverer) {
	d.stop, d.done, d.ctx = make(chan struct{}), make(chan struct{}), g.ctx
	if c := g.counts[d.route]; c != nil {
		d.counts = c
	} else {
		d.counts = new(deliveryCounts)
		g.counts[d.route] = d.counts
	}
	g.byRoute[d.route] = d
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer close(d.done)
		if d.after != nil {
			select {
			case <-d.after:
			case <-d.stop:
				return
			}
		}
		d.run()
	}()
}

// retire stops d between messages; deliveries in flight go on to their
// end. It may be called more than once.
func (d *deliverer) retire() {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
}

// status returns each running deliverer's figures by route name.
func (g *deliveryGroup) status() map[string]DeliveryStatus {
	g.mu.Lock()
	ds := make([]*deliverer, 0, len(g.byRoute))
	for _, d := range g.byRoute {
		ds = append(ds, d)
	}
	g.mu.Unlock()
	out := make(map[string]DeliveryStatus, len(ds))
	for _, d := range ds {
		out[d.route] = d.status()
	}
	return out
}

// shutdown stops the deliverers: no new delivery starts, and those in
// flight may finish until ctx ends; then they are canceled, and their
// messages stay pending. It returns once every deliverer, retired ones
// included, has returned, or cancelWait after ctx ended: a deliverer
// that the spool holds (an Ack waiting for a disk that stalls, or a read
// of it) returns only when the disk answers, and must not keep the
// process from exiting. It is left running; its message stays pending.
func (g *deliveryGroup) shutdown(ctx context.Context) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	for _, d := range g.byRoute {
		d.retire()
	}
	g.byRoute = map[string]*deliverer{}
	g.mu.Unlock()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		g.cancel()
		return nil
	case <-ctx.Done():
	}
	g.cancel()
	t := time.NewTimer(cancelWait)
	defer t.Stop()
	select {
	case <-done:
		return fmt.Errorf("spool deliveries canceled: %w", ctx.Err())
	case <-t.C:
		return fmt.Errorf("spool deliveries canceled: %w; a deliverer still waits for the spool %v later (a disk that stalls?) and is left to it", ctx.Err(), cancelWait)
	}
}

// cancelWait is how long shutdown waits for the deliverers it canceled:
// a canceled delivery returns at once, unless the spool holds it.
const cancelWait = time.Second

// DeliveryStatus is a snapshot of one async route's deliverer. The counts
// are since the Server started.
type DeliveryStatus struct {
	// Delivered counts deliveries the upstream answered 2xx.
	Delivered int64
	// Retried counts failed deliveries made due again later.
	Retried int64
	// DeadLettered counts messages the deliverer moved to the dead
	// letters: permanent answers, max_attempts, max_age, damaged records.
	DeadLettered int64
	// Head is the message at the head of an ordering fifo route while the
	// deliverer holds it; nil when none is held or the route is not fifo.
	Head *HeadStatus
	// Deduplicated counts requests answered with the 202 of an earlier
	// request with the same idempotency key (async.dedupe_window).
	Deduplicated int64
	// Paced counts delivery attempts that waited for async.rate.
	Paced int64
	// RatePerSecond and RateBurst are the async.rate the deliverer
	// paces with; 0 when it is not paced.
	RatePerSecond float64
	RateBurst     int
}

// HeadStatus is the head message of an ordering fifo route, which every
// later message of the route waits behind.
type HeadStatus struct {
	// ID is the message's ID.
	ID string
	// Attempts is the number of delivery attempts made so far.
	Attempts int
	// NextAttempt is when the message is due; zero means now.
	NextAttempt time.Time
	// Blocked reports that a delivery of the message has failed and it
	// waits for its retry (or is being retried): the route is stuck
	// behind it until it is delivered or dead-lettered.
	Blocked bool
}

// status returns the deliverer's figures.
func (d *deliverer) status() DeliveryStatus {
	st := DeliveryStatus{
		Delivered:    d.counts.delivered.Load(),
		Retried:      d.counts.retried.Load(),
		DeadLettered: d.counts.dead.Load(),
		Head:         d.head.Load(),
		Deduplicated: d.counts.deduplicated.Load(),
		Paced:        d.counts.paced.Load(),
	}
	// The route's async.rate now, which the next attempt paces with:
	// the bucket is made, and a reload's change applied, only then.
	if rt := d.snap().routes[d.route]; rt != nil && rt.async != nil && rt.async.rate != nil {
		st.RatePerSecond, st.RateBurst = rt.async.rate.perSecond, rt.async.rate.burst
	}
	return st
}

// setHead publishes the held head of a fifo route; a nil info clears it.
func (d *deliverer) setHead(info *spool.Info) {
	if info == nil {
		d.head.Store(nil)
		return
	}
	d.head.Store(&HeadStatus{
		ID:          info.ID,
		Attempts:    info.Attempts,
		NextAttempt: info.NextAttempt,
		// Only RetryLater sets a due time, so one is set once a
		// delivery has failed; Replay clears it.
		Blocked: !info.NextAttempt.IsZero(),
	})
}

// run is the deliverer's loop; it returns once stop is closed and its
// deliveries have ended.
func (d *deliverer) run() {
	defer d.wg.Wait()
	for !d.stopped() {
		rt := d.snap().routes[d.route]
		if rt == nil || rt.async == nil {
			d.idle(maxIdle)
			continue
		}
		if rt.async.fifo {
			d.fifoStep()
		} else {
			d.parallelStep(rt.async.maxInFlight)
		}
	}
}

func (d *deliverer) stopped() bool {
	select {
	case <-d.stop:
		return true
	default:
		return false
	}
}

// idle waits up to wait for an append, or until stop.
func (d *deliverer) idle(wait time.Duration) {
	t := time.NewTimer(min(max(wait, time.Millisecond), maxIdle))
	defer t.Stop()
	select {
	case <-d.wake:
	case <-t.C:
	case <-d.stop:
	}
}

// sleep waits for wait (at most maxIdle), or until stop; appends do not
// end it.
func (d *deliverer) sleep(wait time.Duration) {
	t := time.NewTimer(min(max(wait, time.Millisecond), maxIdle))
	defer t.Stop()
	select {
	case <-t.C:
	case <-d.stop:
	}
}

// fifoStep delivers the route's head message if it is due. spool.Next
// skips a head that is not due yet, so the head is leased whatever its due
// time (farFuture) and held until it is due: later messages wait.
func (d *deliverer) fifoStep() {
	m, ok, err := d.store.Next(d.route, farFuture)
	if !d.nextOK(err) || !ok {
		d.setHead(nil)
		d.idle(maxIdle)
		return
	}
	var info spool.Info
	for {
		var err error
		_, info, err = d.store.Get(m.ID)
		if err != nil {
			// Deleted while held (look again), damaged on disk since
			// (dead-lettered by nextOK), or the store closed.
			d.setHead(nil)
			if !errors.Is(err, spool.ErrNotFound) && !d.nextOK(err) {
				d.sleep(maxIdle)
			}
			return
		}
		d.setHead(&info)
		wait := time.Until(info.NextAttempt)
		if wait <= 0 {
			break
		}
		d.sleep(wait)
		if d.stopped() {
			// Hand the head back, so that the route's next deliverer
			// (after a reload) can lease it.
			d.handBack(m, info.NextAttempt)
			d.setHead(nil)
			return
		}
	}
	if !d.pace() {
		d.handBack(m, info.NextAttempt)
		d.setHead(nil)
		return
	}
	if d.deliver(m) {
		d.setHead(nil)
	}
}

// parallelStep starts one delivery of a due message once fewer than
// limit are running (ordering none), or waits for an append when none is
// due. Next skips leased messages, so no message is delivered twice at
// once.
func (d *deliverer) parallelStep(limit int) {
	if d.slots == nil {
		d.slots = make(chan struct{}, limit) // fixed for the deliverer's life
	}
	select {
	case d.slots <- struct{}{}:
	case <-d.stop:
		return
	}
	m, ok, err := d.store.Next(d.route, time.Now())
	if !d.nextOK(err) || !ok {
		<-d.slots
		d.idle(d.untilDue())
		return
	}
	if !d.pace() {
		d.handBack(m, time.Time{}) // it was due
		<-d.slots
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() { <-d.slots }()
		if !d.deliver(m) {
			// A retry is now scheduled: the loop, perhaps idle since
			// before, recomputes how long to wait.
			select {
			case d.wake <- struct{}{}:
			default:
			}
		}
	}()
}

// pace waits until the route's async.rate allows one more delivery
// attempt (reserve). It returns false, without a token, if the deliverer
// was stopped while it waited.
func (d *deliverer) pace() bool {
	var r *deliveryRate
	if rt := d.snap().routes[d.route]; rt != nil && rt.async != nil {
		r = rt.async.rate
	}
	wait, res := d.reserve(r, d.clock())
	if wait <= 0 {
		return true
	}
	d.counts.paced.Add(1)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-d.stop:
		res.CancelAt(d.clock())
		return false
	}
}

// reserve takes a token for one delivery attempt at now from the
// deliverer's token bucket (golang.org/x/time/rate, on the deliverer's
// clock), and returns how long from now the attempt must wait for it.
// Every attempt takes one, a retry's as well. The bucket is made at the
// first paced attempt, full (burst attempts may start at once), and a
// change of r by a reload applies to it at once; a nil r (not paced)
// drops it.
func (d *deliverer) reserve(r *deliveryRate, now time.Time) (time.Duration, *rate.Reservation) {
	if r == nil {
		if d.pacer != nil {
			d.pacer = nil
			d.rate.Store(nil)
		}
		return 0, nil
	}
	switch old := d.rate.Load(); {
	case d.pacer == nil:
		d.pacer = rate.NewLimiter(rate.Limit(r.perSecond), r.burst)
		d.rate.Store(r)
	case *old != *r:
		d.pacer.SetLimitAt(now, rate.Limit(r.perSecond))
		d.pacer.SetBurstAt(now, r.burst)
		d.rate.Store(r)
	}
	res := d.pacer.ReserveN(now, 1)
	return res.DelayFrom(now), res
}

func (d *deliverer) clock() time.Time {
	if d.now != nil {
		return d.now()
	}
	return time.Now()
}

// handBack releases m, leased but not attempted, for the route's next
// deliverer (after a reload), due at at (zero: now), its attempts kept.
func (d *deliverer) handBack(m *spool.Message, at time.Time) {
	err := d.store.RetryLater(m.ID, at, m.Attempts)
	if err != nil && !errors.Is(err, spool.ErrNotFound) && !errors.Is(err, spool.ErrClosed) {
		d.log.Warn("spool: could not hand back a held message; it is delivered again after a restart", "route", d.route, "id", m.ID, "error", err)
	}
}

// dueReporter is a store that tells when a route's next retry is due.
type dueReporter interface {
	NextDue(route string) (time.Time, bool)
}

// untilDue is how long to wait, when nothing is due, for the earliest
// retry of the route to become due: at most maxIdle.
func (d *deliverer) untilDue() time.Duration {
	if dr, ok := d.store.(dueReporter); ok {
		if at, ok := dr.NextDue(d.route); ok {
			return min(time.Until(at), maxIdle)
		}
	}
	return maxIdle
}

// nextOK handles an error of Next: a damaged message is dead-lettered.
func (d *deliverer) nextOK(err error) bool {
	if err == nil {
		return true
	}
	var de *spool.DamagedError
	if errors.As(err, &de) {
		d.log.Error("spool: message damaged on disk; dead-lettered", "route", d.route, "id", de.ID, "error", err)
		if err := d.store.DeadLetter(de.ID, "damaged on disk"); err != nil {
			d.log.Warn("spool: dead-letter failed", "route", d.route, "id", de.ID, "error", err)
		} else {
			d.counts.dead.Add(1)
		}
		return false
	}
	if !errors.Is(err, spool.ErrClosed) {
		d.log.Warn("spool: next failed", "route", d.route, "error", err)
	}
	return false
}

// deliver makes one delivery of m and settles it in the store. It
// reports whether m left the pending messages: delivered or dead-lettered.
func (d *deliverer) deliver(m *spool.Message) (settled bool) {
	rt := d.snap().routes[d.route]
	if rt == nil || rt.async == nil {
		d.retryLater(m, m.Attempts, 0)
		return false
	}
	a := rt.async
	if a.maxAge > 0 && time.Since(m.Arrived) > a.maxAge {
		d.deadLetter(m, m.Attempts, "max_age "+a.maxAge.String()+" passed")
		return true
	}
	status, retryAfter, outcome := d.attempt(rt, m)
	if outcome == policy.Canceled {
		return false // shutting down: the message stays pending
	}
	switch {
	case outcome == policy.OK && status >= 200 && status < 300:
		d.ack(m)
		return true
	case outcome == policy.OK || outcome == policy.Status:
		if !(status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500) {
			d.deadLetter(m, m.Attempts+1, "upstream answered "+strconv.Itoa(status))
			return true
		}
	case outcome == policy.BadRequest:
		d.deadLetter(m, m.Attempts+1, "bad request")
		return true
	}
	if a.maxAttempts > 0 && m.Attempts+1 >= a.maxAttempts {
		d.deadLetter(m, m.Attempts+1, "max_attempts "+strconv.Itoa(a.maxAttempts)+" reached")
		return true
	}
	wait := retryAfter
	if wait <= 0 {
		wait = a.backoff.Delay(m.Attempts, nil)
	}
	d.retryLater(m, m.Attempts+1, wait)
	return false
}

// ack records that m was delivered.
func (d *deliverer) ack(m *spool.Message) {
	if err := d.store.Ack(m.ID); err != nil && !errors.Is(err, spool.ErrNotFound) {
		d.log.Warn("spool: ack failed; the message may be delivered again", "route", d.route, "id", m.ID, "error", err)
	}
	d.counts.delivered.Add(1) // after the ack, so a reader that sees it sees the ack
}

// retryLater makes m due again after wait, with attempts delivery
// attempts made in all; more than m.Attempts counts as a failed delivery.
func (d *deliverer) retryLater(m *spool.Message, attempts int, wait time.Duration) {
	err := d.store.RetryLater(m.ID, time.Now().Add(wait), attempts)
	if attempts > m.Attempts {
		d.counts.retried.Add(1)
	}
	d.logSettleError(m, err)
}

// deadLetter moves m to the dead letters with reason, after recording
// attempts, its delivery attempts in all, if that is more than m.Attempts.
func (d *deliverer) deadLetter(m *spool.Message, attempts int, reason string) {
	var err error
	if attempts > m.Attempts {
		// Record the attempt count first, then the dead state. The
		// message is not due in between, so no other delivery takes it;
		// a crash in between leaves it pending, due in a minute.
		err = d.store.RetryLater(m.ID, time.Now().Add(time.Minute), attempts)
	}
	if err == nil {
		err = d.store.DeadLetter(m.ID, reason)
	}
	if err == nil {
		d.counts.dead.Add(1)
		d.log.Warn("spool: message dead-lettered", "route", d.route, "id", m.ID, "attempts", attempts, "reason", reason)
	}
	d.logSettleError(m, err)
}

// logSettleError logs an error of recording how a delivery of m ended; a
// message deleted meanwhile (ErrNotFound) is no error.
func (d *deliverer) logSettleError(m *spool.Message, err error) {
	if err != nil && !errors.Is(err, spool.ErrNotFound) {
		d.log.Warn("spool: cannot record a delivery", "route", d.route, "id", m.ID, "error", err)
	}
}

// deliveryContext is the context of a delivery of m: when tracing, its
// attempts' spans are children of the request that spooled m, link to
// it, and carry the message's id and delivery attempt.
func (d *deliverer) deliveryContext(rt *Route, m *spool.Message) context.Context {
	tel := rt.obs
	if tel.tracer() == nil {
		return d.ctx
	}
	var origin trace.SpanContext
	if m.TraceParent != "" {
		origin = trace.SpanContextFromContext(tel.Propagator.Extract(context.Background(),
			propagation.MapCarrier{"traceparent": m.TraceParent}))
	}
	ctx := d.ctx
	if origin.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, origin)
	}
	return context.WithValue(ctx, deliveryKey{}, &delivery{id: m.ID, attempt: m.Attempts + 1, origin: origin})
}

// attempt sends m through the route's attempt loop and reads the answer.
// It returns the answer's status and Retry-After, and the outcome: OK or
// Status with an answer, else how the attempt loop failed.
func (d *deliverer) attempt(rt *Route, m *spool.Message) (int, time.Duration, policy.Outcome) {
	ep := rt.Pool.Endpoints[0].URL
	req, err := http.NewRequestWithContext(d.deliveryContext(rt, m), m.Method, ep.Scheme+"://"+ep.Host+m.Target, nil)
	if err != nil {
		return 0, 0, policy.BadRequest
	}
	req.Header = m.Header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	if h := req.Header.Get("Host"); h != "" {
		req.Host = h
		req.Header.Del("Host")
	}
	req.Header.Set(rt.async.idemHeader, m.IdempotencyKey)
	if m.TraceParent != "" && req.Header.Get("Traceparent") == "" {
		req.Header.Set("Traceparent", m.TraceParent)
	}
	req.ContentLength = int64(len(m.Body))
	if len(m.Body) > 0 {
		req.Body = inmem.NewBody(m.Body)
		req.GetBody = func() (io.ReadCloser, error) { return inmem.NewBody(m.Body), nil }
	}
	resp, err := (&attempter{route: rt}).RoundTrip(req)
	if err != nil {
		var ue *UpstreamError
		if errors.As(err, &ue) {
			return 0, ue.RetryAfter, ue.Outcome
		}
		if d.ctx.Err() != nil {
			return 0, 0, policy.Canceled
		}
		return 0, 0, policy.Reset
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	var ra time.Duration
	if v, ok := policy.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		ra = v
	}
	outcome := policy.OK
	if resp.StatusCode >= 400 {
		outcome = policy.Status
	}
	return resp.StatusCode, ra, outcome
}
