package main

import (
	"context"
	"log/slog"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// openJetStream opens the JetStream spool that cfg describes: the stream's
// limits from spool.max_messages and spool.max_bytes, a consumer per async
// route, fifo for ordering fifo, and a route's async.max_messages. It warns
// that a route's async.max_bytes is not enforced on this backend, and
// jsstore.Open logs the replicas 1 warning.
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
	opts.Routes = jetStreamRoutes(cfg, logger)
	return jsstore.Open(ctx, opts)
}

// jetStreamRoutes returns the JetStream spool's route options: the async
// routes' ordering and max_messages. It warns of an async.max_bytes, which
// this backend cannot enforce.
func jetStreamRoutes(cfg *config.Config, logger *slog.Logger) map[string]jsstore.RouteOptions {
	routes := map[string]jsstore.RouteOptions{}
	for _, l := range cfg.Listeners {
		for _, r := range l.Routes {
			a := r.Async
			if a == nil {
				continue
			}
			routes[r.Name] = jsstore.RouteOptions{FIFO: a.Ordering != "none", MaxMessages: a.MaxMessages, DedupeWindow: a.DedupeWindow.D()}
			if a.MaxBytes > 0 {
				logger.Warn("async.max_bytes is not enforced with spool.backend: jetstream (the server counts no bytes per route); async.max_messages, spool.max_messages and spool.max_bytes are", "route", r.Name)
			}
		}
	}
	return routes
}
