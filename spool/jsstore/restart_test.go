package jsstore_test

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/poll"
	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// TestServerRestartUnderLoad stops the NATS server while a writer appends
// and starts it again on the same data and port: appends fail while it is
// down (none reports success), resume after it is back, and every
// acknowledged message is delivered.
func TestServerRestartUnderLoad(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir, 0)
	port := srv.Addr().(*net.TCPAddr).Port
	// Short requests: publishes in flight when the server goes away fail
	// within 2s instead of waiting for a generous timeout.
	s := openStore(t, srv, jsstore.Options{Stream: "RESTART", RequestTimeout: 2 * time.Second})

	var (
		mu            sync.Mutex
		acked         []string
		refused, lost int
	)
	count := func() (int, int) { mu.Lock(); defer mu.Unlock(); return len(acked), refused }
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := message("r", i)
			err := s.Append(t.Context(), m)
			mu.Lock()
			switch {
			case err == nil:
				acked = append(acked, m.ID)
			case errors.Is(err, spool.ErrExists):
				lost++ // must not happen: IDs are fresh
			default:
				refused++
			}
			mu.Unlock()
			if err != nil {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	wait := func(what string, ok func(acked, refused int) bool) {
		t.Helper()
		if !poll.Within(20*time.Second, func() bool { return ok(count()) }) {
			close(stop)
			<-done
			a, r := count()
			t.Fatalf("%s: not within 20s (%d acknowledged, %d refused)", what, a, r)
		}
	}
	wait("first appends", func(a, _ int) bool { return a >= 100 })
	srv.Shutdown()
	srv.WaitForShutdown()
	wait("appends refused while down", func(_, r int) bool { return r >= 5 })
	atDown, _ := count()
	startServer(t, dir, port)
	wait("appends after the restart", func(a, _ int) bool { return a >= atDown+100 })
	close(stop)
	<-done
	if lost > 0 {
		t.Errorf("%d appends reported ErrExists for fresh IDs", lost)
	}

	want := map[string]bool{}
	for _, id := range acked {
		want[id] = true
	}
	// Take what is there; wait only when Next has nothing.
	var err error
	if !poll.Within(20*time.Second, func() bool {
		for len(want) > 0 {
			var (
				m  *spool.Message
				ok bool
			)
			m, ok, err = s.Next("r", time.Now())
			if err != nil || !ok {
				return false
			}
			delete(want, m.ID)
			if err := s.Ack(m.ID); err != nil {
				t.Fatalf("Ack(%s) = %v", m.ID, err)
			}
		}
		return true
	}) {
		t.Fatalf("%d of %d acknowledged messages never delivered (last Next error %v)", len(want), len(acked), err)
	}
	// A refused append may still have been stored (its acknowledgement
	// was lost): a duplicate for the app's retry, never a loss.
	if st := s.Stats(); st.Total.Pending != 0 {
		t.Logf("%d refused appends were stored all the same", st.Total.Pending)
	}
}
