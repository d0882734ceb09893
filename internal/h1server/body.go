package h1server

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"sync"
)

// maxPostHandlerReadBytes is how much of a body the handler left unread
// the server reads to keep the connection (net/http's figure).
const maxPostHandlerReadBytes = 256 << 10

// maxLineLength bounds a chunk-size line, as net/http's chunked reader
// (whose line must fit its 4 KiB bufio.Reader).
const maxLineLength = 4096

var (
	errLineTooLong = errors.New("header line too long")
	errTrailerEOF  = errors.New("http: unexpected EOF reading trailer")
)

// body is a request body: Content-Length bytes or a chunked body read
// from the connection's read buffer, by the handler or by any goroutine
// it hands the body to (an upstream transport reads it on its own), even
// after the handler returned: the mutex orders those reads against the
// server's, and once the server closed the body (after the handler), a
// read gets http.ErrBodyReadAfterClose and never touches the connection
// again. Its framing rules are net/http's, to the error.
type body struct {
	c   *conn
	w   *response
	req *http.Request // for its Trailer

	mu      sync.Mutex
	chunked bool
	closing bool // the connection closes after this request
	expect  bool // 100-continue: the first read sends it
	remain  int64

	// The chunked reader's state (net/http/internal.chunkedReader's).
	cn       uint64 // bytes left in the current chunk
	checkEnd bool   // the CRLF after a chunk's data is due
	excess   int64
	cerr     error

	sawEOF     bool
	closed     bool
	earlyClose bool
	hijacked   bool
}

func (b *body) Read(p []byte) (int, error) {
	if b.expect && b.w.canWriteContinue.Load() {
		b.w.writeContinue()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.hijacked {
		return 0, http.ErrHijacked
	}
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.readLocked(p)
}

func (b *body) readLocked(p []byte) (int, error) {
	if b.sawEOF {
		return 0, io.EOF
	}
	var n int
	var err error
	if b.chunked {
		n, err = b.readChunked(p)
		if err == io.EOF {
			b.sawEOF = true
			if e := b.readTrailer(); e != nil {
				// Nothing more may be read of this body or connection.
				err = e
				b.sawEOF = false
				b.closed = true
			}
		}
	} else {
		n, err = b.readCL(p)
		// A body cut short ends too (net/http's reader sees EOF either
		// way); the connection, at its end, is not reused.
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			b.sawEOF = true
		}
	}
	if b.sawEOF {
		b.c.armWatch(b.w)
	}
	return n, err
}

// Buffered reports whether the body's next Read is served without
// reading the socket (from the connection's read buffer, or because the
// body ended or failed), and whether everything left of it is. A reader
// that bounds its reads with a read deadline needs none for those
// (docs/design.md, "The app-facing HTTP/1.1 server"). A chunked body
// reports false until its end: a chunk's framing may need more bytes.
func (b *body) Buffered() (next, all bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.sawEOF || b.closed || b.hijacked:
		return true, true
	case b.chunked || b.expect && b.w.canWriteContinue.Load():
		return false, false
	case b.remain <= 0:
		return true, true
	}
	n := int64(b.c.buffered())
	return n > 0, n >= b.remain
}

