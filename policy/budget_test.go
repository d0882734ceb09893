package policy

import (
	"math"
	"sync"
	"testing"
	"time"
)

// retries calls TryRetry until it refuses or limit is reached and returns
// how many it allowed.
func retries(b *Budget, limit int) int {
	n := 0
	for n < limit && b.TryRetry() {
		n++
	}
	return n
}

func TestBudgetArithmetic(t *testing.T) {
	tests := []struct {
		name         string
		ratio, floor float64
		window       time.Duration
		requests     int
		want         int // retries allowed
	}{
		{"floor only", 0, 1, 10 * time.Second, 0, 10},
		{"floor scales with window", 0, 2, 5 * time.Second, 0, 10},
		{"ratio only", 0.2, 0, 10 * time.Second, 100, 20},
		{"ratio rounds down", 0.2, 0, 10 * time.Second, 99, 20}, // 19.8: the 20th is allowed at 19 < 19.8
		{"ratio and floor add up", 0.5, 1, 10 * time.Second, 10, 15},
		{"no traffic, no floor", 0.2, 0, 10 * time.Second, 0, 0},
		{"negative values count as zero", -1, -1, 10 * time.Second, 50, 0},
		{"ratio above one", 2, 0, 10 * time.Second, 5, 10},
		{"zero window means 10s", 0, 1, 0, 0, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			b := NewBudget(tt.ratio, tt.floor, tt.window, clk.Now)
			for range tt.requests {
				b.Request()
			}
			if got := retries(b, 1000); got != tt.want {
				t.Errorf("NewBudget(%v, %v, %v) after %d requests: TryRetry allowed %d, want %d",
					tt.ratio, tt.floor, tt.window, tt.requests, got, tt.want)
			}
			st := b.Stats()
			if st.Requests != int64(tt.requests) || st.Retries != int64(tt.want) {
				t.Errorf("Stats() = %+v, want Requests %d, Retries %d", st, tt.requests, tt.want)
			}
			if st.Available < 0 || st.Available >= 1 {
				t.Errorf("Stats().Available = %v after exhausting, want in [0, 1)", st.Available)
			}
		})
	}
}

