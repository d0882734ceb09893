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

	"github.com/sidecar-proxy/sidecar/internal/h2client"
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

// errSpoolAnswer is the Err of an *UpstreamError whose loop ended on an
// answer that async.spool_on lists (its Status).
var errSpoolAnswer = errors.New("upstream answer listed in async.spool_on")

// UpstreamError is how a request that reached the attempt loop failed
// without an upstream answer to pass on.
type UpstreamError struct {
	Route    string
	Outcome  policy.Outcome
	Attempts int
	// Status is the HTTP status of the last answer when the loop ended on
	// an answer it did not pass on (outcome status on the async path,
	// errSpoolAnswer); 0 otherwise.
	Status int
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
//
// A failed read of the app's body (body, nil when there is none) blames
// the app: the transport's error then only reports that the request
// could not be sent. So does a timeout while a read of the body waits on
// the app.
func classify(err error, app, attempt context.Context, body *appBody) policy.Outcome {
	var de *dialError
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	if app.Err() != nil {
		body.settle()
	}
	switch {
	case body.failure() != policy.OK:
		// Before the app's context: a failed read of the app's connection
		// also cancels it, though the app is there to be answered.
		return body.failure()
	case app.Err() != nil:
		return policy.Canceled
	case attempt.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		if body.awaited() {
			// The attempt ran out of time while the app was still
			// sending its body: the app's delay, not the upstream's.
			return policy.RequestTimeout
		}
		return policy.Timeout
	case errors.As(err, &de), errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &hne):
		return policy.ConnectError
	case errors.Is(err, h2client.ErrUnprocessed):
		// The HTTP/2 upstream refused the stream unprocessed (GOAWAY,
		// REFUSED_STREAM): as good as never sent.
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
	case policy.RequestTimeout:
		return http.StatusRequestTimeout
	case policy.Canceled:
		return 499 // never reaches the app, which went away; for logs
	}
	return http.StatusBadGateway
}

// grpcStatusOf maps a proxy-made outcome to the gRPC status code a gRPC
// caller gets instead of statusOf's HTTP status, per the table in docs/design.md, "Status mapping".
func grpcStatusOf(o policy.Outcome) int {
	switch o {
	case policy.Timeout:
		return policy.GRPCDeadlineExceeded
	case policy.ConnectError, policy.Reset, policy.BreakerOpen, policy.Overloaded, policy.SpoolFull, policy.SpoolError:
		return policy.GRPCUnavailable
	case policy.RateLimited, policy.TooLarge:
		return policy.GRPCResourceExhausted
	case policy.NoRoute:
		return policy.GRPCUnimplemented
	case policy.BadRequest:
		return policy.GRPCInternal
	case policy.RequestTimeout:
		return policy.GRPCDeadlineExceeded
	case policy.Canceled:
		return policy.GRPCCanceled // never reaches the app, which went away
	}
	return policy.GRPCUnavailable
}

// grpcStatusValues are the grpc-status header values, shared read-only.
var grpcStatusValues = func() (v [17][]string) {
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

var errorMessages = map[policy.Outcome]string{
	policy.Timeout:        "upstream timed out",
	policy.ConnectError:   "upstream unreachable",
	policy.Reset:          "upstream connection lost",
	policy.NoRoute:        "no route",
	policy.BadRequest:     "bad request",
	policy.RequestTimeout: "request body timed out",
	policy.BreakerOpen:    "circuit breaker open",
	policy.Overloaded:     "route overloaded",
	policy.RateLimited:    "rate limited",
	policy.TooLarge:       "request too large",
	policy.SpoolFull:      "spool full",
	policy.SpoolError:     "spool unavailable",
}

type errorBody struct {
	Error   string `json:"error"`
	Route   string `json:"route"`
	Outcome string `json:"outcome"`
}

// grpcTrailerError sets, in h, the trailers that end a gRPC call whose
// response had started with the proxy's own error for outcome o:
// grpc-status (grpcStatusOf), grpc-message and Sidecar-Outcome, as
// http.TrailerPrefix fields.
func grpcTrailerError(h http.Header, o policy.Outcome, route string) {
	h[http.TrailerPrefix+headerGRPCStatus] = grpcStatusValues[grpcStatusOf(o)]
	h[http.TrailerPrefix+headerGRPCMessage] = []string{grpcPercentEncode("sidecar route " + route + ": " + errorMessages[o])}
	h[http.TrailerPrefix+HeaderOutcome] = []string{o.String()}
}

// writeError writes the proxy's own error response to r: a JSON body
// {"error", "route", "outcome"} with the outcome's status and the
// Sidecar-Outcome header; attempts > 0 adds Sidecar-Attempts. The 429 and
// 503 outcomes always carry Retry-After, in whole seconds rounded up, at
// least 1. A gRPC call (see isGRPC) gets a gRPC error instead: a
// Trailers-Only response, HTTP 200 with grpc-status (grpcStatusOf) and a
// percent-encoded grpc-message in the headers and no body, with the same
// Sidecar-* headers and Retry-After, plus grpc-retry-pushback-ms where
// Retry-After applies (the same delay in milliseconds, at least 1000).
func writeError(w http.ResponseWriter, r *http.Request, o policy.Outcome, route string, attempts int, msg string, retryAfter time.Duration) {
	writeErrorStatus(w, r, o, statusOf(o), route, attempts, msg, retryAfter)
}

// writeErrorStatus is writeError with the HTTP status given: a
// forward_proxy listener answers no_route with 403. A gRPC caller gets
// the outcome's gRPC code as always.
func writeErrorStatus(w http.ResponseWriter, r *http.Request, o policy.Outcome, status int, route string, attempts int, msg string, retryAfter time.Duration) {
	h := w.Header()
	if msg == "" {
		msg = errorMessages[o]
	}
	if r != nil && r.ProtoMajor == 1 && (o == policy.BadRequest || o == policy.RequestTimeout) {
		// The app's request, or its body, cannot be trusted to end where
		// the next request begins.
		h.Set("Connection", "close")
	}
	h.Set(HeaderOutcome, o.String())
	if attempts > 0 {
		h.Set(HeaderAttempts, strconv.Itoa(attempts))
	}
	pushback := false
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		h.Set("Retry-After", strconv.FormatInt(max(1, int64((retryAfter+time.Second-1)/time.Second)), 10))
		pushback = true
	}
	if r != nil && isGRPC(r) {
		if route != "" {
			msg = "sidecar route " + route + ": " + msg
		} else {
			msg = "sidecar: " + msg
		}
		h.Set("Content-Type", "application/grpc")
		h[headerGRPCStatus] = grpcStatusValues[grpcStatusOf(o)]
		h.Set(headerGRPCMessage, grpcPercentEncode(msg))
		if pushback {
			h.Set(headerGRPCPushback, strconv.FormatInt(max(1000, int64((retryAfter+time.Millisecond-1)/time.Millisecond)), 10))
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	body, _ := json.Marshal(errorBody{Error: msg, Route: route, Outcome: o.String()})
	body = append(body, '\n')
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
