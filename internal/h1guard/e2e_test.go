package h1guard

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// guardHandler is the handler of the end-to-end tests: 400 and close on an
// error verdict, else 200 with the length of the body it read.
func guardHandler(w http.ResponseWriter, r *http.Request) {
	if err := FromContext(r.Context()).Next(); err != nil {
		w.Header().Set("Connection", "close")
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "%d", n)
}

func startServer(t *testing.T, configure func(*http.Server)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(guardHandler),
		ConnContext:       ConnContext,
		ReadHeaderTimeout: 10 * time.Second,
	}
	if configure != nil {
		configure(srv)
	}
	go srv.Serve(Listen(ln))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// exchange writes raw on a new connection and reads n final responses,
// formatted as "status body" (1xx responses are skipped). If closed, it then
// expects the server to have closed the connection.
func exchange(t *testing.T, addr, raw string, n int, closed bool) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := io.WriteString(c, raw)
		werr <- err
	}()
	br := bufio.NewReader(c)
	var got []string
	for len(got) < n {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %d responses %q: ReadResponse: %v", len(got), got, err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatalf("reading body: %v", err)
		}
		if res.StatusCode < 200 {
			continue
		}
		s := itoa(res.StatusCode)
		if res.StatusCode < 300 {
			s += " " + string(body)
		}
		got = append(got, s)
	}
	if closed {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		switch _, err := br.ReadByte(); {
		case err == io.EOF || isReset(err):
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("after %q: connection still open, want closed", got)
		default:
			t.Fatalf("after %q: read = %v, want EOF (connection closed)", got, err)
		}
	} else {
		if err := <-werr; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	return got
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

func TestEndToEnd(t *testing.T) {
	big := 8 << 20
	tests := []struct {
		name      string
		configure func(*http.Server)
		raw       string
		want      []string
		closed    bool
	}{
		{
			name: "CL+TE",
			raw:  clte,
			want: []string{"400"}, closed: true,
		},
		{
			name: "CL.TE smuggling",
			raw: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG" +
				"POST /admin HTTP/1.1\r\nHost: a\r\n\r\n",
			want: []string{"400"}, closed: true,
		},
		{
			name: "TE.CL smuggling",
			raw: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"5c\r\nGPOST /admin HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
			want: []string{"400"}, closed: true,
		},
		{
			name: "CL+TE lower case and tab",
			raw:  "POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 4\r\ntransfer-encoding:\tchunked\r\n\r\n0\r\n\r\n",
			want: []string{"400"}, closed: true,
		},
		{
			name: "CL+TE in HTTP/1.0",
			raw:  "POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			want: []string{"400"}, closed: true,
		},
		{
			name: "TE hidden by obs-fold",
			raw:  "POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
			want: []string{"400"}, closed: true,
		},
		{
			name: "GET then CL+TE",
			raw:  get + clte + get,
			want: []string{"200 0", "400"}, closed: true,
		},
		// Shapes Go's server refuses by itself, before the handler.
		{
			name: "CL+TE chunked, identity",
			raw:  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
			want: []string{"501"}, closed: true,
		},
		{
			name: "CL+TE twice",
			raw:  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			want: []string{"501"}, closed: true,
		},
		{
			name: "TE space before colon",
			raw:  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
			want: []string{"400"}, closed: true,
		},
		{
			name: "conflicting Content-Length",
			raw:  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
			want: []string{"400"}, closed: true,
		},
		// Good traffic.
		{
			name: "pipelined good requests",
			raw:  get + get + postCL("hello") + "GET /x HTTP/1.1\nHost: a\n\n" + get,
			want: []string{"200 0", "200 0", "200 5", "200 0", "200 0"},
		},
		{
			name: "chunked with trailers then GET",
			raw:  chunked0 + "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\nY: 2\r\n\r\n" + get,
			want: []string{"200 11", "200 0"},
		},
		{
			name: "8 MiB body then GET",
			raw:  post("Content-Length: "+itoa(big)+"\r\n", strings.Repeat("x", big)) + get,
			want: []string{"200 " + itoa(big), "200 0"},
		},
		{
			name: "CRLF after POST",
			raw:  postCL("hi") + "\r\n" + get,
			want: []string{"200 2", "200 0"},
		},
		{
			name: "Expect 100-continue",
			raw:  post("Expect: 100-continue\r\nContent-Length: 5\r\n", "hello") + get,
			want: []string{"200 5", "200 0"},
		},
		{
			name: "Expect 100-continue CL+TE",
			raw:  post("Expect: 100-continue\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
			want: []string{"400"}, closed: true,
		},
		{
			name: "Upgrade declined then GET and CL+TE",
			raw:  "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + get + clte,
			want: []string{"200 0", "200 0", "400"}, closed: true,
		},
		{
			name: "OPTIONS * then CL+TE",
			raw:  "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" + get + clte,
			want: []string{"200 ", "200 0", "400"}, closed: true,
		},
		{
			name:      "OPTIONS * to handler then CL+TE",
			configure: func(s *http.Server) { s.DisableGeneralOptionsHandler = true },
			raw:       "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" + get + clte,
			want:      []string{"200 0", "200 0", "400"}, closed: true,
		},
		{
			name: "malformed chunk closes",
			raw:  chunked0 + "5\r\nhelloXX" + get,
			want: []string{"400"}, closed: true,
		},
		{
			name: "HTTP/2 preface",
			raw:  "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			want: []string{"200 0"}, closed: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := startServer(t, tc.configure)
			got := exchange(t, addr, tc.raw, len(tc.want), tc.closed)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("responses = %q, want %q", got, tc.want)
			}
		})
	}
}
