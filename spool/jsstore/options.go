package jsstore

import (
	"log/slog"
	"time"
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
	// DedupeWindow de-duplicates the route's AppendOnce calls by
	// idempotency key, through the stream's duplicate window (see the
	// package documentation); 0 means off.
	DedupeWindow time.Duration
}

// DefaultStream is the stream's name when Options.Stream is empty.
const DefaultStream = "SIDECAR_SPOOL"
