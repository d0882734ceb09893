package jsstore

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
)

// Options configures Open. Only URL is required.
type Options struct {
	// URL lists the NATS servers, comma separated.
	URL string
	// Stream is the stream's name; empty means SIDECAR_SPOOL.
	Stream string
	// Replicas is the stream's replica count; 0 means 1.
	Replicas int
	// Create makes the stream if it is missing (and updates its limits if
	// they differ); false only finds it, and Open fails if it is missing.
	Create bool
	// MaxMessages and MaxBytes bound the pending messages (the stream) and,
	// separately, the dead messages (the dead-letter stream); 0 means no
	// bound.
	MaxMessages int64
	MaxBytes    int64
	// Routes holds per-route delivery settings; a route not listed is
	// delivered without ordering.
	Routes map[string]RouteOptions
	// AckWait is how long the server waits for a leased message to be
	// settled after the sidecar that leased it stops answering (a crash)
	// before handing it out again; 0 means 30s. A live store extends its
	// leases every AckWait/3.
	AckWait time.Duration
	// MaxLease bounds how long a store extends one lease: a lease older
	// than MaxLease is forgotten (no longer extended), and the server hands
	// the message out again AckWait later. It is a backstop against a
	// delivery that is never settled; 0 means 5 minutes. It should exceed
	// the longest delivery attempt.
	MaxLease time.Duration
	// ConnectTimeout bounds the first connection; 0 means 5s.
	ConnectTimeout time.Duration
	// RequestTimeout bounds each request to the server: a publish's
	// acknowledgement, a lookup, an ack; 0 means 5s.
	RequestTimeout time.Duration
	// CredsFile is a NATS credentials file; NKeyFile an NKey seed file
	// (used if CredsFile is empty); empty means none.
	CredsFile string
	NKeyFile  string
	// User and Password, and Token, authenticate; empty means none.
	User     string
	Password string
	Token    string
	// TLS configures the connection's TLS.
	TLS TLS
	// Now returns the current time, used for message IDs and Arrived; nil
	// means time.Now.
	Now func() time.Time
	// Logger receives connection events and warnings; nil discards them.
	Logger *slog.Logger
}

// RouteOptions configures one route's consumer.
type RouteOptions struct {
	// FIFO hands out one message of the route at a time, in order: the
	// consumer's MaxAckPending is 1.
	FIFO bool
	// MaxMessages bounds the route's pending messages (its consumer's
	// pending and unacknowledged counts); over it Append returns
	// spool.ErrFull. 0 means no bound of its own. The count is read from
	// the server at most every routeCountTTL and counted up locally in
	// between, so sidecars sharing the stream can overshoot it by what the
	// others append within that time.
	MaxMessages int64
}

// routeCountTTL is how long a route's pending count read from the server
// is used, counted up by this store's appends, before it is read again.
const routeCountTTL = 250 * time.Millisecond

// routeCount is a route's pending count as last read, plus appends since.
type routeCount struct {
	n  int64
	at time.Time
}

// DefaultStream is the stream's name when Options.Stream is empty.
const DefaultStream = "SIDECAR_SPOOL"

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

// maxRetries bounds the retries table; beyond it entries are dropped
// (the server keeps the due times; only the attempt count kept in memory
// is lost).
const maxRetries = 100_000

var (
	_ spool.Store   = (*Store)(nil)
	_ spool.Checker = (*Store)(nil)
)

// lease is a message handed out by Next and not settled yet.
type lease struct {
	msg      jetstream.Msg
	seq      uint64
	route    string
	attempts int
	at       time.Time // due time from RetryLater; zero if none
	since    time.Time // when Next took it (wall clock, not Options.Now)

	// mu orders the lease keeper's InProgress against a settlement:
	// settling is set under mu before a settlement is sent, and the
	// keeper sends InProgress only under mu with settling false, so an
	// extension never lands after the settlement (it would reset a
	// delayed negative acknowledgement to AckWait).
	mu       sync.Mutex
	settling bool
}

// retry is what RetryLater recorded for a pending message.
type retry struct {
	route    string
	at       time.Time
	attempts int
}

