// Package poll waits in tests for a condition that no signal announces:
// state of a server in another goroutine or process, a metric, a file.
// Where a test can await a channel or a callback, it does that instead.
//
// Every wait is bounded: Until fails the test when its time runs out, and
// Within reports that it ran out.
package poll

import (
	"testing"
	"time"
)

// maxInterval bounds the pause between two looks at a condition. The
// first look is at once; pauses start at a millisecond and double.
const maxInterval = 20 * time.Millisecond

// Within calls cond until it returns true or d has passed, and reports
// whether cond held. cond is called at least once.
func Within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	for {
		if cond() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(min(pause, time.Until(deadline)))
		pause = min(2*pause, maxInterval)
	}
}

// Until calls cond until it returns true, and fails t with "timed out
// after d waiting for what" if d passes first.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Within(d, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}
