package jsstore_test

import (
	"fmt"
	"testing"

	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
	"github.com/sidecar-proxy/sidecar/spool/spooltest"
)

func TestConformance(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	spooltest.Run(t, spooltest.Harness{
		Open: func(t *testing.T, lim spooltest.Limits) (spool.Store, func() spool.Store) {
			opts := jsstore.Options{
				Stream:      fmt.Sprintf("T%d", streams.Add(1)),
				MaxMessages: lim.MaxMessages,
				MaxBytes:    lim.MaxBytes,
				Routes:      map[string]jsstore.RouteOptions{spooltest.DedupeRoute: {DedupeWindow: lim.DedupeWindow}},
			}
			return openStore(t, srv, opts), func() spool.Store { return openStore(t, srv, opts) }
		},
		ServerSideDelays: true,
		LeaseRequired:    true,
		ReplayRequeues:   true,
		Parallel:         true,
	})
}
