package jsstore_test

import (
	"testing"

	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// TestRedactURLs: a user, password or token in a URL never shows.
func TestRedactURLs(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://s3cr3t-token@127.0.0.1:4222", "nats://REDACTED@127.0.0.1:4222"},
		{"nats://alice:pa/ss@127.0.0.1:4222", "nats://REDACTED@127.0.0.1:4222"},
		{"nats://alice@a:1, tls://bob:pw@b:2", "nats://REDACTED@a:1, tls://REDACTED@b:2"},
		{"tok@127.0.0.1:4222", "REDACTED@127.0.0.1:4222"},
	}
	for _, tt := range tests {
		if got := jsstore.RedactURLs(tt.in); got != tt.want {
			t.Errorf("redactURLs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
