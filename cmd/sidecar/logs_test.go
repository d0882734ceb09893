package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestUpstreamBytesInTheLogStayJSON is issue 18's item 7: bytes an
// upstream chose never reach the log unescaped. Two ways an upstream can
// try: bytes written on an idle keep-alive connection, which the
// sidecar's HTTP/1.1 client must never take for the answer to the next
// request (it finds them before reusing the connection, and drops it),
// and a malformed answer, whose error is logged at debug level. Under
// -log-format json every line must be one JSON record, the upstream's
// bytes escaped and cut short, and no record forged.
func TestUpstreamBytesInTheLogStayJSON(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	idle := make(chan struct{})  // closed once the app has its first answer
	wrote := make(chan struct{}) // closed once the unsolicited bytes are sent
	forged := "\n{\"level\":\"ERROR\",\"msg\":\"forged by the upstream\"}\n"
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					switch {
					case req.URL.Path == "/malformed":
						io.WriteString(c, "HTTP/1.1 2x0 OK"+forged+strings.Repeat("x", 8192)+"\r\n\r\n")
						return
					case n > 1:
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
						continue
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					// The sidecar's client holds c idle now; write to it.
					<-idle
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n"+forged+"\r\n\r\nforged")
					close(wrote)
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					io.Copy(io.Discard, c)
					return
				}
			}()
		}
	}()
	cfg := oneRouteConfig(t, "http://"+ln.Addr().String(), "127.0.0.1:0", "1s")
	_, s, _, lines := startBinaryArgs(t, cfg, []string{"-log-level", "debug"})
	addr := strings.TrimPrefix(s.Listeners, "app=")
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/x"); code != 200 || body != "ok" {
		t.Fatalf("first answer = %d %q, want 200 ok", code, body)
	}
	close(idle)
	<-wrote
	// The sidecar's client checks a connection before reusing it once it
	// has been idle 100 ms (docs/design.md, "The HTTP/1.1 upstream
	// client"): this one must have been.
	time.Sleep(150 * time.Millisecond)
	if code, body := get("/y"); code != 200 || body != "fresh" {
		t.Fatalf("answer after unsolicited bytes = %d %q, want 200 fresh from a new connection", code, body)
	}
	if code, _ := get("/malformed"); code != http.StatusBadGateway {
		t.Fatalf("malformed answer = %d, want 502", code)
	}

	timeout := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("sidecar exited before logging the malformed answer")
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line is not JSON (%v): %q", err, line)
			}
			if rec["msg"] == "forged by the upstream" {
				t.Fatalf("the upstream forged a log record: %q", line)
			}
			e, _ := rec["error"].(string)
			if rec["msg"] != "upstream request failed" || !strings.Contains(e, "malformed") {
				continue
			}
			if len(e) > 512 || strings.Contains(e, "\n") {
				t.Errorf("logged error is %d bytes or spans lines: %q", len(e), e)
			}
			return
		case <-timeout:
			t.Fatal("no record of the malformed answer within 20s")
		}
	}
}
