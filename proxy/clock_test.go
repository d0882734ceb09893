package proxy

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock whose time moves only with Advance. It counts its
// armed timers, so that a test can wait until every health checker has
// finished its check and armed its timer again (waitArmed).
type fakeClock struct {
	mu     sync.Mutex
	cond   *sync.Cond
	now    time.Time
	timers map[*fakeTimer]bool
	armed  int
}

func newFakeClock() *fakeClock {
	c := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), timers: map[*fakeTimer]bool{}}
	c.cond = sync.NewCond(&c.mu)
	return c
}

var _ Clock = (*fakeClock)(nil)

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// Advance moves the time on by d and fires the timers due by then, each
// once.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.at.After(c.now) {
			delete(c.timers, t)
			c.armed--
			select {
			case t.ch <- c.now:
			default:
			}
		}
	}
	c.cond.Broadcast()
}

// waitArmed waits until n timers are armed, for up to 10 s of real time.
func (c *fakeClock) waitArmed(t testing.TB, n int) {
	t.Helper()
	stop := time.AfterFunc(10*time.Second, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop.Stop()
	deadline := time.Now().Add(10 * time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.armed != n {
		if time.Now().After(deadline) {
			t.Fatalf("fakeClock: %d timers armed after 10s, want %d", c.armed, n)
		}
		c.cond.Wait()
	}
}

type fakeTimer struct {
	c  *fakeClock
	ch chan time.Time
	at time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Reset(d time.Duration) {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	t.at = c.now.Add(d)
	if !c.timers[t] {
		c.timers[t] = true
		c.armed++
	}
	c.cond.Broadcast()
}

func (t *fakeTimer) Stop() {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timers[t] {
		delete(c.timers, t)
		c.armed--
	}
	c.cond.Broadcast()
}
