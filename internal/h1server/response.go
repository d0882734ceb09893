package h1server

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/textproto"
	"path"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sidecar-proxy/sidecar/internal/httpsyntax"
)

// response is the http.ResponseWriter of one request.
//
// Its header is written into the connection's write buffer when
// WriteHeader is called, which is also the snapshot net/http takes then
// (changes to the Header map afterwards are not sent, but for trailers).
// The framing fields (Content-Length, Transfer-Encoding, Connection,
// Date, a sniffed Content-Type) are written when the response is
// committed: when the handler returns, flushes, or writes more than
// pendingMax bytes of body. Until then the body waits in the buffer after
// a gap of reserve bytes, where the framing fields go, so that a small
// response leaves in one write: head and body together.
type response struct {
	c      *conn
	req    *http.Request
	body   *body // nil: no body
	cancel context.CancelFunc

	handlerHeader http.Header

	wroteHeader bool // a final header was (logically) written
	committed   bool // its framing is decided and written
	status      int
	// contentLength is the declared length, or -1.
	contentLength int64
	written       int64
	chunking      bool

	closeAfterReply     bool
	requestBodyLimitHit bool
	wants10KeepAlive    bool
	wantsClose          bool
	fullDuplex          bool
	isHEAD              bool
	handlerDone         atomic.Bool

	canWriteContinue atomic.Bool
	continueMu       sync.Mutex

	// The header as written at WriteHeader (see snapshot): where its
	// fields end in the write buffer, where the body starts, and the
	// fields that commit decides about.
	hdrEnd, bodyStart int
	clVals            []string
	teVals            []string
	connVals          []string
	upgrade           string
	hasDate           bool
	hasCT             bool
	hasCE             bool
	hasTrailers       bool
	trailers          []string
}

var (
	_ http.ResponseWriter = (*response)(nil)
	_ http.Flusher        = (*response)(nil)
	_ http.Hijacker       = (*response)(nil)
)

func (w *response) Header() http.Header {
	if w.handlerHeader == nil {
		w.handlerHeader = make(http.Header)
	}
	return w.handlerHeader
}

func (w *response) SetReadDeadline(t time.Time) error {
	w.c.hdlReadDL.Store(true)
	return w.c.rwc.SetReadDeadline(t)
}

func (w *response) SetWriteDeadline(t time.Time) error {
	w.c.hdlWriteDL.Store(true)
	return w.c.rwc.SetWriteDeadline(t)
}

// EnableFullDuplex lets the handler write its answer while it reads the
// request body: the unread body is not consumed when the header is sent.
func (w *response) EnableFullDuplex() error {
	w.fullDuplex = true
	return nil
}

func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.handlerDone.Load() {
		panic("net/http: Hijack called after ServeHTTP finished")
	}
	w.disableWriteContinue()
	if w.wroteHeader {
		if !w.committed {
			w.commit()
		}
		w.c.flush()
	}
	return w.c.hijack(w)
}

func (w *response) hijacked() bool {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.c.hijacked
}

func (w *response) logCaller(what string) {
	pc := make([]uintptr, 16)
	n := runtime.Callers(3, pc)
	frames := runtime.CallersFrames(pc[:n])
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "github.com/sidecar-proxy/sidecar/internal/h1server.") || !more {
			w.c.srv.logf("http: %s from %s (%s:%d)", what, f.Function, path.Base(f.File), f.Line)
			return
		}
	}
}

func (w *response) WriteHeader(code int) {
	if w.hijacked() {
		w.logCaller("response.WriteHeader on hijacked connection")
		return
	}
	if w.wroteHeader {
		w.logCaller("superfluous response.WriteHeader call")
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 101 || code > 199 {
		w.disableWriteContinue()
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		w.writeInformational(code)
		return
	}
	w.wroteHeader = true
	w.status = code
	if cl := w.handlerHeader.Get("Content-Length"); cl != "" {
		v, err := strconv.ParseInt(cl, 10, 64)
		if err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.c.srv.logf("http: invalid Content-Length of %q", cl)
			w.handlerHeader.Del("Content-Length")
		}
	}
	w.snapshot()
}