// Open connects to NATS and finds (or, with Options.Create, creates) the
// stream. It fails if the server cannot be reached within
// ConnectTimeout, the stream is missing and Create is false, or the
// existing stream's settings conflict with the store's. With Replicas 1 it
// logs a warning about acknowledgements before fsync.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 30 * time.Second
	}
	if opts.MaxLease <= 0 {
		opts.MaxLease = 5 * time.Minute
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if strings.ContainsAny(opts.Stream, ".*> \t") {
		return nil, fmt.Errorf("jetstream: stream name %q may not hold '.', '*', '>' or spaces", opts.Stream)
	}
	no, err := connOptions(&opts, log)
	if err != nil {
		return nil, err
	}
	if opts.TLS.InsecureSkipVerify {
		log.Warn("jetstream spool: tls insecure_skip_verify is on: the NATS server's certificate is not verified")
	}
	nc, err := nats.Connect(opts.URL, no...)
	if err != nil {
		return nil, fmt.Errorf("jetstream: connect to %s: %w", redactURLs(opts.URL), err)
	}
	s := &Store{
		opts:      opts,
		stream:    opts.Stream,
		dead:      opts.Stream + DeadSuffix,
		nc:        nc,
		now:       opts.Now,
		log:       log,
		consumers: map[string]jetstream.Consumer{},
		leases:    map[string]*lease{},
		retries:   map[string]retry{},
		held:      map[string]time.Time{},
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	if err := s.setup(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	if opts.Replicas == 1 {
		log.Warn("jetstream spool: replicas 1: JetStream acknowledges a message before it is fsynced, " +
			"so an acknowledged message can be lost if the NATS server's machine loses power; " +
			"run the server with sync_interval: always, or use replicas: 3")
	}
	go s.keepLeases()
	return s, nil
}

// setup finds or creates the stream and the configured routes' consumers.
func (s *Store) setup(ctx context.Context) error {
	js, err := jetstream.New(s.nc, jetstream.WithDefaultTimeout(s.opts.RequestTimeout))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	s.js = js
	ctx, cancel := context.WithTimeout(ctx, 4*s.opts.RequestTimeout)
	defer cancel()
	str, err := s.ensureStream(ctx, s.streamConfig(), 0)
	if err != nil {
		return err
	}
	// A dead letter is the pending message plus a few headers: the
	// dead-letter stream must take whatever the stream took.
	minSize := int32(-1)
	if n := str.CachedInfo().Config.MaxMsgSize; n > 0 {
		minSize = n + deadHeaderRoom
	}
	dstr, err := s.ensureStream(ctx, s.deadStreamConfig(), minSize)
	if err != nil {
		return err
	}
	s.dstr = dstr
	s.str = str
	if err := s.moveOldDeadLetters(ctx); err != nil {
		return err
	}
	if str.CachedInfo().Config.AllowDirect {
		s.log.Info("jetstream spool: the stream allows direct gets; lookups use them")
	}
	// Routes with consumers from earlier runs, then the configured ones.
	names := str.ConsumerNames(ctx)
	for name := range names.Name() {
		if tok, ok := strings.CutPrefix(name, consumerPfx); ok {
			if route, ok := parseRouteToken(tok); ok {
				if _, err := s.consumer(ctx, route); err != nil {
					return err
				}
			}
		}
	}
	if err := names.Err(); err != nil {
		return fmt.Errorf("jetstream: list consumers of %s: %w", s.stream, err)
	}
	for route := range s.opts.Routes {
		if _, err := s.consumer(ctx, route); err != nil {
			return err
		}
	}
	return nil
}

// moveOldDeadLetters moves dead letters that an earlier version kept in
// the stream itself (subjects "<STREAM>.<id>.dead.<route>") to the
// dead-letter stream: each is published there, then deleted.
func (s *Store) moveOldDeadLetters(ctx context.Context) error {
	info, err := s.str.Info(ctx, jetstream.WithSubjectFilter(s.stream+".*."+stateDead+".*"))
	if err != nil {
		return fmt.Errorf("jetstream: stream %s: look for dead letters of an earlier version: %w", s.stream, err)
	}
	moved := 0
	for subj := range info.State.Subjects {
		sub, ok := parseSubject(s.stream, subj)
		if !ok {
			continue
		}
		for {
			raw, err := s.str.GetLastMsgForSubject(ctx, subj)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return fmt.Errorf("jetstream: stream %s: read the dead letter %s of an earlier version: %w", s.stream, subj, err)
			}
			msg := nats.NewMsg(s.subject(sub.id, spool.Dead, sub.route))
			msg.Header.Set(hdrAttempts, raw.Header.Get(hdrAttempts))
			msg.Header.Set(hdrDeadReason, raw.Header.Get(hdrDeadReason))
			msg.Data = raw.Data
			if err := s.republish(ctx, msg, "dead", sub.id); err != nil {
				return fmt.Errorf("jetstream: move the dead letter %s of an earlier version to stream %s: %w", sub.id, s.dead, err)
			}
			if err := s.str.DeleteMsg(ctx, raw.Sequence); err != nil {
				return fmt.Errorf("jetstream: stream %s: delete the moved dead letter %s: %w", s.stream, sub.id, err)
			}
			moved++
		}
	}
	if moved > 0 {
		s.log.Info("jetstream spool: moved dead letters of an earlier version to the dead-letter stream", "stream", s.dead, "moved", moved)
	}
	return nil
}

// ensureStream finds the stream want names, checks that its settings do
// not conflict with want, and updates its limits to want's with
// Options.Create; it creates a missing stream with Options.Create and
// fails without. minSize is the smallest MaxMsgSize the stream may have:
// 0 for any, -1 for none (unbounded only).
func (s *Store) ensureStream(ctx context.Context, want jetstream.StreamConfig, minSize int32) (jetstream.Stream, error) {
	name := want.Name
	str, err := s.js.Stream(ctx, name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && s.opts.Create:
		str, err = s.js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("jetstream: create stream %s: %w", name, err)
		}
		return str, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("jetstream: stream %s does not exist and create is false", name)
	case err != nil:
		return nil, fmt.Errorf("jetstream: find stream %s: %w", name, err)
	}
	have := str.CachedInfo().Config
	if err := s.conflicts(have, want, minSize); err != nil {
		return nil, fmt.Errorf("jetstream: stream %s: %w", name, err)
	}
	if have.MaxMsgs != want.MaxMsgs || have.MaxBytes != want.MaxBytes {
		if !s.opts.Create {
			s.log.Warn("jetstream spool: the stream's limits differ from the configuration; create is false, so they are kept",
				"stream", name, "max_msgs", have.MaxMsgs, "max_bytes", have.MaxBytes)
		} else {
			have.MaxMsgs, have.MaxBytes = want.MaxMsgs, want.MaxBytes
			if str, err = s.js.UpdateStream(ctx, have); err != nil {
				return nil, fmt.Errorf("jetstream: update the limits of stream %s: %w", name, err)
			}
		}
	}
	return str, nil
}

