package h1guard

import (
	"bufio"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// reference returns the stream offsets of the requests that Go's HTTP/1.x
// server would hand to a handler reading each body to the end, found with
// net/http's own request reader the way (*conn).serve uses it. It is
// generous: it skips the server's Host and header-name checks, so it may
// list requests the real server refuses, never fewer.
func reference(stream string) []int64 {
	cr := &countingReader{r: strings.NewReader(stream)}
	br := bufio.NewReader(cr) // 4096 bytes, like the server's
	var out []int64
	lastPOST := false
	for {
		if lastPOST {
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			br.Discard(n)
		}
		start := cr.n - int64(br.Buffered())
		req, err := http.ReadRequest(br)
		if err != nil {
			return out
		}
		if req.ProtoMajor != 1 && (req.ProtoMajor != 2 || req.ProtoMinor != 0 || req.Method != "PRI" || req.RequestURI != "*") {
			return out // 505
		}
		lastPOST = req.Method == "POST"
		if e := req.Header.Get("Expect"); e != "" && !strings.EqualFold(e, "100-continue") {
			return out // 417 and close
		}
		out = append(out, start)
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return out // the server closes after a bad body
		}
		if req.Close {
			return out
		}
	}
}

// checkAgainstReference feeds stream through a Conn in pieces of size step
// (all at once if step is 0) and checks that the heads it passes are the
// requests Go serves, at the same offsets, and that any request Go serves
// beyond them gets an error.
//
// It returns n, true if the n-th request that net/http serves is not among
// the heads the Conn passed (its Next returns an error).
func checkAgainstReference(t *testing.T, stream string, step int) (int, bool) {
	t.Helper()
	var chunks []string
	if step <= 0 {
		chunks = []string{stream}
	} else {
		for rest := stream; rest != ""; {
			n := min(step, len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
	}
	var heads []int64
	c := readAll(t, chunks, withOpts(func(p *parser) {
		p.skipOptionsStar = false // reference hands "OPTIONS *" to the handler
		p.onHead = func(start int64) { heads = append(heads, start) }
	}))
	ref := reference(stream)
	for i := range min(len(heads), len(ref)) {
		if heads[i] != ref[i] {
			t.Fatalf("step %d: request %d: head at offset %d, net/http reads it at %d (heads %v, net/http %v)",
				step, i+1, heads[i], ref[i], heads, ref)
		}
	}
	if len(ref) > len(heads) {
		for i := range heads {
			if got := c.Next(); got != nil {
				t.Fatalf("step %d: request %d: Next() = %v, want %v", step, i+1, got, nil)
			}
		}
		if got := c.Next(); got == nil {
			t.Fatalf("step %d: request %d (offset %d) is served by net/http but Next() = %v, want an error (heads %v, net/http %v)",
				step, len(heads)+1, ref[len(heads)], got, heads, ref)
		}
		return len(heads) + 1, true
	}
	return 0, false
}

// TestAgainstNetHTTP runs the verdict cases through the reference.
func TestAgainstNetHTTP(t *testing.T) {
	for _, tc := range verdictCases {
		if tc.opts != nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			for _, step := range []int{0, 1, 3, 7} {
				checkAgainstReference(t, tc.in, step)
			}
		})
	}
}

// FuzzAgainstNetHTTP checks framing parity with net/http on arbitrary
// streams, and that verdicts do not depend on how the stream is split.
func FuzzAgainstNetHTTP(f *testing.F) {
	for _, tc := range verdictCases {
		if tc.opts == nil && len(tc.in) < 2048 {
			f.Add(tc.in, uint8(0))
			f.Add(tc.in, uint8(5))
		}
	}
	f.Fuzz(func(t *testing.T, stream string, step uint8) {
		checkAgainstReference(t, stream, int(step%17))
		// Same verdicts whole and split.
		a := readAll(t, []string{stream}, nil)
		var chunks []string
		for rest, n := stream, int(step%17)+1; rest != ""; {
			k := min(n, len(rest))
			chunks = append(chunks, rest[:k])
			rest = rest[k:]
		}
		b := readAll(t, chunks, nil)
		for i := 0; i < 64; i++ {
			ga, gb := a.Next(), b.Next()
			if !errors.Is(ga, gb) {
				t.Fatalf("call %d: Next() = %v whole, %v split", i+1, ga, gb)
			}
		}
	})
}

