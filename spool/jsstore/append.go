package jsstore

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
)

// routeCountTTL is how long a route's pending count read from the server
// is used, counted up by this store's appends, before it is read again.
const routeCountTTL = 250 * time.Millisecond

// routeCount is a route's pending count as last read, plus appends since.
type routeCount struct {
	n  int64
	at time.Time
}

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
	return s.append(ctx, m, false)
}

// AppendOnce implements spool.Deduper: Append, de-duplicated by m's route
// and idempotency key (see the package documentation).
func (s *Store) AppendOnce(ctx context.Context, m *spool.Message) error {
	return s.append(ctx, m, true)
}

func (s *Store) append(ctx context.Context, m *spool.Message, once bool) error {
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
	dedupe := !given && once && m.IdempotencyKey != "" && s.routeOptions(m.Route).DedupeWindow > 0
	switch {
	case dedupe:
		// The ID, and so the Nats-Msg-Id, is the key's: a message of
		// the key still stored, or published within the stream's
		// duplicate window, is the one to answer with.
		id = dedupeID(m.Route, m.IdempotencyKey)
		if _, err := s.find(id); err == nil {
			m.ID = id
			return spool.ErrDuplicate
		} else if !errors.Is(err, spool.ErrNotFound) {
			return err
		}
	case !given:
		id = s.newID()
	}
	if given {
		if _, err := s.find(id); err == nil {
			return spool.ErrExists
		} else if !errors.Is(err, spool.ErrNotFound) {
			return err
		}
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
		return unconfirmed(err)
	}
	if dup && dedupe {
		m.ID = id
		return spool.ErrDuplicate
	}
	if dup {
		return spool.ErrExists
	}
	m.ID = id
	s.appends.Add(1)
	if s.routeOptions(m.Route).MaxMessages > 0 {
		s.mu.Lock()
		if rc, ok := s.counts[m.Route]; ok {
			rc.n++
			s.counts[m.Route] = rc
		}
		s.mu.Unlock()
	}
	return nil
}

// dedupeID is the ID of a de-duplicated message of route with key: 32
// hex digits of SHA-256 of route, a NUL and key. It is not the 24 digits
// of a generated ID, so the two never meet.
func dedupeID(route, key string) string {
	h := sha256.New()
	h.Write([]byte(route))
	h.Write([]byte{0})
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// Duplicate implements spool.Deduper: it reports the message of route
// with key if it is still stored (pending or dead). A message already
// delivered is not reported; an Append of its key within the stream's
// duplicate window still returns spool.ErrDuplicate.
func (s *Store) Duplicate(ctx context.Context, route, key string) (string, bool, error) {
	if s.routeOptions(route).DedupeWindow <= 0 {
		return "", false, nil
	}
	id := dedupeID(route, key)
	if _, err := s.find(id); err != nil {
		if errors.Is(err, spool.ErrNotFound) {
			err = nil
		}
		return "", false, err
	}
	return id, true, nil
}

// checkRouteLimit returns spool.ErrFull when route has a MaxMessages bound
// and its pending count has reached it.
func (s *Store) checkRouteLimit(ctx context.Context, route string, c jetstream.Consumer) error {
	limit := s.routeOptions(route).MaxMessages
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
// unconfirmed marks the error of a publish that timed out: the server
// may have stored the message all the same, as the file spool's
// ErrUnconfirmed says (docs/spool.md, "A disk that stalls").
func unconfirmed(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return fmt.Errorf("%w: %w", spool.ErrUnconfirmed, err)
	}
	return err
}

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
