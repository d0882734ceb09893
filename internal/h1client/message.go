package h1client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/sidecar-proxy/sidecar/internal/httpsyntax"
)

// errMalformed is an answer that breaks HTTP/1.1 syntax.
var errMalformed = errors.New("h1client: malformed HTTP response")

// max1xx bounds the informational answers before the final one, as
// net/http's Transport does.
const max1xx = 5

// head is a parsed response head.
type head struct {
	minor  int // HTTP/1.minor
	code   int
	status string // "200 OK"
	header http.Header
}

// readResponse reads the answer to the request written: 1xx answers go to
// the request's ClientTrace, the final one is returned.
func (ex *exchange) readResponse(ctx context.Context) (*http.Response, error) {
	c := ex.c
	for n1xx := 0; ; {
		if _, err := c.br.Peek(1); err != nil {
			return nil, err
		}
		ex.got = true
		h, err := readHead(c.br, ex.maxHead())
		if err != nil {
			return nil, err
		}
		if h.code < 200 && h.code != http.StatusSwitchingProtocols {
			if n1xx++; n1xx > max1xx {
				return nil, errors.New("h1client: too many 1xx informational responses")
			}
			if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(h.code, textproto.MIMEHeader(h.header)); err != nil {
					return nil, err
				}
			}
			continue
		}
		return ex.response(ctx, h)
	}
}

// chunkedTE is Response.TransferEncoding of a chunked answer, shared.
var chunkedTE = []string{"chunked"}

// response makes the *http.Response of head h and frames its body.
func (ex *exchange) response(ctx context.Context, h head) (*http.Response, error) {
	c, req := ex.c, ex.req
	resp := &http.Response{
		Status:     h.status,
		StatusCode: h.code,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: h.minor,
		Header:     h.header,
		Request:    req,
		TLS:        c.tls,
	}
	if h.minor == 0 {
		resp.Proto = "HTTP/1.0"
	}
	conn := h.header["Connection"]
	closes := httpguts.HeaderValuesContainsToken(conn, "close")
	resp.Close = closes || h.minor == 0 && !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	if closes {
		delete(h.header, "Connection") // as net/http does
	}
	if resp.Close {
		ex.keepAlive = false
	}
	if h.code == http.StatusSwitchingProtocols {
		ex.keepAlive = false
		resp.ContentLength = -1
		resp.Body = &upgraded{ex: ex}
		return resp, nil
	}

	chunked := false
	if te, ok := h.header["Transfer-Encoding"]; ok {
		delete(h.header, "Transfer-Encoding")
		if len(te) != 1 || !strings.EqualFold(strings.Trim(te[0], " \t"), "chunked") || h.minor == 0 {
			return nil, fmt.Errorf("h1client: unsupported Transfer-Encoding %q", te)
		}
		chunked = true
		resp.TransferEncoding = chunkedTE
		delete(h.header, "Content-Length") // RFC 9112, 6.3: chunked wins
	}
	length := int64(-1)
	if cl, ok := h.header["Content-Length"]; ok {
		n, err := contentLength(cl)
		if err != nil {
			return nil, err
		}
		length = n
		if len(cl) > 1 {
			h.header["Content-Length"] = cl[:1] // identical: one is enough
		}
	}
	if chunked {
		if err := announcedTrailers(resp); err != nil {
			return nil, err
		}
	}

	noBody := req.Method == http.MethodHead || h.code == http.StatusNoContent || h.code == http.StatusNotModified
	switch {
	case noBody:
		// As net/http: a HEAD answer's ContentLength is what it
		// announced (-1 if nothing), a 204's or 304's is 0.
		resp.ContentLength = 0
		if req.Method == http.MethodHead {
			resp.ContentLength = length
		}
		resp.Body = http.NoBody
		ex.release(true)
	case chunked:
		resp.ContentLength = -1
		resp.Body = &body{ex: ex, br: c.br, remain: -1, chunked: true, resp: resp}
	case length == 0:
		resp.ContentLength = 0
		resp.Body = http.NoBody
		ex.release(true)
	case length > 0:
		resp.ContentLength = length
		resp.Body = &body{ex: ex, br: c.br, remain: length, resp: resp}
	default:
		// Neither: the body ends when the upstream closes.
		ex.keepAlive = false
		resp.ContentLength = -1
		resp.Body = &body{ex: ex, br: c.br, remain: -1, untilClose: true, resp: resp}
	}
	return resp, nil
}

