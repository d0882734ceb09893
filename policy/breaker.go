package policy

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// ErrBreakerOpen is returned by Breaker.Allow when the breaker refuses a
// request: it is open, or half-open with all its probes already out.
var ErrBreakerOpen = errors.New("circuit breaker open")

// defaultOpenFor replaces a BreakerSettings.OpenFor of zero or less;
// breakerWindowBuckets is how many buckets Window is cut into.
const (
	defaultOpenFor       = 15 * time.Second
	breakerWindowBuckets = 10
)

var (
	_ fmt.Stringer = BreakerState(0)
	_ fmt.Stringer = BreakerResult(0)
)

// BreakerState is the state of a Breaker. The zero value is
// BreakerStateClosed.
type BreakerState uint8

// The states of a Breaker.
const (
	BreakerStateClosed   BreakerState = iota // requests flow; outcomes are counted
	BreakerStateOpen                         // requests are refused until OpenFor has passed
	BreakerStateHalfOpen                     // HalfOpenRequests probes are let through
)

// String returns "closed", "open" or "half_open", the names used in the
// admin API and in metrics.
func (s BreakerState) String() string {
	switch s {
	case BreakerStateClosed:
		return "closed"
	case BreakerStateOpen:
		return "open"
	case BreakerStateHalfOpen:
		return "half_open"
	}
	return "breaker_state(" + strconv.Itoa(int(s)) + ")"
}

func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerStateOpen
	case gobreaker.StateHalfOpen:
		return BreakerStateHalfOpen
	}
	return BreakerStateClosed
}

// BreakerResult is what the caller of Breaker.Allow reports once it knows
// how the request went. The zero value is BreakerSuccess.
type BreakerResult uint8

// The results a request can report to its Breaker.
const (
	// BreakerSuccess counts the request as a success: the upstream
	// answered and the answer is not in the route's failure_on list.
	BreakerSuccess BreakerResult = iota
	// BreakerFailure counts the request as a failure: it ended in one of
	// the route's failure_on conditions.
	BreakerFailure
	// BreakerIgnore counts the request neither way, and in the half-open
	// state gives its probe slot back: for an outcome that says nothing
	// about the upstream's health, such as the app's own cancellation or
	// an attempt abandoned because the overall deadline passed.
	BreakerIgnore
)

// String returns "success", "failure" or "ignore".
func (r BreakerResult) String() string {
	switch r {
	case BreakerSuccess:
		return "success"
	case BreakerFailure:
		return "failure"
	case BreakerIgnore:
		return "ignore"
	}
	return "breaker_result(" + strconv.Itoa(int(r)) + ")"
}

// Errors that carry a BreakerResult into gobreaker's done callback.
var (
	errBreakerFailure = errors.New("breaker: failure")
	errBreakerIgnore  = errors.New("breaker: ignore")
)

// breakerErrs maps a BreakerResult to what gobreaker's done is told; an
// unknown result counts as a failure.
var breakerErrs = [...]error{
	BreakerSuccess: nil,
	BreakerFailure: errBreakerFailure,
	BreakerIgnore:  errBreakerIgnore,
}

// BreakerSettings configures a Breaker. It is comparable, so it can key a
// BreakerSet. Only outcomes reported as BreakerSuccess or BreakerFailure
// count; BreakerIgnore ones are invisible to every threshold.
type BreakerSettings struct {
	// ConsecutiveFailures trips the breaker after this many failures in a
	// row within Window. Zero turns this condition off.
	ConsecutiveFailures uint32
	// FailureRatio trips the breaker when failures / (successes +
	// failures) within Window reaches it, once MinRequests outcomes were
	// counted. Zero turns this condition off. With both conditions off
	// the breaker never trips.
	FailureRatio float64
	// MinRequests is the number of counted outcomes (successes plus
	// failures) Window must hold before FailureRatio applies. Zero means
	// the ratio applies from the first failure.
	MinRequests uint32
	// Window is the span of the rolling counts, kept in 10 buckets of
	// Window/10 that expire one at a time. Zero or less means the counts
	// never expire while the breaker stays closed (they are still reset on
	// every change of state).
	Window time.Duration
	// OpenFor is how long a tripped breaker refuses requests before it
	// lets probes through. Zero or less means 15s.
	OpenFor time.Duration
	// HalfOpenRequests is how many probes the half-open breaker lets
	// through at once; it closes once that many probes in a row succeed
	// and re-opens on any probe's failure. Zero means 1.
	HalfOpenRequests uint32
}