func limit(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

// deadStreamConfig is the dead-letter stream's: limits retention (a dead
// letter stays until replayed, deleted or purged), refusing new messages
// when full, bounded by the same limits as the pending stream.
func (s *Store) deadStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        s.dead,
		Description: "sidecar spool: dead letters of async requests",
		Subjects:    []string{s.dead + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    s.opts.Replicas,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     limit(s.opts.MaxMessages),
		MaxBytes:    limit(s.opts.MaxBytes),
		Duplicates:  2 * time.Minute,
		// One dead letter per message: a copy left by a DeadLetter whose
		// delete of the pending message failed is replaced by the next.
		MaxMsgsPerSubject: 1,
	}
}

func (s *Store) streamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        s.stream,
		Description: "sidecar spool: async requests waiting for delivery",
		Subjects:    []string{s.stream + ".>"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    s.opts.Replicas,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     limit(s.opts.MaxMessages),
		MaxBytes:    limit(s.opts.MaxBytes),
		Duplicates:  2 * time.Minute,
	}
}

// conflicts reports settings of an existing stream the store cannot work
// with.
func (s *Store) conflicts(have, want jetstream.StreamConfig, minSize int32) error {
	var bad []string
	if have.Retention != want.Retention {
		bad = append(bad, fmt.Sprintf("retention is %v, want %v", have.Retention, want.Retention))
	}
	if have.Discard != want.Discard {
		bad = append(bad, fmt.Sprintf("discard is %v, want %v (a full stream must refuse, not drop)", have.Discard, want.Discard))
	}
	if !slices.Contains(have.Subjects, want.Subjects[0]) {
		bad = append(bad, fmt.Sprintf("subjects are %v, want %v", have.Subjects, want.Subjects))
	}
	if have.Storage != want.Storage {
		bad = append(bad, fmt.Sprintf("storage is %v, want %v", have.Storage, want.Storage))
	}
	if have.Replicas != want.Replicas {
		bad = append(bad, fmt.Sprintf("replicas are %d, want %d", have.Replicas, want.Replicas))
	}
	if have.MaxAge > 0 {
		bad = append(bad, fmt.Sprintf("max_age is %v, want none (expiry would drop messages)", have.MaxAge))
	}
	if have.DenyDelete {
		bad = append(bad, "deny_delete is set (settling a message deletes it)")
	}
	if have.DenyPurge {
		bad = append(bad, "deny_purge is set (the admin API purges)")
	}
	if need := 2 * s.opts.RequestTimeout; have.Duplicates < need {
		bad = append(bad, fmt.Sprintf("the duplicate window is %v, want at least %v (a publish retried after a lost acknowledgement must be recognised)", have.Duplicates, need))
	}
	switch {
	case have.MaxMsgSize <= 0 || minSize == 0:
	case minSize < 0:
		bad = append(bad, fmt.Sprintf("max_msg_size is %d, want none (the stream has none, so a dead letter could not be stored)", have.MaxMsgSize))
	case have.MaxMsgSize < minSize:
		bad = append(bad, fmt.Sprintf("max_msg_size is %d, want at least %d (the stream's plus room for a dead letter's headers)", have.MaxMsgSize, minSize))
	}
	if len(bad) > 0 {
		return fmt.Errorf("its configuration conflicts: %s", strings.Join(bad, "; "))
	}
	return nil
}

// consumer returns route's consumer, creating or updating it on first use.
func (s *Store) consumer(ctx context.Context, route string) (jetstream.Consumer, error) {
	s.mu.Lock()
	c, ok := s.consumers[route]
	s.mu.Unlock()
	if ok {
		return c, nil
	}
	tok := routeToken(route)
	cfg := jetstream.ConsumerConfig{
		Durable:       consumerPfx + tok,
		Description:   "sidecar spool route " + route,
		FilterSubject: s.stream + ".*." + statePending + "." + tok,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.opts.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: -1,
	}
	if s.opts.Routes[route].FIFO {
		cfg.MaxAckPending = 1
	}
	c, err := s.str.CreateOrUpdateConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("jetstream: consumer of route %s: %w", route, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if have, ok := s.consumers[route]; ok {
		return have, nil
	}
	s.consumers[route] = c
	return c, nil
}

// deadCounter returns the route's consumer on the dead-letter stream. It
// never delivers anything: its NumPending is the number of the route's
// dead letters, which the server counts without listing them.
func (s *Store) deadCounter(ctx context.Context, route string) (jetstream.Consumer, error) {
	s.mu.Lock()
	c, ok := s.deadCount[route]
	s.mu.Unlock()
	if ok {
		return c, nil
	}
	tok := routeToken(route)
	c, err := s.dstr.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       consumerPfx + "count_" + tok,
		Description:   "sidecar spool: counts the dead letters of route " + route,
		FilterSubject: s.dead + ".*." + stateDead + "." + tok,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckNonePolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: dead-letter counter of route %s: %w", route, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deadCount == nil {
		s.deadCount = map[string]jetstream.Consumer{}
	}
	s.deadCount[route] = c
	return c, nil
}

