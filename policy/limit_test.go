package policy

import (
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// reserveResult is what one Reserve call returned.
type reserveResult struct {
	delay      time.Duration
	ok         bool
	retryAfter time.Duration
}

func reserve(r *RateLimiter) (Reservation, reserveResult) {
	res, ok, retryAfter := r.Reserve()
	return res, reserveResult{res.Delay(), ok, retryAfter}
}

func TestRateLimiterBurstAndRefill(t *testing.T) {
	clk := newFakeClock()
	r := NewRateLimiter(10, 3, 0, clk.Now)
	steps := []struct {
		name    string
		advance time.Duration
		want    reserveResult
	}{
		{"burst 1", 0, reserveResult{0, true, 0}},
		{"burst 2", 0, reserveResult{0, true, 0}},
		{"burst 3", 0, reserveResult{0, true, 0}},
		{"empty", 0, reserveResult{0, false, 100 * time.Millisecond}},
		{"still empty, sooner", 40 * time.Millisecond, reserveResult{0, false, 60 * time.Millisecond}},
		{"refilled one", 60 * time.Millisecond, reserveResult{0, true, 0}},
		{"empty again", 0, reserveResult{0, false, 100 * time.Millisecond}},
	}
	for _, s := range steps {
		clk.Advance(s.advance)
		if _, got := reserve(r); got != s.want {
			t.Errorf("%s: Reserve() = %+v, want %+v", s.name, got, s.want)
		}
	}
	clk.Advance(time.Hour)
	if got := r.Tokens(); got != 3 {
		t.Errorf("Tokens() after an hour = %v, want the burst, 3", got)
	}
}

func TestRateLimiterMaxWait(t *testing.T) {
	clk := newFakeClock()
	r := NewRateLimiter(10, 1, 250*time.Millisecond, clk.Now)
	steps := []struct {
		name       string
		want       reserveResult
		wantTokens float64
	}{
		{"token now", reserveResult{0, true, 0}, 0},
		{"first in queue", reserveResult{100 * time.Millisecond, true, 0}, -1},
		{"second in queue", reserveResult{200 * time.Millisecond, true, 0}, -2},
		{"past max_wait: refused, nothing taken", reserveResult{0, false, 300 * time.Millisecond}, -2},
	}
	for _, s := range steps {
		if _, got := reserve(r); got != s.want {
			t.Errorf("%s: Reserve() = %+v, want %+v", s.name, got, s.want)
		}
		if got := r.Tokens(); math.Abs(got-s.wantTokens) > 1e-9 {
			t.Errorf("%s: Tokens() = %v, want %v", s.name, got, s.wantTokens)
		}
	}
}

func TestRateLimiterCancel(t *testing.T) {
	clk := newFakeClock()
	r := NewRateLimiter(10, 1, time.Second, clk.Now)
	now, _ := reserve(r)
	_, first := reserve(r)
	second, got := reserve(r)
	if got != (reserveResult{200 * time.Millisecond, true, 0}) || first.delay != 100*time.Millisecond {
		t.Fatalf("Reserve() twice when empty = %+v, %+v; want delays 100ms, 200ms", first, got)
	}

	now.Cancel() // a token used at once is not returned
	if got := r.Tokens(); math.Abs(got+2) > 1e-9 {
		t.Errorf("Tokens() after cancelling an immediate token = %v, want -2", got)
	}
	second.Cancel()
	if got := r.Tokens(); math.Abs(got+1) > 1e-9 {
		t.Errorf("Tokens() after cancelling the last reservation = %v, want -1", got)
	}
	if _, got := reserve(r); got != (reserveResult{200 * time.Millisecond, true, 0}) {
		t.Errorf("Reserve() after a cancel = %+v, want the given-back slot at 200ms", got)
	}

	late, _ := reserve(r) // 300ms
	clk.Advance(400 * time.Millisecond)
	before := r.Tokens()
	late.Cancel() // its time has passed: nothing to give back
	if after := r.Tokens(); after != before {
		t.Errorf("Tokens() after cancelling a due reservation = %v, want unchanged %v", after, before)
	}
	Reservation{}.Cancel() // the zero Reservation is harmless
}

func TestRateLimiterUnlimited(t *testing.T) {
	tests := []struct {
		name string
		r    *RateLimiter
	}{
		{"nil", nil},
		{"zero rps", NewRateLimiter(0, 0, 0, nil)},
		{"infinite rps", NewRateLimiter(math.Inf(1), 1, 0, nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 1000 {
				if _, got := reserve(tt.r); got != (reserveResult{0, true, 0}) {
					t.Fatalf("Reserve() = %+v, want an immediate token", got)
				}
			}
			if got := tt.r.Tokens(); !math.IsInf(got, 1) {
				t.Errorf("Tokens() = %v, want +Inf", got)
			}
		})
	}
}

func TestRateLimiterZeroBurst(t *testing.T) {
	clk := newFakeClock()
	r := NewRateLimiter(1, 0, 0, clk.Now)
	_, first := reserve(r)
	_, second := reserve(r)
	if first != (reserveResult{0, true, 0}) || second != (reserveResult{0, false, time.Second}) {
		t.Errorf("burst 0: Reserve() twice = %+v, %+v; want a token, then refused for 1s", first, second)
	}
}

func TestRateLimiterAllocs(t *testing.T) {
	r := NewRateLimiter(1e9, 1e6, 0, nil)
	if n := testing.AllocsPerRun(100, func() { r.Reserve() }); n != 0 {
		t.Errorf("Reserve() with a token at hand allocated %v times, want 0", n)
	}
	clk := newFakeClock()
	r = NewRateLimiter(1, 1, 0, clk.Now)
	r.Reserve()
	if n := testing.AllocsPerRun(100, func() { r.Reserve() }); n != 0 {
		t.Errorf("Reserve() refused allocated %v times, want 0", n)
	}
}

func TestInFlight(t *testing.T) {
	f := NewInFlight(2)
	steps := []struct {
		name    string
		op      func() bool
		want    bool
		current int64
	}{
		{"first", f.Acquire, true, 1},
		{"second", f.Acquire, true, 2},
		{"full", f.Acquire, false, 2},
		{"release", func() bool { f.Release(); return true }, true, 1},
		{"after release", f.Acquire, true, 2},
	}
	for _, s := range steps {
		if got := s.op(); got != s.want || f.Current() != s.current {
			t.Errorf("%s: got %v, Current() = %d; want %v, %d", s.name, got, f.Current(), s.want, s.current)
		}
	}
}

func TestInFlightUncapped(t *testing.T) {
	tests := []struct {
		name        string
		f           *InFlight
		wantCurrent int64
	}{
		{"nil", nil, 0},
		{"zero max", NewInFlight(0), 100},
		{"negative max", NewInFlight(-1), 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 100 {
				if !tt.f.Acquire() {
					t.Fatalf("Acquire() = false, want true")
				}
			}
			if got := tt.f.Current(); got != tt.wantCurrent {
				t.Errorf("Current() = %d, want %d", got, tt.wantCurrent)
			}
			for range 100 {
				tt.f.Release()
			}
			if got := tt.f.Current(); got != 0 {
				t.Errorf("Current() after releasing all = %d, want 0", got)
			}
		})
	}
}

