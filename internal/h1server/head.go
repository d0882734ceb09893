package h1server

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sidecar-proxy/sidecar/internal/httpsyntax"
)

// Reading a request head takes two passes over it. The first (headScan)
// runs on each line as it arrives and applies every rule net/http's
// server applies line by line (request line, header line syntax, the
// bytes allowed), so that a malformed head is refused as soon as net/http
// would refuse it, and notes whether the head is plain: no obs-fold, no
// space in a field name. The second runs once the head is complete and
// builds the *http.Request from one string holding the whole head (its
// fields are substrings of it: one allocation). A head that is not plain
// is built by net/http's own http.ReadRequest instead, which is slower
// but is the reference: only the plain heads, which are all heads but
// the malformed, take the fast path, and the differential tests and the
// fuzz target hold the two to the same result.

// headScan is the first pass's state over the head in c.rb[c.rp:c.rw],
// kept on the stack of the goroutine that reads the head.
type headScan struct {
	pos   int  // offset of the first line not yet scanned
	line  int  // lines scanned
	end   int  // offset past the blank line ending the head; 0 until then
	slow  bool // not plain: build with http.ReadRequest
	nhdr  int  // header lines
	skip  int  // CR/LF bytes skipped before the request line (after a POST)
	major int
	minor int
	url   *url.URL // parsed in the first pass when not a plain path
}

// scan scans the complete lines of b (the head so far). It reports
// whether the head is complete, or the error that refuses it.
func (h *headScan) scan(b []byte) (bool, error) {
	for {
		i := bytes.IndexByte(b[h.pos:], '\n')
		if i < 0 {
			return false, nil
		}
		next := h.pos + i + 1
		line := b[h.pos : h.pos+i]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		switch {
		case h.line == 0:
			if err := h.requestLine(line); err != nil {
				return false, err
			}
		case len(line) == 0:
			h.end = next
			return true, nil
		default:
			if err := h.headerLine(line); err != nil {
				return false, err
			}
		}
		h.line++
		h.pos = next
	}
}

// requestLine checks the request line as net/http's readRequest does.
func (h *headScan) requestLine(line []byte) error {
	method, rest, ok1 := bytes.Cut(line, []byte{' '})
	uri, proto, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || !validToken(method) {
		return errBadRequest
	}
	var ok bool
	if h.major, h.minor, ok = parseHTTPVersion(proto); !ok {
		return errBadRequest
	}
	justAuthority := string(method) == "CONNECT" && !bytes.HasPrefix(uri, []byte{'/'})
	if !justAuthority && plainURI(uri) {
		return nil // parsed in the second pass, from the head's string
	}
	raw := string(uri)
	if justAuthority {
		raw = "http://" + raw
	}
	u, err := url.ParseRequestURI(raw)
	if err != nil {
		return errBadRequest
	}
	if justAuthority {
		u.Scheme = ""
	}
	h.url = u
	return nil
}

// headerLine checks a header line as textproto's ReadMIMEHeader does.
func (h *headScan) headerLine(line []byte) error {
	if line[0] == ' ' || line[0] == '\t' {
		if h.line == 1 {
			return errBadRequest // "malformed MIME header initial line"
		}
		// obs-fold: a continuation of the previous field's value.
		h.slow = true
		for _, c := range line {
			if !validHeaderValueByte(c) {
				return errBadRequest
			}
		}
		return nil
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return errBadRequest
	}
	for _, c := range line[:colon] {
		if !httpsyntax.IsTokenByte(c) {
			if c != ' ' {
				return errBadRequest
			}
			// Accepted by textproto, refused by the server once the head
			// is read ("invalid header name").
			h.slow = true
		}
	}
	for _, c := range line[colon+1:] {
		if !validHeaderValueByte(c) {
			return errBadRequest
		}
	}
	h.nhdr++
	return nil
}