// writeInformational sends a 1xx answer at once, with the header fields
// set so far but the framing ones, as net/http does.
func (w *response) writeInformational(code int) {
	c := w.c
	if c.werr != nil {
		return
	}
	c.getWbuf()
	c.appendW(func(b []byte) []byte {
		b = appendStatusLine(b, w.req.ProtoAtLeast(1, 1), code)
		for k, vv := range w.handlerHeader {
			if k == "Content-Length" || k == "Transfer-Encoding" {
				continue
			}
			b = appendField(b, k, vv)
		}
		return append(b, "\r\n"...)
	})
	c.flush()
}

// appendW appends to the write buffer through fn, growing it if need be.
func (c *conn) appendW(fn func(b []byte) []byte) {
	b := fn(c.wb[:c.wn])
	if cap(b) != len(c.wb) {
		c.wb = b[:cap(b)] // grown: no longer the pool's
	}
	c.wn = len(b)
}

// snapshot writes the status line and the handler's header fields but
// the framing ones, which commit writes, and notes what commit needs.
func (w *response) snapshot() {
	c := w.c
	c.getWbuf()
	c.appendW(w.appendHeader)
	w.hdrEnd = c.wn
	// The gap for the framing fields, then room for the body.
	c.ensureCap(c.wn + reserve + pendingMax)
	c.wn += reserve
	w.bodyStart = c.wn
}

func (w *response) appendHeader(b []byte) []byte {
	b = appendStatusLine(b, w.req.ProtoAtLeast(1, 1), w.status)
	for k, vv := range w.handlerHeader {
		switch k {
		case "Content-Length":
			w.clVals = vv
			continue
		case "Transfer-Encoding":
			w.teVals = vv
			continue
		case "Connection":
			w.connVals = vv
			continue
		case "Date":
			w.hasDate = true
		case "Content-Type":
			w.hasCT = true
			if w.status == http.StatusNotModified {
				continue
			}
		case "Content-Encoding":
			w.hasCE = len(vv) > 0 && vv[0] != ""
		case "Upgrade":
			if len(vv) > 0 {
				w.upgrade = vv[0]
			}
		case "Trailer":
			w.hasTrailers = true
			for _, v := range vv {
				foreachHeaderElement(v, w.declareTrailer)
			}
		default:
			if strings.HasPrefix(k, http.TrailerPrefix) {
				w.hasTrailers = true
				continue
			}
		}
		b = appendField(b, k, vv)
	}
	return b
}

// ensureCap grows the write buffer to at least n bytes, keeping its
// contents.
func (c *conn) ensureCap(n int) {
	if n <= len(c.wb) {
		return
	}
	nb := make([]byte, n)
	copy(nb, c.wb[:c.wn])
	if len(c.wb) == wbufSize {
		wbufPool.Put((*[wbufSize]byte)(c.wb))
	}
	c.wb = nb
}

func (w *response) declareTrailer(k string) {
	k = http.CanonicalHeaderKey(k)
	if !httpguts.ValidTrailerHeader(k) {
		return
	}
	w.trailers = append(w.trailers, k)
}

func (w *response) requestTooLarge() {
	w.closeAfterReply = true
	w.requestBodyLimitHit = true
	if !w.wroteHeader {
		w.Header().Set("Connection", "close")
	}
}

func (w *response) disableWriteContinue() {
	if !w.canWriteContinue.Load() {
		return
	}
	w.continueMu.Lock()
	w.canWriteContinue.Store(false)
	w.continueMu.Unlock()
}

// writeContinue sends "100 Continue" on the first read of the body of a
// request that expects it, unless the answer has started.
func (w *response) writeContinue() {
	w.continueMu.Lock()
	if w.canWriteContinue.Load() {
		c := w.c
		if _, err := c.rwc.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
			c.werr = err
		}
		w.canWriteContinue.Store(false)
	}
	w.continueMu.Unlock()
}

func (w *response) Write(p []byte) (int, error) { return w.write(len(p), p, "") }

func (w *response) WriteString(s string) (int, error) { return w.write(len(s), nil, s) }

