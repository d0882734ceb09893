package policy

import (
	"math"
	"sync/atomic"
	"time"
)

// budgetBuckets is how many buckets a Budget's window is cut into.
const budgetBuckets = 10

// defaultBudgetWindow is the window NewBudget uses when given none.
const defaultBudgetWindow = 10 * time.Second

// Budget is a sliding-window retry budget for one route, in the style of
// Linkerd and Finagle: a retry is allowed while the retries made in the last
// window stay below ratio × the requests (first attempts) made in it, plus a
// floor of minPerSecond × the window's length in seconds, so that a quiet
// route can still retry.
//
// The window is cut into 10 buckets of window/10 that are recycled as time
// passes, so the counts cover between 9/10 of the window and the whole of
// it: an event leaves the count up to one bucket early. Each bucket holds
// its counters as 64-bit words that pack the bucket's epoch (which
// window/10 slice of time it counts) with a 32-bit count, updated by
// compare-and-swap: there is no mutex, and a bucket is recycled by the first
// writer that finds it stale, with no count lost; counting into a current
// bucket is one atomic add. TryRetry checks and then records, so concurrent
// callers may overshoot the budget by at most their number. A count
// saturates at 2^31 per bucket; epochs wrap after 2^32 buckets (136 years
// for a 10s window, 5 days for a 1ms one), harmlessly unless a bucket is
// left untouched for that long give or take one window.
//
// A nil *Budget is no budget: Request does nothing and TryRetry always
// allows. A Budget is safe for concurrent use.
type Budget struct {
	ratio float64          // retries allowed per request
	floor float64          // retries allowed per window regardless of traffic
	width time.Duration    // one bucket's span, > 0
	base  time.Time        // start of epoch 0
	now   func() time.Time // never nil

	_ [64]byte // keep the read-only fields above off the counters' cache line

	buckets [budgetBuckets]budgetBucket
}

// budgetBucket is one slice of a Budget's window. Each word is
// epoch<<32 | count.
type budgetBucket struct {
	requests atomic.Uint64
	retries  atomic.Uint64
}

// BudgetStats is a snapshot of a Budget's window.
type BudgetStats struct {
	Requests  int64   `json:"requests"`  // first attempts counted in the window
	Retries   int64   `json:"retries"`   // retries counted in the window
	Available float64 `json:"available"` // retries still allowed now; never negative; +Inf for a nil Budget
}

// NewBudget returns a retry budget allowing ratio retries per request (0.2
// allows one retry per five requests) plus minPerSecond retries per second
// of window, counted over a sliding window. A negative ratio or
// minPerSecond counts as 0; a window of zero or less means 10s. now is the
// clock; nil means time.Now.
func NewBudget(ratio, minPerSecond float64, window time.Duration, now func() time.Time) *Budget {
	if now == nil {
		now = time.Now
	}
	if window <= 0 {
		window = defaultBudgetWindow
	}
	ratio = max(ratio, 0)
	minPerSecond = max(minPerSecond, 0)
	width := max(window/budgetBuckets, 1)
	return &Budget{
		ratio: ratio,
		floor: minPerSecond * window.Seconds(),
		width: width,
		base:  now(),
		now:   now,
	}
}

// Request records one request, that is, a first attempt.
func (b *Budget) Request() {
	if b == nil {
		return
	}
	slot, e := b.epoch()
	budgetAdd(&b.buckets[slot].requests, e)
}

// TryRetry reports whether a retry is allowed now, and if so records it:
// it is allowed iff the retries in the window are fewer than ratio × the
// requests in the window plus the floor (minPerSecond × window seconds).
func (b *Budget) TryRetry() bool {
	if b == nil {
		return true
	}
	slot, e := b.epoch()
	req, ret := b.sum(e)
	if float64(ret) >= b.ratio*float64(req)+b.floor {
		return false
	}
	budgetAdd(&b.buckets[slot].retries, e)
	return true
}

// Stats returns the counts of the current window and the retries still
// allowed now.
func (b *Budget) Stats() BudgetStats {
	if b == nil {
		return BudgetStats{Available: math.Inf(1)}
	}
	_, e := b.epoch()
	req, ret := b.sum(e)
	return BudgetStats{
		Requests:  req,
		Retries:   ret,
		Available: max(b.ratio*float64(req)+b.floor-float64(ret), 0),
	}
}

// epoch returns the number of the bucket-wide slice of time now falls in,
// modulo 2^32, and the bucket that counts it. A clock that went back before
// the Budget's creation counts as epoch 0.
func (b *Budget) epoch() (slot int, e uint32) {
	elapsed := b.now().Sub(b.base)
	if elapsed < 0 {
		return 0, 0
	}
	n := int64(elapsed / b.width)
	return int(n % budgetBuckets), uint32(n)
}

// sum adds up the counters of the buckets that belong to the window ending
// in epoch e.
func (b *Budget) sum(e uint32) (requests, retries int64) {
	for i := range b.buckets {
		bk := &b.buckets[i]
		requests += budgetCount(bk.requests.Load(), e)
		retries += budgetCount(bk.retries.Load(), e)
	}
	return requests, retries
}

// budgetCount returns word's count if its epoch lies in the window ending in
// epoch e, else 0.
func budgetCount(word uint64, e uint32) int64 {
	if e-uint32(word>>32) >= budgetBuckets {
		return 0 // older than the window, or ahead of e (a racing caller's later clock)
	}
	return int64(uint32(word))
}

// budgetAhead is how many epochs a bucket may be ahead of a caller's epoch
// and still be taken as a racing caller's later clock rather than as a stale
// bucket from before the epoch counter wrapped.
const budgetAhead = 1 << 16

// budgetSaturated is the count at which budgetAdd stops counting. It leaves
// room below 2^32 for racing adders, so a count never carries into the
// epoch.
const budgetSaturated = 1 << 31

// budgetAdd counts one event of epoch e into w, recycling w if it holds an
// older epoch. The common case, a word already in epoch e, is a single
// atomic add that cannot fail, so contended callers do not spin. An event
// that races with a caller that moved w to a later epoch in the meantime
// is counted in that later epoch.
func budgetAdd(w *atomic.Uint64, e uint32) {
	for {
		old := w.Load()
		if uint32(old>>32)-e < budgetAhead { // epoch e, or a racing caller's later one
			if uint32(old) < budgetSaturated {
				w.Add(1)
			}
			return
		}
		if w.CompareAndSwap(old, uint64(e)<<32|1) {
			return
		}
	}
}
