package main

import (
	"context"
	"log/slog"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// openJetStream opens the JetStream spool that cfg describes: the stream's
// limits from spool.max_messages and spool.max_bytes, a consumer per async
// route, fifo for ordering fifo. It logs why per-route limits are not
// enforced on this backend, and jsstore.Open logs the replicas 1 warning.
func openJetStream(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*jsstore.Store, error) {
	sc, js := cfg.Spool, cfg.Spool.JetStream
	opts := jsstore.Options{
		URL:         js.URL,
		Stream:      js.Stream,
		Replicas:    js.Replicas,
		Create:      js.Create,
		AckWait:     js.AckWait.D(),
		MaxMessages: sc.MaxMessages,
		MaxBytes:    int64(sc.MaxBytes),
		Routes:      map[string]jsstore.RouteOptions{},
		CredsFile:   js.CredsFile,
		NKeyFile:    js.NKeyFile,
		User:        js.User,
		Password:    js.Password,
		Token:       js.Token,
		TLS: jsstore.TLS{
			CAFile:             js.TLS.CAFile,
			CertFile:           js.TLS.CertFile,
			KeyFile:            js.TLS.KeyFile,
			ServerName:         js.TLS.ServerName,
			InsecureSkipVerify: js.TLS.InsecureSkipVerify,
		},
		Logger: logger,
	}
	for _, l := range cfg.Listeners {
		for _, r := range l.Routes {
			a := r.Async
			if a == nil {
				continue
			}
			opts.Routes[r.Name] = jsstore.RouteOptions{FIFO: a.Ordering != "none"}
			if a.MaxMessages > 0 || a.MaxBytes > 0 {
				logger.Warn("async.max_messages and async.max_bytes are not enforced with spool.backend: jetstream; only spool.max_messages and spool.max_bytes bound the stream", "route", r.Name)
			}
		}
	}
	return jsstore.Open(ctx, opts)
}
