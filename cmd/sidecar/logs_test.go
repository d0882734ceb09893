package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/stdlog"
)

// TestUpstreamBytesInTheLogStayJSON is issue 18's item 7: an upstream
// that writes on an idle keep-alive connection makes Go's HTTP client log
// "Unsolicited response received on idle HTTP channel" with the bytes it
// sent. Under -log-format json that line must be one JSON record, with
// the upstream's bytes escaped and cut short, and no record forged.
func TestUpstreamBytesInTheLogStayJSON(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	idle := make(chan struct{}) // closed once the app has its answer
	forged := "\n{\"level\":\"ERROR\",\"msg\":\"forged by the upstream\"}\n"
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				// Once the app has its answer, the sidecar's transport
				// holds c idle; write to it.
				<-idle
				io.WriteString(c, "HTTP/1.1 200 OK"+forged+strings.Repeat("x", 8192))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	cfg := oneRouteConfig(t, "http://"+ln.Addr().String(), "127.0.0.1:0", "1s")
	_, s, _, lines := startBinaryLogs(t, cfg)
	addr := strings.TrimPrefix(s.Listeners, "app=")
	resp, err := http.Get("http://" + addr + "/x")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	close(idle)

	timeout := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("sidecar exited before logging the unsolicited response")
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line is not JSON (%v): %q", err, line)
			}
			if rec["msg"] == "forged by the upstream" {
				t.Fatalf("the upstream forged a log record: %q", line)
			}
			l, _ := rec["line"].(string)
			if !strings.Contains(l, "Unsolicited response") {
				continue
			}
			if rec["msg"] != "go library message" || rec["level"] != "WARN" {
				t.Errorf("record = %v, want a WARN go library message", rec)
			}
			if len(l) > stdlog.MaxLine+64 || strings.Contains(l, "\n") {
				t.Errorf("logged line is %d bytes or spans lines: %q", len(l), l)
			}
			return
		case <-timeout:
			t.Fatal("no unsolicited-response record within 20s")
		}
	}
}
