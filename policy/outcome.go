// Package policy holds the sidecar's reliability mechanisms as small,
// independently testable pieces: the outcome vocabulary and the condition
// lists written in it (retry.on, circuit_breaker.failure_on,
// async.spool_on), retry back-off, Retry-After and gRPC pushback parsing,
// the retry budget, circuit breakers, and rate and in-flight limits.
// Budget and RateLimiter read time from an injectable clock and
// ParseRetryAfter takes the time of receipt; Breaker runs on gobreaker,
// which reads time.Now itself. Package proxy composes them around the
// transport (docs/policies.md).
package policy

import (
	"fmt"
	"strconv"
	"strings"
)

// Outcome is how an attempt or a request ended (docs/design.md,
// "Outcomes"). The zero value is OK.
type Outcome uint8

// Outcomes of an attempt to reach the upstream, then outcomes of requests the
// proxy refuses before any attempt.
const (
	OK              Outcome = iota // the upstream answered below 400 (gRPC: OK)
	ConnectError                   // refused, DNS, connect timeout, bad TLS certificate: nothing was sent
	Reset                          // the connection was lost after sending
	Timeout                        // a per-try or overall deadline passed
	Status                         // the upstream answered 4xx/5xx or a gRPC error code
	BreakerOpen                    // every endpoint's breaker is open
	RateLimited                    // the route's rate limit refused the request
	BudgetExhausted                // the retry budget refused a retry
	Canceled                       // the app went away
	NoRoute                        // no route matched
	TooLarge                       // the request body is over a limit
	Overloaded                     // the route's max_in_flight is full
	SpoolFull                      // the spool is over a limit
	SpoolError                     // the spool could not make the message durable
	BadRequest                     // the request is malformed, or its body broke off
	RequestTimeout                 // the app paused sending its request body for too long
	NumOutcomes                    // the number of outcomes, not one
)

var outcomeNames = [NumOutcomes]string{
	OK:              "ok",
	ConnectError:    "connect_error",
	Reset:           "reset",
	Timeout:         "timeout",
	Status:          "status",
	BreakerOpen:     "breaker_open",
	RateLimited:     "rate_limited",
	BudgetExhausted: "budget_exhausted",
	Canceled:        "canceled",
	NoRoute:         "no_route",
	TooLarge:        "too_large",
	Overloaded:      "overloaded",
	SpoolFull:       "spool_full",
	SpoolError:      "spool_error",
	BadRequest:      "bad_request",
	RequestTimeout:  "request_timeout",
}

// CallersFault reports whether o blames the app, not the upstream: the
// app went away, or its request or its body was malformed or stalled.
// Such an outcome is never retried and never counted by a breaker,
// whatever the condition lists say.
func (o Outcome) CallersFault() bool {
	return o == Canceled || o == BadRequest || o == RequestTimeout
}

// String returns the outcome's name as used in YAML and in the
// sidecar-outcome header.
func (o Outcome) String() string {
	if o < NumOutcomes {
		return outcomeNames[o]
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// ParseOutcome returns the outcome called name, as String writes it.
func ParseOutcome(name string) (Outcome, bool) {
	for o := OK; o < NumOutcomes; o++ {
		if outcomeNames[o] == name {
			return o, true
		}
	}
	return 0, false
}

// Condition is one entry of a retry.on, circuit_breaker.failure_on or
// async.spool_on list: an outcome, an HTTP status code or class, or a gRPC
// status code.
type Condition struct {
	Kind    ConditionKind
	Outcome Outcome // with KindOutcome
	Code    int     // HTTP status (KindHTTPStatus), class digit 1-5 (KindHTTPClass) or gRPC code (KindGRPC)
}

// ConditionKind says which field of a Condition applies.
type ConditionKind uint8

// The kinds of Condition.
const (
	KindOutcome ConditionKind = iota
	KindHTTPStatus
	KindHTTPClass
	KindGRPC
)

// ParseCondition parses a condition name: an outcome such as
// "connect_error", an HTTP status ("503") or class ("5xx"), or a gRPC code
// name in lower case ("unavailable"). "ok" and "canceled" are not
// conditions: a success is never a failure and the app's own cancellation
// is never held against an upstream. "canceled" is taken as the gRPC code
// CANCELLED only when it came from the upstream, so it is refused here to
// avoid the ambiguity.
func ParseCondition(s string) (Condition, error) {
	switch {
	case s == "ok" || s == "canceled":
		return Condition{}, fmt.Errorf("%q cannot be a condition", s)
	case len(s) == 3 && s[0] >= '1' && s[0] <= '5' && strings.EqualFold(s[1:], "xx"):
		return Condition{Kind: KindHTTPClass, Code: int(s[0] - '0')}, nil
	case len(s) == 3 && s[0] >= '1' && s[0] <= '5':
		code, err := strconv.Atoi(s)
		if err != nil {
			break
		}
		return Condition{Kind: KindHTTPStatus, Code: code}, nil
	}
	for o := ConnectError; o < NumOutcomes; o++ {
		if o != Status && outcomeNames[o] == s {
			return Condition{Kind: KindOutcome, Outcome: o}, nil
		}
	}
	if code, ok := grpcCodes[s]; ok {
		return Condition{Kind: KindGRPC, Code: code}, nil
	}
	return Condition{}, fmt.Errorf("unknown condition %q (want an outcome such as connect_error, an HTTP status such as \"503\" or \"5xx\", or a gRPC code such as unavailable)", s)
}

// String returns the condition as written in YAML.
func (c Condition) String() string {
	switch c.Kind {
	case KindHTTPStatus:
		return strconv.Itoa(c.Code)
	case KindHTTPClass:
		return strconv.Itoa(c.Code) + "xx"
	case KindGRPC:
		for name, code := range grpcCodes {
			if code == c.Code {
				return name
			}
		}
		return "grpc(" + strconv.Itoa(c.Code) + ")"
	}
	return c.Outcome.String()
}

// Conditions is a parsed condition list.
type Conditions []Condition

// ParseConditions parses every entry of list, reporting the first bad one.
func ParseConditions(list []string) (Conditions, error) {
	cs := make(Conditions, 0, len(list))
	for _, s := range list {
		c, err := ParseCondition(s)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// Match reports whether an attempt that ended with outcome o, HTTP status
// httpStatus (0 when none) and gRPC code grpcCode (-1 when none) meets one
// of the conditions.
func (cs Conditions) Match(o Outcome, httpStatus, grpcCode int) bool {
	for _, c := range cs {
		switch c.Kind {
		case KindOutcome:
			if c.Outcome == o {
				return true
			}
		case KindHTTPStatus:
			if o == Status && httpStatus == c.Code {
				return true
			}
		case KindHTTPClass:
			if o == Status && httpStatus/100 == c.Code {
				return true
			}
		case KindGRPC:
			if o == Status && grpcCode == c.Code {
				return true
			}
		}
	}
	return false
}
