package jsstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
)

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
	routes := maps.Clone(opts.Routes)
	s.routes.Store(&routes)
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
	s.duplicates.Store(int64(str.CachedInfo().Config.Duplicates))
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
	for route := range *s.routes.Load() {
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
	if have.Duplicates < want.Duplicates {
		// Only the stream's window grows past the default, for
		// async.dedupe_window.
		if !s.opts.Create {
			return nil, fmt.Errorf("jetstream: stream %s: the duplicate window is %v, shorter than the largest async.dedupe_window %v; raise it, or set create: true", name, have.Duplicates, want.Duplicates)
		}
		have.Duplicates = want.Duplicates
		if str, err = s.js.UpdateStream(ctx, have); err != nil {
			return nil, fmt.Errorf("jetstream: update the duplicate window of stream %s: %w", name, err)
		}
		have = str.CachedInfo().Config
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
		Duplicates:  max(defaultDuplicates, maxDedupeWindow(s.opts.Routes)),
	}
}

// defaultDuplicates is the streams' duplicate window when no route's
// dedupe window needs a longer one.
const defaultDuplicates = 2 * time.Minute

// maxDedupeWindow is the longest RouteOptions.DedupeWindow of routes.
func maxDedupeWindow(routes map[string]RouteOptions) time.Duration {
	var w time.Duration
	for _, r := range routes {
		w = max(w, r.DedupeWindow)
	}
	return w
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
	if s.routeOptions(route).FIFO {
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
