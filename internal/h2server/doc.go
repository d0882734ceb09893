// Package h2server is the sidecar's HTTP/2 server for cleartext
// connections with prior knowledge (h2c): the h2c listeners, and the
// connections an auto listener's HTTP/1.1 server (internal/h1server)
// hands over when they open with the HTTP/2 preface. It serves an
// ordinary http.Handler with real *http.Requests, as net/http's bundled
// HTTP/2 server does, at a fraction of its cost per stream:
//
//   - One goroutine per connection reads the frames (x/net's Framer and
//     HPACK decoder) and dispatches them: no goroutine of its own for
//     reading, no serve loop, no channel hand-off per frame.
//   - Handlers write their frames themselves, under the connection's
//     write lock, into internal/h2conn, which batches them into one
//     write(2) with other streams'; a small response leaves as HEADERS,
//     DATA and trailers in one locked section.
//   - Handlers run on goroutines the server reuses, so the stack a
//     handler grew serves the next; streams, their buffers and header
//     maps are pooled.
//   - An idle connection holds no buffer: while its socket has nothing to
//     read, the reading goroutine waits with no framer (they are
//     pooled) and no read buffer (internal/h2conn gives it back), and
//     the write buffers go back to h2conn's pool once written. What it
//     keeps is its structures, its HPACK tables and that goroutine.
//
// Flow control, limits and protections are net/http's: SETTINGS as
// configured, at most MaxConcurrentStreams handlers per connection with
// further streams queued and a connection that queues too many cut off
// (rapid reset, CVE-2023-44487), header blocks bounded across
// CONTINUATIONs (CVE-2024-27316), control frames (PING, SETTINGS
// acknowledgements, resets) bounded for a peer that does not read, and
// malformed requests refused with PROTOCOL_ERROR. See docs/design.md,
// "HTTP/2 connections".
package h2server
