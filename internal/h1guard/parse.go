package h1guard

import (
	"bytes"
	"math"

	"github.com/sidecar-proxy/sidecar/internal/httpsyntax"
)

// Parser states.
const (
	stHead      = iota // reading a request head, line by line
	stBody             // skipping a Content-Length body (remain bytes)
	stChunkSize        // reading a chunk-size line
	stChunkData        // skipping chunk data (remain bytes)
	stChunkCR          // expecting the CR after chunk data
	stChunkLF          // expecting the LF after chunk data
	stTrailer          // reading the trailer section of a chunked body
	stOff              // stopped; err is the verdict for everything after
)

// Limits of Go's server that decide where it finds the end of things.
const (
	// maxChunkLine is the size of the server's bufio.Reader: a chunk-size
	// line, LF included, must fit in it (net/http/internal.readChunkLine).
	maxChunkLine = 4096
	// maxTrailer bounds the trailer section: the CRLFCRLF ending it must be
	// within the bufio.Reader's size (net/http.seeUpcomingDoubleCRLF).
	maxTrailer = 4096
	// maxChunkExcess is net/http/internal's chunkedReader excess limit.
	maxChunkExcess = 16 * 1024
	// maxContentLength is the largest value strconv.ParseUint(s, 10, 63)
	// accepts.
	maxContentLength = 1<<63 - 1
)

// msg is the per-request state of the parser, reset for every head.
//
// The parser is part of every open connection, idle ones included (a
// parked app-facing connection costs little more than its structures:
// docs/design.md, "The app-facing HTTP/1.1 server"), so its fields are
// as small as their bounds allow.
type msg struct {
	start     int64  // stream offset of the request line (for tests)
	clVal     uint64 // first valid Content-Length value
	headBytes int32  // bytes of the head consumed so far (at most limit)
	clLen     uint8  // the first Content-Length's length in digits (at most 19)
	teCount   uint8  // Transfer-Encoding fields seen, counting up to 2

	reqLine bool // the request line has been read
	headers bool // a header field line was seen
	sp      bool // a space was seen in a partial request line

	post        bool // method is POST: tolerate CR/LF before the next head
	optionsStar bool // "OPTIONS * HTTP/1.x"
	pri         bool // "PRI * HTTP/2.0"
	http10      bool // HTTP/1.0 (Go ignores Transfer-Encoding)

	clSeen     bool // a Content-Length field was seen
	clBad      bool
	clConflict bool
	teBad      bool
}

// parser follows HTTP/1.x request framing over a stream fed in pieces,
// mirroring the rules of Go's net/http server (see doc.go).
type parser struct {
	st    uint8
	skip  int8  // leading CR/LF bytes still tolerated (after a POST)
	trail int32 // bytes of the trailer section consumed so far (at most maxTrailer)
	// heads counts the nil verdicts produced and not yet collected by
	// Conn (it is collected after every feed).
	heads  int32
	m      msg
	remain uint64 // body or chunk-data bytes left to skip
	excess int64  // chunkedReader overhead accounting
	line   []byte // a line split across feeds
	err    error  // verdict once st == stOff
	end    int64  // stream offset past the current feed's last byte

	// Configuration.
	limit           int32 // give up on a head larger than this
	skipOptionsStar bool  // the server answers "OPTIONS *" without the handler

	onHead func(start int64) // test hook: a head got a nil verdict
}

// setLimit sets the head limit, n bytes (clamped to what an int32 holds).
func (p *parser) setLimit(n int) { p.limit = int32(min(n, math.MaxInt32)) }

