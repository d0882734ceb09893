package policy

import (
	"math"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// RateLimiter is a token bucket for one route, on golang.org/x/time/rate,
// that can queue a request for up to maxWait instead of refusing it. It
// reads time only from its injected clock.
//
// A nil *RateLimiter is no limit: Reserve always admits at once. A
// RateLimiter is safe for concurrent use.
type RateLimiter struct {
	lim     *rate.Limiter
	rps     float64
	maxWait time.Duration
	now     func() time.Time
}

// NewRateLimiter returns a limiter refilling rps tokens per second into a
// bucket of burst tokens, which starts full. rps of zero or less means no
// limit; a burst below 1 counts as 1. A request that finds no token may
// wait for one up to maxWait (zero or less: never wait). now is the clock;
// nil means time.Now.
func NewRateLimiter(rps float64, burst int, maxWait time.Duration, now func() time.Time) *RateLimiter {
	if now == nil {
		now = time.Now
	}
	limit := rate.Limit(rps)
	if rps <= 0 || math.IsInf(rps, 1) {
		limit = rate.Inf
	}
	return &RateLimiter{
		lim:     rate.NewLimiter(limit, max(burst, 1)),
		rps:     rps,
		maxWait: max(maxWait, 0),
		now:     now,
	}
}

// Reservation is a token granted by RateLimiter.Reserve, possibly one that
// becomes usable only after Delay. The zero value is a token usable at once.
type Reservation struct {
	res   *rate.Reservation // nil for a token usable at once
	delay time.Duration
	now   func() time.Time
}

// Delay is how long the caller must wait before it may send the request;
// 0 for a token that was available at once.
func (r Reservation) Delay() time.Duration { return r.delay }

// Cancel gives a future token back, for a caller that gives up while
// waiting (its context ended): later requests get it instead. It does
// nothing for a token usable at once, or once Delay has passed.
func (r Reservation) Cancel() {
	if r.res != nil {
		r.res.CancelAt(r.now())
	}
}

// Reserve takes a token for one request. It returns:
//
//   - a token available now: a Reservation with Delay 0, true, 0;
//   - a token available within maxWait: a Reservation with Delay > 0,
//     true, 0. The token is taken; the caller waits Delay (honouring its
//     context) and calls Cancel if it gives up;
//   - otherwise: the zero Reservation, false, and how long until a token is
//     available (for Retry-After); nothing is taken.
//
// The first case does not allocate.
func (r *RateLimiter) Reserve() (res Reservation, ok bool, retryAfter time.Duration) {
	if r == nil {
		return Reservation{}, true, 0
	}
	now := r.now()
	if r.lim.AllowN(now, 1) {
		return Reservation{}, true, 0
	}
	wait := r.until(r.lim.TokensAt(now))
	if wait > r.maxWait {
		return Reservation{}, false, wait
	}
	rr := r.lim.ReserveN(now, 1)
	wait = rr.DelayFrom(now)
	if !rr.OK() || wait > r.maxWait {
		// Others took the tokens between TokensAt and ReserveN.
		rr.CancelAt(now)
		return Reservation{}, false, wait
	}
	return Reservation{res: rr, delay: wait, now: r.now}, true, 0
}

// until returns how long the bucket, holding tokens now, takes to hold one.
func (r *RateLimiter) until(tokens float64) time.Duration {
	if tokens >= 1 {
		return 0
	}
	d := (1 - tokens) / r.rps * float64(time.Second)
	if d >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(math.Ceil(d))
}

// Tokens returns the tokens in the bucket now; it is negative while
// reservations wait for tokens not yet refilled. A nil RateLimiter reports
// +Inf.
func (r *RateLimiter) Tokens() float64 {
	if r == nil || r.lim.Limit() == rate.Inf {
		return math.Inf(1)
	}
	return r.lim.TokensAt(r.now())
}

// InFlight caps the requests a route has in flight at once (a bulkhead),
// with atomics only. A nil *InFlight is no cap: Acquire always succeeds
// and Current reports 0. An InFlight is safe for concurrent use.
type InFlight struct {
	max int64
	cur atomic.Int64
}

// NewInFlight returns a cap of max concurrent requests; zero or less
// means no cap (requests are still counted).
func NewInFlight(max int64) *InFlight {
	return &InFlight{max: max}
}

// Acquire takes a slot and reports whether it got one; a true result must
// be paired with exactly one Release.
func (f *InFlight) Acquire() bool {
	if f == nil {
		return true
	}
	if f.max <= 0 {
		f.cur.Add(1)
		return true
	}
	for {
		c := f.cur.Load()
		if c >= f.max {
			return false
		}
		if f.cur.CompareAndSwap(c, c+1) {
			return true
		}
	}
}

// Release gives back a slot taken by a successful Acquire.
func (f *InFlight) Release() {
	if f != nil {
		f.cur.Add(-1)
	}
}

// Current returns the number of slots taken now.
func (f *InFlight) Current() int64 {
	if f == nil {
		return 0
	}
	return f.cur.Load()
}
