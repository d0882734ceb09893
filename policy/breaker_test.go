package policy

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// stateLog records a Breaker's changes of state.
type stateLog struct {
	mu      sync.Mutex
	changes []string
}

func (l *stateLog) onChange(name string, from, to BreakerState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changes = append(l.changes, fmt.Sprintf("%s:%v->%v", name, from, to))
}

func (l *stateLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.changes)
}

// report runs one request through b and reports r; it fails the test if b
// refuses the request.
func report(t *testing.T, b *Breaker, r BreakerResult) {
	t.Helper()
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("Allow() = %v, want a request allowed before reporting %v", err, r)
	}
	done.Done(r)
}

// reportAll runs one request per letter of seq: s success, f failure, i ignore.
func reportAll(t *testing.T, b *Breaker, seq string) {
	t.Helper()
	for _, c := range seq {
		report(t, b, map[rune]BreakerResult{'s': BreakerSuccess, 'f': BreakerFailure, 'i': BreakerIgnore}[c])
	}
}

func TestBreakerTrips(t *testing.T) {
	tests := []struct {
		name string
		s    BreakerSettings
		seq  string // s success, f failure, i ignore; a space waits Window+1s
		want BreakerState
	}{
		{"consecutive below threshold", BreakerSettings{ConsecutiveFailures: 3}, "ff", BreakerStateClosed},
		{"consecutive at threshold", BreakerSettings{ConsecutiveFailures: 3}, "fff", BreakerStateOpen},
		{"success resets consecutive", BreakerSettings{ConsecutiveFailures: 3}, "ffsff", BreakerStateClosed},
		{"ignore does not reset consecutive", BreakerSettings{ConsecutiveFailures: 3}, "ffif", BreakerStateOpen},
		{"ignores alone never trip", BreakerSettings{ConsecutiveFailures: 1, FailureRatio: 0.1}, "iiiiiiiiii", BreakerStateClosed},
		{"ratio below min requests", BreakerSettings{FailureRatio: 0.5, MinRequests: 10}, "sssssffff", BreakerStateClosed},
		{"ratio reached at min requests", BreakerSettings{FailureRatio: 0.5, MinRequests: 10}, "sssssfffff", BreakerStateOpen},
		{"ratio not reached", BreakerSettings{FailureRatio: 0.5, MinRequests: 10}, "ssssssffff", BreakerStateClosed},
		{"ratio ignores ignored", BreakerSettings{FailureRatio: 0.5, MinRequests: 4}, "iiiiiiff", BreakerStateClosed},
		{"ratio with no min", BreakerSettings{FailureRatio: 0.5}, "sf", BreakerStateOpen},
		{"both off never trips", BreakerSettings{}, "ffffffffffffffffffff", BreakerStateClosed},
		{"consecutive rolls off the window", BreakerSettings{ConsecutiveFailures: 3, Window: 10 * time.Second}, "ff f", BreakerStateClosed},
		{"consecutive within the window", BreakerSettings{ConsecutiveFailures: 3, Window: 10 * time.Second}, "ffsfff", BreakerStateOpen},
		{"ratio rolls off the window", BreakerSettings{FailureRatio: 0.5, MinRequests: 4, Window: 10 * time.Second}, "fff f", BreakerStateClosed},
		{"no window keeps counts", BreakerSettings{FailureRatio: 0.5, MinRequests: 4}, "fff f", BreakerStateOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var log stateLog
				b := NewBreaker("up", tt.s, log.onChange)
				for _, c := range tt.seq {
					if c == ' ' {
						time.Sleep(tt.s.Window + time.Second)
						continue
					}
					reportAll(t, b, string(c))
					if b.State() == BreakerStateOpen {
						break
					}
				}
				if got := b.State(); got != tt.want {
					t.Errorf("%+v after %q: State() = %v, want %v (changes %v)", tt.s, tt.seq, got, tt.want, &log)
				}
			})
		})
	}
}

