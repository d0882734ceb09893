package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sidecar-proxy/sidecar/spool"
)

// spoolCloseFloor is the least time the spool's close is given on the way
// out, when the drain has used up shutdown_delay + shutdown_grace (or the
// sidecar stops on an error): a disk that answers commits and syncs what
// is queued well within it, and one that stalls must not keep the process
// from exiting (docs/operations.md, "Signals").
const spoolCloseFloor = 5 * time.Second

// shutdowner is a store whose close can be bounded: spool.FileStore's
// Shutdown gives up on a disk that stalls with a *spool.StalledError.
type shutdowner interface {
	Shutdown(ctx context.Context) error
}

var _ shutdowner = (*spool.FileStore)(nil)

// openSpools holds the spools serve opened, the one opened at start and
// the one a reload opened for the first async route, to close them once
// on the way out.
type openSpools struct {
	logger *slog.Logger
	mu     sync.Mutex
	stores []spoolEntry
}

type spoolEntry struct {
	store spool.Store
	where []any // log attributes naming it (spoolWhere)
}

// add records an open store, described by where.
func (o *openSpools) add(store spool.Store, where []any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stores = append(o.stores, spoolEntry{store, where})
}

// close closes the stores, waiting for them at most until ctx ends, and
// logs each failure with the store's backend and directory or stream. It
// returns the failures joined; nil if every store closed, or there was
// none. Later calls close nothing.
func (o *openSpools) close(ctx context.Context) error {
	o.mu.Lock()
	stores := o.stores
	o.stores = nil
	o.mu.Unlock()
	var errs []error
	for _, s := range stores {
		if err := closeStore(ctx, s.store); err != nil {
			msg := "closing the spool"
			if stalled(err) {
				msg = "the spool did not close in time: its disk or server stalls; exiting without it (acknowledged messages are stored; those not confirmed may be too)"
			}
			o.logger.Error(msg, append(s.where, "error", err)...)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// closeStore closes st, waiting at most until ctx ends: through its
// Shutdown when it has one, else by leaving a Close that has not returned
// by then to run on (the process is about to exit).
func closeStore(ctx context.Context, st spool.Store) error {
	if s, ok := st.(shutdowner); ok {
		return s.Shutdown(ctx)
	}
	done := make(chan error, 1)
	go func() { done <- st.Close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return &closeTimeout{err: context.Cause(ctx)}
	}
}

// closeTimeout is a Close that had not returned when the close's context
// ended.
type closeTimeout struct{ err error }

func (e *closeTimeout) Error() string {
	return fmt.Sprintf("spool: not closed in time (%v)", e.err)
}

func (e *closeTimeout) Unwrap() error { return e.err }

// stalled reports whether err says a store did not close in time.
func stalled(err error) bool {
	var se *spool.StalledError
	var ct *closeTimeout
	return errors.As(err, &se) || errors.As(err, &ct)
}

// spoolCloseContext returns the context of the spool's close on the way
// out: what is left until deadline (the drain's, shutdown_delay +
// shutdown_grace after the signal), and at least spoolCloseFloor.
func spoolCloseContext(deadline time.Time) (context.Context, context.CancelFunc) {
	return context.WithDeadline(context.Background(), latest(deadline, time.Now().Add(spoolCloseFloor)))
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
