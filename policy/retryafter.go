package policy

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxSeconds and maxMillis are the largest counts that fit a time.Duration.
const (
	maxSeconds = math.MaxInt64 / int64(time.Second)
	maxMillis  = math.MaxInt64 / int64(time.Millisecond)
)

// ParseRetryAfter parses the value of a Retry-After header (RFC 9110
// section 10.2.3) received at now: either delay-seconds, a non-negative
// decimal integer, or an HTTP-date in any of the forms http.ParseTime
// accepts, taken relative to now. A date in the past gives 0, true. Surrounding
// white space is ignored; an empty or malformed value (including a negative
// or signed number) gives 0, false. A delay too large for a time.Duration is
// capped at the largest one.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, ok := parseDigits(v)
		if !ok {
			return 0, false
		}
		if n > maxSeconds {
			return math.MaxInt64, true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d < 0 {
		d = 0
	}
	return d, true
}

// ParseGRPCPushback parses the value of a grpc-retry-pushback-ms trailer:
// a non-negative decimal integer of milliseconds gives that delay, true.
// A negative or malformed value gives 0, false, which the caller must read
// as "the server asks not to retry", as grpc-go does (it parses with
// strconv.Atoi and stops on an error or a negative value). Surrounding
// white space is ignored. A delay too large for a time.Duration is capped
// at the largest one, even one too large for an int64, which grpc-go's
// Atoi refuses. An absent trailer is for the caller to handle: it means
// "no pushback", not "stop".
func ParseGRPCPushback(v string) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		// An out-of-range positive value is still a valid pushback.
		if ne, isNum := err.(*strconv.NumError); isNum && ne.Err == strconv.ErrRange && n > 0 {
			return math.MaxInt64, true
		}
		return 0, false
	}
	if n < 0 {
		return 0, false
	}
	if n > maxMillis {
		return math.MaxInt64, true
	}
	return time.Duration(n) * time.Millisecond, true
}

// parseDigits parses s, which must be only ASCII digits, saturating at
// math.MaxInt64.
func parseDigits(s string) (int64, bool) {
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (math.MaxInt64-9)/10 {
			n = math.MaxInt64
			continue
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
