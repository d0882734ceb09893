package jsstore

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
)

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
