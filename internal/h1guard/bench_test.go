package h1guard

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// loopConn returns the chunks in turn, forever, one per Read.
type loopConn struct {
	net.Conn // nil: only Read is used
	chunks   []string
	i        int
}

func (l *loopConn) Read(b []byte) (int, error) {
	n := copy(b, l.chunks[l.i])
	l.i++
	if l.i == len(l.chunks) {
		l.i = 0
	}
	return n, nil
}

const (
	benchGET = "GET /api/v1/items?id=12345 HTTP/1.1\r\n" +
		"Host: backend.example.com\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n" +
		"Accept: */*\r\n" +
		"Accept-Encoding: gzip, deflate\r\n" +
		"Connection: keep-alive\r\n\r\n"
	benchPOSTHead = "POST /api/v1/items HTTP/1.1\r\n" +
		"Host: backend.example.com\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n" +
		"Accept: */*\r\n" +
		"Content-Type: application/json\r\n"
	benchBody = `{"id":12345,"name":"widget","tags":["a","b","c"],"price":9.99}`
)

var (
	benchPOST        = benchPOSTHead + "Content-Length: " + itoa(len(benchBody)) + "\r\n\r\n" + benchBody
	benchPOSTChunked = benchPOSTHead + "Transfer-Encoding: chunked\r\n\r\n" +
		strconv.FormatInt(int64(len(benchBody)), 16) + "\r\n" + benchBody + "\r\n0\r\n\r\n"
)

// BenchmarkConnRead measures Read plus Next per request on a keep-alive
// connection; an op is one request. "raw" is the unwrapped connection, the
// baseline the other cases add to.
func BenchmarkConnRead(b *testing.B) {
	pipelined := strings.Repeat(benchGET, 4096/len(benchGET))
	cases := []struct {
		name   string
		chunks []string
		reqs   int // requests per cycle of chunks
		raw    bool
	}{
		{name: "raw-GET", chunks: []string{benchGET}, reqs: 1, raw: true},
		{name: "GET", chunks: []string{benchGET}, reqs: 1},
		{name: "GET-split", chunks: []string{benchGET[:50], benchGET[50:]}, reqs: 1},
		{name: "GET-pipelined", chunks: []string{pipelined}, reqs: 4096 / len(benchGET)},
		{name: "raw-POST", chunks: []string{benchPOST}, reqs: 1, raw: true},
		{name: "POST", chunks: []string{benchPOST}, reqs: 1},
		{name: "POST-chunked", chunks: []string{benchPOSTChunked}, reqs: 1},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			var conn net.Conn = &loopConn{chunks: bc.chunks}
			var gc *Conn
			if !bc.raw {
				gc = newConn(conn)
				conn = gc
			}
			buf := make([]byte, 4096)
			size := 0
			for _, c := range bc.chunks {
				size += len(c)
			}
			b.SetBytes(int64(size / bc.reqs))
			b.ReportAllocs()
			// Warm up: the split-line buffer is allocated once per Conn.
			for range len(bc.chunks) {
				conn.Read(buf)
			}
			if gc != nil {
				for gc.verdicts.Load()&^offBit > 0 {
					gc.Next()
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; {
				for range len(bc.chunks) {
					conn.Read(buf)
				}
				for range bc.reqs {
					if gc != nil {
						if err := gc.Next(); err != nil {
							b.Fatalf("Next() = %v, want %v", err, nil)
						}
					}
					i++
				}
			}
		})
	}
}