func (p *parser) feed(b []byte) {
	p.end += int64(len(b))
	for len(b) > 0 {
		switch p.st {
		case stHead:
			b = p.head(b)
		case stBody, stChunkData:
			if uint64(len(b)) < p.remain {
				p.remain -= uint64(len(b))
				b = nil
				break
			}
			b = b[p.remain:]
			p.remain = 0
			if p.st == stBody {
				p.endMessage()
			} else {
				p.st = stChunkCR
			}
		case stChunkCR:
			if b[0] != '\r' {
				p.halt(ErrMalformedChunked)
				break
			}
			b = b[1:]
			p.st = stChunkLF
		case stChunkLF:
			if b[0] != '\n' {
				p.halt(ErrMalformedChunked)
				break
			}
			b = b[1:]
			p.st = stChunkSize
		case stChunkSize:
			b = p.chunkSize(b)
		case stTrailer:
			b = p.trailer(b)
		default:
			b = nil
		}
	}
}

// halt stops parsing; err becomes the verdict for every later request.
func (p *parser) halt(err error) {
	p.st = stOff
	p.err = err
	p.line = nil
}

// takeLine splits b at its LF at index i and returns the line before it
// (with any CR) and what follows it. If the start of the line was buffered
// by an earlier feed, the line is assembled in p.line, so the caller must
// call doneLine after using it.
func (p *parser) takeLine(b []byte, i int) (line, rest []byte) {
	line, rest = b[:i], b[i+1:]
	if len(p.line) > 0 {
		p.line = append(p.line, line...)
		line = p.line
	}
	return line, rest
}

// doneLine resets the split-line buffer, dropping it if it grew large.
func (p *parser) doneLine() {
	if cap(p.line) > 4096 {
		p.line = nil
	} else {
		p.line = p.line[:0]
	}
}

func (p *parser) head(b []byte) []byte {
	if p.skip > 0 {
		// net/http.(*conn).readRequest: after a POST, up to 4 leading
		// CR or LF bytes are discarded.
		for p.skip > 0 && len(b) > 0 && (b[0] == '\r' || b[0] == '\n') {
			b = b[1:]
			p.skip--
		}
		if len(b) == 0 {
			return nil
		}
		p.skip = 0
	}
	if p.m.headBytes == 0 && len(p.line) == 0 {
		p.m.start = p.end - int64(len(b))
	}
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if int(p.m.headBytes)+len(p.line)+len(b) > int(p.limit) {
			p.halt(nil)
			return nil
		}
		if !p.m.reqLine && !p.plausibleRequestLine(b) {
			p.halt(ErrMalformedRequestLine)
			return nil
		}
		p.line = append(p.line, b...)
		return nil
	}
	line, rest := p.takeLine(b, i)
	hb := int(p.m.headBytes) + len(line) + 1
	if hb > int(p.limit) {
		p.halt(nil)
		return nil
	}
	p.m.headBytes = int32(hb)
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	switch {
	case !p.m.reqLine:
		p.m.reqLine = true
		p.requestLine(line)
	case len(line) == 0:
		p.endHead() // resets p.m
	default:
		p.headerLine(line)
	}
	p.doneLine()
	return rest
}

// plausibleRequestLine checks a piece of a request line that has no LF yet,
// so that a connection turned tunnel (TLS, WebSocket, ...) is given up at
// once instead of being buffered. It rejects only what Go's server rejects:
// a non-token byte in the method, or a control byte anywhere (the request
// target is refused by net/url, the version must be "HTTP/x.y").
func (p *parser) plausibleRequestLine(b []byte) bool {
	if n := len(p.line); n > 0 && p.line[n-1] == '\r' {
		return false // a CR not followed by LF
	}
	for i, c := range b {
		switch {
		case c == ' ':
			p.m.sp = true
		case !p.m.sp:
			if !httpsyntax.IsTokenByte(c) {
				return false
			}
		case c < ' ' || c == 0x7f:
			if c != '\r' || i != len(b)-1 {
				return false
			}
		}
	}
	return true
}