// contentLength parses Content-Length values: repeated identical values
// count as one (RFC 9110, 8.6); differing or malformed ones are an error.
func contentLength(vs []string) (int64, error) {
	var n int64 = -1
	for _, v := range vs {
		for len(v) > 0 {
			var item string
			item, v, _ = strings.Cut(v, ",")
			item = strings.Trim(item, " \t")
			m, err := strconv.ParseUint(item, 10, 63)
			if err != nil || item == "" || item[0] == '+' {
				return 0, fmt.Errorf("h1client: bad Content-Length %q", item)
			}
			if n >= 0 && int64(m) != n {
				return 0, errors.New("h1client: differing Content-Length values")
			}
			n = int64(m)
		}
	}
	if n < 0 {
		return 0, errors.New("h1client: empty Content-Length")
	}
	return n, nil
}

// announcedTrailers moves a chunked answer's Trailer header into
// resp.Trailer, keys with nil values filled at the body's end, as
// net/http does.
func announcedTrailers(resp *http.Response) error {
	vs, ok := resp.Header["Trailer"]
	if !ok {
		return nil
	}
	delete(resp.Header, "Trailer")
	for _, v := range vs {
		for len(v) > 0 {
			var k string
			k, v, _ = strings.Cut(v, ",")
			k = strings.Trim(k, " \t")
			if k == "" {
				continue
			}
			k = http.CanonicalHeaderKey(k)
			switch k {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				return fmt.Errorf("h1client: bad trailer key %q", k)
			}
			if resp.Trailer == nil {
				resp.Trailer = http.Header{}
			}
			resp.Trailer[k] = nil
		}
	}
	return nil
}

// readHead reads one response head from br, at most max bytes.
func readHead(br *bufio.Reader, max int64) (head, error) {
	s, err := scanHead(br, max)
	if err != nil {
		return head{}, err
	}
	return parseHead(s)
}

var errHeadTooLarge = errors.New("h1client: response head too large")

// scanHead returns the head at the start of br's stream, up to and
// including its empty line, as one string (all of the head's strings are
// cut from it: one allocation), and consumes it.
func scanHead(br *bufio.Reader, max int64) (string, error) {
	from := 0
	for {
		n := br.Buffered()
		if n > 0 {
			buf, _ := br.Peek(n)
			end, resume := headEnd(buf, from)
			if end >= 0 {
				if int64(end) > max {
					return "", errHeadTooLarge
				}
				s := string(buf[:end])
				br.Discard(end)
				return s, nil
			}
			if int64(n) > max {
				return "", errHeadTooLarge
			}
			if n == br.Size() {
				return scanLongHead(br, max)
			}
			from = resume
		}
		if _, err := br.Peek(n + 1); err != nil {
			if err == io.EOF && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
	}
}

// scanLongHead is scanHead for a head larger than br's buffer: line by
// line into a growing buffer.
func scanLongHead(br *bufio.Reader, max int64) (string, error) {
	var acc []byte
	lineStart := 0
	for {
		b, err := br.ReadSlice('\n')
		acc = append(acc, b...)
		if int64(len(acc)) > max {
			return "", errHeadTooLarge
		}
		switch err {
		case nil:
			line := acc[lineStart:]
			if len(line) == 1 || len(line) == 2 && line[0] == '\r' {
				return string(acc), nil
			}
			lineStart = len(acc)
		case bufio.ErrBufferFull:
		case io.EOF:
			return "", io.ErrUnexpectedEOF
		default:
			return "", err
		}
	}
}

// headEnd returns the length of the head at the start of b, through its
// empty line (CRLF or a bare LF), or -1 and the offset to resume the
// search from once more bytes came.
func headEnd(b []byte, from int) (end, resume int) {
	i := from
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1, len(b)
		}
		nl := i + j
		k := nl + 1
		switch {
		case k < len(b) && b[k] == '\n':
			return k + 1, 0
		case k+1 < len(b) && b[k] == '\r' && b[k+1] == '\n':
			return k + 2, 0
		case k >= len(b), k+1 >= len(b) && b[k] == '\r':
			return -1, nl // what follows this line end is not here yet
		}
		i = k
	}
}

// nextLine cuts the first line off s, without its CRLF or LF.
func nextLine(s string) (line, rest string) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return s, ""
	}
	line, rest = s[:i], s[i+1:]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, rest
}

