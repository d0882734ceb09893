package proxy

import "time"

// Clock is the time source of active health checks and outlier ejection:
// when checks are due and when ejections end. The zero choice, without
// WithClock, is the real clock.
type Clock interface {
	Now() time.Time
	// NewTimer returns a running timer that fires once, d from now.
	NewTimer(d time.Duration) Timer
}

// Timer is a Clock's one-shot timer, as time.Timer.
type Timer interface {
	C() <-chan time.Time
	// Reset makes the timer fire d from now; it must be stopped or have
	// fired and been drained.
	Reset(d time.Duration)
	Stop()
}

// WithClock makes the pools that Build creates read time from c instead of
// the real clock. A pool carried over from the previous snapshot keeps
// its clock.
func WithClock(c Clock) BuildOption {
	return func(s *Snapshot) { s.clock = c }
}

// realClock is the real time.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time   { return t.t.C }
func (t realTimer) Reset(d time.Duration) { t.t.Reset(d) }
func (t realTimer) Stop()                 { t.t.Stop() }