// requestLine mirrors net/http.parseRequestLine, validMethod,
// ParseHTTPVersion and http1ServerSupportsRequest.
func (p *parser) requestLine(line []byte) {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		p.halt(ErrMalformedRequestLine)
		return
	}
	method, rest := line[:sp1], line[sp1+1:]
	for _, c := range method {
		if !httpsyntax.IsTokenByte(c) {
			p.halt(ErrMalformedRequestLine)
			return
		}
	}
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 0 {
		p.halt(ErrMalformedRequestLine)
		return
	}
	target, proto := rest[:sp2], rest[sp2+1:]
	for _, c := range target {
		if c < ' ' || c == 0x7f {
			// net/url refuses control bytes in the request target.
			p.halt(ErrMalformedRequestLine)
			return
		}
	}
	if len(proto) != len("HTTP/1.1") || string(proto[:5]) != "HTTP/" || proto[6] != '.' ||
		!isDigit(proto[5]) || !isDigit(proto[7]) {
		p.halt(ErrMalformedRequestLine)
		return
	}
	switch major, minor := proto[5], proto[7]; {
	case major == '1':
		p.m.http10 = minor == '0'
	case major == '2' && minor == '0' && string(method) == "PRI" && string(target) == "*":
		p.m.pri = true
	default:
		p.halt(ErrMalformedRequestLine)
		return
	}
	p.m.post = string(method) == "POST"
	p.m.optionsStar = string(method) == "OPTIONS" && string(target) == "*"
}

func (p *parser) headerLine(line []byte) {
	if line[0] == ' ' || line[0] == '\t' {
		p.halt(ErrObsFold)
		return
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		p.halt(ErrMalformedHeader)
		return
	}
	if c := line[colon-1]; c == ' ' || c == '\t' {
		p.halt(ErrSpaceBeforeColon)
		return
	}
	p.m.headers = true
	name := line[:colon]
	switch len(name) {
	case len("content-length"):
		if equalFold(name, "content-length") {
			p.contentLength(trimOWS(line[colon+1:]))
		}
	case len("transfer-encoding"):
		if equalFold(name, "transfer-encoding") {
			p.m.teCount = min(p.m.teCount+1, 2)
			if v := trimOWS(line[colon+1:]); !equalFold(v, "chunked") {
				p.m.teBad = true
			}
		}
	}
}

// contentLength mirrors net/http.parseContentLength and fixLength: a value
// must be ASCII digits only, at most 1<<63-1, and repeated values must be
// identical strings (for digit strings: same length and same value).
func (p *parser) contentLength(v []byte) {
	p.m.clSeen = true
	if len(v) == 0 {
		p.m.clBad = true
		return
	}
	var n uint64
	for _, c := range v {
		if !isDigit(c) {
			p.m.clBad = true
			return
		}
		d := uint64(c - '0')
		if n > (maxContentLength-d)/10 {
			p.m.clBad = true // overflows int64
			return
		}
		n = n*10 + d
	}
	if p.m.clLen == 0 {
		p.m.clVal, p.m.clLen = n, uint8(len(v))
	} else if int(p.m.clLen) != len(v) || p.m.clVal != n {
		p.m.clConflict = true
	}
}

func (p *parser) endHead() {
	var err error
	switch {
	case p.m.clSeen && p.m.teCount > 0:
		err = ErrContentLengthAndTransferEncoding
	case p.m.teCount > 1:
		err = ErrMultipleTransferEncoding
	case p.m.teBad:
		err = ErrUnsupportedTransferEncoding
	case p.m.teCount > 0 && p.m.http10:
		err = ErrTransferEncodingHTTP10
	case p.m.clBad:
		err = ErrInvalidContentLength
	case p.m.clConflict:
		err = ErrConflictingContentLength
	}
	if err != nil {
		p.halt(err)
		return
	}
	// Go's server answers "OPTIONS *" itself (unless
	// DisableGeneralOptionsHandler is set): no handler, no Next call.
	if !p.m.optionsStar || !p.skipOptionsStar {
		p.heads++
		if p.onHead != nil {
			p.onHead(p.m.start)
		}
	}
	switch {
	case p.m.pri && !p.m.headers:
		// The HTTP/2 preface. Go's server either speaks HTTP/2 from here
		// on or hands this request to the handler and closes afterwards.
		p.halt(nil)
	case p.m.teCount > 0:
		p.st = stChunkSize
		p.excess = 0
	case p.m.clVal > 0:
		p.st = stBody
		p.remain = p.m.clVal
	default:
		p.endMessage()
	}
}