// parseHead parses a head that scanHead returned.
func parseHead(s string) (head, error) {
	var h head
	line, rest := nextLine(s)
	// HTTP/1.x SP 3DIGIT [SP reason]
	if len(line) < 12 || line[8] != ' ' || len(line) > 12 && line[12] != ' ' {
		return h, fmt.Errorf("%w: status line %q", errMalformed, clip(line))
	}
	switch line[:8] {
	case "HTTP/1.1":
		h.minor = 1
	case "HTTP/1.0":
	default:
		return h, fmt.Errorf("%w: status line %q", errMalformed, clip(line))
	}
	for i := 9; i < 12; i++ {
		if line[i] < '0' || line[i] > '9' {
			return h, fmt.Errorf("%w: status line %q", errMalformed, clip(line))
		}
		h.code = h.code*10 + int(line[i]-'0')
	}
	if h.code < 100 {
		return h, fmt.Errorf("%w: status code %d", errMalformed, h.code)
	}
	h.status = line[9:]
	for i := 12; i < len(line); i++ {
		if c := line[i]; c < ' ' && c != '\t' || c == 0x7f {
			return h, fmt.Errorf("%w: control byte in the reason phrase", errMalformed)
		}
	}

	n := strings.Count(rest, "\n")
	h.header = make(http.Header, n)
	vals := make([]string, n)
	for i := 0; ; {
		line, rest = nextLine(rest)
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return h, fmt.Errorf("%w: obs-fold line", errMalformed)
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return h, fmt.Errorf("%w: header line %q", errMalformed, clip(line))
		}
		k, v := line[:colon], strings.Trim(line[colon+1:], " \t")
		if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
			return h, fmt.Errorf("%w: header line %q", errMalformed, clip(line))
		}
		k = canonicalKey(k)
		if old, ok := h.header[k]; ok {
			h.header[k] = append(old, v)
			continue
		}
		vals[i] = v
		h.header[k] = vals[i : i+1 : i+1]
		i++
	}
	return h, nil
}

// canonicalKey is textproto's canonical form of a valid field name,
// without allocating when k is canonical already.
func canonicalKey(k string) string {
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return textproto.CanonicalMIMEHeaderKey(k)
		}
		upper = c == '-'
	}
	return k
}

// clip shortens what goes into an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// readChunked reads chunk data, and at the last chunk the trailer section.
func (b *body) readChunked(p []byte) (int, error) {
	if b.chunk == 0 {
		size, err := readChunkSize(b.br)
		if err != nil {
			return 0, err
		}
		if size == 0 {
			if err := b.readTrailer(); err != nil {
				return 0, err
			}
			b.finish(true)
			return 0, io.EOF
		}
		b.chunk = size
	}
	if int64(len(p)) > b.chunk {
		p = p[:b.chunk]
	}
	n, err := b.br.Read(p)
	b.chunk -= int64(n)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	if err != nil || b.chunk > 0 {
		return n, err
	}
	if err := readCRLF(b.br); err != nil {
		return n, err
	}
	// The last chunk, with no trailer, already here: end now, so that the
	// caller gets io.EOF with the data and the connection is released.
	if buf, _ := b.br.Peek(min(b.br.Buffered(), 5)); string(buf) == "0\r\n\r\n" {
		b.br.Discard(5)
		b.finish(true)
		return n, io.EOF
	}
	return n, nil
}

// maxChunkLine bounds a chunk-size line with its extensions.
const maxChunkLine = 4096

// readChunkSize reads a chunk-size line: hex digits, optional extensions
// (ignored), CRLF.
func readChunkSize(br *bufio.Reader) (int64, error) {
	line, err := br.ReadSlice('\n')
	switch {
	case err == io.EOF:
		return 0, io.ErrUnexpectedEOF
	case err == bufio.ErrBufferFull || len(line) > maxChunkLine:
		return 0, errors.New("h1client: chunk-size line too long")
	case err != nil:
		return 0, err
	}
	line = bytes.TrimRight(line, " \t\r\n")
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = bytes.TrimRight(line[:i], " \t")
	}
	n, ok := httpsyntax.ParseHex(line)
	if !ok || len(line) > 15 {
		return 0, fmt.Errorf("%w: chunk size", errMalformed)
	}
	return int64(n), nil
}

func readCRLF(br *bufio.Reader) error {
	b, err := br.Peek(2)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return fmt.Errorf("%w: no CRLF after chunk data", errMalformed)
	}
	br.Discard(2)
	return nil
}