// readRequest reads the next request head, waiting for it without a
// buffer if none is buffered, and returns its response, the request
// built. first is the connection's first request (whose wait is bounded
// by ReadHeaderTimeout from the accept, the others' by IdleTimeout).
func (c *conn) readRequest(first bool) (*response, error) {
	if c.hdlReadDL.Swap(false) {
		c.rwc.SetReadDeadline(time.Time{})
		c.headDL = false
	}
	if c.hdlWriteDL.Swap(false) {
		c.rwc.SetWriteDeadline(time.Time{})
	}
	if c.buffered() == 0 {
		timeout := c.srv.idleTimeout()
		if first {
			timeout = 0 // the deadline set at the accept holds
		}
		if err := c.waitRequest(timeout); err != nil {
			return nil, errSilent
		}
	}
	c.setState(stateActive)
	// The rest of the head is bounded by ReadHeaderTimeout from its first
	// bytes (net/http waits for them under IdleTimeout, then reads the
	// head under ReadHeaderTimeout); the first request's, from the accept.
	headTimed := first
	// The scan's state lives on this goroutine's stack, not in the
	// connection, which an idle connection keeps (docs/design.md, "The
	// app-facing HTTP/1.1 server").
	var hs headScan
	h := &hs
	limit := c.srv.headLimit()
	if c.afterPOST {
		// As net/http: up to 4 CR or LF bytes after a POST's body are
		// skipped (RFC 9112, section 2.2, for old clients).
		h.skip = -1
	}
	for {
		if h.skip < 0 {
			for c.buffered() > 0 && h.skip > -5 && (c.rb[c.rp] == '\r' || c.rb[c.rp] == '\n') {
				c.rp++
				h.skip--
			}
			if c.buffered() > 0 || h.skip == -5 {
				h.skip = 0
			}
		}
		if h.skip == 0 && c.buffered() > 0 {
			done, err := h.scan(c.rb[c.rp:c.rw])
			if err != nil {
				return nil, err
			}
			if done {
				break
			}
			if c.buffered() >= limit {
				return nil, errTooLarge
			}
		}
		if c.rw == len(c.rb) {
			if c.rp > 0 {
				c.rw = copy(c.rb, c.rb[c.rp:c.rw])
				c.rp = 0
			} else {
				// A head longer than the buffer: move to one that holds
				// the longest head allowed.
				big := make([]byte, limit+rbufSize)
				c.rw = copy(big, c.rb[c.rp:c.rw])
				c.rp = 0
				c.releaseRbufKeep()
				c.rb = big
			}
		}
		if !headTimed && c.srv.ReadHeaderTimeout > 0 {
			c.rwc.SetReadDeadline(time.Now().Add(c.srv.ReadHeaderTimeout))
			c.headDL = true
			headTimed = true
		}
		if err := c.fill(); err != nil {
			if err == io.EOF && c.buffered() > 0 {
				// A head cut short: net/http answers 400 (its reader
				// returns io.ErrUnexpectedEOF).
				return nil, errBadRequest
			}
			return nil, errSilent
		}
	}
	if h.end > limit {
		return nil, errTooLarge
	}
	if c.headDL {
		c.rwc.SetReadDeadline(time.Time{})
		c.headDL = false
	}
	head := c.rb[c.rp : c.rp+h.end]
	if c.srv.HandOff != nil && first && h.line == 1 && string(head) == "PRI * HTTP/2.0\r\n\r\n" {
		if err := c.handOff(); err != nil {
			return nil, err
		}
		return nil, errHandedOff
	}
	w, err := c.buildRequest(head, h)
	c.rp += h.end
	if err != nil {
		return nil, err
	}
	c.afterPOST = w.req.Method == "POST"
	return w, nil
}

// releaseRbufKeep drops the small read buffer (its bytes copied away).
func (c *conn) releaseRbufKeep() {
	if len(c.rb) == rbufSize {
		rbufPool.Put((*[rbufSize]byte)(c.rb))
	}
	c.rb = nil
}

// exchange is what one request allocates: its response, its body
// reader and the backing of its header values, in one object.
type exchange struct {
	w    response
	body body
	url  url.URL
	strs [8]string
}