// BreakerCounts are a Breaker's counts in its current state (within Window
// while closed). They are reset on every change of state.
type BreakerCounts struct {
	Requests            uint32 `json:"requests"`             // requests allowed, including those still in flight
	Successes           uint32 `json:"successes"`            // reported BreakerSuccess
	Failures            uint32 `json:"failures"`             // reported BreakerFailure
	Ignored             uint32 `json:"ignored"`              // reported BreakerIgnore
	ConsecutiveFailures uint32 `json:"consecutive_failures"` // failures since the last success
}

// Breaker is a circuit breaker for one upstream endpoint, built on
// gobreaker's TwoStepCircuitBreaker because the proxy learns whether a
// request succeeded only after it was sent (after the response headers,
// or later).
//
// gobreaker reads time.Now itself and changes state lazily, when the
// breaker is next used: there are no timers. Test it in a testing/synctest
// bubble to control time.
//
// A nil *Breaker is no breaker: Allow always admits and its done does
// nothing. A Breaker is safe for concurrent use.
type Breaker struct {
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	openFor  time.Duration
	openedAt atomic.Pointer[time.Time] // when the breaker last opened; nil before it ever did
	halfOpen atomic.Bool               // the state gobreaker last moved to is half-open
	onChange func(name string, from, to BreakerState)
}

// NewBreaker returns a closed Breaker configured by s. name is passed to
// onChange, which, if not nil, is called on every change of state. onChange
// runs while gobreaker holds the breaker's lock, inside the Allow, done,
// State, Counts or RetryIn call that noticed the change: it must be quick
// and must not call back into the Breaker.
func NewBreaker(name string, s BreakerSettings, onChange func(name string, from, to BreakerState)) *Breaker {
	b := &Breaker{openFor: s.OpenFor, onChange: onChange}
	if b.openFor <= 0 {
		b.openFor = defaultOpenFor
	}
	st := gobreaker.Settings{
		Name:          name,
		MaxRequests:   s.HalfOpenRequests, // gobreaker takes 0 as 1
		Timeout:       b.openFor,
		ReadyToTrip:   readyToTrip(s),
		OnStateChange: b.stateChanged,
		IsExcluded:    func(err error) bool { return err == errBreakerIgnore },
	}
	if s.Window > 0 {
		st.Interval = s.Window
		st.BucketPeriod = max(s.Window/breakerWindowBuckets, 1)
	}
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
	return b
}

// readyToTrip returns gobreaker's trip condition for s. gobreaker calls it
// after each failure while closed.
func readyToTrip(s BreakerSettings) func(gobreaker.Counts) bool {
	return func(c gobreaker.Counts) bool {
		if s.ConsecutiveFailures > 0 && c.ConsecutiveFailures >= s.ConsecutiveFailures {
			return true
		}
		if s.FailureRatio <= 0 {
			return false
		}
		seen := c.TotalSuccesses + c.TotalFailures
		return seen > 0 && seen >= s.MinRequests &&
			float64(c.TotalFailures) >= s.FailureRatio*float64(seen)
	}
}

// stateChanged is gobreaker's OnStateChange; it runs under gobreaker's lock.
func (b *Breaker) stateChanged(name string, from, to gobreaker.State) {
	b.halfOpen.Store(to == gobreaker.StateHalfOpen)
	if to == gobreaker.StateOpen {
		now := time.Now() // gobreaker's clock, read just after it set the expiry
		b.openedAt.Store(&now)
	}
	if b.onChange != nil {
		b.onChange(name, breakerState(from), breakerState(to))
	}
}

