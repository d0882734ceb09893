package jsstore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
)

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
