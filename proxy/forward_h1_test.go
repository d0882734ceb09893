package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"testing"
)

// TestEarlyHintsPassThrough: an upstream's 103 reaches the app before
// the final answer, with its own fields only.
func TestEarlyHintsPassThrough(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("X-Final", "yes")
		io.WriteString(w, "done")
	})
	sc := startSidecar(t, oneRoute("{timeout: 5s}"), up)
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		if code == http.StatusEarlyHints {
			hints = append(hints, h.Get("Link"))
		}
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", sc.url("/x"), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(hints) != 1 || hints[0] != "</style.css>; rel=preload" {
		t.Errorf("103 hints seen by the app: %q", hints)
	}
	if string(body) != "done" || resp.Header.Get("X-Final") != "yes" || resp.Header.Get("Link") != "" {
		t.Errorf("final answer: %q, header %v", body, resp.Header)
	}
}

// TestForwardedQueryAndHeaders: the outbound request keeps end-to-end
// fields, drops hop-by-hop ones (and those Connection names), and carries
// a query Go's parser would split differently re-encoded, as
// httputil.ReverseProxy sends it.
func TestForwardedQueryAndHeaders(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	sc := startSidecar(t, oneRoute("{timeout: 5s}"), up)
	resp, _, _ := rawRequest(t, sc.addr["app"], "GET /q?a=1;b=2&c=%zz&d=4 HTTP/1.1\r\nHost: app\r\n"+
		"Connection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTe: trailers, deflate\r\nX-End: 2\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := up.lastRequest()
	if got.URL.RawQuery != "d=4" {
		t.Errorf("query upstream = %q, want %q", got.URL.RawQuery, "d=4")
	}
	if got.Header.Get("X-Hop") != "" || got.Header.Get("Keep-Alive") != "" || got.Header.Get("X-End") != "2" || got.Header.Get("Te") != "trailers" {
		t.Errorf("headers upstream: %v", got.Header)
	}
	if got.Header.Get("X-Forwarded-For") != "127.0.0.1" || got.Header.Get("X-Forwarded-Host") != "app" || got.Header.Get("X-Forwarded-Proto") != "http" {
		t.Errorf("X-Forwarded-*: %v", got.Header)
	}
}