// buildRequest is the second pass: the request and its response from a
// complete head.
func (c *conn) buildRequest(head []byte, h *headScan) (*response, error) {
	// The request is built on the stack; WithContext makes its one copy
	// on the heap.
	var rq http.Request
	req := &rq
	x := new(exchange)
	if h.slow {
		r, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(head), max(len(head), 16)))
		if err != nil {
			if m := err.Error(); strings.HasPrefix(m, "too many transfer encodings") || strings.HasPrefix(m, "unsupported transfer encoding") {
				return nil, errUnsupTE
			}
			return nil, errBadRequest
		}
		// Its body reader would read the head's copy: framed anew below.
		r.Body = nil
		rq = *r
		// http.ReadRequest drops the Host fields, which the checks below
		// need: read them again.
		_, fields, _ := bytes.Cut(head, []byte{'\n'})
		if mh, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(fields))).ReadMIMEHeader(); err == nil {
			if hv, ok := mh["Host"]; ok {
				rq.Header["Host"] = hv
			}
		}
	} else if err := c.plainRequest(head, h, x, req); err != nil {
		return nil, err
	}

	// The server's own checks (net/http's conn.readRequest).
	if !(req.ProtoMajor == 1 || req.ProtoMajor == 2 && req.ProtoMinor == 0 && req.Method == "PRI" && req.RequestURI == "*") {
		return nil, statusError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	}
	hosts, haveHost := req.Header["Host"]
	isH2Upgrade := req.Method == "PRI" && len(req.Header) == 0 && req.URL.Path == "*" && req.Proto == "HTTP/2.0"
	if req.ProtoAtLeast(1, 1) && (!haveHost || len(hosts) == 0) && !isH2Upgrade && req.Method != "CONNECT" {
		return nil, statusError{http.StatusBadRequest, "missing required Host header"}
	}
	if len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]) {
		return nil, statusError{http.StatusBadRequest, "malformed Host header"}
	}
	if h.slow {
		for k, vv := range req.Header {
			if !httpguts.ValidHeaderFieldName(k) {
				return nil, statusError{http.StatusBadRequest, "invalid header name"}
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					return nil, statusError{http.StatusBadRequest, "invalid header value"}
				}
			}
		}
	}
	delete(req.Header, "Host")

	ctx, cancel := context.WithCancel(c.ctx)
	req.RemoteAddr = c.remoteAddr
	w := &x.w
	*w = response{
		c:             c,
		cancel:        cancel,
		contentLength: -1,
		isHEAD:        req.Method == "HEAD",
	}
	if req.ProtoMajor == 1 && req.ProtoMinor == 0 {
		w.wants10KeepAlive = hasToken(req.Header.Get("Connection"), "keep-alive")
	}
	w.wantsClose = req.Close || hasToken(req.Header.Get("Connection"), "close")
	if isH2Upgrade {
		w.closeAfterReply = true
	}
	switch {
	case req.TransferEncoding != nil:
		x.body = body{c: c, w: w, chunked: true, closing: req.Close}
		w.body = &x.body
		req.Body = w.body
	case req.ContentLength > 0:
		x.body = body{c: c, w: w, remain: req.ContentLength, closing: req.Close}
		w.body = &x.body
		req.Body = w.body
	default:
		req.Body = http.NoBody
	}
	// A variable of its own, so that the request on the stack does not
	// escape with it.
	r := req.WithContext(ctx)
	w.req = r
	if w.body != nil {
		w.body.req = r
	}
	return w, nil
}

