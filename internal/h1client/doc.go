// Package h1client is the sidecar's HTTP/1.1 client for upstreams: an
// http.RoundTripper that keeps a pool of keep-alive connections per
// address and uses them on the caller's goroutine.
//
// net/http's Transport gives every connection a read loop and a write loop
// goroutine and hands each request and response between them and the
// caller over channels; a request costs three goroutine switches and an
// extra read that only checks whether the idle connection was closed. A
// proxy that forwards small requests at high rates pays that on every
// call (docs/BENCHMARKS.md has the profile). Here a round trip is, on the
// caller's goroutine: take an idle connection (or dial one), write the
// request head and a small body in one write, read the response head, and
// hand back a response whose body reads from the connection; when that
// body reaches its end, the connection goes back to the pool.
//
// What a goroutine per connection would otherwise notice is handled so:
//
//   - Cancellation: context.AfterFunc on the request's context puts the
//     connection's deadline in the past, which ends a blocked write or
//     read at once. The connection is then never reused.
//   - An idle connection the upstream closed, or wrote to: before the
//     reuse of a connection idle for 100 ms or more, a non-blocking peek
//     (one recv(2) that finds nothing) checks that neither a FIN nor
//     unsolicited bytes arrived; either makes the connection unusable.
//     Bytes that came with an answer, past its end, make it unusable at
//     once. A request that fails on a reused connection before any byte
//     of an answer arrived (the upstream closed it just as it was reused)
//     is sent again once, on a new connection, when it has no body, as
//     net/http's Transport does.
//   - A request body of unknown length, or larger than the write buffer,
//     is written by a second goroutine while the caller reads the answer,
//     so an upstream may answer before reading all of it (and a streaming
//     request may stream); bodies that fit the buffer go out with the head
//     in one write.
//
// Message syntax follows RFC 9112 strictly: a response with obs-fold,
// bad header bytes, differing Content-Length values, or a
// Transfer-Encoding other than chunked is an error, never passed on.
// Trailers are read into Response.Trailer as net/http does; 1xx answers
// go to an httptrace.ClientTrace's Got1xxResponse; a 101 answer's Body is
// the connection, an io.ReadWriteCloser.
package h1client