// readCL reads a Content-Length body, returning io.EOF with its last
// bytes.
func (b *body) readCL(p []byte) (int, error) {
	if b.remain <= 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if int64(len(p)) > b.remain {
		p = p[:b.remain]
	}
	n, err := b.c.bufRead(p)
	b.remain -= int64(n)
	if err != nil {
		b.sockFailed()
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	if b.remain == 0 {
		return n, io.EOF
	}
	return n, nil
}

// sockFailed: a read of the connection failed (the client went away,
// a deadline passed): the request is canceled, as net/http's reader
// cancels it on any read error.
func (b *body) sockFailed() {
	b.w.cancel()
}

// readChunked is net/http/internal's chunkedReader.Read on the
// connection's buffer.
func (b *body) readChunked(p []byte) (n int, err error) {
	c := b.c
	for b.cerr == nil {
		if b.checkEnd {
			if n > 0 && c.buffered() < 2 {
				break
			}
			if e := b.need(2); e != nil {
				if e == io.EOF {
					e = io.ErrUnexpectedEOF
				}
				b.cerr = e
				break
			}
			if c.rb[c.rp] != '\r' || c.rb[c.rp+1] != '\n' {
				b.cerr = errors.New("malformed chunked encoding")
				break
			}
			c.rp += 2
			b.checkEnd = false
		}
		if b.cn == 0 {
			if n > 0 && !b.chunkHeaderAvailable() {
				break
			}
			b.beginChunk()
			continue
		}
		if len(p) == 0 {
			break
		}
		rbuf := p
		if uint64(len(rbuf)) > b.cn {
			rbuf = rbuf[:b.cn]
		}
		n0, e := c.bufRead(rbuf)
		n += n0
		p = p[n0:]
		b.cn -= uint64(n0)
		if e != nil {
			b.sockFailed()
			if e == io.EOF {
				e = io.ErrUnexpectedEOF
			}
			b.cerr = e
		} else if b.cn == 0 {
			b.checkEnd = true
		}
	}
	return n, b.cerr
}

// need reads until at least n bytes are buffered (n <= rbufSize).
func (b *body) need(n int) error {
	c := b.c
	for c.buffered() < n {
		if c.rb != nil && c.rp > 0 && c.rw == len(c.rb) {
			c.rw = copy(c.rb, c.rb[c.rp:c.rw])
			c.rp = 0
		}
		if err := c.fill(); err != nil {
			if c.buffered() >= n {
				return nil
			}
			if err != io.EOF {
				b.sockFailed()
			}
			return err
		}
	}
	return nil
}

func (b *body) chunkHeaderAvailable() bool {
	c := b.c
	return c.buffered() > 0 && bytes.IndexByte(c.rb[c.rp:c.rw], '\n') >= 0
}

func (b *body) beginChunk() {
	line, err := b.readChunkLine()
	if err != nil {
		b.cerr = err
		return
	}
	b.excess += int64(len(line)) + 2
	for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
		line = line[:len(line)-1]
	}
	line, _, _ = bytes.Cut(line, []byte{';'})
	b.cn, b.cerr = parseHexUint(line)
	if b.cerr != nil {
		return
	}
	// As net/http: at most 16 bytes of overhead per chunk plus twice its
	// data, so that a client cannot make the server read much more than
	// it delivers.
	b.excess -= 16 + 2*int64(b.cn)
	b.excess = max(b.excess, 0)
	if b.excess > 16*1024 {
		b.cerr = errors.New("chunked encoding contains too much non-data")
	}
	if b.cn == 0 {
		b.cerr = io.EOF
	}
}

// readChunkLine reads a chunk-size line, which must end in CRLF and fit
// in 4 KiB with it.
func (b *body) readChunkLine() ([]byte, error) {
	c := b.c
	var i int
	for {
		window := c.rb[c.rp:c.rw]
		if len(window) > maxLineLength {
			window = window[:maxLineLength]
		}
		if i = bytes.IndexByte(window, '\n'); i >= 0 {
			break
		}
		if c.buffered() >= maxLineLength {
			return nil, errLineTooLong
		}
		if c.rp > 0 && (c.rw == len(c.rb) || c.rp+maxLineLength > len(c.rb)) {
			c.rw = copy(c.rb, c.rb[c.rp:c.rw])
			c.rp = 0
		}
		if err := c.fill(); err != nil {
			if err == io.EOF {
				return nil, io.ErrUnexpectedEOF
			}
			b.sockFailed()
			return nil, err
		}
	}
	p := c.rb[c.rp : c.rp+i+1]
	c.rp += i + 1
	if idx := bytes.IndexByte(p, '\r'); idx == -1 {
		return nil, errors.New("chunked line ends with bare LF")
	} else if idx != len(p)-2 {
		return nil, errors.New("invalid CR in chunked line")
	}
	p = p[:len(p)-2]
	if len(p) >= maxLineLength {
		return nil, errLineTooLong
	}
	return p, nil
}

func parseHexUint(v []byte) (n uint64, err error) {
	if len(v) == 0 {
		return 0, errors.New("empty hex number for chunk length")
	}
	for i, b := range v {
		switch {
		case '0' <= b && b <= '9':
			b -= '0'
		case 'a' <= b && b <= 'f':
			b = b - 'a' + 10
		case 'A' <= b && b <= 'F':
			b = b - 'A' + 10
		default:
			return 0, errors.New("invalid byte in chunk length")
		}
		if i == 16 {
			return 0, errors.New("http chunk length too large")
		}
		n <<= 4
		n |= uint64(b)
	}
	return
}