// keepLeases marks leased messages in progress every AckWait/3, so that
// the server does not hand them out again while they are being delivered.
// A lease older than MaxLease is forgotten instead: the server hands its
// message out again after AckWait.
func (s *Store) keepLeases() {
	defer close(s.done)
	t := time.NewTicker(s.opts.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		var expired []string
		s.mu.Lock()
		keep := make([]*lease, 0, len(s.leases))
		for id, l := range s.leases {
			if now.Sub(l.since) > s.opts.MaxLease {
				delete(s.leases, id)
				expired = append(expired, id)
				continue
			}
			keep = append(keep, l)
		}
		s.mu.Unlock()
		for _, id := range expired {
			s.log.Warn("jetstream spool: a lease outlived max_lease and is no longer extended; the message will be handed out again",
				"id", id, "max_lease", s.opts.MaxLease)
		}
		for _, l := range keep {
			l.mu.Lock()
			var err error
			if !l.settling {
				err = l.msg.InProgress()
			}
			l.mu.Unlock()
			if err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
				s.log.Debug("jetstream spool: extending a lease failed", "error", err)
			}
		}
	}
}

// takeLease removes id's lease from the table and marks it settling, so
// the lease keeper no longer extends it; nil if id is not leased. Every
// settlement takes the lease first, so that a settlement that fails
// (disconnected, or refused) leaves no lease behind: the server hands the
// message out again after AckWait.
func (s *Store) takeLease(id string) *lease {
	s.mu.Lock()
	l, ok := s.leases[id]
	delete(s.leases, id)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	l.mu.Lock()
	l.settling = true
	l.mu.Unlock()
	return l
}

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

// newID returns a time-ordered unique ID: 16 hex digits of Unix
// nanoseconds, strictly increasing within the store, and 8 random ones.
func (s *Store) newID() string {
	s.mu.Lock()
	key := max(uint64(max(s.now().UnixNano(), 1)), s.lastKey+1)
	s.lastKey = key
	s.mu.Unlock()
	return fmt.Sprintf("%016x%08x", key, rand.Uint32())
}

// Append implements spool.Store. See the package documentation.
func (s *Store) Append(ctx context.Context, m *spool.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.checkOpen(); err != nil {
		return err
	}
	if m.Arrived.IsZero() {
		m.Arrived = s.now()
	}
	given := m.ID != ""
	id := m.ID
	if !given {
		id = s.newID()
	} else if _, err := s.find(id); err == nil {
		return spool.ErrExists
	} else if !errors.Is(err, spool.ErrNotFound) {
		return err
	}
	c, err := s.consumer(ctx, m.Route)
	if err != nil {
		return err
	}
	if err := s.checkRouteLimit(ctx, m.Route, c); err != nil {
		return err
	}
	msg := nats.NewMsg(s.subject(id, spool.Pending, m.Route))
	msg.Header.Set(hdrAttempts, strconv.Itoa(max(m.Attempts, 0)))
	msg.Data = encodeEnvelope(m)
	dup, err := s.publish(ctx, msg, id)
	if err != nil {
		return err
	}
	if dup {
		return spool.ErrExists
	}
	m.ID = id
	s.appends.Add(1)
	if s.opts.Routes[m.Route].MaxMessages > 0 {
		s.mu.Lock()
		if rc, ok := s.counts[m.Route]; ok {
			rc.n++
			s.counts[m.Route] = rc
		}
		s.mu.Unlock()
	}
	return nil
}

// checkRouteLimit returns spool.ErrFull when route has a MaxMessages bound
// and its pending count has reached it.
func (s *Store) checkRouteLimit(ctx context.Context, route string, c jetstream.Consumer) error {
	limit := s.opts.Routes[route].MaxMessages
	if limit <= 0 {
		return nil
	}
	now := time.Now()
	s.mu.Lock()
	rc, ok := s.counts[route]
	s.mu.Unlock()
	if !ok || now.Sub(rc.at) > routeCountTTL {
		ci, err := c.Info(ctx)
		if err != nil {
			return fmt.Errorf("jetstream spool: route %s: consumer info: %w", route, err)
		}
		rc = routeCount{n: int64(ci.NumPending) + int64(ci.NumAckPending), at: now}
		s.mu.Lock()
		if s.counts == nil {
			s.counts = map[string]routeCount{}
		}
		s.counts[route] = rc
		s.mu.Unlock()
	}
	if rc.n >= limit {
		return fmt.Errorf("%w: route %s holds %d pending messages (async.max_messages %d)", spool.ErrFull, route, rc.n, limit)
	}
	return nil
}

