// Package proxy serves the app-facing listeners: it compiles a validated
// config into an immutable Snapshot (Build), and a Server answers each
// request from the snapshot current when the request arrived.
//
// Every request takes one of two paths. They share the handler and the
// attempt loop, and fork after admission:
//
//	handler.ServeHTTP (handler.go)
//	  framing verdict (internal/h1guard; none at all is refused too)
//	  CONNECT and unwanted upgrades refused, route match
//	  admission: rate limit, then max_in_flight
//	    |
//	    +-- sync path: Route.serveForward (forward.go; gRPC calls too,
//	    |   docs/grpc.md) builds the outbound request and hands it to
//	    |   the attempter (attempt.go): overall deadline, then per
//	    |   attempt breaker pick, per-try deadline, round trip,
//	    |   classify, breaker record, retry decision, back-off, budget.
//	    |   An answer goes to the app behind a gate (gate.go); no
//	    |   answer, or a body that broke before any of it was sent: the
//	    |   proxy's own error (errors.go). Upgrades go through
//	    |   Route.proxy, a ReverseProxy with the same attempter.
//	    |
//	    +-- async path: an async route with a spool, neither gRPC nor an
//	        upgrade: serveAsync (async.go) reads the body and builds the
//	        spool.Message with its idempotency key.
//	          when: always         spooler.enqueue: Append, then 202
//	          when: upstream_down  Route.tryUpstream: the async attempt
//	                               loop (Route.asyncAttempt), which ends on
//	                               an answer spool_on lists; serveAsync
//	                               then decides with asyncPolicy.spoolsOn:
//	                               listed: enqueue and 202; else the
//	                               answer or error as on the sync path
//
//	deliverer (deliver.go), one per async route in the Server's delivery
//	group: lease from the store, the route's attempt loop, then ack,
//	retryLater or deadLetter.
//
// The 202 is written only once the store has made the message durable.
// Request bodies are replayed across attempts by replayBody and teeBody
// (body.go); upstream connections live in one Pool per upstream (pool.go).
//
// docs/design.md describes the two paths, the outcome vocabulary, the
// retry rules, the status mapping and the guarantees; docs/policies.md
// the policies and their order.
package proxy