// BreakerTicket is a request admitted by Allow; Done records its result.
// The zero value, which a nil Breaker hands out, records nothing.
type BreakerTicket struct {
	done  func(error)
	probe bool
}

// Probe reports whether the ticket is one of a half-open breaker's
// probes, whose result decides whether the breaker closes. A caller that
// learns a request's result only late (after a response body that may
// stream for long) may record a probe's result early, so that a long
// stream does not hold the breaker half-open.
func (t BreakerTicket) Probe() bool { return t.probe }

// Done records the request's result. Call it exactly once, when the result
// is known; a ticket from before a change of state is dropped, as
// gobreaker does.
func (t BreakerTicket) Done(r BreakerResult) {
	if t.done == nil {
		return
	}
	err := errBreakerFailure
	if int(r) < len(breakerErrs) {
		err = breakerErrs[r]
	}
	t.done(err)
}

// Allow asks whether a request may go to the endpoint now. If so it returns
// a ticket whose Done the caller must call once with the request's
// BreakerResult. If not, it returns ErrBreakerOpen: the breaker is open, or
// half-open with all its probes out. A nil Breaker admits everything.
func (b *Breaker) Allow() (BreakerTicket, error) {
	if b == nil {
		return BreakerTicket{}, nil
	}
	gdone, err := b.cb.Allow()
	if err != nil {
		return BreakerTicket{}, ErrBreakerOpen
	}
	// gobreaker moves an open breaker to half-open inside Allow, and
	// stateChanged has run by now. A change racing with this read only
	// changes when the caller records the result.
	return BreakerTicket{done: gdone, probe: b.halfOpen.Load()}, nil
}

// State returns the breaker's state now; an open breaker whose OpenFor
// has passed reports (and becomes) half-open. A nil Breaker is closed.
func (b *Breaker) State() BreakerState {
	if b == nil {
		return BreakerStateClosed
	}
	return breakerState(b.cb.State())
}

// Counts returns the counts of the breaker's current state, with expired
// buckets of the window dropped. A nil Breaker has zero counts.
func (b *Breaker) Counts() BreakerCounts {
	if b == nil {
		return BreakerCounts{}
	}
	b.cb.State() // roll the window (and the state) forward to now
	c := b.cb.Counts()
	return BreakerCounts{
		Requests:            c.Requests,
		Successes:           c.TotalSuccesses,
		Failures:            c.TotalFailures,
		Ignored:             c.TotalExclusions,
		ConsecutiveFailures: c.ConsecutiveFailures,
	}
}

// RetryIn returns how long until an open breaker lets its first probe
// through, for a Retry-After header; it is 0 when the breaker is not open
// (a half-open breaker with its probes out may admit again at any moment).
// Like gobreaker, it reads time.Now.
func (b *Breaker) RetryIn() time.Duration {
	if b == nil || b.cb.State() != gobreaker.StateOpen {
		return 0
	}
	at := b.openedAt.Load()
	if at == nil {
		return 0
	}
	return max(b.openFor-time.Since(*at), 0)
}

// BreakerSet holds the breakers of every endpoint, keyed by endpoint and
// settings: routes that reach one endpoint with equal settings share a
// Breaker, and a reload that keeps both keeps the Breaker and its state.
//
// The set keeps the breakers of held endpoints only. Whoever has an
// endpoint (an upstream's pool, for each endpoint of its set) holds it
// with Hold for as long as it has it, and lets go with Release; when the
// last holder of an endpoint releases it, its breakers leave the set. An
// address one upstream drops thus keeps its breaker while another still
// has it, and the breaker of an address nobody has any more is not kept.
//
// The zero value is an empty set ready for use, with no onChange callback.
// A BreakerSet is safe for concurrent use; it locks only to add a Breaker
// and in Hold and Release.
type BreakerSet struct {
	// OnChange, if not nil, is passed to NewBreaker for each Breaker the
	// set creates, with the endpoint as the name. Set it before first use.
	OnChange func(endpoint string, from, to BreakerState)

	m     sync.Map      // breakerKey -> *breakerEntry
	epoch atomic.Uint64 // current mark for Sweep

	mu    sync.Mutex     // holds, and adding to m
	holds map[string]int // endpoint -> its holders; absent: none
}

