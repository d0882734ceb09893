package policy

import (
	"math"
	"math/rand/v2"
	"time"
)

// Backoff is exponential back-off with full jitter: the delay before retry n
// (n = 0 for the first retry) is drawn uniformly from [0, min(Max, Base*2^n)].
//
// Base is the ceiling of the first retry's delay; a Base of zero or less
// gives no delay at all. Max caps the ceiling; a Max of zero or less means
// no cap other than the largest time.Duration. The zero Backoff never waits.
type Backoff struct {
	Base, Max time.Duration
}

// Ceiling returns the upper bound of the delay before retry n,
// min(Max, Base*2^n), without jitter. A negative retry counts as 0. It does
// not overflow: for a large retry it returns Max (or the largest
// time.Duration when Max is zero or less).
func (b Backoff) Ceiling(retry int) time.Duration {
	if b.Base <= 0 {
		return 0
	}
	limit := b.Max
	if limit <= 0 {
		limit = math.MaxInt64
	}
	if retry < 0 {
		retry = 0
	}
	// Base<<retry is below limit iff Base is below limit>>retry; shifting the
	// limit down instead of the base up cannot overflow.
	if retry >= 63 || b.Base > limit>>uint(retry) {
		return limit
	}
	return b.Base << uint(retry)
}

// Delay returns the jittered delay before retry n (n = 0 for the first
// retry): uniform in [0, Ceiling(n)], both ends included. rnd(n) must return
// a uniform value in [0, n); nil means math/rand/v2's Int64N. Delay is safe
// for concurrent use if rnd is.
func (b Backoff) Delay(retry int, rnd func(n int64) int64) time.Duration {
	ceil := b.Ceiling(retry)
	if ceil <= 0 {
		return 0
	}
	if rnd == nil {
		rnd = rand.Int64N
	}
	n := int64(ceil)
	if n < math.MaxInt64 {
		n++ // include the ceiling itself
	}
	return time.Duration(rnd(n))
}
