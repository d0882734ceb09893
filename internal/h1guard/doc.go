// Package h1guard detects ambiguous HTTP/1.1 request framing that Go's
// net/http server silently repairs.
//
// Go's HTTP/1.x server accepts a request that carries both Content-Length and
// Transfer-Encoding: chunked: it drops Content-Length and frames the body as
// chunked, so a handler cannot tell that the request was ambiguous. It also
// unfolds obs-fold header lines. A reverse proxy that must answer such
// requests with 400 and close the connection, and never forward them,
// therefore needs to see the raw bytes.
//
// Listen wraps a net.Listener. Every connection it accepts is a *Conn, whose
// Read passes the bytes through unchanged and, on the side, follows HTTP/1.1
// message framing: it finds each request head (request line and header
// fields, CRLF or bare LF line endings), judges its framing, skips the body
// (Content-Length bytes, or a chunked body including its trailer section,
// mirroring the exact rules of Go's chunked reader) and moves on to the next
// head. The verdicts are queued in order; the handler pops the one for the
// request it serves with Next:
//
//	srv := &http.Server{
//		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//			if err := h1guard.FromContext(r.Context()).Next(); err != nil {
//				w.Header().Set("Connection", "close")
//				http.Error(w, "bad request framing", http.StatusBadRequest)
//				return
//			}
//			// ... forward r upstream ...
//		}),
//		ConnContext: h1guard.ConnContext,
//	}
//	ln, _ := net.Listen("tcp", addr)
//	srv.Serve(h1guard.Listen(ln))
//
// Next must be called exactly once for every request that reaches the
// handler, so call it in the outermost middleware, before any routing. If
// the request did not come through Listen and ConnContext, FromContext
// returns nil and Next on it returns ErrNoConn, so a wiring mistake fails
// closed instead of silently disabling the guard. A
// request that Go's server answers by itself and closes (malformed request
// line, bad header bytes, conflicting Content-Length, unsupported
// Transfer-Encoding, oversize head, ...) never reaches the handler; that does
// not disturb the queue because the connection ends with it. "OPTIONS *"
// requests, which Go answers itself unless Server.DisableGeneralOptionsHandler
// is set, are accounted for: ConnContext reads that setting (and
// MaxHeaderBytes) from the *http.Server in the context.
//
// Once a verdict is an error the Conn stops parsing and every later call of
// Next returns an error too (fail closed): the handler is expected to close
// the connection. A body that Go's server would reject (for example a
// malformed chunk) also makes every later Next return ErrMalformedChunked,
// because the server closes the connection after such a body and any bytes
// after it are not requests.
//
// The Conn stops following the stream, and Next returns nil from then on, in
// two cases: when a head is the HTTP/2 connection preface "PRI * HTTP/2.0"
// with no header fields (h2c prior knowledge, or a handler wiring up HTTP/2),
// and when a head grows beyond the server's header limit (MaxHeaderBytes,
// 1 MiB by default, plus the slack Go's server allows) without ending, which
// Go's server rejects with 431 anyway.
//
// Requests with Upgrade or CONNECT are framed like any other request and the
// Conn keeps following the stream after them: if the handler declines the
// upgrade and keeps the connection alive, the next request is still judged.
// If the connection does become a tunnel, the tunnelled bytes (TLS records,
// WebSocket frames, the HTTP/2 preface) are not a valid request line and the
// Conn stops at once; nothing calls Next on a tunnel.
//
// Besides the framing rules, the verdict errors cover: Transfer-Encoding in
// an HTTP/1.0 request (Go ignores it and frames by Content-Length; RFC 9112
// calls such framing faulty), whitespace before a header colon, obs-fold,
// multiple or unsupported Transfer-Encoding, and bad or differing
// Content-Length values. A bare LF ending a trailer line, which Go accepts
// only when a CRLFCRLF follows within 4096 bytes, is treated as malformed.
//
// The parser allocates nothing per Read: heads are parsed in place in the
// caller's buffer, body bytes are skipped by counting, and only a line that
// is split across Reads is copied into a small per-connection buffer. The
// parser state belongs to the reading goroutine; the verdict queue, which is
// a run of nil verdicts possibly ended by one final verdict, is a counter
// shared with Next through atomic operations.
//
// The Conn only sees cleartext HTTP/1.x. For TLS, wrap the listener returned
// by tls.NewListener (so Read yields plaintext) and restrict
// tls.Config.NextProtos to "http/1.1", because the server cannot see the
// *tls.Conn behind the *Conn and therefore cannot negotiate HTTP/2.
package h1guard
