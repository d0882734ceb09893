package h2server

import (
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerBlock is the header block being read: a HEADERS frame and its
// CONTINUATIONs, decoded as they come (the HPACK state is the
// connection's, so every block is decoded, even one that is refused).
type headerBlock struct {
	active     bool
	id         uint32
	endStream  bool
	frames     int
	remain     uint32 // of the header list size, for fields but "trailer"
	trailerRem uint32 // for "trailer" fields
	truncated  bool   // over the size: fields dropped, 431
	invalid    error  // malformed: stream error PROTOCOL_ERROR
	sawRegular bool
	pseudo     uint8 // pseudo-header fields seen (bits below)
	response   bool  // a :status was seen
	method     string
	scheme     string
	authority  string
	path       string
	protocol   string
	fields     []hpack.HeaderField
}

const (
	seenMethod = 1 << iota
	seenScheme
	seenAuthority
	seenPath
	seenProtocol
)

var (
	errPseudoAfterRegular = errors.New("pseudo header field after regular")
	errInvalidField       = errors.New("invalid header field")
	errBadPseudo          = errors.New("invalid or duplicate pseudo header field")
)

// emit is the HPACK decoder's callback: it checks and stores one field
// of the block being read, as net/http's framer does.
func (c *conn) emit(hf hpack.HeaderField) {
	hb := &c.hb
	if hb.invalid != nil || hb.truncated {
		return
	}
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		hb.invalid = errInvalidField
		c.hdec.SetEmitEnabled(false)
		return
	}
	isPseudo := len(hf.Name) > 0 && hf.Name[0] == ':'
	if isPseudo {
		if hb.sawRegular {
			hb.invalid = errPseudoAfterRegular
		}
	} else {
		hb.sawRegular = true
		if !validWireHeaderFieldName(hf.Name) {
			hb.invalid = errInvalidField
		}
	}
	if hb.invalid != nil {
		c.hdec.SetEmitEnabled(false)
		return
	}
	remain := &hb.remain
	size := hf.Size()
	if hf.Name == "trailer" {
		remain = &hb.trailerRem
		n := strings.Count(hf.Value, ",") + 1
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	}
	if size > *remain {
		c.hdec.SetEmitEnabled(false)
		hb.truncated = true
		hb.remain, hb.trailerRem = 0, 0
		return
	}
	*remain -= size
	if !isPseudo {
		hb.fields = append(hb.fields, hf)
		return
	}
	var bit uint8
	switch hf.Name {
	case ":method":
		bit, hb.method = seenMethod, hf.Value
	case ":scheme":
		bit, hb.scheme = seenScheme, hf.Value
	case ":authority":
		bit, hb.authority = seenAuthority, hf.Value
	case ":path":
		bit, hb.path = seenPath, hf.Value
	case ":protocol":
		bit, hb.protocol = seenProtocol, hf.Value
	case ":status":
		if hb.response {
			hb.invalid = errBadPseudo
		}
		hb.response = true
		return
	default:
		hb.invalid = errBadPseudo
		c.hdec.SetEmitEnabled(false)
		return
	}
	if hb.pseudo&bit != 0 {
		hb.invalid = errBadPseudo
		c.hdec.SetEmitEnabled(false)
	}
	hb.pseudo |= bit
}

func validWireHeaderFieldName(v string) bool {
	if len(v) == 0 {
		return false
	}
	for i := 0; i < len(v); i++ {
		b := v[i]
		if b >= 0x80 || !httpguts.IsTokenRune(rune(b)) || ('A' <= b && b <= 'Z') {
			return false
		}
	}
	return true
}