func (p *parser) endMessage() {
	if p.m.post {
		p.skip = 4
	}
	p.m = msg{}
	p.st = stHead
	// Between requests a connection keeps at most a small split-line
	// buffer: an idle connection holds no large one.
	if cap(p.line) > 256 {
		p.line = nil
	}
}

// chunkSize mirrors net/http/internal.(*chunkedReader).beginChunk.
func (p *parser) chunkSize(b []byte) []byte {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(p.line)+len(b) >= maxChunkLine {
			p.halt(ErrMalformedChunked)
			return nil
		}
		p.line = append(p.line, b...)
		return nil
	}
	line, rest := p.takeLine(b, i)
	if len(line)+1 > maxChunkLine {
		p.halt(ErrMalformedChunked)
		return nil
	}
	// The line must end in CRLF, with no other CR.
	if cr := bytes.IndexByte(line, '\r'); cr < 0 || cr != len(line)-1 {
		p.halt(ErrMalformedChunked)
		return nil
	}
	line = line[:len(line)-1]
	p.excess += int64(len(line)) + 2
	for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
		line = line[:len(line)-1]
	}
	if j := bytes.IndexByte(line, ';'); j >= 0 {
		line = line[:j]
	}
	n, ok := httpsyntax.ParseHex(line)
	if !ok {
		p.halt(ErrMalformedChunked)
		return nil
	}
	p.excess -= 16 + (2 * int64(n))
	p.excess = max(p.excess, 0)
	if p.excess > maxChunkExcess {
		p.halt(ErrMalformedChunked)
		return nil
	}
	p.doneLine()
	if n == 0 {
		p.st = stTrailer
		p.trail = 0
	} else {
		p.st = stChunkData
		p.remain = n
	}
	return rest
}

// trailer follows net/http.(*body).readTrailer and textproto's
// ReadMIMEHeader: every trailer section Go refuses halts the parser, so the
// parser never goes on reading requests where Go would not. Go accepts bare
// LF line endings in a trailer section only when a CRLFCRLF follows within
// 4096 bytes; that look-ahead is not modelled, so a bare LF there is
// treated as malformed (fail closed).
func (p *parser) trailer(b []byte) []byte {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if int(p.trail)+len(p.line)+len(b) >= maxTrailer {
			p.halt(ErrMalformedChunked)
			return nil
		}
		p.line = append(p.line, b...)
		return nil
	}
	line, rest := p.takeLine(b, i)
	trail := int(p.trail) + len(line) + 1
	first := trail == len(line)+1
	if trail > maxTrailer {
		p.halt(ErrMalformedChunked)
		return nil
	}
	p.trail = int32(trail)
	if cr := bytes.IndexByte(line, '\r'); cr < 0 || cr != len(line)-1 {
		p.halt(ErrMalformedChunked)
		return nil
	}
	line = line[:len(line)-1]
	if len(line) == 0 {
		p.endMessage()
		p.doneLine()
		return rest
	}
	value := line
	if line[0] == ' ' || line[0] == '\t' {
		// A continuation line: Go folds it into the previous field, but
		// refuses one at the start of the section.
		if first {
			p.halt(ErrMalformedChunked)
			return nil
		}
	} else {
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			p.halt(ErrMalformedChunked)
			return nil
		}
		for _, c := range line[:colon] {
			if !httpsyntax.IsTokenByte(c) && c != ' ' { // textproto tolerates spaces in names
				p.halt(ErrMalformedChunked)
				return nil
			}
		}
		value = line[colon+1:]
	}
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			p.halt(ErrMalformedChunked)
			return nil
		}
	}
	p.doneLine()
	return rest
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// equalFold reports whether b equals the lower-case ASCII string s, ignoring
// ASCII case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