// TestBreakerWindowRollsByBucket checks failures leave the window one
// bucket (Window/10) at a time rather than all at once.
func TestBreakerWindowRollsByBucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker("up", BreakerSettings{FailureRatio: 0.5, MinRequests: 4, Window: 10 * time.Second}, nil)
		reportAll(t, b, "ss")
		time.Sleep(6 * time.Second)
		reportAll(t, b, "sf")
		time.Sleep(5 * time.Second) // the first two successes are gone, the later two are not
		if c := b.Counts(); c.Successes != 1 || c.Failures != 1 {
			t.Errorf("Counts() = %+v, want 1 success and 1 failure left in the window", c)
		}
		reportAll(t, b, "f") // 3 seen < 4
		if got := b.State(); got != BreakerStateClosed {
			t.Errorf("State() = %v with 3 outcomes in the window, want closed", got)
		}
		reportAll(t, b, "f") // 1 success, 3 failures
		if got := b.State(); got != BreakerStateOpen {
			t.Errorf("State() = %v with 3 of 4 failures in the window, want open", got)
		}
	})
}

func TestBreakerOpenHalfOpenClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const openFor = 5 * time.Second
		var log stateLog
		b := NewBreaker("up", BreakerSettings{ConsecutiveFailures: 2, OpenFor: openFor, HalfOpenRequests: 2}, log.onChange)
		if tk, _ := b.Allow(); tk.Probe() {
			t.Error("Probe() of a closed breaker's ticket = true, want false")
		} else {
			tk.Done(BreakerFailure)
		}
		reportAll(t, b, "f")

		// Open: refused, for OpenFor.
		if _, err := b.Allow(); !errors.Is(err, ErrBreakerOpen) {
			t.Fatalf("Allow() when open = %v, want ErrBreakerOpen", err)
		}
		if got := b.RetryIn(); got != openFor {
			t.Errorf("RetryIn() just after opening = %v, want %v", got, openFor)
		}
		time.Sleep(2 * time.Second)
		if got := b.RetryIn(); got != openFor-2*time.Second {
			t.Errorf("RetryIn() 2s after opening = %v, want %v", got, openFor-2*time.Second)
		}
		time.Sleep(3 * time.Second) // exactly OpenFor: still open
		if _, err := b.Allow(); err != ErrBreakerOpen {
			t.Errorf("Allow() at OpenFor = %v, want ErrBreakerOpen", err)
		}
		if got := b.RetryIn(); got != 0 {
			t.Errorf("RetryIn() at OpenFor = %v, want 0", got)
		}
		time.Sleep(time.Nanosecond)

		// Half-open: exactly HalfOpenRequests probes.
		probe1, err1 := b.Allow()
		probe2, err2 := b.Allow()
		_, err3 := b.Allow()
		if err1 != nil || err2 != nil || err3 != ErrBreakerOpen {
			t.Fatalf("three Allow() when half-open with 2 probes = %v, %v, %v; want nil, nil, ErrBreakerOpen", err1, err2, err3)
		}
		if !probe1.Probe() || !probe2.Probe() {
			t.Errorf("Probe() of the half-open breaker's tickets = %v, %v; want true, true", probe1.Probe(), probe2.Probe())
		}
		if got := b.State(); got != BreakerStateHalfOpen {
			t.Errorf("State() with probes out = %v, want half_open", got)
		}
		if got := b.RetryIn(); got != 0 {
			t.Errorf("RetryIn() when half-open = %v, want 0", got)
		}
		probe1.Done(BreakerSuccess)
		if got := b.State(); got != BreakerStateHalfOpen {
			t.Errorf("State() after 1 of 2 probes succeeded = %v, want half_open", got)
		}
		probe2.Done(BreakerSuccess)
		if got := b.State(); got != BreakerStateClosed {
			t.Errorf("State() after both probes succeeded = %v, want closed", got)
		}
		if c := b.Counts(); c != (BreakerCounts{}) {
			t.Errorf("Counts() after closing = %+v, want zero", c)
		}
		want := "[up:closed->open up:open->half_open up:half_open->closed]"
		if got := log.String(); got != want {
			t.Errorf("state changes = %s, want %s", got, want)
		}
		if tk, _ := b.Allow(); tk.Probe() {
			t.Error("Probe() once closed again = true, want false")
		}
	})
}

func TestBreakerReopensOnProbeFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const openFor = 5 * time.Second
		b := NewBreaker("up", BreakerSettings{ConsecutiveFailures: 1, OpenFor: openFor, HalfOpenRequests: 3}, nil)
		reportAll(t, b, "f")
		time.Sleep(openFor + time.Millisecond)
		reportAll(t, b, "ss")
		reportAll(t, b, "f")
		if got := b.State(); got != BreakerStateOpen {
			t.Fatalf("State() after a probe failed = %v, want open", got)
		}
		if got := b.RetryIn(); got != openFor {
			t.Errorf("RetryIn() after re-opening = %v, want %v", got, openFor)
		}
	})
}

