// Package h1server is the HTTP/1.1 server of the sidecar's app-facing
// listeners: it serves an http.Handler, the proxy's, which cannot tell it
// from net/http's server.
//
// # Why not net/http
//
// Every request through the sidecar crosses an app-facing connection,
// so that server's cost is paid per request, and its memory per open
// connection, whatever the route does. net/http's server is general and
// pays for it: per request, a background goroutine with a one-byte read
// kept pending to notice a client going away (a read syscall that finds
// nothing, two deadline changes, a goroutine start); a bufio.Reader and
// a bufio.Writer per connection, held while the connection is idle (8 KiB
// a connection, with the goroutine's stack, for an app that keeps a pool
// of idle keep-alive connections open); a textproto reader that copies
// every header line; a response written through three buffers. This
// package does what the proxy needs, with net/http's observable behaviour
// where the proxy or a client can tell the difference, and no more.
//
// # What it keeps of net/http
//
// The protocol, to the status code: the same requests are refused, with
// the same status and text, and the same connection fate (400 for a
// malformed head, 431 past MaxHeaderBytes, 501 for an unsupported
// Transfer-Encoding, 505, 417, the missing Host); the same *http.Request
// (URL as url.ParseRequestURI makes it, canonical header keys, Host,
// ContentLength, TransferEncoding, Close, Trailer); the same body rules
// (chunked framing as strict as net/http's chunked reader, the
// 100-continue sent on the first read, at most 256 KiB of an unread body
// drained to keep the connection); the same response framing
// (Content-Length when the handler returns before its answer outgrows
// the buffer, else chunked with trailers, Date, Connection, HTTP/1.0
// keep-alive, sniffed Content-Type, no body for HEAD, 1xx, 204, 304); and
// Hijack, Flush, SetReadDeadline, SetWriteDeadline and EnableFullDuplex
// through http.ResponseController. diff_test.go sends the same bytes to
// both servers and compares what comes back; FuzzParseRequest holds the
// head parser to net/http's. Requests carry an *http.Server under
// http.ServerContextKey, because httputil.ReverseProxy looks for one to
// decide that a response whose upstream body broke off must be aborted,
// not silently truncated.
//
// # How it is cheaper
//
// One goroutine per connection reads a request, runs the handler, writes
// the answer, and waits for the next request. While it waits it holds no
// buffer: it asks the socket for readability through syscall.RawConn
// and takes a read buffer from a pool only once there are bytes to read
// (see conn.waitRequest for why Go's edge-triggered poller loses none).
// A request head is parsed in place in that buffer, line by line as it
// arrives, and the request is built from one string holding the whole
// head, its fields substrings of it. The response's head and body go
// into one pooled buffer, so a small answer leaves in one write when the
// handler returns; both buffers go back to their pools between requests.
// A connection waits for its next request on its own goroutine, keeping
// the stack its requests grew (growing a fresh one for every request
// would cost about 5 % of a request's CPU); after 100 ms idle it parks:
// it gives up its goroutine and stack, registered to report readability
// once in an epoll set of the server's, and a goroutine is started for
// it when bytes arrive (watch_linux.go). A parked connection keeps its
// structures alone, about 800 bytes with Go's socket: what only a
// connection being served needs is in a pooled connIO, one timer per
// server closes the parked connections at the idle timeout, and after a
// burst of parking the runtime is asked to hand its free memory back.
// On Linux the same set watches every connection for
// EPOLLRDHUP, the client going away, which costs nothing per request and
// notices a disconnect at once. docs/design.md tells the design in the
// project's words, with the figures.
//
// # What it does not do
//
// TLS (the listeners are cleartext), HTTP/2 (an auto listener hands the
// connections that open with the HTTP/2 preface to internal/h2server
// through HandOff and ConnQueue, so that h2c is served exactly as on an
// h2c listener), CloseNotifier, ReadFrom fast paths, and the ConnState hook.
// Header fields of a response are written in map order, not sorted. A
// client that half-closes its connection after sending pipelined requests
// has the request in flight canceled (net/http cancels only the last).
package h1server
