// Package h1server is an HTTP/1.1 server for the sidecar's app-facing
// listeners (placeholder doc, see below).
package h1server