// publish publishes msg with Nats-Msg-Id msgID and waits for the stream's
// acknowledgement; it reports whether the stream dropped it as a
// duplicate. A publish whose acknowledgement timed out is retried once with
// the same Nats-Msg-Id: a duplicate then means the first one was stored.
func (s *Store) publish(ctx context.Context, msg *nats.Msg, msgID string) (dup bool, err error) {
	stream := s.stream
	if strings.HasPrefix(msg.Subject, s.dead+".") {
		stream = s.dead
	}
	for try := 0; ; try++ {
		if !s.nc.IsConnected() {
			return false, ErrDisconnected
		}
		pctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
		ack, err := s.js.PublishMsg(pctx, msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(stream), jetstream.WithRetryAttempts(0))
		cancel()
		if err == nil {
			return ack.Duplicate && try == 0, nil
		}
		err = publishError(err)
		timedOut := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
		if !timedOut || try > 0 || ctx.Err() != nil {
			return false, err
		}
	}
}

// republish publishes a copy of message id (its dead letter, or its
// replay) with a random Nats-Msg-Id: the copy must never be taken for a
// duplicate of an earlier copy of the same message, which the server
// would drop while the caller goes on to delete the source. A duplicate
// is an error all the same, so the source is never deleted after one.
func (s *Store) republish(ctx context.Context, msg *nats.Msg, what, id string) error {
	var b [16]byte
	_, _ = crand.Read(b[:]) // never fails
	dup, err := s.publish(ctx, msg, what+"-"+hex.EncodeToString(b[:]))
	if err != nil {
		return err
	}
	if dup {
		return fmt.Errorf("jetstream spool: %s copy of %s dropped by the server as a duplicate; the message is left where it was", what, id)
	}
	return nil
}

// publishError maps the server's refusals to spool errors.
func publishError(err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("%w: %w", spool.ErrTooLarge, err)
	case errors.As(err, &apiErr):
		d := apiErr.Description
		if apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum || strings.Contains(d, "message size exceeds maximum") {
			return fmt.Errorf("%w: %w", spool.ErrTooLarge, err)
		}
		if strings.Contains(d, "maximum messages") || strings.Contains(d, "maximum bytes") ||
			strings.Contains(d, "insufficient resources") || strings.Contains(d, "resource limits exceeded") {
			return fmt.Errorf("%w: %w", spool.ErrFull, err)
		}
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrReconnectBufExceeded), errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return fmt.Errorf("jetstream spool: publish: %w", err)
}

// Next implements spool.Store. For a fifo route whose head was retried by
// this store, now is compared with the head's due time, as the file backend
// does; otherwise due times are the server's (see the package
// documentation).
func (s *Store) Next(route string, now time.Time) (*spool.Message, bool, error) {
	if err := s.checkOpen(); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, false, spool.ErrClosed
	}
	s.nexts.Add(1)
	defer s.nexts.Done()
	at, held := s.held[route]
	hook, wrap := s.hookFetched, s.wrapMsg
	s.mu.Unlock()
	if held && at.After(now) {
		return nil, false, nil
	}
	ctx, cancel := s.ctx()
	defer cancel()
	c, err := s.consumer(ctx, route)
	if err != nil {
		return nil, false, err
	}
	batch, err := c.FetchNoWait(1)
	if err != nil {
		return nil, false, s.fetchError(route, err)
	}
	var jm jetstream.Msg
	for m := range batch.Messages() {
		jm = m
	}
	if err := batch.Error(); err != nil && jm == nil && !errors.Is(err, jetstream.ErrNoMessages) {
		return nil, false, s.fetchError(route, err)
	}
	if jm == nil {
		return nil, false, nil
	}
	if hook != nil {
		hook()
	}
	meta, err := jm.Metadata()
	if err != nil {
		_ = jm.Nak()
		return nil, false, fmt.Errorf("jetstream spool: fetch %s: %w", route, err)
	}
	sub, ok := s.parse(jm.Subject())
	if !ok {
		return nil, false, s.quarantine(jm, route, meta)
	}
	if wrap != nil {
		jm = wrap(jm)
	}
	l := &lease{msg: jm, seq: meta.Sequence.Stream, route: route, since: time.Now()}
	s.mu.Lock()
	if s.closed {
		// Close began during the fetch: hand the message back (Close
		// waits for this call before it closes the connection).
		s.mu.Unlock()
		_ = jm.Nak()
		return nil, false, spool.ErrClosed
	}
	if r, ok := s.retries[sub.id]; ok {
		l.attempts, l.at = r.attempts, r.at
		delete(s.retries, sub.id)
		delete(s.held, r.route)
	} else {
		l.attempts = headerAttempts(jm.Headers()) + int(meta.NumDelivered) - 1
	}
	s.leases[sub.id] = l
	s.mu.Unlock()
	m, err := decodeEnvelope(jm.Data())
	if err != nil {
		// Leased, so DeadLetter or Delete can settle it by sequence.
		return nil, false, &spool.DamagedError{ID: sub.id, Path: jm.Subject(), Offset: int64(l.seq)}
	}
	m.ID, m.Attempts = sub.id, l.attempts
	return m, true, nil
}

