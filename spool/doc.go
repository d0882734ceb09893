// Package spool stores HTTP requests durably until they are delivered: the
// storage engine behind the proxy's async (fire-and-forget) routes.
//
// Store is the engine's interface; FileStore, opened with OpenFile, is the
// embedded file backend. A message is appended, handed out by Next (which
// leases it), and then acknowledged (settled), retried later, or
// dead-lettered; dead messages can be replayed, deleted or purged. Every
// change is a record appended durably to a log.
//
// # Directory
//
// A store owns one directory, mode 0700 (created if missing; an existing
// directory with group or other permissions is changed to 0700). It holds a
// file LOCK, locked with flock(LOCK_EX|LOCK_NB) while a store is open so
// that a second store, in any process, is refused with ErrLocked, and the
// segment files, mode 0600:
//
//	00000000000000000001.log
//	00000000000000000002.log
//	...
//
// A segment's name is its sequence number, 20 decimal digits, so names sort
// in log order. Records are appended to the last segment only. When it
// would grow past FileOptions.SegmentSize the writer syncs it, creates the
// next one and fsyncs the directory before writing to the new file.
//
// With FileOptions.ZeroAhead (the sidecar's, with fsync: always) the
// writer keeps that many bytes of zeros written past the last record of
// the segment, extending them in the batch that comes within half of it
// of their end: the batches in between overwrite zeros the disk already
// holds, and their fdatasync has the data alone to write, not the file's
// size too. Zeros after the last record are the end of a segment's
// records, at recovery as in the writer.
//
// # Records
//
// A segment is a sequence of records, each self-describing:
//
//	offset size field
//	0      4    CRC-32C (Castagnoli) of bytes 4 to the end of the payload,
//	            little endian: the rest of the header and the payload
//	4      4    payload length n, little endian (at most 1 GiB)
//	8      1    record type
//	9      1    payload encoding version, currently 1
//	10     2    reserved, zero
//	12     n    payload
//
// Record types and their version-1 payloads, where a string is a uvarint
// length and that many bytes, and a time is a varint of Unix nanoseconds
// (0 for the zero time):
//
//	1 message  ID, Route, Method, Target, IdempotencyKey, TraceParent
//	           (strings); Arrived (time); Attempts (uvarint); Header: a
//	           uvarint count of keys, each a key string, a uvarint count of
//	           values and the value strings, keys sorted; Body (string)
//	2 ack      ID: delivered, settled
//	3 retry    ID; next attempt (time); attempts (uvarint): pending again
//	4 dead     ID; attempts (uvarint); reason (string)
//	5 replay   ID: dead to pending, attempts reset to 0
//	6 delete   ID: removed without delivery, settled
//
// Each state record (retry, dead, replay) carries a message's whole state,
// so the latest one wins; ack and delete settle it.
//
// # Commit
//
// One writer goroutine owns the files. Append and the state methods encode
// their record, queue it and wait. The writer takes everything queued,
// writes it with one write per segment and, with FsyncAlways, one fsync
// (group commit), then applies it to the in-memory index and wakes the
// waiters: a method returns only once its record is durable. With
// FsyncInterval the writer syncs on a ticker instead, and a machine crash
// loses up to one Interval of acknowledged records (plus the sync's own
// duration); a crash of the process alone loses nothing written.
//
// If a write or fsync fails, every waiter of that batch gets ErrFailed and
// the store refuses all later writes until it is reopened: a failed fsync
// leaves the page cache in an unknown state, so nothing is retried as if it
// were safe. The writer reopens the store itself after
// FileOptions.ReopenDelay, doubling up to 30s with each reopen until a
// write succeeds: it cuts every segment back to the size of its last
// successful fsync (with FsyncAlways nothing after it was acknowledged),
// closes the files, recovers the log as OpenFile does, keeps the leases,
// and writes on in a new segment (or in the last one if it is empty). Stats.Reopens counts the reopens. With FsyncInterval the
// records after the last fsync are kept if they read back intact. A store
// opened again by OpenFile after a process crash may still find records of
// a failed batch; they were not acknowledged, so this can only cause a
// duplicate delivery.
//
// A disk that stalls rather than fails (a write or fsync that does not
// return) holds the writer in the kernel. An Append gives up on it after
// its route's Limits.AppendWait with ErrUnconfirmed, and
// FileStore.Shutdown when its context ends, with a *StalledError: the
// writer is left to the disk, and closes the files and releases the
// directory's lock once the disk answers (or the process ends).
//
// # Deleting segments
//
// A segment other than the last is deleted, and the directory fsynced after
// each removal, when nothing needs it: no unsettled message has its message
// record or its latest state record in it, and it holds no ack or delete
// record of a message whose own segment still exists. Removals therefore
// happen in an order where a crash between any two steps leaves a log that
// recovers to the same state: a message's segment is gone before its ack.
// Recovery ignores state records about unknown IDs. A segment holding the
// message record of an idempotency key still within its route's dedupe
// window (Limits.DedupeWindow) is kept until the window has passed, so
// that recovery finds the key (see dedupe.go).
//
// # Recovery
//
// OpenFile reads the segments in order and replays their records into the
// index, which holds per message only its location, size, route, state,
// attempts, next attempt and arrival time, never its body: Next and Get
// read bodies from disk. That is 48 bytes per unsettled message (see
// index.go), so a million pending messages take about 46 MiB; recovery
// checks every record's CRC but decodes only the metadata of message
// records. A record that is incomplete or fails its checks
// starts a damaged region, which ends at the next offset where a valid
// record decodes. If no valid record follows and the segment is the last,
// the region is a torn tail left by a crash during a write: it is truncated
// and reported in Stats.TornTail. Otherwise the region is skipped, counted
// in Stats.CorruptRecords and logged. Recovery never panics on bad data.
//
// Resynchronisation trusts the first offset where a record's checks pass;
// bytes inside a message body that form a valid record could be taken for
// one after a damaged region. The CRC makes this unlikely by accident, not
// impossible on purpose.
package spool