func (c *conn) processHeaders(f *http2.HeadersFrame) error {
	if f.StreamID%2 != 1 {
		return connError{http2.ErrCodeProtocol, "HEADERS on an even stream"}
	}
	hb := &c.hb
	*hb = headerBlock{fields: hb.fields[:0]}
	hb.active = true
	hb.id = f.StreamID
	hb.endStream = f.StreamEnded()
	hb.remain, hb.trailerRem = c.maxHeaderList, c.maxHeaderList
	if f.HasPriority() && f.Priority.StreamDep == f.StreamID {
		hb.invalid = errors.New("stream depends on itself")
	}
	c.hdec.SetEmitEnabled(true)
	return c.blockFragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

func (c *conn) processContinuation(f *http2.ContinuationFrame) error {
	if !c.hb.active || f.StreamID != c.hb.id {
		return connError{http2.ErrCodeProtocol, "unexpected CONTINUATION"}
	}
	return c.blockFragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

// blockFragment decodes one fragment of the current block; the last one
// completes it.
func (c *conn) blockFragment(frag []byte, end bool) error {
	hb := &c.hb
	hb.frames++
	// A fragment far over what is left of the size bound, or any
	// fragment once it is exceeded, ends the connection: the bytes are
	// not even decoded (the CONTINUATION-flood defence of net/http).
	if int64(len(frag)) > 2*int64(hb.remain+hb.trailerRem) || hb.frames > maxHeaderFrames {
		return connError{http2.ErrCodeProtocol, "header block too large"}
	}
	if hb.invalid != nil && hb.frames > 1 {
		return connError{http2.ErrCodeProtocol, "invalid header field"}
	}
	if _, err := c.hdec.Write(frag); err != nil {
		return connError{http2.ErrCodeCompression, "HPACK: " + err.Error()}
	}
	if !end {
		return nil
	}
	hb.active = false
	if err := c.hdec.Close(); err != nil {
		return connError{http2.ErrCodeCompression, "HPACK: " + err.Error()}
	}
	c.hdec.SetEmitEnabled(true)
	return c.headerBlockDone()
}

// headerBlockDone acts on a complete header block: a new stream, a
// stream's trailers, or an error.
func (c *conn) headerBlockDone() error {
	hb := &c.hb
	id := hb.id
	c.mu.Lock()
	st, idle, resetByUs := c.lookup(id)
	if st != nil && st.remoteDone && st.sentEnd.Load() {
		// Both ends sent END_STREAM: the stream is closed, though its
		// handler has not yet taken it out of the table.
		st = nil
	}
	if st != nil {
		// Trailers.
		defer c.mu.Unlock()
		switch {
		case st.remoteDone:
			c.closeStreamLocked(st, errStreamClosed, true)
			return streamError{id, http2.ErrCodeStreamClosed}
		case !hb.endStream || hb.invalid != nil || hb.pseudo != 0 || hb.response || hb.truncated:
			c.closeStreamLocked(st, errors.New("http2: malformed request trailers"), true)
			return streamError{id, http2.ErrCodeProtocol}
		}
		if st.reqTrailer != nil {
			for _, hf := range hb.fields {
				key := c.canonicalKey(hf.Name)
				if !httpguts.ValidTrailerHeader(key) {
					c.closeStreamLocked(st, errors.New("http2: malformed request trailers"), true)
					return streamError{id, http2.ErrCodeProtocol}
				}
				st.setTrailer(key, hf.Value)
			}
		}
		return c.endRemoteLocked(st)
	}
	if !idle {
		c.mu.Unlock()
		if resetByUs {
			return nil // trailers in flight on a stream we reset
		}
		return connError{http2.ErrCodeStreamClosed, "HEADERS on a closed stream"}
	}
	if c.goingAway && (c.closed || id > c.goAwayID) {
		c.mu.Unlock()
		return nil // after GOAWAY: not served, and the peer knows it
	}
	c.maxClientID = id
	if hb.invalid != nil || hb.response || (hb.protocol != "") {
		c.mu.Unlock()
		return streamError{id, http2.ErrCodeProtocol}
	}
	if uint32(len(c.streams)) >= c.advMaxStreams {
		code := http2.ErrCodeProtocol
		if c.unackedSettings > 0 {
			code = http2.ErrCodeRefusedStream
		}
		c.mu.Unlock()
		return streamError{id, code}
	}
	c.mu.Unlock()

	st, err := c.newStream(hb)
	if err != nil {
		return err
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		st.discard()
		return nil
	}
	c.streams[id] = st
	st.sendWindow = c.initSendWindow
	if c.handlers >= int(c.advMaxStreams) {
		// As many handlers run as streams may be open: a peer that
		// resets its streams at once (rapid reset) queues the next
		// ones, and is cut off when too many wait.
		if len(c.queue) >= c.maxHandlersQueue {
			c.mu.Unlock()
			return connError{http2.ErrCodeEnhanceYourCalm, "too many streams reset early"}
		}
		c.queue = append(c.queue, st)
		c.mu.Unlock()
		return nil
	}
	c.handlers++
	c.mu.Unlock()
	c.srv.workers.run(st)
	return nil
}

// connHeaders are the connection-specific fields HTTP/2 forbids
// (RFC 9113, section 8.2.2), canonical.
var connHeaders = [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

// newStream makes the stream and the request of a complete header
// block that opens one, or the stream error that refuses it.
func (c *conn) newStream(hb *headerBlock) (*stream, error) {
	id := hb.id
	bad := streamError{id, http2.ErrCodeProtocol}
	isConnect := hb.method == "CONNECT"
	if isConnect {
		if hb.path != "" || hb.scheme != "" || hb.authority == "" {
			return nil, bad
		}
	} else if hb.method == "" || hb.path == "" || (hb.scheme != "https" && hb.scheme != "http") {
		return nil, bad
	}
	header := make(http.Header, len(hb.fields))
	vals := make([]string, len(hb.fields))
	for i, hf := range hb.fields {
		key := c.canonicalKey(hf.Name)
		vals[i] = hf.Value
		if old, ok := header[key]; ok {
			header[key] = append(old, hf.Value)
		} else {
			header[key] = vals[i : i+1 : i+1]
		}
	}
	for _, k := range connHeaders {
		if _, ok := header[k]; ok {
			return nil, bad
		}
	}
	if te := header["Te"]; len(te) > 0 && (len(te) > 1 || (te[0] != "trailers" && te[0] != "")) {
		return nil, bad
	}

	needsContinue := false
	if v := header["Expect"]; v != nil && httpguts.HeaderValuesContainsToken(v, "100-continue") {
		needsContinue = true
		delete(header, "Expect")
	}
	if cookies := header["Cookie"]; len(cookies) > 1 {
		header["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	var trailer http.Header
	for _, v := range header["Trailer"] {
		for key := range strings.SplitSeq(v, ",") {
			key = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(key))
			switch key {
			case "Transfer-Encoding", "Trailer", "Content-Length", "":
			default:
				if trailer == nil {
					trailer = http.Header{}
				}
				trailer[key] = nil
			}
		}
	}
	delete(header, "Trailer")
	authority := hb.authority
	if host := header["Host"]; len(host) == 1 {
		if authority == "" {
			authority = host[0]
		} else if host[0] != authority {
			return nil, bad
		}
		delete(header, "Host")
	} else if len(host) > 1 {
		return nil, bad
	}
	if strings.IndexByte(authority, '@') >= 0 && (hb.scheme == "http" || hb.scheme == "https") {
		return nil, bad
	}
	if authority != "" && !httpguts.ValidHostHeader(authority) {
		return nil, bad
	}
	var u *url.URL
	var requestURI string
	if isConnect {
		u = &url.URL{Host: authority}
		requestURI = authority
	} else {
		if hb.path[0] != '/' && hb.path != "*" {
			return nil, bad
		}
		var err error
		if u, err = url.ParseRequestURI(hb.path); err != nil {
			return nil, bad
		}
		requestURI = hb.path
	}

	st := getStream(c, id)
	st.handler = c.srv.Handler
	if hb.truncated {
		st.handler = http.HandlerFunc(headerListTooLong)
	}
	st.isHead = hb.method == "HEAD"
	st.recvAvail = c.initRecvWindow
	st.needsContinue = needsContinue
	st.reqTrailer = trailer
	body := io.ReadCloser(http.NoBody)
	var cl int64
	st.declLen = -1
	if hb.endStream {
		st.remoteDone = true
		st.needsContinue = false
	} else {
		cl = -1
		if vv, ok := header["Content-Length"]; ok {
			if n, err := strconv.ParseUint(vv[0], 10, 63); err == nil {
				cl = int64(n)
			} else {
				cl = 0
			}
			st.declLen = cl
		}
		body = &st.rs.body
	}
	st.bmu.Lock()
	st.rs.body.st, st.rs.body.gen = st, st.gen
	st.bmu.Unlock()
	st.rs.rw.st = st
	ctx := st.ctx
	req := (&http.Request{
		Method:        hb.method,
		URL:           u,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        header,
		Body:          body,
		ContentLength: cl,
		Host:          authority,
		RemoteAddr:    c.remoteAddr,
		RequestURI:    requestURI,
		Trailer:       trailer,
	}).WithContext(ctx)
	st.req = req
	return st, nil
}

func headerListTooLong(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
	io.WriteString(w, "<h1>HTTP Error 431</h1><p>Request Header Field(s) Too Large</p>")
}

// canonicalKey is the canonical form of a lower-case field name.
func (c *conn) canonicalKey(v string) string {
	if s, ok := commonCanon[v]; ok {
		return s
	}
	if s, ok := c.canon[v]; ok {
		return s
	}
	s := textproto.CanonicalMIMEHeaderKey(v)
	if len(c.canon) < 128 {
		if c.canon == nil {
			c.canon = map[string]string{}
		}
		c.canon[v] = s
	}
	return s
}

// lowerKey is the wire form of a canonical key, and whether it is
// ASCII. Under wmu.
func (c *conn) lowerKey(k string) (string, bool) {
	if s, ok := commonLower[k]; ok {
		return s, true
	}
	if s, ok := c.lower[k]; ok {
		return s, true
	}
	for i := 0; i < len(k); i++ {
		if k[i] >= 0x80 {
			return "", false
		}
	}
	s := strings.ToLower(k)
	if len(c.lower) < 128 {
		if c.lower == nil {
			c.lower = map[string]string{}
		}
		c.lower[k] = s
	}
	return s, true
}

var commonCanon, commonLower = func() (map[string]string, map[string]string) {
	names := []string{
		"accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges", "age",
		"access-control-allow-credentials", "access-control-allow-headers", "access-control-allow-methods",
		"access-control-allow-origin", "access-control-expose-headers", "access-control-max-age",
		"access-control-request-headers", "access-control-request-method", "allow", "authorization",
		"cache-control", "content-disposition", "content-encoding", "content-language", "content-length",
		"content-location", "content-range", "content-type", "cookie", "date", "etag", "expect", "expires",
		"forwarded", "from", "host", "if-match", "if-modified-since", "if-none-match", "if-unmodified-since",
		"last-modified", "link", "location", "max-forwards", "origin", "proxy-authenticate",
		"proxy-authorization", "range", "referer", "refresh", "retry-after", "server", "set-cookie",
		"strict-transport-security", "te", "trailer", "transfer-encoding", "user-agent", "vary", "via",
		"www-authenticate", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-request-id",
		"traceparent", "tracestate", "idempotency-key",
		"grpc-status", "grpc-message", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
		"grpc-status-details-bin", "grpc-retry-pushback-ms", "grpc-previous-rpc-attempts",
		"sidecar-attempts", "sidecar-outcome", "sidecar-spool-id",
	}
	canon := make(map[string]string, len(names))
	lower := make(map[string]string, len(names))
	for _, n := range names {
		k := textproto.CanonicalMIMEHeaderKey(n)
		canon[n] = k
		lower[k] = n
	}
	return canon, lower
}()

// statusText returns the :status value of code.
func statusText(code int) string {
	switch code {
	case 200:
		return "200"
	case 404:
		return "404"
	}
	return strconv.Itoa(code)
}

// date returns the Date field of now, formatted once a second.
func date() string {
	now := time.Now().Unix()
	if d := dateCache.Load(); d != nil && d.sec == now {
		return d.s
	}
	d := &dateEntry{sec: now, s: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d.s
}

type dateEntry struct {
	sec int64
	s   string
}

var dateCache atomic.Pointer[dateEntry]

// encodeField adds k: v to the header block being encoded, under wmu.
func (c *conn) encodeField(k, v string) {
	c.henc.WriteField(hpack.HeaderField{Name: k, Value: v})
}

// encodeValues adds the fields of key k (as in an http.Header) to the
// block being encoded, but connection-specific ones and invalid ones, as
// net/http's server skips them. Under wmu.
func (c *conn) encodeValues(k string, vv []string) {
	lk, ok := c.lowerKey(k)
	if !ok || !validWireHeaderFieldName(lk) {
		return
	}
	switch lk {
	case "connection", "keep-alive", "proxy-connection", "upgrade", "transfer-encoding":
		return
	}
	isTE := lk == "te"
	for _, v := range vv {
		if !httpguts.ValidHeaderFieldValue(v) || (isTE && v != "trailers") {
			continue
		}
		c.encodeField(lk, v)
	}
}

// encodeHeaderMap adds the fields of h under keys to the block being
// encoded. Under wmu.
func (c *conn) encodeHeaderMap(h http.Header, keys []string) {
	for _, k := range keys {
		if vv, ok := h[k]; ok {
			c.encodeValues(k, vv)
		}
	}
}