func (w *response) write(n int, p []byte, s string) (int, error) {
	if w.hijacked() {
		if n > 0 {
			w.logCaller("response.Write on hijacked connection")
		}
		return 0, http.ErrHijacked
	}
	if w.canWriteContinue.Load() {
		w.disableWriteContinue()
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if n == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(n)
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	c := w.c
	if c.werr != nil {
		return 0, c.werr
	}
	if !w.committed {
		if c.wn-w.bodyStart+n <= pendingMax {
			if p != nil {
				c.wn += copy(c.wb[c.wn:], p)
			} else {
				c.wn += copy(c.wb[c.wn:], s)
			}
			return n, nil
		}
		if p == nil {
			p = []byte(s)
		}
		w.commitSniff(p)
	}
	if w.isHEAD {
		return n, nil
	}
	if w.chunking {
		if err := c.ensureW(20); err != nil {
			return 0, err
		}
		c.wn += copy(c.wb[c.wn:], strconv.AppendInt(c.wb[c.wn:c.wn], int64(n), 16))
		c.wn += copy(c.wb[c.wn:], "\r\n")
	}
	if c.wn+n <= len(c.wb) {
		if p != nil {
			c.wn += copy(c.wb[c.wn:], p)
		} else {
			c.wn += copy(c.wb[c.wn:], s)
		}
	} else {
		if p == nil {
			p = []byte(s)
		}
		if err := c.writeDirect(p); err != nil {
			return 0, err
		}
	}
	if w.chunking {
		if err := c.ensureW(2); err != nil {
			return 0, err
		}
		c.wn += copy(c.wb[c.wn:], "\r\n")
	}
	if c.werr != nil {
		return 0, c.werr
	}
	return n, nil
}

func (w *response) Flush() { w.FlushError() }

func (w *response) FlushError() error {
	if w.hijacked() {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit()
	}
	return w.c.flush()
}

// commit decides the framing of the answer, as net/http's
// chunkWriter.writeHeader does, and writes the framing fields into the
// gap left for them, so that head and buffered body are contiguous.
func (w *response) commit() { w.commitSniff(nil) }

// commitSniff is commit, next being the body's next write: with nothing
// buffered, its first bytes are what a Content-Type is sniffed from.
func (w *response) commitSniff(next []byte) {
	c := w.c
	w.committed = true
	p := c.wb[w.bodyStart:c.wn] // the body so far
	sniff := p
	if len(sniff) == 0 {
		sniff = next
	}
	keepAlives := !c.srv.shuttingDown()
	isHEAD := w.isHEAD
	bodyOK := bodyAllowedForStatus(w.status)
	te := first(w.teVals)
	hasTE := te != ""
	conn := first(w.connVals)
	clPresent := w.clVals != nil

	var setCL []byte
	var clBuf [20]byte
	if w.handlerDone.Load() && !w.hasTrailers && !hasTE && bodyOK && !clPresent && (!isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		setCL = strconv.AppendInt(clBuf[:0], int64(len(p)), 10)
	}
	if w.wants10KeepAlive && keepAlives {
		if first(w.clVals) != "" && conn == "keep-alive" {
			w.closeAfterReply = false
		}
	}
	hasCL := w.contentLength != -1
	setConn := ""
	if w.wants10KeepAlive && (isHEAD || hasCL || !bodyOK) {
		if w.connVals == nil {
			setConn = "keep-alive"
		}
	} else if !w.req.ProtoAtLeast(1, 1) || w.wantsClose {
		w.closeAfterReply = true
	}
	if conn == "close" || !keepAlives {
		w.closeAfterReply = true
	}
	if w.body != nil && w.body.expect && !w.body.reachedEOF() {
		w.closeAfterReply = true
	}
	// Consume the rest of the request body before answering: clients
	// that send their whole request before reading the answer would
	// otherwise deadlock. Too much left, and the connection closes.
	if w.req.ContentLength != 0 && !w.closeAfterReply && !w.fullDuplex && w.body != nil && !w.body.expect {
		if w.body.discardRest() {
			w.requestTooLarge()
			w.connVals = nil
			setConn = "close"
		}
	}
	delCL, delTE, delConn := false, false, false
	var ctype string
	if bodyOK {
		if !w.hasCE && !w.hasCT && !hasTE && len(sniff) > 0 {
			ctype = http.DetectContentType(sniff)
		}
	} else {
		delCL, delTE = true, true
	}
	if hasCL && hasTE && te != "identity" {
		c.srv.logf("http: WriteHeader called with both Transfer-Encoding of %q and a Content-Length of %d", te, w.contentLength)
		delCL, hasCL = true, false
	}
	switch {
	case isHEAD || !bodyOK || w.status == http.StatusNoContent:
		delTE = true
	case hasCL:
		delTE = true
	case w.req.ProtoAtLeast(1, 1):
		if hasTE && te == "identity" {
			w.chunking = false
			w.closeAfterReply = true
			delTE = true
		} else {
			w.chunking = true
			if hasTE && te == "chunked" {
				delTE = true
			}
		}
	default:
		w.closeAfterReply = true
		delTE = true
	}
	if w.chunking {
		delCL = true
		setCL = nil
	}
	if w.closeAfterReply && (!keepAlives || !hasToken(conn, "close")) && !(w.status == http.StatusSwitchingProtocols && w.upgrade != "" && httpguts.HeaderValuesContainsToken(w.connVals, "Upgrade")) {
		delConn = true
		setConn = ""
		if w.req.ProtoAtLeast(1, 1) {
			setConn = "close"
		}
	}

	// The framing fields, then the blank line, then (chunked) the first
	// chunk's size.
	var fb [256]byte
	f := fb[:0]
	if !w.hasDate {
		f = append(f, "Date: "...)
		f = appendDate(f)
		f = append(f, "\r\n"...)
	}
	if setCL != nil {
		f = append(f, "Content-Length: "...)
		f = append(f, setCL...)
		f = append(f, "\r\n"...)
	} else if !delCL && w.clVals != nil {
		f = appendField(f, "Content-Length", w.clVals)
	}
	if ctype != "" {
		f = append(f, "Content-Type: "...)
		f = append(f, ctype...)
		f = append(f, "\r\n"...)
	}
	if !delConn && w.connVals != nil {
		f = appendField(f, "Connection", w.connVals)
	}
	if setConn != "" {
		f = append(f, "Connection: "...)
		f = append(f, setConn...)
		f = append(f, "\r\n"...)
	}
	if !delTE && w.teVals != nil {
		f = appendField(f, "Transfer-Encoding", w.teVals)
	}
	if w.chunking {
		f = append(f, "Transfer-Encoding: chunked\r\n"...)
	}
	f = append(f, "\r\n"...)
	bodyLen := len(p)
	if isHEAD || !bodyOK {
		bodyLen = 0
		c.wn = w.bodyStart
	}
	if w.chunking && bodyLen > 0 {
		f = strconv.AppendInt(f, int64(bodyLen), 16)
		f = append(f, "\r\n"...)
	}

	// Close the gap: the framing right before the body, the header
	// fields moved up against it.
	gap := w.bodyStart - w.hdrEnd
	if len(f) > gap {
		more := len(f) - gap
		c.ensureCap(c.wn + more + 2)
		copy(c.wb[w.bodyStart+more:], c.wb[w.bodyStart:c.wn])
		c.wn += more
		w.bodyStart += more
		gap = len(f)
	}
	start := w.bodyStart - len(f)
	copy(c.wb[start:], f)
	shift := gap - len(f)
	if shift > 0 {
		copy(c.wb[c.ws+shift:], c.wb[c.ws:w.hdrEnd])
		c.ws += shift
	}
	if w.chunking && bodyLen > 0 {
		if err := c.ensureW(2); err == nil {
			c.wn += copy(c.wb[c.wn:], "\r\n")
		}
	}
}

func first(vv []string) string {
	if len(vv) > 0 {
		return vv[0]
	}
	return ""
}

// finishRequest completes the answer once the handler has returned and
// sends what is buffered: for most answers, head and body in one write.
func (w *response) finishRequest() {
	w.handlerDone.Store(true)
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	c := w.c
	if !w.committed {
		w.commit()
	}
	if w.chunking && c.werr == nil {
		if err := c.ensureW(5); err == nil {
			c.wn += copy(c.wb[c.wn:], "0\r\n")
			if t := w.finalTrailers(); t != nil {
				t.Write(wbufWriter{c})
			}
			if c.ensureW(2) == nil {
				c.wn += copy(c.wb[c.wn:], "\r\n")
			}
		}
	}
	c.flush()
	c.stopWatch()
	if w.body != nil {
		w.body.Close()
	}
}

// wbufWriter appends to the write buffer.
type wbufWriter struct{ c *conn }

func (b wbufWriter) Write(p []byte) (int, error) {
	if err := b.c.ensureW(len(p)); err != nil {
		return 0, err
	}
	b.c.wn += copy(b.c.wb[b.c.wn:], p)
	return len(p), nil
}

func (b wbufWriter) WriteString(s string) (int, error) { return b.Write([]byte(s)) }

// finalTrailers is the trailer section: the fields announced in Trailer
// and those set with http.TrailerPrefix.
func (w *response) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.handlerHeader {
		if kk, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range w.handlerHeader[k] {
			t.Add(k, v)
		}
	}
	return t
}