func TestBreakerIgnore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker("up", BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Second}, nil)
		reportAll(t, b, "iii")
		if c, want := b.Counts(), (BreakerCounts{Requests: 3, Ignored: 3}); c != want {
			t.Errorf("Counts() after 3 ignored = %+v, want %+v", c, want)
		}
		reportAll(t, b, "f")
		time.Sleep(time.Second + time.Millisecond)
		// An ignored probe gives its slot back: the next request probes.
		reportAll(t, b, "i")
		if got := b.State(); got != BreakerStateHalfOpen {
			t.Errorf("State() after an ignored probe = %v, want half_open", got)
		}
		reportAll(t, b, "s")
		if got := b.State(); got != BreakerStateClosed {
			t.Errorf("State() after a successful probe = %v, want closed", got)
		}
	})
}

// TestBreakerStaleDone checks an outcome reported after a change of state
// is dropped, as gobreaker does.
func TestBreakerStaleDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker("up", BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Second}, nil)
		slow, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		reportAll(t, b, "f")
		time.Sleep(2 * time.Second)
		reportAll(t, b, "s") // the probe closes the breaker
		slow.Done(BreakerFailure)
		if got := b.State(); got != BreakerStateClosed {
			t.Errorf("State() after a stale failure = %v, want closed", got)
		}
	})
}

func TestBreakerCounts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker("up", BreakerSettings{ConsecutiveFailures: 10}, nil)
		reportAll(t, b, "sfsiff")
		if _, err := b.Allow(); err != nil { // in flight
			t.Fatal(err)
		}
		want := BreakerCounts{Requests: 7, Successes: 2, Failures: 3, Ignored: 1, ConsecutiveFailures: 2}
		if got := b.Counts(); got != want {
			t.Errorf("Counts() = %+v, want %+v", got, want)
		}
	})
}

func TestBreakerUnknownResultIsFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker("up", BreakerSettings{ConsecutiveFailures: 1}, nil)
		report(t, b, BreakerResult(9))
		if got := b.State(); got != BreakerStateOpen {
			t.Errorf("State() after BreakerResult(9) = %v, want open", got)
		}
	})
}

func TestBreakerDefaultOpenFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker("up", BreakerSettings{ConsecutiveFailures: 1}, nil)
		reportAll(t, b, "f")
		if got := b.RetryIn(); got != 15*time.Second {
			t.Errorf("RetryIn() with OpenFor 0 = %v, want 15s", got)
		}
	})
}

func TestBreakerNil(t *testing.T) {
	var b *Breaker
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("nil Breaker: Allow() = %v, %v; want a ticket and nil", done, err)
	}
	done.Done(BreakerFailure)
	if b.State() != BreakerStateClosed || b.RetryIn() != 0 || b.Counts() != (BreakerCounts{}) {
		t.Errorf("nil Breaker: State, RetryIn, Counts = %v, %v, %+v; want closed, 0, zero", b.State(), b.RetryIn(), b.Counts())
	}
}

func TestBreakerStrings(t *testing.T) {
	tests := []struct {
		in   fmt.Stringer
		want string
	}{
		{BreakerStateClosed, "closed"},
		{BreakerStateOpen, "open"},
		{BreakerStateHalfOpen, "half_open"},
		{BreakerState(7), "breaker_state(7)"},
		{BreakerSuccess, "success"},
		{BreakerFailure, "failure"},
		{BreakerIgnore, "ignore"},
		{BreakerResult(7), "breaker_result(7)"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestBreakerSet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log stateLog
		set := &BreakerSet{OnChange: log.onChange}
		st := BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Second}
		const ep = "http://10.0.0.5:8080"
		set.Hold(ep)
		set.Hold("http://10.0.0.6:8080")

		a := set.Get(ep, st)
		if b := set.Get(ep, st); b != a {
			t.Errorf("Get(%q, same settings) = %p, want the shared %p", ep, b, a)
		}
		other := st
		other.OpenFor = 2 * time.Second
		if b := set.Get(ep, other); b == a {
			t.Errorf("Get(%q, other settings) returned the same breaker", ep)
		}
		if b := set.Get("http://10.0.0.6:8080", st); b == a {
			t.Errorf("Get(other endpoint) returned the same breaker")
		}

		reportAll(t, a, "f")
		if got, want := log.String(), "["+ep+":closed->open]"; got != want {
			t.Errorf("OnChange saw %s, want %s", got, want)
		}

		// A reload that uses only (ep, st) keeps it and drops the others.
		if n := set.Sweep(); n != 0 {
			t.Errorf("first Sweep() dropped %d, want 0 (all were just used)", n)
		}
		if b := set.Get(ep, st); b != a || b.State() != BreakerStateOpen {
			t.Errorf("Get after reload = %p in state %v, want the kept %p, open", b, b.State(), a)
		}
		if n := set.Sweep(); n != 2 {
			t.Errorf("second Sweep() dropped %d, want 2", n)
		}
		var left []string
		set.Range(func(endpoint string, s BreakerSettings, b *Breaker) bool {
			left = append(left, fmt.Sprintf("%s %v", endpoint, s.OpenFor))
			return true
		})
		if want := ep + " 1s"; len(left) != 1 || left[0] != want {
			t.Errorf("Range after Sweep = %q, want [%q]", left, want)
		}
	})
}

