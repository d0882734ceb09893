package h1guard

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// fakeConn is a net.Conn whose Read returns the given chunks one by one (a
// chunk larger than the caller's buffer is returned over several Reads).
type fakeConn struct {
	net.Conn // nil: only Read is used
	chunks   []string
}

func (f *fakeConn) Read(b []byte) (int, error) {
	for len(f.chunks) > 0 && f.chunks[0] == "" {
		f.chunks = f.chunks[1:]
	}
	if len(f.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(b, f.chunks[0])
	f.chunks[0] = f.chunks[0][n:]
	return n, nil
}

// readAll feeds chunks through a *Conn and returns it.
func readAll(t testing.TB, chunks []string, opts func(*Conn)) *Conn {
	t.Helper()
	c := newConn(&fakeConn{chunks: chunks})
	if opts != nil {
		opts(c)
	}
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == io.EOF {
			return c
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
	}
}

// splits returns the ways a stream is fed in the tests: whole, in two
// pieces at every split point, one byte per Read, and a few random
// chunkings.
func splits(s string) (out [][]string) {
	out = append(out, []string{s})
	// Every split point; for long streams, every point near the ends and
	// a sample in between.
	for i := 1; i < len(s); i++ {
		if len(s) > 2048 && i > 256 && i < len(s)-256 && i%(len(s)/512) != 0 {
			continue
		}
		out = append(out, []string{s[:i], s[i:]})
	}
	bytewise := make([]string, len(s))
	for i := range s {
		bytewise[i] = s[i : i+1]
	}
	out = append(out, bytewise)
	rng := rand.New(rand.NewSource(int64(len(s))))
	for range 5 {
		var ch []string
		for rest := s; rest != ""; {
			n := min(1+rng.Intn(16), len(rest))
			ch = append(ch, rest[:n])
			rest = rest[n:]
		}
		out = append(out, ch)
	}
	return out
}

func describe(ch []string) string {
	if len(ch) == 2 {
		return "split at " + itoa(len(ch[0]))
	}
	return itoa(len(ch)) + " chunks"
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

const (
	host     = "Host: a\r\n"
	get      = "GET / HTTP/1.1\r\n" + host + "\r\n"
	clte     = "POST / HTTP/1.1\r\n" + host + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
	chunked0 = "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n"
)

func post(hdr, body string) string {
	return "POST / HTTP/1.1\r\n" + host + hdr + "\r\n" + body
}

func postCL(body string) string {
	return post("Content-Length: "+itoa(len(body))+"\r\n", body)
}

func withOpts(f func(p *parser)) func(*Conn) {
	return func(c *Conn) { f(&c.p) }
}

var (
	errCLTE    = ErrContentLengthAndTransferEncoding
	errChunked = ErrMalformedChunked
	errLine    = ErrMalformedRequestLine
)

type verdictCase struct {
	name string
	in   string
	opts func(*Conn)
	// want lists the results of successive Next calls; the calls go past
	// the last head to check what Next returns afterwards.
	want []error
}

var verdictCases = []verdictCase{
	// Unambiguous framing.
	{name: "GET", in: get, want: []error{nil, nil}},
	{name: "GET bare LF", in: "GET / HTTP/1.1\nHost: a\n\n" + get, want: []error{nil, nil, nil}},
	{name: "mixed line endings", in: "GET / HTTP/1.1\r\nHost: a\n\r\nGET / HTTP/1.1\nHost: a\r\n\n" + get, want: []error{nil, nil, nil, nil}},
	{name: "pipelined GETs", in: get + get + get, want: []error{nil, nil, nil, nil}},
	{name: "HEAD and GET with body", in: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + get, want: []error{nil, nil, nil, nil}},
	{name: "POST Content-Length then GET", in: post("Content-Length: 5\r\n", "hello") + get, want: []error{nil, nil, nil}},
	{name: "POST Content-Length 0 then GET", in: post("Content-Length: 0\r\n", "") + get, want: []error{nil, nil, nil}},
	{
		name: "body that looks like a smuggled head is skipped",
		in:   postCL("GET /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n") + get,
		want: []error{nil, nil, nil},
	},
	{name: "duplicate equal Content-Length", in: post("Content-Length: 3\r\ncontent-length:3 \r\n", "abc") + get, want: []error{nil, nil, nil}},
	{name: "Content-Length leading zeros", in: post("Content-Length: 00000000000000000000003\r\n", "abc") + get, want: []error{nil, nil, nil}},
	{name: "Content-Length max int64", in: post("Content-Length: 9223372036854775807\r\n", "abc"), want: []error{nil, nil}},
	{name: "Content-Length tab padded", in: post("Content-Length:\t3\t\r\n", "abc") + get, want: []error{nil, nil, nil}},
	{
		name: "chunked with extensions and trailers then GET",
		in: chunked0 + "5;ext=1\r\nhello\r\n6;a=\"b;c\"; d\r\n world\r\n0;last\r\n" +
			"X-Trailer: v\r\nY: w\r\n\r\n" + get,
		want: []error{nil, nil, nil},
	},
	{name: "chunked no trailer then GET", in: chunked0 + "3\r\nabc\r\n0\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "chunk data with CRLF and head-like bytes", in: chunked0 + "12\r\nGET / HTTP/1.1\r\n\r\n\r\n0\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "chunk size trailing whitespace", in: chunked0 + "5 \t\r\nhello\r\n0 \r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "chunk size 16 hex digits", in: chunked0 + "0000000000000005\r\nhello\r\n0\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "chunk size upper-case hex", in: chunked0 + "A\r\n0123456789\r\n0\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "chunk extension with long value", in: chunked0 + "1;" + strings.Repeat("x", 4000) + "\r\na\r\n0\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{
		name: "chunk overhead within allowance",
		in:   chunked0 + strings.Repeat("64;"+strings.Repeat("e", 180)+"\r\n"+strings.Repeat("d", 100)+"\r\n", 250) + "0\r\n\r\n" + get,
		want: []error{nil, nil, nil},
	},
	{name: "trailer continuation line", in: chunked0 + "0\r\nA: b\r\n c\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "trailer 4096 bytes", in: chunked0 + "0\r\nA: " + strings.Repeat("x", 4096-7) + "\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "Transfer-Encoding case and whitespace", in: post("transfer-encoding: \tChunKed \r\n", "0\r\n\r\n") + get, want: []error{nil, nil, nil}},
	{name: "HTTP/1.2 chunked", in: "POST / HTTP/1.2\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "HTTP/1.0 Content-Length", in: "POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi" + get, want: []error{nil, nil, nil}},
	{name: "Expect 100-continue", in: post("Expect: 100-continue\r\nContent-Length: 5\r\n", "hello") + get, want: []error{nil, nil, nil}},
	{name: "partial body", in: post("Content-Length: 1000000\r\n", "0123456789"), want: []error{nil, nil}},
	{name: "partial huge chunk", in: chunked0 + "ffffffffffffffff\r\n0123456789", want: []error{nil, nil}},

	// CR/LF tolerated after a POST (up to four bytes), not after others.
	{name: "CRLF after POST", in: post("Content-Length: 2\r\n", "hi") + "\r\n" + get, want: []error{nil, nil, nil}},
	{name: "four CR/LF after POST", in: post("Content-Length: 2\r\n", "hi") + "\r\n\n\r" + get, want: []error{nil, nil, nil}},
	{name: "CRLF after bodiless POST", in: post("", "") + "\r\n" + get, want: []error{nil, nil, nil}},
	{name: "CRLF after chunked POST", in: chunked0 + "0\r\n\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "six CR/LF after POST", in: post("Content-Length: 2\r\n", "hi") + "\r\n\r\n\r\n" + get, want: []error{nil, errLine, errLine}},
	{name: "CRLF after GET", in: get + "\r\n" + get, want: []error{nil, errLine, errLine}},
	{name: "CRLF at start", in: "\r\n" + get, want: []error{errLine, errLine}},
	{name: "CRLF after lower-case post", in: "post / HTTP/1.1\r\nHost: a\r\n\r\n\r\n" + get, want: []error{nil, errLine}},

	// Ambiguous framing.
	{name: "CL+TE", in: clte + get, want: []error{errCLTE, errCLTE, errCLTE}},
	{name: "TE+CL", in: post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", "0\r\n\r\n"), want: []error{errCLTE, errCLTE}},
	{name: "GET then CL+TE", in: get + clte, want: []error{nil, errCLTE, errCLTE}},
	{name: "CL+TE lower-case names", in: post("content-length: 4\r\ntransfer-encoding: CHUNKED\r\n", "0\r\n\r\n"), want: []error{errCLTE}},
	{name: "CL+TE bare LF", in: "POST / HTTP/1.1\nHost: a\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n", want: []error{errCLTE}},
	{name: "CL+TE chunked, identity", in: post("Content-Length: 4\r\nTransfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"), want: []error{errCLTE}},
	{name: "CL+TE HTTP/1.0", in: "POST / HTTP/1.0\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", want: []error{errCLTE}},
	{name: "CL+TE in POST after GET with body", in: "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + clte, want: []error{nil, errCLTE}},
	{name: "TE chunked, identity", in: post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"), want: []error{ErrUnsupportedTransferEncoding}},
	{name: "TE identity", in: post("Transfer-Encoding: identity\r\n", ""), want: []error{ErrUnsupportedTransferEncoding}},
	{name: "TE xchunked", in: post("Transfer-Encoding: xchunked\r\n", ""), want: []error{ErrUnsupportedTransferEncoding}},
	{name: "TE chunked;q", in: post("Transfer-Encoding: chunked;q=1\r\n", ""), want: []error{ErrUnsupportedTransferEncoding}},
	{name: "TE empty", in: post("Transfer-Encoding:\r\n", ""), want: []error{ErrUnsupportedTransferEncoding}},
	{name: "TE twice", in: post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), want: []error{ErrMultipleTransferEncoding}},
	{name: "TE in HTTP/1.0", in: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", want: []error{ErrTransferEncodingHTTP10}},
	{name: "CL differing", in: post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), want: []error{ErrConflictingContentLength}},
	{name: "CL 05 and 5", in: post("Content-Length: 05\r\nContent-Length: 5\r\n", "hello"), want: []error{ErrConflictingContentLength}},
	{name: "CL letters", in: post("Content-Length: abc\r\n", ""), want: []error{ErrInvalidContentLength}},
	{name: "CL plus sign", in: post("Content-Length: +5\r\n", "hello"), want: []error{ErrInvalidContentLength}},
	{name: "CL negative", in: post("Content-Length: -1\r\n", ""), want: []error{ErrInvalidContentLength}},
	{name: "CL empty", in: post("Content-Length: \r\n", ""), want: []error{ErrInvalidContentLength}},
	{name: "CL list", in: post("Content-Length: 5, 5\r\n", "hello"), want: []error{ErrInvalidContentLength}},
	{name: "CL inner space", in: post("Content-Length: 5 5\r\n", "hello"), want: []error{ErrInvalidContentLength}},
	{name: "CL hex", in: post("Content-Length: 0x5\r\n", "hello"), want: []error{ErrInvalidContentLength}},
	{name: "CL overflow", in: post("Content-Length: 9223372036854775808\r\n", ""), want: []error{ErrInvalidContentLength}},
	{name: "CL valid then invalid", in: post("Content-Length: 5\r\nContent-Length: x\r\n", "hello"), want: []error{ErrInvalidContentLength}},
	{name: "space before colon CL", in: post("Content-Length : 4\r\n", "abcd"), want: []error{ErrSpaceBeforeColon}},
	{name: "tab before colon TE", in: post("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n"), want: []error{ErrSpaceBeforeColon}},
	{name: "space before colon other header", in: "GET / HTTP/1.1\r\nHost : a\r\n\r\n", want: []error{ErrSpaceBeforeColon}},
	{name: "obs-fold", in: "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", want: []error{ErrObsFold}},
	{name: "obs-fold TE value", in: post("Transfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n", "0\r\n\r\n"), want: []error{ErrObsFold}},
	{name: "obs-fold hiding TE", in: post("X-A: b\r\n\tTransfer-Encoding: chunked\r\nContent-Length: 4\r\n", "0\r\n\r\n"), want: []error{ErrObsFold}},
	{name: "first header line folded", in: "GET / HTTP/1.1\r\n Host: a\r\n\r\n", want: []error{ErrObsFold}},
	{name: "whitespace-only line", in: "GET / HTTP/1.1\r\nHost: a\r\n \r\n\r\n", want: []error{ErrObsFold}},
	{name: "header without colon", in: "GET / HTTP/1.1\r\nHost a\r\n\r\n", want: []error{ErrMalformedHeader}},
	{name: "header empty name", in: "GET / HTTP/1.1\r\n: a\r\n\r\n", want: []error{ErrMalformedHeader}},
	{name: "CR CR LF ends no head", in: "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", want: []error{ErrMalformedHeader}},

	// Request lines Go's server refuses.
	{name: "request line no version", in: "GET /\r\n\r\n", want: []error{errLine}},
	{name: "request line trailing junk", in: "GET / HTTP/1.1 x\r\n\r\n", want: []error{errLine}},
	{name: "request line bad method", in: "G@T / HTTP/1.1\r\n\r\n", want: []error{errLine}},
	{name: "request line HTTP/2.0", in: "GET / HTTP/2.0\r\n\r\n", want: []error{errLine}},
	{name: "request line HTTP/0.9", in: "GET / HTTP/0.9\r\n\r\n", want: []error{errLine}},
	{name: "request line lower-case version", in: "GET / http/1.1\r\n\r\n", want: []error{errLine}},
	{name: "request line HTTP/1.10", in: "GET / HTTP/1.10\r\n\r\n", want: []error{errLine}},
	{name: "request line leading space", in: " GET / HTTP/1.1\r\n\r\n", want: []error{errLine}},
	{name: "request line CR inside", in: "GET /\r HTTP/1.1\r\n\r\n", want: []error{errLine}},
	{name: "GET then garbage", in: get + "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", want: []error{nil, errLine}},

	// Upgrade and CONNECT: framed as usual, tracking goes on.
	{name: "Upgrade declined then GET", in: "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "Upgrade declined then CL+TE", in: "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n" + clte, want: []error{nil, errCLTE}},
	{name: "WebSocket frames after Upgrade", in: "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", want: []error{nil, errLine}},
	{name: "TLS after CONNECT", in: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + strings.Repeat("\xaa", 300), want: []error{nil, errLine}},
	{name: "CONNECT declined then GET", in: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{
		name: "h2c upgrade then preface",
		in: post("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 2\r\n", "hi") +
			"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00" + clte,
		want: []error{nil, nil, nil, nil},
	},

	// HTTP/2 preface: stop tracking.
	{name: "HTTP/2 preface", in: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00" + clte, want: []error{nil, nil, nil}},
	{name: "PRI with header is a request", in: "PRI * HTTP/2.0\r\nHost: a\r\n\r\n" + clte, want: []error{nil, errCLTE}},

	// "OPTIONS *" is answered by Go's server without calling the handler.
	{name: "OPTIONS * skipped", in: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" + clte, want: []error{errCLTE, errCLTE}},
	{name: "OPTIONS * skipped then GET", in: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" + get, want: []error{nil, nil}},
	{name: "OPTIONS * CL+TE", in: "OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get, want: []error{errCLTE}},
	{
		name: "OPTIONS * to handler",
		in:   "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" + clte,
		opts: withOpts(func(p *parser) { p.skipOptionsStar = false }),
		want: []error{nil, errCLTE},
	},
	{name: "OPTIONS path", in: "OPTIONS /x HTTP/1.1\r\nHost: a\r\n\r\n" + clte, want: []error{nil, errCLTE}},

	// Oversize heads: stop tracking.
	{
		name: "head over limit",
		in:   "GET / HTTP/1.1\r\nX-Big: " + strings.Repeat("b", 100) + "\r\n\r\n" + clte,
		opts: withOpts(func(p *parser) { p.limit = 64 }),
		want: []error{nil, nil, nil},
	},
	{
		name: "head at limit",
		in:   "GET / HTTP/1.1\r\nX-Big: " + strings.Repeat("b", 100-27) + "\r\n\r\n" + clte,
		opts: withOpts(func(p *parser) { p.limit = 100 }),
		want: []error{nil, errCLTE},
	},

	// Chunked bodies Go's chunked reader rejects: the requests after them
	// get an error.
	{name: "chunk size bare LF", in: chunked0 + "5\nhello\r\n0\r\n\r\n" + get, want: []error{nil, errChunked, errChunked}},
	{name: "chunk size CR inside", in: chunked0 + "5\r;x\r\nhello\r\n0\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk data without CRLF", in: chunked0 + "5\r\nhelloXX" + get, want: []error{nil, errChunked}},
	{name: "chunk data bare LF", in: chunked0 + "5\r\nhello\n0\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk size not hex", in: chunked0 + "g\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk size empty", in: chunked0 + "\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk size only extension", in: chunked0 + ";x\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk size leading space", in: chunked0 + " 5\r\nhello\r\n0\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk size space before extension", in: chunked0 + "5 ;x\r\nhello\r\n0\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk size sign", in: chunked0 + "+5\r\nhello\r\n0\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk size 17 hex digits", in: chunked0 + "00000000000000005\r\nhello\r\n0\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk line too long", in: chunked0 + "1;" + strings.Repeat("x", 4093) + "\r\na\r\n0\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "chunk overhead excess", in: chunked0 + strings.Repeat("1;"+strings.Repeat("e", 100)+"\r\nx\r\n", 200) + "0\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "trailer bare LF", in: chunked0 + "0\r\nX: y\n\n" + get, want: []error{nil, errChunked}},
	{name: "trailer empty bare LF", in: chunked0 + "0\r\n\n" + get, want: []error{nil, errChunked}},
	{name: "trailer starts folded", in: chunked0 + "0\r\n X: y\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "trailer without colon", in: chunked0 + "0\r\nGET / HTTP/1.1\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "trailer bad name byte", in: chunked0 + "0\r\nX@Y: z\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "trailer control byte in value", in: chunked0 + "0\r\nX: a\x00b\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "trailer control byte in continuation", in: chunked0 + "0\r\nX: a\r\n b\x01\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "trailer hiding a request", in: chunked0 + "0\r\nX: \x00\r\nGET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n" + get, want: []error{nil, errChunked}},
	{name: "trailer space in name and obs-text", in: chunked0 + "0\r\nX Y: caf\xc3\xa9\t!\r\n\r\n" + get, want: []error{nil, nil, nil}},
	{name: "trailer over 4096 bytes", in: chunked0 + "0\r\nA: " + strings.Repeat("x", 4096-6) + "\r\n\r\n" + get, want: []error{nil, errChunked}},
}

func TestVerdicts(t *testing.T) {
	for _, tc := range verdictCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, ch := range splits(tc.in) {
				c := readAll(t, ch, tc.opts)
				for i, want := range tc.want {
					if got := c.Next(); !errors.Is(got, want) {
						t.Fatalf("%s: call %d: Next() = %v, want %v", describe(ch), i+1, got, want)
					}
				}
			}
		})
	}
}

// TestHeadOffsets checks where the parser finds heads, for every split.
func TestHeadOffsets(t *testing.T) {
	tests := []struct {
		name  string
		parts []string // heads start at the start of each part
	}{
		{name: "pipelined GETs", parts: []string{get, get, "GET /x HTTP/1.1\nHost: b\n\n"}},
		{name: "bodies", parts: []string{post("Content-Length: 5\r\n", "hello"), chunked0 + "2;x\r\nhi\r\n0\r\nT: 1\r\n\r\n", get}},
		{name: "CRLF after POST", parts: []string{post("Content-Length: 5\r\n", "hello\r\n"), get}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var want []int64
			var off int64
			for _, p := range tc.parts {
				want = append(want, off)
				off += int64(len(p))
			}
			for _, ch := range splits(strings.Join(tc.parts, "")) {
				var got []int64
				readAll(t, ch, withOpts(func(p *parser) {
					p.onHead = func(start int64) { got = append(got, start) }
				}))
				if !equalInt64s(got, want) {
					t.Fatalf("%s: head offsets = %v, want %v", describe(ch), got, want)
				}
			}
		})
	}
}

func equalInt64s(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestOversizeHeadDefaultLimit feeds a head of more than 1 MiB without an
// end: the Conn stops tracking, frees its buffer and answers nil.
func TestOversizeHeadDefaultLimit(t *testing.T) {
	big := "GET / HTTP/1.1\r\nX-Big: " + strings.Repeat("b", http.DefaultMaxHeaderBytes+headSlack)
	var chunks []string
	for rest := big; rest != ""; {
		n := min(4096, len(rest))
		chunks = append(chunks, rest[:n])
		rest = rest[n:]
	}
	chunks = append(chunks, "\r\n\r\n"+clte)
	c := readAll(t, chunks, nil)
	if c.verdicts.Load()&offBit == 0 {
		t.Fatalf("off = false, want true")
	}
	if c.p.line != nil {
		t.Errorf("line buffer kept after stop: cap %d", cap(c.p.line))
	}
	for i := range 3 {
		if got := c.Next(); got != nil {
			t.Fatalf("call %d: Next() = %v, want %v", i+1, got, nil)
		}
	}
}

func TestNilConn(t *testing.T) {
	var c *Conn
	if got := c.Next(); !errors.Is(got, ErrNoConn) {
		t.Fatalf("Next() = %v, want %v", got, ErrNoConn)
	}
	if got := FromContext(context.Background()); got != nil {
		t.Fatalf("FromContext() = %v, want nil", got)
	}
}

func TestConnContext(t *testing.T) {
	tests := []struct {
		name     string
		srv      *http.Server
		conn     net.Conn
		wantConn bool
		limit    int
		skipOpts bool
	}{
		{name: "no server", conn: newConn(nil), wantConn: true, limit: http.DefaultMaxHeaderBytes + headSlack, skipOpts: true},
		{name: "default server", srv: &http.Server{}, conn: newConn(nil), wantConn: true, limit: http.DefaultMaxHeaderBytes + headSlack, skipOpts: true},
		{
			name: "configured server", srv: &http.Server{MaxHeaderBytes: 4 << 20, DisableGeneralOptionsHandler: true},
			conn: newConn(nil), wantConn: true, limit: 4<<20 + headSlack, skipOpts: false,
		},
		{name: "other conn", conn: &fakeConn{}, wantConn: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.srv != nil {
				ctx = context.WithValue(ctx, http.ServerContextKey, tc.srv)
			}
			got := FromContext(ConnContext(ctx, tc.conn))
			if !tc.wantConn {
				if got != nil {
					t.Fatalf("FromContext() = %p, want nil", got)
				}
				return
			}
			if got != tc.conn {
				t.Fatalf("FromContext() = %p, want %p", got, tc.conn)
			}
			if int(got.p.limit) != tc.limit || got.p.skipOptionsStar != tc.skipOpts {
				t.Fatalf("limit, skipOptionsStar = %d, %v, want %d, %v", got.p.limit, got.p.skipOptionsStar, tc.limit, tc.skipOpts)
			}
		})
	}
}

// TestConcurrentNext pops verdicts while pipelined requests are still being
// read, as a handler does (run with -race).
func TestConcurrentNext(t *testing.T) {
	const n = 200
	chunks := make([]string, 0, n+1)
	for range n {
		chunks = append(chunks, get)
	}
	chunks = append(chunks, clte)
	c := newConn(&fakeConn{chunks: chunks})
	var wg sync.WaitGroup
	wg.Add(1)
	done := make(chan struct{})
	go func() {
		defer wg.Done()
		defer close(done)
		buf := make([]byte, 7)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	for i := 0; i < n; {
		if c.verdicts.Load()&^offBit == 0 {
			select {
			case <-done:
				if c.verdicts.Load()&^offBit == 0 {
					t.Fatalf("request %d: no verdict queued after the stream ended", i+1)
				}
			default:
			}
			continue // the handler only runs once its head was read
		}
		if got := c.Next(); got != nil {
			t.Fatalf("request %d: Next() = %v, want %v", i+1, got, nil)
		}
		i++
	}
	wg.Wait()
	if got := c.Next(); !errors.Is(got, errCLTE) {
		t.Fatalf("last request: Next() = %v, want %v", got, errCLTE)
	}
}

func TestListen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl := Listen(ln)
	defer gl.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Write([]byte(get))
			c.Close()
		}
	}()
	c, err := gl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	gc, ok := c.(*Conn)
	if !ok {
		t.Fatalf("Accept() returned %T, want *Conn", c)
	}
	if _, err := io.ReadAll(gc); err != nil {
		t.Fatal(err)
	}
	if got := gc.Next(); got != nil {
		t.Fatalf("Next() = %v, want %v", got, nil)
	}
	if err := gc.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite() = %v, want nil", err)
	}
	if err := newConn(&fakeConn{}).CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("CloseWrite() = %v, want %v", err, errors.ErrUnsupported)
	}
	gl.Close()
	if _, err := gl.Accept(); err == nil {
		t.Fatalf("Accept() after Close: err = nil")
	}
}