// quarantine moves a message of route's pending subjects whose subject
// does not parse (published around the store) to the dead letters, with
// the subject's ID token as its ID, so that it neither blocks the route
// nor is deleted; if that fails it is handed back with a delay.
func (s *Store) quarantine(jm jetstream.Msg, route string, meta *jetstream.MsgMetadata) error {
	subj := jm.Subject()
	id, _, _ := strings.Cut(strings.TrimPrefix(subj, s.stream+"."), ".")
	msg := nats.NewMsg(s.subject(id, spool.Dead, route))
	msg.Header.Set(hdrAttempts, strconv.Itoa(max(int(meta.NumDelivered)-1, 0)))
	msg.Header.Set(hdrDeadReason, "subject "+subj+" does not parse")
	msg.Data = jm.Data()
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.republish(ctx, msg, "dead", id); err != nil {
		_ = jm.NakWithDelay(s.opts.AckWait)
		return fmt.Errorf("jetstream spool: subject %q in stream %s does not parse, and moving it to the dead letters failed: %w", subj, s.stream, err)
	}
	if err := jm.DoubleAck(ctx); err != nil {
		return fmt.Errorf("jetstream spool: subject %q in stream %s does not parse; copied to the dead letters as %q, but removing it failed: %w", subj, s.stream, id, err)
	}
	return fmt.Errorf("jetstream spool: subject %q in stream %s does not parse; moved to the dead letters as %q", subj, s.stream, id)
}

// NextDue returns when the earliest message of route that this store
// retried (RetryLater) becomes due; ok is false if none is waiting. A
// deliverer that found nothing due sleeps until then. It scans the
// store's retried messages, which are held in memory anyway, and drops
// those due more than AckWait ago: another sidecar sharing the stream
// took them.
func (s *Store) NextDue(route string) (at time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneRetriesLocked()
	for _, r := range s.retries {
		if r.route == route && (!ok || r.at.Before(at)) {
			at, ok = r.at, true
		}
	}
	return at, ok
}

// pruneRetriesLocked drops the retries due more than AckWait ago, and
// then, beyond maxRetries, any.
func (s *Store) pruneRetriesLocked() {
	cutoff := s.now().Add(-s.opts.AckWait)
	for id, r := range s.retries {
		if r.at.Before(cutoff) {
			delete(s.retries, id)
		}
	}
	for route, at := range s.held {
		if at.Before(cutoff) {
			delete(s.held, route)
		}
	}
	for id := range s.retries {
		if len(s.retries) <= maxRetries {
			break
		}
		delete(s.retries, id)
	}
}

// fetchError wraps a failed fetch; a consumer deleted behind the store's
// back (a pull request without responders) is forgotten, so the next call
// creates it again.
func (s *Store) fetchError(route string, err error) error {
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, nats.ErrNoResponders) {
		s.mu.Lock()
		delete(s.consumers, route)
		s.mu.Unlock()
	}
	return fmt.Errorf("jetstream spool: fetch %s: %w", route, err)
}

func headerAttempts(h nats.Header) int {
	n, _ := strconv.Atoi(h.Get(hdrAttempts))
	return max(n, 0)
}

// stored is a message read from the stream.
type stored struct {
	subject
	str    jetstream.Stream // the stream that holds it
	seq    uint64
	raw    *jetstream.RawStreamMsg
	msg    *spool.Message // nil if the envelope is damaged
	damage error
}

// find looks id up in the stream, then in the dead-letter stream. While a
// message moves between them (DeadLetter, Replay) both hold it for a
// moment; find returns the pending one.
func (s *Store) find(id string) (*stored, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	raw, err := s.str.GetMsg(ctx, 0, jetstream.WithGetMsgSubject(s.stream+"."+idToken(id)+".>"))
	st, err := s.parseRaw(s.str, raw, err)
	if !errors.Is(err, spool.ErrNotFound) {
		return st, err
	}
	raw, err = s.dstr.GetMsg(ctx, 0, jetstream.WithGetMsgSubject(s.dead+"."+idToken(id)+".>"))
	return s.parseRaw(s.dstr, raw, err)
}

// load reads the message in state on a literal subject.
func (s *Store) load(state spool.State, subj string) (*stored, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	_, str := s.streamOf(state)
	raw, err := str.GetLastMsgForSubject(ctx, subj)
	return s.parseRaw(str, raw, err)
}

func (s *Store) parseRaw(str jetstream.Stream, raw *jetstream.RawStreamMsg, err error) (*stored, error) {
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, spool.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("jetstream spool: lookup: %w", err)
	}
	sub, ok := s.parse(raw.Subject)
	if !ok {
		return nil, spool.ErrNotFound
	}
	st := &stored{subject: sub, str: str, seq: raw.Sequence, raw: raw}
	st.msg, st.damage = decodeEnvelope(raw.Data)
	if st.msg != nil {
		st.msg.ID = sub.id
	}
	return st, nil
}

// info returns st's metadata, and its message with the attempts set.
func (s *Store) info(st *stored) (*spool.Message, spool.Info) {
	in := spool.Info{
		ID:         st.id,
		Route:      st.route,
		State:      st.state,
		Size:       int64(len(st.raw.Subject) + len(st.raw.Data) + headerSize(st.raw.Header)),
		Attempts:   headerAttempts(st.raw.Header),
		DeadReason: st.raw.Header.Get(hdrDeadReason),
	}
	if st.state == spool.Pending {
		s.mu.Lock()
		if l, ok := s.leases[st.id]; ok {
			in.Leased, in.Attempts, in.NextAttempt = true, l.attempts, l.at
		} else if r, ok := s.retries[st.id]; ok {
			in.Attempts, in.NextAttempt = r.attempts, r.at
		}
		s.mu.Unlock()
	}
	if st.msg != nil {
		in.Arrived = st.msg.Arrived
		st.msg.Attempts = in.Attempts
	}
	return st.msg, in
}

