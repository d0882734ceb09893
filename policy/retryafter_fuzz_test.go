package policy

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParseRetryAfter holds ParseRetryAfter to RFC 9110's grammar,
// stated independently: delay-seconds (digits only) give that many
// seconds, capped at the largest duration; anything else is an HTTP-date
// as http.ParseTime reads it, taken from now and never negative; all else
// is refused with 0. A date formatted with http.TimeFormat round-trips to
// the second. Seeds: testdata/fuzz/FuzzParseRetryAfter, and below.
func FuzzParseRetryAfter(f *testing.F) {
	for _, v := range []string{"0", "120", " 7 ", "-1", "+5", "1.5", "0x10", "99999999999999999999", "9223372036854775807",
		"Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "Fri, 31 Dec 9999 23:59:59 GMT", "", "\t", "5s", "١٢"} {
		f.Add(v, int64(784111777))
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string, unix int64) {
		d, ok := ParseRetryAfter(v, now)
		if d < 0 || (!ok && d != 0) {
			t.Fatalf("ParseRetryAfter(%q) = %v, %v: want d >= 0, and 0 when refused", v, d, ok)
		}
		tv := strings.TrimSpace(v)
		digits := tv != "" && strings.Trim(tv, "0123456789") == ""
		switch {
		case digits:
			want := time.Duration(math.MaxInt64)
			if n, err := strconv.ParseUint(tv, 10, 64); err == nil && n <= math.MaxInt64/uint64(time.Second) {
				want = time.Duration(n) * time.Second
			}
			if !ok || d != want {
				t.Fatalf("ParseRetryAfter(%q) = %v, %v; want %v, true", v, d, ok, want)
			}
		case tv != "" && tv[0] >= '0' && tv[0] <= '9':
			if ok {
				t.Fatalf("ParseRetryAfter(%q) = %v, true; want a value starting with a digit that is not all digits refused", v, d)
			}
		default:
			date, err := http.ParseTime(tv)
			if ok != (err == nil) {
				t.Fatalf("ParseRetryAfter(%q) ok = %v, http.ParseTime error %v", v, ok, err)
			}
			if ok && d != max(0, date.Sub(now)) {
				t.Fatalf("ParseRetryAfter(%q) = %v, want %v", v, d, max(0, date.Sub(now)))
			}
		}
		// Round trip of a date, in the years HTTP-dates can write.
		const first, span = -62135596800, 253402300800 + 62135596800 // 0001-01-01 to 9999-12-31, in Unix seconds
		s := unix % span
		if s < 0 {
			s += span
		}
		at := time.Unix(first+s, 0).UTC()
		d, ok = ParseRetryAfter(at.Format(http.TimeFormat), now)
		if want := max(0, at.Sub(now)); !ok || d != want {
			t.Fatalf("ParseRetryAfter(%q) = %v, %v; want %v, true", at.Format(http.TimeFormat), d, ok, want)
		}
	})
}

// FuzzParseGRPCPushback holds ParseGRPCPushback to grpc-go's reading of
// grpc-retry-pushback-ms (strconv.Atoi; an error or a negative value
// stops retries), except that a positive value too large for an int64
// is still a pushback, capped at the largest duration; and a
// non-negative integer formatted in decimal round-trips.
func FuzzParseGRPCPushback(f *testing.F) {
	for _, v := range []string{"0", "250", " 250 ", "-1", "+7", "1e3", "0x10", "", "99999999999999999999", "-99999999999999999999", "9223372036854775807", "9223372036854775", "١"} {
		f.Add(v, int64(1500))
	}
	f.Fuzz(func(t *testing.T, v string, n int64) {
		d, ok := ParseGRPCPushback(v)
		if d < 0 || (!ok && d != 0) {
			t.Fatalf("ParseGRPCPushback(%q) = %v, %v: want d >= 0, and 0 when refused", v, d, ok)
		}
		tv := strings.TrimSpace(v)
		atoi, err := strconv.Atoi(tv)
		switch {
		case err == nil:
			want := time.Duration(math.MaxInt64)
			if int64(atoi) <= math.MaxInt64/int64(time.Millisecond) {
				want = time.Duration(atoi) * time.Millisecond
			}
			if ok != (atoi >= 0) || ok && d != want {
				t.Fatalf("ParseGRPCPushback(%q) = %v, %v; grpc-go reads %d: want %v, %v", v, d, ok, atoi, want, atoi >= 0)
			}
		case err.(*strconv.NumError).Err == strconv.ErrRange && !strings.HasPrefix(tv, "-"):
			if !ok || d != math.MaxInt64 {
				t.Fatalf("ParseGRPCPushback(%q) = %v, %v; want the largest duration, true", v, d, ok)
			}
		default:
			if ok {
				t.Fatalf("ParseGRPCPushback(%q) = %v, true; want it refused, as grpc-go refuses it", v, d)
			}
		}
		if n >= 0 {
			want := time.Duration(math.MaxInt64)
			if n <= math.MaxInt64/int64(time.Millisecond) {
				want = time.Duration(n) * time.Millisecond
			}
			if d, ok := ParseGRPCPushback(strconv.FormatInt(n, 10)); !ok || d != want {
				t.Fatalf("ParseGRPCPushback(%d) = %v, %v; want %v, true", n, d, ok, want)
			}
		}
	})
}
