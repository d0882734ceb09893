package policy

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffCeiling(t *testing.T) {
	tests := []struct {
		name  string
		b     Backoff
		retry int
		want  time.Duration
	}{
		{"first retry is base", Backoff{25 * time.Millisecond, time.Second}, 0, 25 * time.Millisecond},
		{"doubles", Backoff{25 * time.Millisecond, time.Second}, 1, 50 * time.Millisecond},
		{"below cap", Backoff{25 * time.Millisecond, time.Second}, 5, 800 * time.Millisecond},
		{"capped", Backoff{25 * time.Millisecond, time.Second}, 6, time.Second},
		{"overflow at 62", Backoff{25 * time.Millisecond, time.Second}, 62, time.Second},
		{"overflow at 63", Backoff{25 * time.Millisecond, time.Second}, 63, time.Second},
		{"overflow at 100", Backoff{25 * time.Millisecond, time.Second}, 100, time.Second},
		{"huge retry", Backoff{time.Nanosecond, time.Hour}, math.MaxInt, time.Hour},
		{"negative retry is first", Backoff{25 * time.Millisecond, time.Second}, -3, 25 * time.Millisecond},
		{"base above max", Backoff{2 * time.Second, time.Second}, 0, time.Second},
		{"no max, small", Backoff{time.Second, 0}, 3, 8 * time.Second},
		{"no max, overflow", Backoff{time.Second, 0}, 100, math.MaxInt64},
		{"no max, just below overflow", Backoff{1, 0}, 62, 1 << 62},
		{"zero base", Backoff{0, time.Second}, 4, 0},
		{"zero value", Backoff{}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.b.Ceiling(tt.retry); got != tt.want {
				t.Errorf("%+v.Ceiling(%d) = %v, want %v", tt.b, tt.retry, got, tt.want)
			}
		})
	}
}

func TestBackoffDelayBounds(t *testing.T) {
	b := Backoff{Base: 25 * time.Millisecond, Max: time.Second}
	tests := []struct {
		name  string
		retry int
		rnd   func(int64) int64
		want  time.Duration
	}{
		{"lowest draw", 3, func(int64) int64 { return 0 }, 0},
		{"highest draw is the ceiling", 3, func(n int64) int64 { return n - 1 }, 200 * time.Millisecond},
		{"highest draw capped", 10, func(n int64) int64 { return n - 1 }, time.Second},
		{"highest draw at retry 100", 100, func(n int64) int64 { return n - 1 }, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := b.Delay(tt.retry, tt.rnd); got != tt.want {
				t.Errorf("Delay(%d) = %v, want %v", tt.retry, got, tt.want)
			}
		})
	}

	t.Run("no max at retry 100 does not overflow rnd's bound", func(t *testing.T) {
		var gotN int64
		d := Backoff{Base: time.Second}.Delay(100, func(n int64) int64 { gotN = n; return n - 1 })
		if gotN != math.MaxInt64 || d != math.MaxInt64-1 {
			t.Errorf("Delay(100) called rnd(%d) and returned %v, want rnd(%d)", gotN, d, int64(math.MaxInt64))
		}
	})
	t.Run("zero ceiling does not draw", func(t *testing.T) {
		d := Backoff{}.Delay(0, func(int64) int64 { t.Fatal("rnd called"); return 0 })
		if d != 0 {
			t.Errorf("Delay(0) = %v, want 0", d)
		}
	})
	t.Run("default source stays in bounds", func(t *testing.T) {
		for retry := range 101 {
			ceil := b.Ceiling(retry)
			for range 100 {
				if d := b.Delay(retry, nil); d < 0 || d > ceil {
					t.Fatalf("Delay(%d) = %v, want in [0, %v]", retry, d, ceil)
				}
			}
		}
	})
}

// TestBackoffDelayDistribution checks full jitter is uniform over
// [0, ceiling]: each quarter of the range gets a quarter of the draws.
func TestBackoffDelayDistribution(t *testing.T) {
	const draws = 40000
	b := Backoff{Base: 10 * time.Millisecond, Max: time.Second}
	r := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name  string
		retry int
		ceil  time.Duration
	}{
		{"retry 2", 2, 40 * time.Millisecond},
		{"capped retry 20", 20, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var quarters [4]int
			var sum float64
			lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
			for range draws {
				d := b.Delay(tt.retry, r.Int64N)
				if d < 0 || d > tt.ceil {
					t.Fatalf("Delay(%d) = %v, want in [0, %v]", tt.retry, d, tt.ceil)
				}
				quarters[min(int(4*d/(tt.ceil+1)), 3)]++
				sum += float64(d)
				lo, hi = min(lo, d), max(hi, d)
			}
			for i, n := range quarters {
				if n < draws/4*95/100 || n > draws/4*105/100 {
					t.Errorf("Delay(%d): quarter %d got %d of %d draws, want about %d", tt.retry, i, n, draws, draws/4)
				}
			}
			if mean, want := sum/draws, float64(tt.ceil)/2; math.Abs(mean-want) > want*0.02 {
				t.Errorf("Delay(%d): mean %v, want about %v", tt.retry, time.Duration(mean), time.Duration(want))
			}
			if lo > tt.ceil/100 || hi < tt.ceil*99/100 {
				t.Errorf("Delay(%d): range [%v, %v], want close to [0, %v]", tt.retry, lo, hi, tt.ceil)
			}
		})
	}
}