// plainRequest builds the request of a plain head (see headScan) as
// http.ReadRequest would.
func (c *conn) plainRequest(head []byte, h *headScan, x *exchange, req *http.Request) error {
	hs := string(head)
	eol := strings.IndexByte(hs, '\n')
	line := hs[:eol]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	rest := hs[eol+1:]
	sp1 := strings.IndexByte(line, ' ')
	sp2 := sp1 + 1 + strings.IndexByte(line[sp1+1:], ' ')
	req.Method = line[:sp1]
	req.RequestURI = line[sp1+1 : sp2]
	req.Proto = line[sp2+1:]
	req.ProtoMajor, req.ProtoMinor = h.major, h.minor
	if h.url != nil {
		req.URL = h.url
	} else {
		plainURL(&x.url, req.RequestURI)
		req.URL = &x.url
	}

	var strs []string
	if h.nhdr <= len(x.strs) {
		strs = x.strs[:h.nhdr]
	} else {
		strs = make([]string, h.nhdr)
	}
	hdr := make(http.Header, h.nhdr)
	for len(rest) > 0 {
		eol := strings.IndexByte(rest, '\n')
		l := rest[:eol]
		rest = rest[eol+1:]
		if n := len(l); n > 0 && l[n-1] == '\r' {
			l = l[:n-1]
		}
		if l == "" {
			break
		}
		colon := strings.IndexByte(l, ':')
		key := canonicalKey(l[:colon])
		v := trimOWS(l[colon+1:])
		if vv := hdr[key]; vv == nil {
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = v
			hdr[key] = vv
		} else {
			hdr[key] = append(vv, v)
		}
	}
	req.Header = hdr
	if len(hdr["Host"]) > 1 {
		return errBadRequest // "too many Host headers"
	}
	req.Host = req.URL.Host
	if req.Host == "" {
		if hv := hdr["Host"]; len(hv) > 0 {
			req.Host = hv[0]
		}
	}
	// fixPragmaCacheControl
	if hp, ok := hdr["Pragma"]; ok && len(hp) > 0 && hp[0] == "no-cache" {
		if _, ok := hdr["Cache-Control"]; !ok {
			hdr["Cache-Control"] = []string{"no-cache"}
		}
	}
	req.Close = shouldClose(req.ProtoMajor, req.ProtoMinor, hdr)

	// readTransfer: Transfer-Encoding, then the length, then trailers.
	chunked := false
	if te, ok := hdr["Transfer-Encoding"]; ok {
		delete(hdr, "Transfer-Encoding")
		// HTTP/1.0 requests' Transfer-Encoding is ignored; net/http's
		// transfer code reads HTTP/0.0 as 1.1.
		if req.ProtoAtLeast(1, 1) || req.ProtoMajor == 0 && req.ProtoMinor == 0 {
			if len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
				return errUnsupTE
			}
			chunked = true
		}
	}
	n, err := fixLength(hdr, chunked)
	if err != nil {
		return err
	}
	req.ContentLength = n
	if chunked {
		req.TransferEncoding = []string{"chunked"}
		if tr, ok := hdr["Trailer"]; ok {
			delete(hdr, "Trailer")
			t, err := trailerKeys(tr)
			if err != nil {
				return err
			}
			req.Trailer = t
		}
	}
	if req.Method == "PRI" && len(hdr) == 0 && req.URL.Path == "*" && req.Proto == "HTTP/2.0" {
		req.ContentLength = -1
		req.Close = true
	}
	return nil
}

// fixLength is net/http's for a request: the body's length from
// Content-Length, -1 when chunked.
func fixLength(hdr http.Header, chunked bool) (int64, error) {
	cls := hdr["Content-Length"]
	if len(cls) > 1 {
		first := textproto.TrimString(cls[0])
		for _, v := range cls[1:] {
			if textproto.TrimString(v) != first {
				return 0, errBadRequest // "multiple Content-Length headers"
			}
		}
		hdr["Content-Length"] = []string{first}
		cls = hdr["Content-Length"]
	}
	var n int64
	if len(cls) > 0 {
		cl := textproto.TrimString(cls[0])
		if cl == "" {
			return 0, errBadRequest
		}
		u, err := strconv.ParseUint(cl, 10, 63)
		if err != nil {
			return 0, errBadRequest
		}
		n = int64(u)
	}
	if chunked {
		delete(hdr, "Content-Length")
		return -1, nil
	}
	if len(cls) > 0 {
		return n, nil
	}
	return 0, nil
}

// trailerKeys is net/http's fixTrailer for a chunked request.
func trailerKeys(vv []string) (http.Header, error) {
	t := make(http.Header)
	var err error
	for _, v := range vv {
		foreachHeaderElement(v, func(key string) {
			key = http.CanonicalHeaderKey(key)
			switch key {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				if err == nil {
					err = errBadRequest
				}
				return
			}
			t[key] = nil
		})
	}
	if err != nil {
		return nil, err
	}
	if len(t) == 0 {
		return nil, nil
	}
	return t, nil
}

// foreachHeaderElement splits v per the "#rule" of RFC 9110, section 5.6.1,
// and calls fn for each non-empty element.
func foreachHeaderElement(v string, fn func(string)) {
	v = textproto.TrimString(v)
	if v == "" {
		return
	}
	if !strings.Contains(v, ",") {
		fn(v)
		return
	}
	for f := range strings.SplitSeq(v, ",") {
		if f = textproto.TrimString(f); f != "" {
			fn(f)
		}
	}
}