func headerSize(h nats.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// Get implements spool.Store. A message whose envelope does not decode
// gives a *spool.DamagedError.
func (s *Store) Get(id string) (*spool.Message, spool.Info, error) {
	if err := s.checkOpen(); err != nil {
		return nil, spool.Info{}, err
	}
	st, err := s.find(id)
	if err != nil {
		return nil, spool.Info{}, err
	}
	m, in := s.info(st)
	if st.damage != nil {
		return nil, in, &spool.DamagedError{ID: id, Path: st.raw.Subject, Offset: int64(st.seq)}
	}
	return m, in, nil
}

// List implements spool.Store. A limit of 0 or less means no limit.
func (s *Store) List(route string, state spool.State, after string, limit int) ([]spool.Info, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	subjects, err := s.subjects(route, state)
	if err != nil {
		return nil, err
	}
	var page []subject
	bySubj := map[string]string{}
	for subj := range subjects {
		if sub, ok := s.parse(subj); ok && sub.id > after {
			page = append(page, sub)
			bySubj[sub.id] = subj
		}
	}
	slices.SortFunc(page, func(a, b subject) int { return cmp.Compare(a.id, b.id) })
	if limit > 0 && len(page) > limit {
		page = page[:limit]
	}
	out := make([]spool.Info, 0, len(page))
	for _, sub := range page {
		st, err := s.load(state, bySubj[sub.id])
		if errors.Is(err, spool.ErrNotFound) {
			continue // settled since the listing
		}
		if err != nil {
			return nil, err
		}
		_, in := s.info(st)
		out = append(out, in)
	}
	return out, nil
}

// filter is the subject filter of route ("" for all) in state.
func (s *Store) filter(route string, state spool.State) string {
	r := "*"
	if route != "" {
		r = routeToken(route)
	}
	name, _ := s.streamOf(state)
	return name + ".*." + stateToken(state) + "." + r
}

// subjects lists the subjects of route's messages in state, with counts.
func (s *Store) subjects(route string, state spool.State) (map[string]uint64, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	_, str := s.streamOf(state)
	info, err := str.Info(ctx, jetstream.WithSubjectFilter(s.filter(route, state)))
	if err != nil {
		return nil, fmt.Errorf("jetstream spool: list subjects: %w", err)
	}
	return info.State.Subjects, nil
}

// Ack implements spool.Store: a leased message is acknowledged and the
// server's confirmation awaited; any other is deleted.
func (s *Store) Ack(id string) error {
	l := s.takeLease(id)
	if err := s.checkOpen(); err != nil {
		return err
	}
	s.forget(id)
	if l != nil {
		ctx, cancel := s.ctx()
		defer cancel()
		if err := l.msg.DoubleAck(ctx); err != nil {
			return fmt.Errorf("jetstream spool: ack %s: %w", id, err)
		}
		return nil
	}
	return s.Delete(id)
}

// RetryLater implements spool.Store. The message must be leased by this
// store; see the package documentation.
func (s *Store) RetryLater(id string, at time.Time, attempts int) error {
	l := s.takeLease(id)
	if err := s.checkOpen(); err != nil {
		return err
	}
	if l == nil {
		st, err := s.find(id)
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: message is %v and not leased by this store", spool.ErrState, st.state)
	}
	if err := l.msg.NakWithDelay(max(at.Sub(s.now()), 0)); err != nil {
		return fmt.Errorf("jetstream spool: retry %s: %w", id, err)
	}
	s.mu.Lock()
	if len(s.retries) >= maxRetries {
		s.pruneRetriesLocked()
	}
	s.retries[id] = retry{route: l.route, at: at, attempts: max(attempts, 0)}
	if s.opts.Routes[l.route].FIFO {
		s.held[l.route] = at
	}
	s.mu.Unlock()
	return nil
}

// DeadLetter implements spool.Store; the message must be pending. The
// attempt count is kept.
func (s *Store) DeadLetter(id string, reason string) error {
	l := s.takeLease(id)
	if err := s.checkOpen(); err != nil {
		return err
	}
	st, err := s.find(id)
	if err != nil {
		return err
	}
	if st.state != spool.Pending {
		return fmt.Errorf("%w: message is %v, want pending", spool.ErrState, st.state)
	}
	_, in := s.info(st)
	if l != nil {
		in.Attempts = l.attempts
	}
	msg := nats.NewMsg(s.subject(id, spool.Dead, st.route))
	msg.Header.Set(hdrAttempts, strconv.Itoa(in.Attempts))
	if len(reason) > maxReason {
		reason = strings.ToValidUTF8(reason[:maxReason], "")
	}
	msg.Header.Set(hdrDeadReason, reason)
	msg.Data = st.raw.Data
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.republish(ctx, msg, "dead", id); err != nil {
		return err
	}
	return s.remove(st)
}

// remove deletes st's stream message and forgets its lease and retry.
func (s *Store) remove(st *stored) error {
	id := st.id
	s.forget(id)
	ctx, cancel := s.ctx()
	defer cancel()
	if err := st.str.DeleteMsg(ctx, st.seq); err != nil {
		if strings.Contains(err.Error(), "not found") {
			return spool.ErrNotFound
		}
		return fmt.Errorf("jetstream spool: delete %s: %w", id, err)
	}
	return nil
}

// forget drops id's lease and retry, and releases its route if id is a
// held fifo head.
func (s *Store) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.leases, id)
	if r, ok := s.retries[id]; ok {
		delete(s.retries, id)
		delete(s.held, r.route)
	}
}

