package poll

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestWithinHolds(t *testing.T) {
	var n atomic.Int32
	if !Within(10*time.Second, func() bool { return n.Add(1) == 3 }) {
		t.Fatal("Within = false, want true once cond holds")
	}
	if got := n.Load(); got != 3 {
		t.Errorf("cond called %d times, want 3", got)
	}
}

func TestWithinRunsOut(t *testing.T) {
	start := time.Now()
	var n atomic.Int32
	if Within(30*time.Millisecond, func() bool { n.Add(1); return false }) {
		t.Fatal("Within = true for a condition that never holds")
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Errorf("Within returned after %v, before its 30ms", el)
	}
	if n.Load() < 2 {
		t.Errorf("cond called %d times, want it polled more than once", n.Load())
	}
}

func TestWithinZeroLooksOnce(t *testing.T) {
	var n atomic.Int32
	if !Within(0, func() bool { n.Add(1); return true }) || n.Load() != 1 {
		t.Fatalf("Within(0, true) called cond %d times, want once and true", n.Load())
	}
}
