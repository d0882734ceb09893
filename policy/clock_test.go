package policy

import (
	"sync/atomic"
	"time"
)

// fakeClock is a clock tests move by hand; safe for concurrent use.
type fakeClock struct {
	ns atomic.Int64 // nanoseconds since epoch
}

// clockEpoch is where every fakeClock starts.
var clockEpoch = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func newFakeClock() *fakeClock { return new(fakeClock) }

// Now is the injected clock.
func (c *fakeClock) Now() time.Time { return clockEpoch.Add(time.Duration(c.ns.Load())) }

// Advance moves the clock forward by d.
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
