package jsstore

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sidecar-proxy/sidecar/spool"
)

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