// readTrailer reads the trailer section after the last chunk into the
// response's Trailer.
func (b *body) readTrailer() error {
	var total int
	for {
		line, err := b.br.ReadSlice('\n')
		switch {
		case err == io.EOF:
			return io.ErrUnexpectedEOF
		case err == bufio.ErrBufferFull:
			return errors.New("h1client: trailer line too long")
		case err != nil:
			return err
		}
		if total += len(line); total > defaultMaxHeadBytes {
			return errors.New("h1client: trailer section too large")
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if len(line) == 0 {
			return nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || line[0] == ' ' || line[0] == '\t' {
			return fmt.Errorf("%w: trailer line", errMalformed)
		}
		k, v := string(line[:colon]), string(bytes.Trim(line[colon+1:], " \t"))
		if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
			return fmt.Errorf("%w: trailer line", errMalformed)
		}
		k = canonicalKey(k)
		switch k {
		case "Transfer-Encoding", "Trailer", "Content-Length", "Host":
			continue // framing fields have no place in a trailer
		}
		if b.resp.Trailer == nil {
			b.resp.Trailer = http.Header{}
		}
		b.resp.Trailer[k] = append(b.resp.Trailer[k], v)
	}
}

// writeHead writes req's head to w: cl is the body length to announce
// (0: none, but for the methods that carry a body), chunked a body of
// unknown length. It fails on a header that would break the message.
func writeHead(w *bufio.Writer, req *http.Request, cl int64, chunked bool) error {
	u := req.URL
	host := req.Host
	if host == "" {
		host = u.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return fmt.Errorf("h1client: invalid Host %q", clip(host))
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !validToken(method) {
		return fmt.Errorf("h1client: invalid method %q", clip(method))
	}
	w.WriteString(method)
	w.WriteByte(' ')
	if u.Opaque != "" {
		uri := u.RequestURI()
		if strings.ContainsAny(uri, " \r\n") {
			return errors.New("h1client: invalid request target")
		}
		w.WriteString(uri)
	} else {
		p := u.EscapedPath()
		if p == "" {
			p = "/"
		}
		w.WriteString(p)
		if u.RawQuery != "" || u.ForceQuery {
			if strings.ContainsAny(u.RawQuery, " \r\n\x00") {
				return errors.New("h1client: invalid query")
			}
			w.WriteByte('?')
			w.WriteString(u.RawQuery)
		}
	}
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	// No default User-Agent: only the one the request carries.
	if ua := req.Header["User-Agent"]; len(ua) > 0 && ua[0] != "" {
		if !httpguts.ValidHeaderFieldValue(ua[0]) {
			return errors.New("h1client: invalid User-Agent")
		}
		w.WriteString("User-Agent: ")
		w.WriteString(ua[0])
		w.WriteString("\r\n")
	}
	for k, vs := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue // written from the request's fields
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("h1client: invalid header name %q", clip(k))
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("h1client: invalid value of header %q", clip(k))
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	switch {
	case chunked:
		w.WriteString("Transfer-Encoding: chunked\r\n")
		if len(req.Trailer) > 0 {
			w.WriteString("Trailer: ")
			first := true
			for k := range req.Trailer {
				if !httpguts.ValidHeaderFieldName(k) {
					return fmt.Errorf("h1client: invalid trailer name %q", clip(k))
				}
				if !first {
					w.WriteByte(',')
				}
				first = false
				w.WriteString(k)
			}
			w.WriteString("\r\n")
		}
	case cl > 0, cl == 0 && (method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch):
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), cl, 10))
		w.WriteString("\r\n")
	}
	if req.Close && !httpguts.HeaderValuesContainsToken(req.Header["Connection"], "close") {
		w.WriteString("Connection: close\r\n")
	}
	_, err := w.WriteString("\r\n")
	return err
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return true
}

// writeBody writes the request body r: exactly cl bytes, or when cl < 0
// chunked, flushing each chunk that ends a read which did not fill the
// buffer (the sender may be waiting), then trailer. It reads straight
// into w's buffer.
func writeBody(w *bufio.Writer, r io.Reader, cl int64, trailer http.Header) error {
	if cl >= 0 {
		var n int64
		for n < cl {
			if w.Available() == 0 {
				if err := w.Flush(); err != nil {
					return err
				}
			}
			buf := w.AvailableBuffer()[:w.Available()]
			if rem := cl - n; int64(len(buf)) > rem {
				buf = buf[:rem]
			}
			m, err := r.Read(buf)
			w.Write(buf[:m])
			n += int64(m)
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		if n < cl {
			return fmt.Errorf("h1client: request body ended after %d of its %d bytes", n, cl)
		}
		return nil
	}
	const room = 20 // a chunk-size line before the data, CRLF after it
	for {
		if w.Available() < room+64 {
			if err := w.Flush(); err != nil {
				return err
			}
		}
		buf := w.AvailableBuffer()[:w.Available()]
		data := buf[room : len(buf)-2]
		m, err := r.Read(data)
		if m > 0 {
			w.Write(strconv.AppendInt(buf[:0], int64(m), 16))
			w.WriteString("\r\n")
			w.Write(data[:m]) // copies down over the room left for the size
			w.WriteString("\r\n")
			if m < len(data) && err == nil {
				if ferr := w.Flush(); ferr != nil {
					return ferr
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	w.WriteString("0\r\n")
	for k, vs := range trailer {
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("h1client: invalid value of trailer %q", clip(k))
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	_, err := w.WriteString("\r\n")
	return err
}