// readTrailer reads the trailer section after the last chunk, as
// net/http's body.readTrailer does: it must end, CRLFCRLF, within 4 KiB.
func (b *body) readTrailer() error {
	c := b.c
	if err := b.need(2); err != nil && c.buffered() < 2 {
		return errTrailerEOF
	}
	if c.rb[c.rp] == '\r' && c.rb[c.rp+1] == '\n' {
		c.rp += 2
		return nil
	}
	// Find the end within the window net/http's Peek loop sees.
	for {
		window := c.rb[c.rp:c.rw]
		if len(window) > rbufSize {
			window = window[:rbufSize]
		}
		if bytes.Contains(window, []byte("\r\n\r\n")) {
			break
		}
		if c.buffered() >= rbufSize {
			return errors.New("http: suspiciously long trailer after chunked body")
		}
		if c.rp > 0 {
			c.rw = copy(c.rb, c.rb[c.rp:c.rw])
			c.rp = 0
		}
		if err := c.fill(); err != nil {
			if err != io.EOF {
				b.sockFailed()
			}
			return errors.New("http: suspiciously long trailer after chunked body")
		}
	}
	window := c.rb[c.rp:c.rw]
	if len(window) > rbufSize {
		window = window[:rbufSize]
	}
	// Trailers are rare: parsed by textproto itself.
	src := bytes.NewReader(window)
	br := bufio.NewReaderSize(src, rbufSize)
	hdr, err := textproto.NewReader(br).ReadMIMEHeader()
	if err != nil {
		if err == io.EOF {
			return errTrailerEOF
		}
		return err
	}
	c.rp += len(window) - br.Buffered() - src.Len()
	if b.req.Trailer == nil {
		b.req.Trailer = http.Header(hdr)
	} else {
		for k, vv := range hdr {
			b.req.Trailer[k] = vv
		}
	}
	return nil
}

// reachedEOF reports whether the body was read to its end.
func (b *body) reachedEOF() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sawEOF
}

func (b *body) earlyClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.earlyClose
}

func (b *body) hijack() {
	b.mu.Lock()
	b.hijacked = true
	b.mu.Unlock()
}

// discardRest consumes what the handler left of the body before its
// answer goes out, as net/http does when it writes the header; it
// reports whether too much was left, and the connection must close.
func (b *body) discardRest() (tooBig bool) {
	b.mu.Lock()
	switch {
	case b.closed:
		if !b.sawEOF {
			b.w.closeAfterReply = true
		}
		b.mu.Unlock()
		return false
	case b.sawEOF:
		b.mu.Unlock()
		return false
	case !b.chunked && b.remain >= maxPostHandlerReadBytes:
		b.mu.Unlock()
		return true
	}
	_, err := io.CopyN(io.Discard, bodyLocked{b}, maxPostHandlerReadBytes+1)
	b.mu.Unlock()
	switch err {
	case nil:
		return true
	case io.EOF:
		return false
	}
	b.w.closeAfterReply = true
	return false
}

// Close ends the body. After the handler, the server closes it: what is
// left, up to 256 KiB, is read so that the connection can serve the next
// request (unless it closes anyway).
func (b *body) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.hijacked {
		return nil
	}
	var err error
	switch {
	case b.sawEOF:
	case !b.chunked && b.closing:
	case !b.chunked && b.remain > maxPostHandlerReadBytes:
		b.earlyClose = true
	default:
		var n int64
		n, err = io.CopyN(io.Discard, bodyLocked{b}, maxPostHandlerReadBytes)
		if err == io.EOF {
			err = nil
		}
		if n == maxPostHandlerReadBytes {
			b.earlyClose = true
		}
	}
	b.closed = true
	return err
}

// bodyLocked reads a body whose mutex is held.
type bodyLocked struct{ b *body }

func (bl bodyLocked) Read(p []byte) (int, error) {
	if bl.b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return bl.b.readLocked(p)
}
