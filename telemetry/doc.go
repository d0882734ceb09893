// Package telemetry holds the sidecar's OpenTelemetry SDK: the tracer and
// meter providers (Provider), the Prometheus exposition that the admin
// API serves at /metrics, and the proxy's synchronous instruments
// (Instruments). docs/operations.md lists the /metrics series.
package telemetry
