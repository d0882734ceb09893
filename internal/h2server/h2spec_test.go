package h2server

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/sidecar-proxy/sidecar/internal/h2spectest"
)

// TestH2Spec runs h2spec, the HTTP/2 conformance suite, against the
// server, and fails on any case that does not pass: the server has no
// known deviation (proxy's TestH2Spec runs it through the listeners).
func TestH2Spec(t *testing.T) {
	body := []byte(strings.Repeat("h2spec ", 10<<10))
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		// Long enough for the flow-control cases, which skip a short
		// answer.
		w.Write(body)
	}), MaxConcurrentStreams: 100, MaxHeaderBytes: 64 << 10})
	h2spectest.Run(t, addr, nil)
}
