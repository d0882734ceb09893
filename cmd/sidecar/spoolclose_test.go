package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/spooltest"
)

// The spool's close on the way out of "sidecar run", in pieces: the
// binary's own spool is on the real file system, which cannot be made to
// stall from a test, so the close is run here on a store whose syncs
// stall (docs/spool.md, "A disk that stalls").

// TestCloseSpoolsOnStalledDisk: the close on the way out gives up on a
// disk that stalls at its bound, logs an error naming the spool's
// directory and the stall, and says so to serve (which exits 3); once
// the disk answers, the message the writer held is stored.
func TestCloseSpoolsOnStalledDisk(t *testing.T) {
	dir := t.TempDir()
	sfs := &spooltest.StallFS{}
	st, err := spool.OpenFile(dir, spool.FileOptions{FS: sfs})
	if err != nil {
		t.Fatalf("OpenFile(%s) = %v", dir, err)
	}
	var logs syncBuffer
	spools := &openSpools{logger: slog.New(slog.NewTextHandler(&logs, nil))}
	spools.add(st, []any{"backend", "file", "dir", dir})
	stalled, release := sfs.Stall()
	defer release()
	m := &spool.Message{Route: "ev", Body: []byte("held")}
	appended := make(chan error, 1)
	go func() { appended <- st.Append(context.Background(), m) }()
	<-stalled

	const bound = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	start := time.Now()
	err = spools.close(ctx)
	took := time.Since(start)
	var se *spool.StalledError
	if !errors.As(err, &se) || se.Dir != dir {
		t.Fatalf("openSpools.close(%v) on a stalled disk = %v, want a *spool.StalledError for %s", bound, err, dir)
	}
	if limit := bound + 5*time.Second; took > limit {
		t.Errorf("openSpools.close(%v) on a stalled disk took %v, want less than %v", bound, took, limit)
	}
	out := logs.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "did not close in time") || !strings.Contains(out, "dir="+dir) {
		t.Errorf("log of a close on a stalled disk = %q, want an error naming the stall and dir=%s", out, dir)
	}
	if err := spools.close(context.Background()); err != nil {
		t.Errorf("second openSpools.close = %v, want nil (nothing left to close)", err)
	}

	release()
	if err := <-appended; err != nil {
		t.Fatalf("Append once the disk answers = %v, want nil", err)
	}
	var st2 *spool.FileStore
	poll.Until(t, 10*time.Second, "the spool's writer to release the directory", func() bool {
		st2, err = spool.OpenFile(dir, spool.FileOptions{})
		return err == nil
	})
	defer st2.Close()
	if _, _, err := st2.Get(m.ID); err != nil {
		t.Errorf("Get(%s) after reopening = %v, want the message the writer held", m.ID, err)
	}
}

// hangingStore is a store without Shutdown whose Close returns only when
// released, like a server that stopped answering.
type hangingStore struct {
	spool.Store
	release chan struct{}
}

func (s *hangingStore) Close() error {
	<-s.release
	return nil
}

// TestCloseStoreWithoutShutdown: a store without a Shutdown of its own
// is given the same bound; a Close that has not returned is left to run.
func TestCloseStoreWithoutShutdown(t *testing.T) {
	st := &hangingStore{release: make(chan struct{})}
	defer close(st.release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := closeStore(ctx, st)
	if !stalled(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("closeStore on a Close that hangs = %v, want a timeout wrapping the deadline", err)
	}
}

// TestSpoolCloseBound: the close gets what is left of the drain's
// deadline, and spoolCloseFloor when that is (nearly) used up.
func TestSpoolCloseBound(t *testing.T) {
	tests := []struct {
		name          string
		deadline      time.Duration // from now
		least, atMost time.Duration
	}{
		{"grace left", time.Minute, time.Minute - 5*time.Second, time.Minute},
		{"grace used up", -time.Second, spoolCloseFloor - 5*time.Second, spoolCloseFloor},
		{"grace nearly used up", time.Second, spoolCloseFloor - 5*time.Second, spoolCloseFloor},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := spoolCloseContext(time.Now().Add(tt.deadline))
			defer cancel()
			d, ok := ctx.Deadline()
			if left := time.Until(d); !ok || left < tt.least || left > tt.atMost {
				t.Errorf("spoolCloseContext(now%+v) leaves %v, want between %v and %v", tt.deadline, left, tt.least, tt.atMost)
			}
		})
	}
}
