package jsstore

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
)

// DeadSuffix is appended to the stream's name to name the dead-letter
// stream.
const DeadSuffix = "_DEAD"

// ErrDisconnected is returned while the store is not connected to NATS.
var ErrDisconnected = errors.New("jetstream spool: not connected to NATS")

const (
	hdrAttempts   = "Sidecar-Attempts"
	hdrDeadReason = "Sidecar-Dead-Reason"
	consumerPfx   = "sidecar_"

	// maxReason bounds the dead reason kept in a header, and
	// deadHeaderRoom is the room a dead letter's headers may take beyond
	// the pending message's.
	maxReason      = 1024
	deadHeaderRoom = 4096
)

// Store is the JetStream spool.Store. See the package documentation.
type Store struct {
	opts    Options
	stream  string // pending messages
	dead    string // dead letters: stream + DeadSuffix
	nc      *nats.Conn
	js      jetstream.JetStream
	str     jetstream.Stream
	dstr    jetstream.Stream
	now     func() time.Time
	log     *slog.Logger
	appends atomic.Int64
	// routes is Options.Routes; SetRoutes replaces it on a reload.
	routes atomic.Pointer[map[string]RouteOptions]
	// duplicates is the stream's duplicate window, in nanoseconds.
	duplicates atomic.Int64

	mu        sync.Mutex
	closed    bool
	lastKey   uint64
	consumers map[string]jetstream.Consumer // by route
	leases    map[string]*lease             // by message ID
	retries   map[string]retry              // by message ID: RetryLater's figures
	held      map[string]time.Time          // fifo routes: when the retried head is due
	counts    map[string]routeCount         // routes with MaxMessages
	deadCount map[string]jetstream.Consumer // by route: counts its dead letters

	// nexts counts the Next calls in flight: Close waits for them before
	// it hands leases back and closes the connection.
	nexts sync.WaitGroup

	// Hooks for tests; read under mu.
	hookFetched func()                            // in Next, after the fetch
	wrapMsg     func(jetstream.Msg) jetstream.Msg // in Next, the leased message

	stop chan struct{}
	done chan struct{}
}

var (
	_ spool.Store   = (*Store)(nil)
	_ spool.Checker = (*Store)(nil)
	_ spool.Deduper = (*Store)(nil)
)

func (s *Store) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.opts.RequestTimeout)
}

// streamOf returns the name and the stream that hold messages in state st.
func (s *Store) streamOf(st spool.State) (string, jetstream.Stream) {
	if st == spool.Dead {
		return s.dead, s.dstr
	}
	return s.stream, s.str
}

func (s *Store) subject(id string, st spool.State, route string) string {
	name, _ := s.streamOf(st)
	return name + "." + idToken(id) + "." + stateToken(st) + "." + routeToken(route)
}

// parse parses a subject of either stream.
func (s *Store) parse(subj string) (subject, bool) {
	if strings.HasPrefix(subj, s.dead+".") {
		sub, ok := parseSubject(s.dead, subj)
		return sub, ok && sub.state == spool.Dead
	}
	sub, ok := parseSubject(s.stream, subj)
	return sub, ok && sub.state == spool.Pending
}

// checkOpen returns ErrClosed after Close, and ErrDisconnected while the
// connection is down.
func (s *Store) checkOpen() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return spool.ErrClosed
	}
	if !s.nc.IsConnected() {
		return ErrDisconnected
	}
	return nil
}

// Connected reports whether the store is connected to NATS: Append and
// the other methods fail while it is not.
func (s *Store) Connected() bool { return s.nc.IsConnected() }

// Ready implements spool.Checker: it returns ErrDisconnected while the
// connection to NATS is down (the admin API's /readyz answers 503) and
// spool.ErrClosed after Close.
func (s *Store) Ready() error { return s.checkOpen() }

func headerAttempts(h nats.Header) int {
	n, _ := strconv.Atoi(h.Get(hdrAttempts))
	return max(n, 0)
}

// Close implements spool.Store: it hands leased messages back to the
// server at once, stops the lease keeper and closes the connection.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return spool.ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	s.nexts.Wait()
	close(s.stop)
	<-s.done
	s.mu.Lock()
	leases := s.leases
	s.leases = map[string]*lease{}
	s.mu.Unlock()
	for _, l := range leases {
		_ = l.msg.Nak()
	}
	if s.nc.IsConnected() {
		_ = s.nc.FlushTimeout(s.opts.RequestTimeout)
	}
	s.nc.Close()
	return nil
}

// growDuplicates makes the stream's duplicate window w, with
// Options.Create; without, it logs that the window is too short.
func (s *Store) growDuplicates(w time.Duration) {
	have := time.Duration(s.duplicates.Load())
	if !s.opts.Create {
		s.log.Error("jetstream spool: the stream's duplicate window is shorter than async.dedupe_window, and create is false: a delivered message's key is recognised only within the stream's window",
			"stream", s.stream, "duplicates", have.String(), "dedupe_window", w.String())
		return
	}
	ctx, cancel := s.ctx()
	defer cancel()
	info, err := s.str.Info(ctx)
	if err == nil {
		cfg := info.Config
		cfg.Duplicates = max(cfg.Duplicates, w)
		_, err = s.js.UpdateStream(ctx, cfg)
	}
	if err != nil {
		s.log.Error("jetstream spool: cannot make the stream's duplicate window as long as async.dedupe_window: a delivered message's key is recognised only within the stream's window",
			"stream", s.stream, "duplicates", have.String(), "dedupe_window", w.String(), "error", err)
		return
	}
	s.duplicates.Store(int64(w))
}

// routeOptions returns route's options.
func (s *Store) routeOptions(route string) RouteOptions {
	if m := s.routes.Load(); m != nil {
		return (*m)[route]
	}
	return RouteOptions{}
}

// SetRoutes replaces Options.Routes on an open store: a reload applies
// async.ordering, async.max_messages and async.dedupe_window this way. A
// route whose FIFO setting changed has its consumer updated on its next
// use. A dedupe window longer than the stream's duplicate window makes
// the stream's longer with Options.Create; without, it is logged, and a
// repeat of a delivered message's key is recognised only within the
// stream's window.
func (s *Store) SetRoutes(routes map[string]RouteOptions) {
	routes = maps.Clone(routes)
	if w := maxDedupeWindow(routes); w > time.Duration(s.duplicates.Load()) {
		s.growDuplicates(w)
	}
	old := s.routes.Swap(&routes)
	s.mu.Lock()
	defer s.mu.Unlock()
	for route := range s.consumers {
		var was RouteOptions
		if old != nil {
			was = (*old)[route]
		}
		if was.FIFO != routes[route].FIFO {
			delete(s.consumers, route)
		}
	}
}
