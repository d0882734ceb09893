// Package telemetry holds the sidecar's OpenTelemetry SDK: the tracer and
// meter providers (Provider), the Prometheus exposition that the admin
// API serves at /metrics, and the proxy's synchronous instruments
// (Instruments) with their attribute sets precomputed per route (Route).
// docs/observability.md lists every span, attribute and series.
package telemetry
