package proxy

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sidecar-proxy/sidecar/policy"
)

// gRPC over HTTP/2 (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
// the pieces of the wire protocol the proxy reads or writes itself.

// gRPC header names, in canonical form.
const (
	headerGRPCStatus   = "Grpc-Status"
	headerGRPCMessage  = "Grpc-Message"
	headerGRPCTimeout  = "Grpc-Timeout"
	headerGRPCPushback = "Grpc-Retry-Pushback-Ms"
)

// isGRPC reports whether r is a gRPC call the proxy can answer in gRPC's
// own terms: an HTTP/2 request whose Content-Type is application/grpc or
// application/grpc+<subtype> (or ;parameters). gRPC over HTTP/1.1 does
// not exist (it needs trailers and full duplex), so such a request is
// treated as plain HTTP.
func isGRPC(r *http.Request) bool {
	if r.ProtoMajor != 2 {
		return false
	}
	ct := r.Header["Content-Type"]
	if len(ct) != 1 {
		return false
	}
	rest, ok := strings.CutPrefix(ct[0], "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// maxGRPCTimeoutValue is the largest value a grpc-timeout may carry: at
// most 8 digits.
const maxGRPCTimeoutValue = 1e8 - 1

var errGRPCTimeout = errors.New("malformed grpc-timeout")

// parseGRPCTimeout parses a grpc-timeout value: 1 to 8 ASCII digits and a
// unit, H (hours), M (minutes), S, m (milliseconds), u (microseconds) or n
// (nanoseconds). A value too large for a time.Duration is capped at the
// largest one.
func parseGRPCTimeout(v string) (time.Duration, error) {
	if len(v) < 2 || len(v) > 9 {
		return 0, errGRPCTimeout
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, errGRPCTimeout
	}
	var n int64
	for _, c := range []byte(v[:len(v)-1]) {
		if c < '0' || c > '9' {
			return 0, errGRPCTimeout
		}
		n = n*10 + int64(c-'0')
	}
	if n > int64(maxDuration/unit) {
		return maxDuration, nil
	}
	return time.Duration(n) * unit, nil
}

const maxDuration = time.Duration(1<<63 - 1)

// formatGRPCTimeout formats d as a grpc-timeout value in the finest unit
// that fits 8 digits, rounding up, as grpc-go does; d <= 0 gives "0n",
// an already expired deadline.
func formatGRPCTimeout(d time.Duration) string {
	if d <= 0 {
		return "0n"
	}
	for _, u := range [...]struct {
		d time.Duration
		c string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		if n := ceilDiv(d, u.d); n <= maxGRPCTimeoutValue {
			return strconv.FormatInt(n, 10) + u.c
		}
	}
	return strconv.FormatInt(min(ceilDiv(d, time.Hour), maxGRPCTimeoutValue), 10) + "H"
}

// ceilDiv is d/unit rounded up, for d > 0.
func ceilDiv(d, unit time.Duration) int64 {
	n := int64(d / unit)
	if d%unit != 0 {
		n++
	}
	return n
}

// grpcAnswerCode returns the gRPC status code of an upstream's answer to
// a gRPC call at header time: the grpc-status of a Trailers-Only response
// (HTTP 200 with grpc-status in the headers), the code gRPC clients derive
// from a non-200 HTTP status, or -1 for a normal response whose status is
// still to come in the trailers. A malformed grpc-status is UNKNOWN.
func grpcAnswerCode(resp *http.Response) int {
	if resp.StatusCode != http.StatusOK {
		return grpcCodeOfHTTP(resp.StatusCode)
	}
	v := resp.Header[headerGRPCStatus]
	if len(v) == 0 {
		return -1
	}
	code, err := strconv.Atoi(v[0])
	if err != nil || code < 0 {
		return policy.GRPCUnknown
	}
	return code
}

// grpcCodeOfHTTP is the gRPC code for an HTTP status that is not 200, per
// gRPC's http-grpc-status-mapping.md, which grpc-go follows.
func grpcCodeOfHTTP(status int) int {
	switch status {
	case http.StatusBadRequest:
		return policy.GRPCInternal
	case http.StatusUnauthorized:
		return policy.GRPCUnauthenticated
	case http.StatusForbidden:
		return policy.GRPCPermissionDenied
	case http.StatusNotFound:
		return policy.GRPCUnimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return policy.GRPCUnavailable
	}
	return policy.GRPCUnknown
}

// grpcClientCode reports whether a gRPC code blames the caller, not the
// upstream: like an HTTP 4xx it never counts as a breaker failure.
// CANCELLED, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
// PERMISSION_DENIED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE and
// UNAUTHENTICATED are the caller's; UNKNOWN, DEADLINE_EXCEEDED,
// RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS
// may be the upstream's and count when failure_on names them.
func grpcClientCode(code int) bool {
	switch code {
	case policy.GRPCCanceled, policy.GRPCInvalidArgument, policy.GRPCNotFound,
		policy.GRPCAlreadyExists, policy.GRPCPermissionDenied, policy.GRPCFailedPrecondition,
		policy.GRPCAborted, policy.GRPCOutOfRange, policy.GRPCUnauthenticated:
		return true
	}
	return false
}

// grpcPercentEncode encodes a grpc-message value: bytes outside printable
// ASCII, and '%', become %XX.
func grpcPercentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = append(make([]byte, 0, len(s)+8), s[:i]...)
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	if b == nil {
		return s
	}
	return string(b)
}
