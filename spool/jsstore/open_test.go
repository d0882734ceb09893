package jsstore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// TestOpenErrors checks the errors at start.
func TestOpenErrors(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	openStore(t, srv, jsstore.Options{Stream: "THREE"}) // replicas 1
	tests := []struct {
		name string
		opts jsstore.Options
		want string
	}{
		{"unreachable", jsstore.Options{URL: "nats://u:secret@127.0.0.1:1", Create: true}, "connect to nats://REDACTED@127.0.0.1:1"},
		{"unreachable, token", jsstore.Options{URL: "nats://s3cr3t@127.0.0.1:1", Create: true}, "connect to nats://REDACTED@127.0.0.1:1"},
		{"missing, create false", jsstore.Options{URL: srv.ClientURL(), Stream: "MISSING"}, "does not exist"},
		{"conflicting replicas", jsstore.Options{URL: srv.ClientURL(), Stream: "THREE", Replicas: 3, Create: true}, "replicas"},
		{"bad name", jsstore.Options{URL: srv.ClientURL(), Stream: "A.B", Create: true}, "stream name"},
	}
	for _, tt := range tests {
		tt.opts.ConnectTimeout = 5 * time.Second
		tt.opts.RequestTimeout = 5 * time.Second
		s, err := jsstore.Open(t.Context(), tt.opts)
		if err == nil {
			s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Open() = %v, want an error about %q", tt.name, err, tt.want)
		}
	}
}