type breakerKey struct {
	endpoint string
	settings BreakerSettings
}

type breakerEntry struct {
	b    *Breaker
	mark atomic.Uint64 // the set's epoch when Get last returned b
}

// Get returns the Breaker for endpoint (a URL such as
// "http://10.0.0.5:8080") with settings st, creating it on first use. For
// an endpoint nobody holds it returns a new, closed Breaker that the set
// does not keep: for a request that picked an endpoint just before it was
// dropped, and that still needs a breaker to ask. Call it when building a
// runtime snapshot, not per request: it boxes its key.
func (s *BreakerSet) Get(endpoint string, st BreakerSettings) *Breaker {
	key := breakerKey{endpoint, st}
	v, ok := s.m.Load(key)
	if !ok {
		s.mu.Lock()
		if s.holds[endpoint] == 0 {
			s.mu.Unlock()
			return NewBreaker(endpoint, st, s.OnChange)
		}
		v, ok = s.m.Load(key)
		if !ok {
			v = &breakerEntry{b: NewBreaker(endpoint, st, s.OnChange)}
			s.m.Store(key, v)
		}
		s.mu.Unlock()
	}
	e := v.(*breakerEntry)
	e.mark.Store(s.epoch.Load())
	return e.b
}

// Hold counts one more holder of endpoint: while it has one, Get keeps
// the endpoint's breakers in the set.
func (s *BreakerSet) Hold(endpoint string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holds == nil {
		s.holds = map[string]int{}
	}
	s.holds[endpoint]++
}

// Release counts one holder of endpoint less. When it was the last, the
// endpoint's breakers, of every settings, leave the set: routes that hold
// one keep it, and a later Get for the endpoint, once it is held again,
// creates a new one. It returns how many breakers left the set. Releasing
// an endpoint nobody holds does nothing.
func (s *BreakerSet) Release(endpoint string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.holds[endpoint]
	switch {
	case n == 0:
		return 0
	case n > 1:
		s.holds[endpoint] = n - 1
		return 0
	}
	delete(s.holds, endpoint)
	dropped := 0
	s.m.Range(func(k, v any) bool {
		if k.(breakerKey).endpoint == endpoint && s.m.CompareAndDelete(k, v) {
			dropped++
		}
		return true
	})
	return dropped
}

// Sweep drops the breakers Get has not returned since the previous Sweep
// (or since the set was made), then starts a new round. Call it after a
// new snapshot was built and swapped in, so breakers that no route uses any
// more (of settings no route has now, say) do not pile up over reloads;
// requests still running on an old snapshot keep their *Breaker. Do not
// run it while a snapshot is being built: a Get racing with it may hand
// out a Breaker it is dropping. It returns how many were dropped.
func (s *BreakerSet) Sweep() int {
	cur := s.epoch.Add(1) - 1
	dropped := 0
	s.m.Range(func(k, v any) bool {
		if v.(*breakerEntry).mark.Load() != cur {
			s.m.CompareAndDelete(k, v)
			dropped++
		}
		return true
	})
	return dropped
}

// Range calls f for each breaker in the set, in no particular order, until
// f returns false.
func (s *BreakerSet) Range(f func(endpoint string, st BreakerSettings, b *Breaker) bool) {
	s.m.Range(func(k, v any) bool {
		key := k.(breakerKey)
		return f(key.endpoint, key.settings, v.(*breakerEntry).b)
	})
}
