package spool_test

import (
	"testing"

	"github.com/sidecar-proxy/sidecar/spool"
	"github.com/sidecar-proxy/sidecar/spool/spooltest"
)

// TestConformance runs the backend conformance suite against FileStore,
// which honours every part of the contract: no difference flags.
func TestConformance(t *testing.T) {
	spooltest.Run(t, spooltest.Harness{
		Open: func(t *testing.T, lim spooltest.Limits) (spool.Store, func() spool.Store) {
			dir := t.TempDir()
			opts := spool.FileOptions{MaxMessages: lim.MaxMessages, MaxBytes: lim.MaxBytes,
				Routes: map[string]spool.Limits{spooltest.DedupeRoute: {DedupeWindow: lim.DedupeWindow}}}
			openStore := func() spool.Store {
				s, err := spool.OpenFile(dir, opts)
				if err != nil {
					t.Fatalf("OpenFile(%s) = %v, want nil", dir, err)
				}
				t.Cleanup(func() { _ = s.Close() })
				return s
			}
			return openStore(), openStore
		},
		Parallel: true,
	})
}