func shouldClose(major, minor int, hdr http.Header) bool {
	if major < 1 {
		return true
	}
	conv := hdr["Connection"]
	hasClose := httpguts.HeaderValuesContainsToken(conv, "close")
	if major == 1 && minor == 0 {
		return hasClose || !httpguts.HeaderValuesContainsToken(conv, "keep-alive")
	}
	return hasClose
}

// hasToken is net/http's: whether token is in the comma- or
// space-separated list v, case-insensitively.
func hasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	for sp := 0; sp <= len(v)-len(token); sp++ {
		if b := v[sp]; b != token[0] && b|0x20 != token[0] {
			continue
		}
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isTokenBoundary(v[end]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }

func parseHTTPVersion(v []byte) (major, minor int, ok bool) {
	switch string(v) {
	case "HTTP/1.1":
		return 1, 1, true
	case "HTTP/1.0":
		return 1, 0, true
	}
	if len(v) != len("HTTP/X.Y") || !bytes.HasPrefix(v, []byte("HTTP/")) || v[6] != '.' {
		return 0, 0, false
	}
	if v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9' {
		return 0, 0, false
	}
	return int(v[5] - '0'), int(v[7] - '0'), true
}

func validToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !httpsyntax.IsTokenByte(c) {
			return false
		}
	}
	return true
}

// validHeaderValueByte is a field-value byte: VCHAR, obs-text, SP, HTAB.
func validHeaderValueByte(c byte) bool { return c >= 0x20 && c != 0x7f || c == '\t' }

// pathTable marks the bytes a plain request path may hold: those for
// which url.ParseRequestURI leaves the path as it is (no RawPath): the
// unreserved characters and the reserved ones url keeps in a path.
var pathTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-_.~$&+,/:;=@" {
		t[c] = true
	}
	return t
}()

// plainURI reports whether uri is an origin-form target that plainURL
// parses exactly as url.ParseRequestURI does: a path of pathTable bytes,
// then optionally '?' and a query of any bytes but controls.
func plainURI(uri []byte) bool {
	if len(uri) == 0 || uri[0] != '/' {
		return false
	}
	i := 0
	for ; i < len(uri) && uri[i] != '?'; i++ {
		if !pathTable[uri[i]] {
			return false
		}
	}
	for ; i < len(uri); i++ {
		if c := uri[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// plainURL fills u as url.ParseRequestURI(uri) would, uri being plain.
func plainURL(u *url.URL, uri string) {
	path, query, hasQuery := strings.Cut(uri, "?")
	u.Path = path
	if hasQuery {
		if query == "" && !strings.Contains(path, "?") {
			u.ForceQuery = true
		}
		u.RawQuery = query
	}
}

// canonicalKey is textproto's canonical form of a token key, with the
// common keys interned so that they need no allocation.
func canonicalKey(k string) string {
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return canonicalSlow(k)
		}
		upper = c == '-'
	}
	return k
}

func canonicalSlow(k string) string {
	var buf [64]byte
	var b []byte
	if len(k) <= len(buf) {
		b = buf[:len(k)]
	} else {
		b = make([]byte, len(k))
	}
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
		upper = c == '-'
	}
	if v, ok := commonKeys[string(b)]; ok {
		return v
	}
	return string(b)
}

var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cache-Control", "Connection", "Content-Length", "Content-Type", "Cookie",
		"Expect", "Forwarded", "Grpc-Timeout", "Host", "If-Modified-Since", "If-None-Match",
		"Keep-Alive", "Origin", "Pragma", "Proxy-Authorization", "Proxy-Connection", "Referer",
		"Te", "Trailer", "Traceparent", "Tracestate", "Transfer-Encoding", "Upgrade", "User-Agent",
		"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Request-Id",
	} {
		m[k] = k
	}
	return m
}()

// trimOWS trims spaces and tabs at both ends.
func trimOWS(s string) string {
	i, j := 0, len(s)
	for i < j && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	for j > i && (s[j-1] == ' ' || s[j-1] == '\t') {
		j--
	}
	return s[i:j]
}