// shouldReuseConnection reports whether the connection may serve another
// request after this one.
func (w *response) shouldReuseConnection() bool {
	if w.closeAfterReply {
		return false
	}
	if !w.isHEAD && w.contentLength != -1 && bodyAllowedForStatus(w.status) && w.contentLength != w.written {
		return false // did not write what it declared
	}
	if w.c.werr != nil {
		return false
	}
	// A body not read to its end (too long to drain, or broken) leaves
	// the stream at an unknown place.
	if w.body != nil && !w.body.reachedEOF() {
		return false
	}
	return true
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == 204:
		return false
	case status == 304:
		return false
	}
	return true
}

func appendStatusLine(b []byte, is11 bool, code int) []byte {
	if is11 {
		b = append(b, "HTTP/1.1 "...)
	} else {
		b = append(b, "HTTP/1.0 "...)
	}
	if text := http.StatusText(code); text != "" {
		b = strconv.AppendInt(b, int64(code), 10)
		b = append(b, ' ')
		b = append(b, text...)
		return append(b, "\r\n"...)
	}
	b = append(b, itoa3(code)...)
	b = append(b, " status code "...)
	b = strconv.AppendInt(b, int64(code), 10)
	return append(b, "\r\n"...)
}

// appendField writes a header field as net/http's Header.Write does: a
// key that is not a token is dropped, and CR or LF in a value becomes a
// space, the value trimmed.
func appendField(b []byte, k string, vv []string) []byte {
	if !validKey(k) {
		return b
	}
	for _, v := range vv {
		b = append(b, k...)
		b = append(b, ": "...)
		if plainValue(v) {
			b = append(b, v...)
		} else {
			b = append(b, textproto.TrimString(strings.NewReplacer("\n", " ", "\r", " ").Replace(v))...)
		}
		b = append(b, "\r\n"...)
	}
	return b
}

func validKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !httpsyntax.IsTokenByte(k[i]) {
			return false
		}
	}
	return true
}

// plainValue: no CR or LF, no space to trim at either end.
func plainValue(v string) bool {
	if v == "" {
		return true
	}
	if isSpace(v[0]) || isSpace(v[len(v)-1]) {
		return false
	}
	return strings.IndexByte(v, '\n') < 0 && strings.IndexByte(v, '\r') < 0
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// The Date field, formatted once a second.
type dateEntry struct {
	sec int64
	b   []byte
}

var dateCache atomic.Pointer[dateEntry]

func appendDate(b []byte) []byte {
	now := time.Now()
	sec := now.Unix()
	d := dateCache.Load()
	if d == nil || d.sec != sec {
		d = &dateEntry{sec: sec, b: now.UTC().AppendFormat(make([]byte, 0, len(http.TimeFormat)), http.TimeFormat)}
		dateCache.Store(d)
	}
	return append(b, d.b...)
}
