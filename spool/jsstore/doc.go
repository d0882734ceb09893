// Package jsstore is the NATS JetStream backend of spool.Store: the spool
// kept in a (replicated) JetStream stream instead of local files, so that
// async routes survive the loss of the pod and a fleet can share one queue.
//
// # Streams
//
// Two streams, both with file storage and Options.Replicas replicas.
//
// The stream, named by Options.Stream, holds the pending messages on
// subjects "<STREAM>.>". Its retention is WorkQueue: a message
// acknowledged by its route's consumer is removed by the server, so
// settled messages take no room and are never handed out again. Discard is
// DiscardNew with MaxMsgs and MaxBytes from Options.MaxMessages and
// Options.MaxBytes: a full stream refuses the publish, and Append returns
// spool.ErrFull, which the proxy answers with 503 spool_full. The stream
// is never allowed to drop old messages to make room. A route with
// RouteOptions.MaxMessages is also refused with spool.ErrFull once its
// consumer holds that many pending messages (read from the server at most
// every 250ms, counted up locally in between).
//
// The dead-letter stream, named "<STREAM>_DEAD" (DeadSuffix), holds the
// dead messages on subjects "<STREAM>_DEAD.>". Its retention is Limits (a
// dead letter stays until it is replayed, deleted or purged; no consumer
// reads it), Discard is DiscardNew, and it has its own MaxMsgs and
// MaxBytes, set from the same Options.MaxMessages and Options.MaxBytes.
// MaxMsgsPerSubject is 1: a dead copy left behind by a DeadLetter whose
// delete of the pending message failed is replaced by the next one, so a
// message is dead once.
// So, unlike the file backend, which counts pending and dead messages
// together, pending and dead messages are bounded separately: a full
// pending stream does not stop dead-lettering (which a full fifo route
// needs to make progress), and dead letters do not take the room of new
// requests. A full dead-letter stream makes DeadLetter fail with
// spool.ErrFull; the message stays pending and is handed out again.
//
// At Open both streams are found, or made with Options.Create (which also
// updates their limits to the configuration's); with Create false both
// must exist. An existing stream whose retention, discard policy,
// subjects, storage or replicas differ from the above, or that has an
// expiry (MaxAge), DenyDelete or DenyPurge, a duplicate window shorter
// than twice Options.RequestTimeout (the publish retry needs it), or, on
// the dead-letter stream, a MaxMsgSize below the stream's plus room for
// the dead letter's headers, makes Open fail. Dead letters that an
// earlier version kept in the stream itself (subjects
// "<STREAM>.<id>.dead.<route>") are moved to the dead-letter stream at
// Open.
//
// # Subjects
//
// Every unsettled message is one stream message on the subject
//
//	<STREAM>.<id>.pending.<route>        (the stream)
//	<STREAM>_DEAD.<id>.dead.<route>      (the dead-letter stream)
//
// where id is the message ID as is when it
// holds only letters, digits, '-' and '_', else "~" and its hex encoding,
// and route is "r" and the hex encoding of the route name (route names may
// hold characters NATS subjects do not allow). The ID comes first so that
// Get, which knows only the ID, finds a message with a lookup whose
// subject has a literal prefix ("<STREAM>.<id>.>", then
// "<STREAM>_DEAD.<id>.>"), served by the server's
// subject index instead of a scan. The suggested layout with the state and
// route first would need a wildcard before the ID.
//
// # De-duplication
//
// A route with RouteOptions.DedupeWindow de-duplicates AppendOnce calls
// (spool.Deduper): such a message's ID is derived from
// its route and idempotency key (32 hex digits of SHA-256 of route, NUL,
// key) and is its Nats-Msg-Id. Append first looks the ID up: a message of
// the key still stored (pending or dead) is the one answered with
// spool.ErrDuplicate. Otherwise it publishes; a duplicate acknowledgement
// (the key's message was published within the stream's duplicate window,
// and delivered since, or another Append of the key, in this or another
// sidecar, won a race) is answered alike. So the original's ID needs no
// local state and no read of the removed message. The stream's duplicate
// window (Duplicates, default 2 minutes) is made at least the longest
// DedupeWindow at Open with Options.Create, and by SetRoutes (a reload)
// when a window grows past it; it is never shortened. Without Create a
// shorter one makes Open fail, and SetRoutes logs an error and leaves the
// stream as it is. IDs of de-duplicated messages repeat when a key is used
// again after its message is gone and the window has passed.
//
// # Consumers
//
// Each route has a durable pull consumer named "sidecar_<route token>"
// filtered on "<STREAM>.*.pending.<route token>", with explicit
// acknowledgement, AckWait from Options.AckWait (default 30s), no
// MaxDeliver (the sidecar counts attempts and dead-letters itself: a
// server-side MaxDeliver would leave a message in the stream that no
// consumer hands out again) and MaxAckPending 1 for a route whose
// RouteOptions.FIFO is set, so the server hands out the next message of
// the route only once the head is settled; other routes have no
// MaxAckPending bound. Consumers are created, or updated when the ordering
// changed, at Open for Options.Routes and for routes whose consumers an
// earlier run made, and on first use (Append or Next) for other routes; a
// consumer deleted behind the store's back is made again.
// Several sidecars sharing a stream share the consumers: the route's
// messages are spread among them, and a fifo route stays fifo across them.
//
// # Encoding
//
// The stream message's data is a compact envelope (see envelope.go): a
// version byte, then the route, method, target, idempotency key and
// traceparent (each a uvarint length and bytes), the arrival time (varint
// Unix nanoseconds, 0 for the zero time), the request headers (a uvarint
// count of keys, each a key, a uvarint count of values and the values,
// keys sorted), and the request body as the rest. NATS headers carry what
// changes with the message's state: Nats-Msg-Id, Sidecar-Attempts (the
// attempts made before it was published) and, on a dead message,
// Sidecar-Dead-Reason.
//
// # Methods
//
// Append publishes to the pending subject with Nats-Msg-Id set to the
// message ID, so the server's duplicate window drops a publish retried
// after a lost acknowledgement, and returns only after the stream's
// acknowledgement: the 202 depends on it. An empty ID is given a
// time-ordered one like the file backend's (16 hex digits of Unix
// nanoseconds, strictly increasing within the store, and 8 random ones).
// A caller-given ID that is stored already, or that the duplicate window
// still remembers, gives spool.ErrExists. While the connection is down,
// Append fails at once with ErrDisconnected: publishes are never buffered
// for a reconnect, so no 202 is written for a message that is not stored.
// A message over the server's max_payload or the stream's max_msg_size
// gives spool.ErrTooLarge (413).
//
// Next fetches one message from the route's consumer without waiting and
// keeps the delivered message in an in-memory lease table until Ack,
// RetryLater, DeadLetter or Delete settles it. A goroutine marks leased
// messages in progress every AckWait/3, so a lease lasts while the
// delivery does; after a crash the server hands a leased message out again
// once AckWait has passed. Close hands leased messages back at once
// (negative acknowledgement); it waits for Next calls in flight, and a
// Next that fetched a message while Close began hands it back and
// returns spool.ErrClosed. A message on a route's pending subjects whose
// subject does not parse (published around the store) is never deleted:
// Next moves it to the dead letters, with the subject's ID token as its
// ID and a reason saying so, and returns an error. A settlement drops the lease from the table
// before it talks to the server, whether it then succeeds or fails: a
// settlement that fails (disconnected, or refused) leaves the message
// unextended, and the server hands it out again AckWait later, so a fifo
// route is never blocked by a lease nobody will settle. As a backstop, a
// lease older than Options.MaxLease (default 5 minutes) is no longer
// extended. Each lease has a settling flag, set under the lease's lock
// before the settlement is sent and checked under it right before each
// extension, so an extension never lands after a delayed negative
// acknowledgement and resets its delay.
//
// Due times are kept by the server: RetryLater is a negative
// acknowledgement delayed until at, and the server hands the message out
// again only then. Next therefore ignores its now argument for routes
// without ordering, and Next(route, far future), which the file backend
// answers with the route's head whatever its due time, does not return a
// message that waits for its delay. For a fifo route the server holds the
// rest of the route behind the waiting head (MaxAckPending 1), and the
// store also compares now with the due time of a head it retried itself,
// as the file backend does: Next(route, now) returns nothing before it,
// and Next(route, far future) may return the head early (the server does
// hand out a delayed message early to a new pull request in some cases),
// with Get reporting its NextAttempt so that the deliverer holds it until
// then. The attempt count and due time given to RetryLater are kept in
// memory (Get, Next and NextDue report them; an entry due more than
// AckWait ago, which another sidecar sharing the stream delivered, is
// dropped, and the table is bounded); after a restart the attempts are the
// published Sidecar-Attempts plus the server's delivery count minus one,
// so an interrupted delivery counts as an attempt. RetryLater needs the
// lease: on a pending message that this store did not hand out it returns
// spool.ErrState.
//
// Ack acknowledges a leased message and waits for the server's
// confirmation (double ack); an unleased one is deleted from the stream.
// DeadLetter publishes a copy to the dead-letter stream (the reason and
// attempts in headers) and then deletes the pending message; a crash in
// between leaves both, so the message may be delivered once more, never
// lost (Get reports the pending one meanwhile). Replay publishes the dead
// copy back to the stream with attempts 0, then deletes the dead one; the
// replayed message joins the end of its route's queue. These copies get a
// random Nats-Msg-Id (never derived from the clock, so a second dead
// letter of a replayed message within the duplicate window is not taken
// for the first), and a copy the server reports as a duplicate is an
// error: the source is deleted only after its copy was stored. Delete deletes the
// message by sequence in the stream that holds it; Purge purges the
// stream of the state with a subject filter and reports the server's
// count.
//
// Get looks the message up by subject; List lists the stream's subjects
// for the state and route (the server's subject listing, paged by the
// client) and looks up the page's messages. There is no per-message index
// in memory: only leases and the due times of retried messages.
//
// Stats reads both streams' totals, each route consumer's pending and
// unacknowledged counts, each route's dead letters as counted by a
// consumer on the dead-letter stream that never delivers (durable
// "sidecar_count_<route token>": its NumPending is the count, so the dead
// letters are never listed, however many there are) and each route's
// first pending message (for Oldest). RouteStats.Bytes is
// zero per route: the server does not count bytes per subject filter;
// Total.Bytes is the sum of the two streams'.
//
// # Secrets
//
// Errors and logs show the server URLs with their userinfo (user,
// password or token) replaced by "REDACTED".
//
// # Durability
//
// JetStream acknowledges a publish once the stream's replicas have it in
// memory, and writes it to disk on its sync_interval (two minutes by
// default), not before the acknowledgement. With Replicas 1 an
// acknowledged message can be lost if the server's machine loses power;
// Open logs a warning saying so. The server setting sync_interval: always
// closes the gap (an fsync per write); with three replicas a message is
// acknowledged once a majority has it, which survives the loss of one
// machine.
package jsstore
