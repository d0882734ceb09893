package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/sidecar-proxy/sidecar/policy"
)

// Headers the sidecar adds to responses.
const (
	// HeaderOutcome is on every response the proxy makes itself.
	HeaderOutcome = "Sidecar-Outcome"
	// HeaderAttempts is on every proxied response: the upstream attempts made.
	HeaderAttempts = "Sidecar-Attempts"
)

// errPerTryTimeout is the cause of an attempt's context when its
// per_try_timeout passes.
var errPerTryTimeout = errors.New("per-try timeout")

// UpstreamError is how a request that reached the attempt loop failed
// without an upstream answer to pass on.
type UpstreamError struct {
	Route    string
	Outcome  policy.Outcome
	Attempts int
	// RetryAfter, when positive, is sent as Retry-After (breaker_open).
	RetryAfter time.Duration
	Err        error
}

func (e *UpstreamError) Error() string {
	return "route " + e.Route + ": " + e.Outcome.String() + ": " + e.Err.Error()
}

func (e *UpstreamError) Unwrap() error { return e.Err }

// classify names the outcome of a round trip that returned err. app is the
// app's request context, attempt the attempt's.
func classify(err error, app, attempt context.Context) policy.Outcome {
	var de *dialError
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	switch {
	case app.Err() != nil:
		return policy.Canceled
	case attempt.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return policy.Timeout
	case errors.As(err, &de), errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &hne):
		return policy.ConnectError
	}
	return policy.Reset
}

// statusOf maps a proxy-made outcome to its HTTP status: the one place
// where this mapping lives.
func statusOf(o policy.Outcome) int {
	switch o {
	case policy.Timeout:
		return http.StatusGatewayTimeout
	case policy.ConnectError, policy.Reset:
		return http.StatusBadGateway
	case policy.BreakerOpen, policy.Overloaded, policy.SpoolFull, policy.SpoolError:
		return http.StatusServiceUnavailable
	case policy.RateLimited:
		return http.StatusTooManyRequests
	case policy.NoRoute:
		return http.StatusNotFound
	case policy.TooLarge:
		return http.StatusRequestEntityTooLarge
	case policy.BadRequest:
		return http.StatusBadRequest
	case policy.Canceled:
		return 499 // never reaches the app, which went away; for logs
	}
	return http.StatusBadGateway
}

var errorMessages = map[policy.Outcome]string{
	policy.Timeout:      "upstream timed out",
	policy.ConnectError: "upstream unreachable",
	policy.Reset:        "upstream connection lost",
	policy.NoRoute:      "no route",
	policy.BadRequest:   "bad request",
	policy.BreakerOpen:  "circuit breaker open",
	policy.Overloaded:   "route overloaded",
	policy.RateLimited:  "rate limited",
	policy.TooLarge:     "request too large",
	policy.SpoolFull:    "spool full",
	policy.SpoolError:   "spool unavailable",
}

type errorBody struct {
	Error   string `json:"error"`
	Route   string `json:"route"`
	Outcome string `json:"outcome"`
}

// writeError writes the proxy's own error response: a JSON body
// {"error", "route", "outcome"} with the outcome's status and the
// Sidecar-Outcome header; attempts > 0 adds Sidecar-Attempts. The 429 and
// 503 outcomes always carry Retry-After, in whole seconds rounded up, at
// least 1.
func writeError(w http.ResponseWriter, o policy.Outcome, route string, attempts int, msg string, retryAfter time.Duration) {
	h := w.Header()
	if msg == "" {
		msg = errorMessages[o]
	}
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderOutcome, o.String())
	if attempts > 0 {
		h.Set(HeaderAttempts, strconv.Itoa(attempts))
	}
	if status := statusOf(o); status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		h.Set("Retry-After", strconv.FormatInt(max(1, int64((retryAfter+time.Second-1)/time.Second)), 10))
	}
	body, _ := json.Marshal(errorBody{Error: msg, Route: route, Outcome: o.String()})
	body = append(body, '\n')
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(statusOf(o))
	w.Write(body)
}