func TestBudgetStatsAvailable(t *testing.T) {
	clk := newFakeClock()
	b := NewBudget(0.5, 1, 10*time.Second, clk.Now)
	for range 20 {
		b.Request()
	}
	if got, want := b.Stats(), (BudgetStats{Requests: 20, Retries: 0, Available: 20}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
	retries(b, 5)
	if got, want := b.Stats(), (BudgetStats{Requests: 20, Retries: 5, Available: 15}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

// TestBudgetSliding checks counts leave the window as time passes: a
// 10s window in 1s buckets keeps an event for more than 9s and at most 10s.
func TestBudgetSliding(t *testing.T) {
	clk := newFakeClock()
	b := NewBudget(0.5, 0, 10*time.Second, clk.Now)
	clk.Advance(500 * time.Millisecond) // mid-bucket
	for range 10 {
		b.Request()
	}
	if got := retries(b, 100); got != 5 {
		t.Fatalf("TryRetry allowed %d after 10 requests, want 5", got)
	}

	steps := []struct {
		name               string
		advance            time.Duration
		requests           int
		wantReq, wantRetry int64
		wantAllowed        int
	}{
		{"same window, exhausted", 4 * time.Second, 0, 10, 5, 0},
		{"more traffic, more retries", 0, 4, 14, 5, 2},
		{"first bucket still in at 9.9s", 5*time.Second + 400*time.Millisecond, 0, 14, 7, 0},
		{"first bucket gone at 10s", 100 * time.Millisecond, 0, 4, 2, 0},
		{"all gone a window later", 10 * time.Second, 0, 0, 0, 0},
		{"fresh traffic after idle", time.Hour, 6, 6, 0, 3},
		{"after the epoch counter wraps", (1<<32 + 20) * time.Second, 2, 2, 0, 1},
	}
	for _, s := range steps {
		clk.Advance(s.advance)
		for range s.requests {
			b.Request()
		}
		if got := retries(b, 100); got != s.wantAllowed {
			t.Errorf("%s: TryRetry allowed %d, want %d", s.name, got, s.wantAllowed)
		}
		if st := b.Stats(); st.Requests != s.wantReq || st.Retries != s.wantRetry+int64(s.wantAllowed) {
			t.Errorf("%s: Stats() = %+v, want Requests %d, Retries %d", s.name, st, s.wantReq, s.wantRetry+int64(s.wantAllowed))
		}
	}
}

func TestBudgetClockBeforeStart(t *testing.T) {
	clk := newFakeClock()
	b := NewBudget(1, 0, time.Second, clk.Now)
	clk.Advance(-time.Hour)
	b.Request()
	if !b.TryRetry() || b.TryRetry() {
		t.Errorf("TryRetry with a clock before the budget's start: want one retry allowed")
	}
}

func TestBudgetNil(t *testing.T) {
	var b *Budget
	b.Request()
	if !b.TryRetry() {
		t.Errorf("nil Budget: TryRetry() = false, want true")
	}
	if st := b.Stats(); st.Requests != 0 || st.Retries != 0 || !math.IsInf(st.Available, 1) {
		t.Errorf("nil Budget: Stats() = %+v, want zero counts and +Inf available", st)
	}
}

// TestBudgetConcurrent checks no count is lost when many goroutines record
// into the same buckets, including while they race to recycle a stale one.
func TestBudgetConcurrent(t *testing.T) {
	const (
		goroutines = 8
		perPhase   = 500
		phases     = 25 // > 10 buckets, so every bucket is recycled under contention
	)
	clk := newFakeClock()
	b := NewBudget(0.5, 0, 10*time.Second, clk.Now)
	var allowed [goroutines]int
	for range phases {
		clk.Advance(time.Second)
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				for range perPhase {
					b.Request()
					if b.TryRetry() {
						allowed[g]++
					}
					_ = b.Stats()
				}
			})
		}
		wg.Wait()
	}
	st := b.Stats()
	if want := int64(10 * goroutines * perPhase); st.Requests != want {
		t.Errorf("Stats().Requests = %d, want %d (no count lost)", st.Requests, want)
	}
	// Every phase allows half its requests; racing TryRetry calls may
	// overshoot by at most one per goroutine.
	if limit := int64(10*goroutines*perPhase/2 + 10*goroutines); st.Retries > limit {
		t.Errorf("Stats().Retries = %d, want at most %d", st.Retries, limit)
	}
	total := 0
	for _, n := range allowed {
		total += n
	}
	if limit := phases*goroutines*perPhase/2 + phases*goroutines; total > limit || total < phases*goroutines*perPhase/2-phases*goroutines {
		t.Errorf("TryRetry allowed %d in all, want about %d", total, phases*goroutines*perPhase/2)
	}
}

func TestBudgetAllocs(t *testing.T) {
	b := NewBudget(0.2, 10, 10*time.Second, nil)
	if n := testing.AllocsPerRun(100, func() { b.Request(); b.TryRetry() }); n != 0 {
		t.Errorf("Request+TryRetry allocated %v times, want 0", n)
	}
}

// BenchmarkBudget measures Request followed by TryRetry, with the real
// clock and with a fixed one (which shows the cost of the budget itself:
// time.Now is most of it on some machines).
func BenchmarkBudget(b *testing.B) {
	fixed := clockEpoch
	clocks := []struct {
		name string
		now  func() time.Time
	}{
		{"now=time.Now", nil},
		{"now=fixed", func() time.Time { return fixed }},
	}
	for _, c := range clocks {
		b.Run(c.name, func(b *testing.B) {
			bg := NewBudget(0.2, 10, 10*time.Second, c.now)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					bg.Request()
					bg.TryRetry()
				}
			})
		})
	}
}