// TestRandomStreamsAgainstNetHTTP checks framing parity with net/http on
// random pipelines of requests. Clean pipelines hold only requests Go
// serves and the guard must pass (every one must get a nil verdict at the
// offset net/http reads it); mixed ones add ambiguous and subtly broken
// requests, for which only the safety property of checkAgainstReference
// holds.
func TestRandomStreamsAgainstNetHTTP(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var clean bool
	// pick chooses among good, or among good and bad when !clean.
	pick := func(good []string, bad ...string) string {
		if !clean && len(bad) > 0 && rng.Intn(3) == 0 {
			return bad[rng.Intn(len(bad))]
		}
		return good[rng.Intn(len(good))]
	}
	list := func(s ...string) []string { return s }
	eol := func() string { return pick(list("\r\n", "\r\n", "\n")) }
	body := func() string {
		return pick(list("", "x", "hello", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "0\r\n\r\n", "\r\n\r\n", strings.Repeat("b", 300)))
	}
	hex := func(n int) string {
		s := strconv.FormatInt(int64(n), 16)
		if rng.Intn(3) == 0 {
			s = strings.ToUpper(s)
		}
		if rng.Intn(4) == 0 {
			s = "00" + s
		}
		return s
	}
	chunkedBody := func() string {
		var b strings.Builder
		for range rng.Intn(4) {
			data := body()
			if data == "" {
				data = "z"
			}
			b.WriteString(hex(len(data)) + pick(list("", " ", "\t", ";a=b", ";a=\"x;y\"", "; q", ";"+strings.Repeat("e", 200))))
			b.WriteString(pick(list("\r\n"), "\n", "\r\r\n"))
			b.WriteString(data + pick(list("\r\n"), "\n", "\r", "XX"))
		}
		b.WriteString(pick(list("0", "000", "0;ext", "0 ")) + "\r\n")
		b.WriteString(pick(list("", "", "T: v\r\n", "T: v\r\n\tw\r\n", "T: v\r\nU: \r\n", "T: "+strings.Repeat("t", 4089)+"\r\n"),
			" T: v\r\n", "T v\r\n", "T: v\n", "T: "+strings.Repeat("t", 4090)+"\r\n"))
		b.WriteString(pick(list("\r\n"), "\n"))
		return b.String()
	}
	var lastPOST bool
	request := func() string {
		e := eol()
		hdr := "Host: a" + e
		post := lastPOST
		lastPOST = false
		switch rng.Intn(14) {
		case 0, 1:
			return pick(list("GET", "HEAD", "DELETE")) + " /" + pick(list("", "x", "a?b=c")) + " HTTP/1.1" + e + hdr + pick(list("", "Accept: */*"+e)) + e
		case 2, 3:
			lastPOST = true
			b := body()
			return "POST / HTTP/1.1" + e + hdr + "Content-Length: " + strconv.Itoa(len(b)) + e + e + b
		case 4, 5:
			lastPOST = true
			return "POST / HTTP/" + pick(list("1.1", "1.1", "1.2")) + e + hdr + pick(list("Transfer-Encoding: chunked", "transfer-encoding:  Chunked ")) + e + e + chunkedBody()
		case 6:
			b := body()
			return "PUT / HTTP/1.1" + e + hdr + pick(list("Content-Length: "+strconv.Itoa(len(b))+e),
				"X-A: b"+e+" Content-Length: "+strconv.Itoa(len(b))+e,
				"Content-Length: "+strconv.Itoa(len(b))+e+"Content-Length: 0"+strconv.Itoa(len(b))+e,
				"Content-Length: 4"+e+"Transfer-Encoding: chunked"+e) + e + b
		case 7:
			return "POST / HTTP/1.0" + e + "Connection: keep-alive" + e + pick(list("Content-Length: 0"+e),
				"Transfer-Encoding: chunked"+e, "Content-Length: 5"+e+"Transfer-Encoding: chunked"+e) + e + pick(list(""), chunkedBody())
		case 8:
			b := body()
			return "PUT / HTTP/1.1" + e + hdr + "Content-Length: " + strconv.Itoa(len(b)) + e + "content-length:" + strconv.Itoa(len(b)) + e + e + b
		case 9:
			return pick(list("OPTIONS * HTTP/1.1"+e+hdr+e, "PRI * HTTP/2.0"+e+hdr+e), "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
		case 10:
			return "GET / HTTP/1.1" + e + hdr + "Upgrade: websocket" + e + "Connection: Upgrade" + e + e
		case 11:
			if post {
				return pick(list("\r\n", "\n", "\r\n\r\n", "\r\r"), "\r\n\r\n\r\n")
			}
			return pick(list(""), "\r\n", "\n", " ")
		case 12:
			lastPOST = true
			return "POST / HTTP/1.1" + e + hdr + "Expect: 100-continue" + e + "Content-Length: 2" + e + e + "hi"
		default:
			return "GET / HTTP/1.1" + e + hdr + pick(list("Connection: close"+e, "X-B: c"+e),
				"Expect: x"+e, "Transfer-Encoding: chunked, identity"+e, "Content-Length : 0"+e) + e
		}
	}
	for i := range 4000 {
		clean = i%2 == 0
		lastPOST = false
		var s strings.Builder
		for range 1 + rng.Intn(6) {
			s.WriteString(request())
		}
		stream := s.String()
		for _, step := range []int{0, 1, 1 + rng.Intn(40)} {
			if n, ok := checkAgainstReference(t, stream, step); clean && ok && n > 0 {
				t.Errorf("clean stream: Next() returned an error for a request net/http serves (request %d)", n)
			}
		}
		if t.Failed() {
			t.Fatalf("stream %d: %q", i, stream)
		}
	}
}