func TestInFlightConcurrent(t *testing.T) {
	const limit = 3
	f := NewInFlight(limit)
	var held, peak atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				if !f.Acquire() {
					continue
				}
				n := held.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				held.Add(-1)
				f.Release()
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > limit || p < 1 {
		t.Errorf("peak holders = %d, want between 1 and %d", p, limit)
	}
	if got := f.Current(); got != 0 {
		t.Errorf("Current() after all released = %d, want 0", got)
	}
}

// BenchmarkRateLimiterReserve measures the allow path (the bucket never
// runs dry), with the real clock and with a fixed one.
func BenchmarkRateLimiterReserve(b *testing.B) {
	clk := newFakeClock()
	clocks := []struct {
		name string
		now  func() time.Time
		rps  float64
	}{
		{"now=time.Now", nil, 1e12},
		{"now=fixed", clk.Now, 1}, // a burst large enough for any run
	}
	for _, c := range clocks {
		b.Run(c.name, func(b *testing.B) {
			r := NewRateLimiter(c.rps, 1<<40, 0, c.now)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, ok, _ := r.Reserve(); !ok {
						b.Fatal("Reserve() refused")
					}
				}
			})
		})
	}
}

func BenchmarkInFlight(b *testing.B) {
	f := NewInFlight(1 << 20)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if f.Acquire() {
				f.Release()
			}
		}
	})
}
