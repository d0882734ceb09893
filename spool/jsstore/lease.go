package jsstore

import (
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
