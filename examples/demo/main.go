// Command demo shows the sidecar at work in one command, without Docker:
//
//	go run ./examples/demo [-v] [-fast] [-keep]
//
// It starts a deliberately flaky upstream and the sidecar in this process
// (the project's own packages, as "sidecar run" wires them, on loopback
// ports the kernel picks), then plays the app: it sends traffic through
// the sidecar while the upstream is healthy, blips, goes down and comes
// back, and narrates each phase with what the app saw (statuses,
// Sidecar-Attempts, Sidecar-Outcome) and the admin API's figures that
// explain it (/v1/routes, /v1/spool, /metrics):
//
//  1. healthy: every call goes through in one attempt;
//  2. blips (503 to every 3rd request): retries absorb them;
//  3. down (connections refused): GETs fail, the circuit breaker opens and
//     fails them fast; POST /events is spooled and answered 202;
//  4. back: the breaker goes half-open and closes, and the spooled events
//     are delivered with their idempotency keys.
//
// The narration is computed from what happened. The demo exits 0 when
// every phase went as expected, 1 with the reasons when one did not (or
// it could not run), 130 when interrupted.
//
// Flags: -v prints the sidecar's configuration, -fast shortens the waits
// (the breaker's open_for is 1s instead of 2s), -keep keeps the temporary
// directory with the configuration and the spool.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	var opts options
	flag.BoolVar(&opts.fast, "fast", false, "shorter waits (open_for 1s, no pauses between phases)")
	flag.BoolVar(&opts.verbose, "v", false, "print the sidecar's configuration")
	flag.BoolVar(&opts.keep, "keep", false, "keep the temporary directory (configuration and spool)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := runDemo(ctx, os.Stdout, opts)
	if ctx.Err() != nil {
		stop()
		fmt.Fprintln(os.Stderr, "demo: interrupted")
		os.Exit(130)
	}
	if err != nil {
		stop()
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}
