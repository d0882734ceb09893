package spool

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Message is one HTTP request to deliver later.
type Message struct {
	// ID identifies the message. Append assigns a time-ordered, unique ID
	// (16 hex digits of Unix nanoseconds and 8 random hex digits) if it is
	// empty.
	ID string
	// Route is the name of the route that delivers the message.
	Route string
	// Method is the HTTP method.
	Method string
	// Target is the request's path and query.
	Target string
	// Header holds the request's end-to-end headers; the caller has removed
	// hop-by-hop headers already.
	Header http.Header
	// Body is the request body.
	Body []byte
	// IdempotencyKey is the key sent with every delivery attempt.
	IdempotencyKey string
	// TraceParent is the W3C traceparent of the request that was spooled.
	TraceParent string
	// Arrived is when the request reached the proxy.
	Arrived time.Time
	// Attempts is the number of delivery attempts made so far.
	Attempts int
}

// State is the state of a stored, unsettled message.
type State uint8

const (
	// Pending messages wait for delivery.
	Pending State = iota
	// Dead messages gave up; they are kept until replayed, deleted or purged.
	Dead
)

// String returns "pending" or "dead".
func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Dead:
		return "dead"
	}
	return "unknown"
}

// Info is the metadata of a stored message, without its body.
type Info struct {
	ID    string
	Route string
	State State
	// Size is the message's encoded size on disk in bytes.
	Size     int64
	Arrived  time.Time
	Attempts int
	// NextAttempt is when a pending message is due; zero means now.
	NextAttempt time.Time
	// Leased reports whether Next handed the message out and no Ack,
	// RetryLater or DeadLetter has settled that delivery yet.
	Leased bool
	// DeadReason is the reason given to DeadLetter.
	DeadReason string
}

// RouteStats counts the unsettled messages of one route, or of all routes.
type RouteStats struct {
	Pending int64
	Dead    int64
	// Bytes is the encoded size of the pending and dead messages.
	Bytes int64
	// Oldest is the Arrived time of the earliest appended pending
	// message; zero if there is none.
	Oldest time.Time
}

// Stats is a snapshot of a store's counters.
type Stats struct {
	// Routes holds the counts per route with unsettled messages.
	Routes map[string]RouteStats
	// Total sums Routes; Total.Oldest is the earliest of them.
	Total RouteStats
	// Segments is the number of log segment files.
	Segments int
	// Appends counts successful Appends since open.
	Appends int64
	// Syncs counts data fsyncs since open.
	Syncs int64
	// WriteErrors and FsyncErrors count failed writes and fsyncs since open.
	WriteErrors int64
	FsyncErrors int64
	// CorruptRecords counts damaged regions skipped by recovery at open.
	CorruptRecords int64
	// TornTail reports whether recovery truncated an incomplete last record.
	TornTail bool
	// Failed reports whether a write or fsync failed: the store refuses
	// writes until it is reopened.
	Failed bool
	// Reopens counts the times the store reopened itself after a failure.
	Reopens int64
}

// Store is a durable spool of messages, kept per route. A message is pending
// or dead until it is settled by Ack, Delete or Purge. Implementations are
// safe for concurrent use.
type Store interface {
	// Append stores m durably and returns once it is durable; it assigns
	// m.ID if empty and sets m.Arrived to the current time if zero. It
	// returns ErrFull if a limit would be exceeded, and ErrFailed once a
	// write has failed. When ctx ends first it returns ctx's error, or
	// ErrUnconfirmed once the message may already be on its way to the
	// disk. It keeps nothing of m's Header and Body after it
	// returns: the caller may share them with a request it still serves.
	Append(ctx context.Context, m *Message) error
	// Next leases and returns the earliest appended pending message of
	// route whose NextAttempt is not after now and which is not leased; ok
	// is false if there is none. Leases are not durable: after a reopen
	// every pending message can be handed out again.
	Next(route string, now time.Time) (m *Message, ok bool, err error)
	// Ack settles a delivered message durably.
	Ack(id string) error
	// RetryLater records a failed attempt: the message is released and due
	// again at at, with attempts attempts made.
	RetryLater(id string, at time.Time, attempts int) error
	// DeadLetter moves a message to the dead state with a reason.
	DeadLetter(id string, reason string) error
	// Get returns an unsettled message and its metadata.
	Get(id string) (*Message, Info, error)
	// List returns up to limit messages of route (all routes if empty) in
	// state, with IDs greater than after, in ID order.
	List(route string, state State, after string, limit int) ([]Info, error)
	// Replay moves a dead message back to pending, with attempts reset.
	Replay(id string) error
	// Delete settles a message without delivering it.
	Delete(id string) error
	// Purge deletes every message of route (all routes if empty) in state
	// and returns how many it deleted.
	Purge(route string, state State) (int, error)
	// Stats returns a snapshot of the counters.
	Stats() Stats
	// Close stops the store and releases its files. Later calls return
	// ErrClosed.
	Close() error
}