func TestBreakerSetConcurrentGet(t *testing.T) {
	var set BreakerSet
	st := BreakerSettings{ConsecutiveFailures: 5}
	set.Hold("http://a")
	got := make([]*Breaker, 16)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i] = set.Get("http://a", st) })
	}
	wg.Wait()
	for i, b := range got {
		if b != got[0] {
			t.Errorf("Get #%d = %p, want the one breaker %p", i, b, got[0])
		}
	}
}

func BenchmarkBreaker(b *testing.B) {
	br := NewBreaker("up", BreakerSettings{ConsecutiveFailures: 5, FailureRatio: 0.5, MinRequests: 20, Window: 10 * time.Second, OpenFor: 15 * time.Second, HalfOpenRequests: 1}, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			done, err := br.Allow()
			if err != nil {
				b.Fatal(err)
			}
			done.Done(BreakerSuccess)
		}
	})
}

// TestBreakerSetRelease: an endpoint's breakers stay in the set until its
// last holder releases it; then its breakers of every settings, and only
// its, leave the set, and Get hands out breakers it does not keep until
// the endpoint is held again.
func TestBreakerSetRelease(t *testing.T) {
	var set BreakerSet
	st := BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Hour}
	other := st
	other.OpenFor = time.Minute
	const gone, stays = "http://10.0.0.5:8080", "http://10.0.0.6:8080"
	set.Hold(gone)
	set.Hold(gone) // two upstreams have it
	set.Hold(stays)
	a := set.Get(gone, st)
	set.Get(gone, other)
	kept := set.Get(stays, st)
	reportAll(t, a, "f")

	if n := set.Release(gone); n != 0 {
		t.Errorf("Release(%q) with a holder left = %d, want 0", gone, n)
	}
	if b := set.Get(gone, st); b != a || b.State() != BreakerStateOpen {
		t.Errorf("Get(%q) with a holder left = %p in state %v, want the kept %p, open", gone, b, b.State(), a)
	}
	if n := set.Release(gone); n != 2 {
		t.Errorf("Release(%q) of the last holder = %d, want 2 (one per settings)", gone, n)
	}
	if n := set.Release(gone); n != 0 {
		t.Errorf("Release(%q) of an endpoint nobody holds = %d, want 0", gone, n)
	}
	if b := set.Get(stays, st); b != kept {
		t.Errorf("Get(%q) after Release(%q) = %p, want the kept %p", stays, gone, b, kept)
	}
	b := set.Get(gone, st)
	if b == a || b.State() != BreakerStateClosed {
		t.Errorf("Get(%q) after its release = %p in state %v, want a new closed breaker", gone, b, b.State())
	}
	if again := set.Get(gone, st); again == b {
		t.Errorf("Get(%q) of an endpoint nobody holds twice returned the same breaker: the set kept it", gone)
	}
	var left []string
	set.Range(func(endpoint string, _ BreakerSettings, _ *Breaker) bool {
		left = append(left, endpoint)
		return true
	})
	if len(left) != 1 || left[0] != stays {
		t.Errorf("Range after Release = %q, want [%q]", left, stays)
	}

	set.Hold(gone)
	if b := set.Get(gone, st); b != set.Get(gone, st) || b == a {
		t.Errorf("Get(%q) held again: want one new breaker kept in the set", gone)
	}
}