// Replay implements spool.Store; the message must be dead. It joins the
// end of its route's queue with attempts 0.
func (s *Store) Replay(id string) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	st, err := s.find(id)
	if err != nil {
		return err
	}
	if st.state != spool.Dead {
		return fmt.Errorf("%w: message is %v, want dead", spool.ErrState, st.state)
	}
	msg := nats.NewMsg(s.subject(id, spool.Pending, st.route))
	msg.Header.Set(hdrAttempts, "0")
	msg.Data = st.raw.Data
	ctx, cancel := s.ctx()
	defer cancel()
	if _, err := s.consumer(ctx, st.route); err != nil {
		return err
	}
	if err := s.republish(ctx, msg, "replay", id); err != nil {
		return err
	}
	return s.remove(st)
}

// Delete implements spool.Store.
func (s *Store) Delete(id string) error {
	s.takeLease(id)
	if err := s.checkOpen(); err != nil {
		return err
	}
	st, err := s.find(id)
	if err != nil {
		return err
	}
	return s.remove(st)
}

// Purge implements spool.Store with one purge request filtered on the
// route's (or all routes') subjects in state.
func (s *Store) Purge(route string, state spool.State) (int, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	req, _ := json.Marshal(struct {
		Filter string `json:"filter"`
	}{s.filter(route, state)})
	name, _ := s.streamOf(state)
	resp, err := s.nc.Request("$JS.API.STREAM.PURGE."+name, req, s.opts.RequestTimeout)
	if err != nil {
		return 0, fmt.Errorf("jetstream spool: purge: %w", err)
	}
	var out struct {
		Purged uint64              `json:"purged"`
		Error  *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &out); err != nil {
		return 0, fmt.Errorf("jetstream spool: purge: %w", err)
	}
	if out.Error != nil {
		return 0, fmt.Errorf("jetstream spool: purge: %w", out.Error)
	}
	if state == spool.Pending {
		s.mu.Lock()
		for id, l := range s.leases {
			if route == "" || l.route == route {
				delete(s.leases, id)
			}
		}
		for id, r := range s.retries {
			if route == "" || r.route == route {
				delete(s.retries, id)
				delete(s.held, r.route)
			}
		}
		s.mu.Unlock()
	}
	return int(out.Purged), nil
}

// Stats implements spool.Store. Errors from the server are logged and
// leave the figures they would have filled at zero. Of the file backend's
// counters only Appends is kept.
func (s *Store) Stats() spool.Stats {
	st := spool.Stats{Routes: map[string]spool.RouteStats{}, Appends: s.appends.Load()}
	if s.checkOpen() != nil {
		return st
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.opts.RequestTimeout)
	defer cancel()
	for i, str := range []jetstream.Stream{s.str, s.dstr} {
		if info, err := str.Info(ctx); err != nil {
			s.log.Warn("jetstream spool: stream info", "error", err)
		} else {
			st.Total.Bytes += int64(info.State.Bytes)
			if i == 1 {
				st.Total.Dead = int64(info.State.Msgs)
			}
		}
	}
	s.mu.Lock()
	consumers := make(map[string]jetstream.Consumer, len(s.consumers))
	for r, c := range s.consumers {
		consumers[r] = c
	}
	s.mu.Unlock()
	// Dead letters per route, counted by the server (never listed: a
	// scrape stays cheap however many there are).
	for route := range consumers {
		dc, err := s.deadCounter(ctx, route)
		if err != nil {
			s.log.Warn("jetstream spool: dead-letter counter", "route", route, "error", err)
			continue
		}
		ci, err := dc.Info(ctx)
		if err != nil {
			s.log.Warn("jetstream spool: dead-letter counter info", "route", route, "error", err)
			continue
		}
		if n := int64(ci.NumPending); n > 0 {
			rs := st.Routes[route]
			rs.Dead = n
			st.Routes[route] = rs
		}
	}
	for route, c := range consumers {
		ci, err := c.Info(ctx)
		if err != nil {
			s.log.Warn("jetstream spool: consumer info", "route", route, "error", err)
			continue
		}
		n := int64(ci.NumPending) + int64(ci.NumAckPending)
		if n == 0 {
			continue
		}
		rs := st.Routes[route]
		rs.Pending = n
		if first, err := s.str.GetMsg(ctx, 0, jetstream.WithGetMsgSubject(s.filter(route, spool.Pending))); err == nil {
			if m, err := decodeEnvelope(first.Data); err == nil {
				rs.Oldest = m.Arrived
			}
		}
		st.Routes[route] = rs
		st.Total.Pending += n
		if !rs.Oldest.IsZero() && (st.Total.Oldest.IsZero() || rs.Oldest.Before(st.Total.Oldest)) {
			st.Total.Oldest = rs.Oldest
		}
	}
	return st
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
