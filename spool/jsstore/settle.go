package jsstore

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
)

// retry is what RetryLater recorded for a pending message.
type retry struct {
	route    string
	at       time.Time
	attempts int
}

// maxRetries bounds the retries table; beyond it entries are dropped
// (the server keeps the due times; only the attempt count kept in memory
// is lost).
const maxRetries = 100_000

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
	if s.routeOptions(l.route).FIFO {
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