// Deduper is implemented by a store that de-duplicates appends by
// idempotency key, per route, within a window of the route's (for a
// FileStore, Limits.DedupeWindow).
type Deduper interface {
	// AppendOnce is Append, de-duplicated: if a message of m.Route was
	// appended with m.IdempotencyKey within the route's window, it stores
	// nothing, sets m.ID to that message's ID and returns ErrDuplicate.
	// On a route without a window, or for a message without a key, it is
	// Append. While an earlier message of the key is still being
	// stored, it waits for it, and returns ErrUnconfirmed if that wait
	// passes the store's bound for an Append (a FileStore's
	// Limits.AppendWait).
	AppendOnce(ctx context.Context, m *Message) error
	// Duplicate returns the ID of the message of route that was appended
	// with the idempotency key key within the route's dedupe window; ok is
	// false if there is none (or it is still being appended).
	Duplicate(ctx context.Context, route, key string) (id string, ok bool, err error)
}

// Checker is implemented by a store that can be open but unable to store
// messages for a while, such as one whose server is unreachable. Ready
// returns nil when it accepts appends, else why it does not; the admin
// API's /readyz answers 503 meanwhile.
type Checker interface {
	Ready() error
}

var (
	// ErrFull is returned by Append when MaxMessages or MaxBytes would be
	// exceeded; nothing was written.
	ErrFull = errors.New("spool: full")
	// ErrNotFound is returned for an ID that is not stored or is settled.
	ErrNotFound = errors.New("spool: message not found")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("spool: closed")
	// ErrFailed is returned when a write or fsync failed: the data is not
	// known to be durable, and the store refuses writes until reopened.
	ErrFailed = errors.New("spool: write failed; store must be reopened")
	// ErrState is returned for a transition the message's state does not
	// allow, such as replaying a pending message.
	ErrState = errors.New("spool: message in wrong state")
	// ErrTooLarge is returned by Append for a message too large to store.
	ErrTooLarge = errors.New("spool: message too large")
	// ErrExists is returned by Append for an ID that is already stored.
	ErrExists = errors.New("spool: message ID exists")
	// ErrUnconfirmed is returned by Append when its context ended after
	// the message was handed to the disk and before the disk confirmed
	// it (a stalled disk): the message may still be stored, and then
	// delivered.
	ErrUnconfirmed = errors.New("spool: write not confirmed in time; the message may still be stored")
	// ErrDuplicate is returned by Deduper.AppendOnce for a message whose
	// key was appended within the route's dedupe window: nothing was
	// stored, and m.ID is the earlier message's ID.
	ErrDuplicate = errors.New("spool: duplicate idempotency key")
)

// DamagedError reports a stored message whose record no longer reads back
// intact from disk: its body is lost. DeadLetter and Delete still work on it.
type DamagedError struct {
	// ID is the message's ID.
	ID string
	// Path and Offset locate its record.
	Path   string
	Offset int64
}

// Error implements error.
func (e *DamagedError) Error() string {
	return fmt.Sprintf("spool: message %s damaged on disk at %s:%d", e.ID, e.Path, e.Offset)
}
