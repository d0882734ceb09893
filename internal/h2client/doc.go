// Package h2client is the sidecar's HTTP/2 client for upstreams spoken to
// in cleartext with prior knowledge (h2c, and gRPC over it): an
// http.RoundTripper that multiplexes requests on connections pooled per
// address.
//
// net/http's HTTP/2 transport runs every request on a goroutine of its
// own, which writes the request while the caller waits on channels for
// the answer, and hands each frame's bytes through a pipe; for a proxy
// forwarding small gRPC calls those goroutines and their wake-ups are a
// large part of the CPU per call (docs/BENCHMARKS.md). Here:
//
//   - The caller's goroutine encodes the request's HEADERS and writes
//     them, and a body up to 16 KiB that is all at hand (internal/inmem)
//     with them, under the connection's write lock, into a buffer that
//     internal/h2conn sends in batches. A unary gRPC call's body usually
//     is: its END_STREAM came before the call was forwarded.
//   - One goroutine per connection reads frames and hands them to their
//     streams: response headers wake the waiting caller, DATA lands in the
//     stream's buffer, from which the response body reads; WINDOW_UPDATEs
//     go out as the body is consumed.
//   - A request body still arriving (a streaming call's), a larger one,
//     or one too large for the send window, is written by a goroutine of
//     its own, so that the answer can come, and stream, while the body
//     still does.
//
// Streams are recycled per connection. A connection serves up to the
// peer's SETTINGS_MAX_CONCURRENT_STREAMS streams (100 until its SETTINGS
// come); then another is dialed. A GOAWAY stops new streams on its
// connection; streams above its last stream ID, and streams refused with
// REFUSED_STREAM, were not processed: they are sent again on another
// connection when their body allows, else fail with an error that
// matches ErrUnprocessed.
//
// The client is strict: a malformed frame, a bad or missing :status, a
// connection-specific header field, a header list over
// MaxResponseHeaderBytes, DATA that overruns Content-Length or a window,
// or a body that ends short of its Content-Length is an error, and a body
// whose stream or connection breaks off before END_STREAM never reads as
// complete. See docs/design.md, "The HTTP/2 upstream client".
package h2client
