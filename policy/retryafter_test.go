package policy

import (
	"math"
	"net/http"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		in   string
		want time.Duration
		ok   bool
	}{
		{"seconds", "120", 2 * time.Minute, true},
		{"zero seconds", "0", 0, true},
		{"leading zeros", "007", 7 * time.Second, true},
		{"white space", " 5 ", 5 * time.Second, true},
		{"huge seconds capped", "99999999999999999999999", math.MaxInt64, true},
		{"IMF-fixdate", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"RFC 850 date", "Sunday, 01-Jun-25 12:01:00 GMT", time.Minute, true},
		{"asctime date", "Sun Jun  1 12:00:30 2025", 30 * time.Second, true},
		{"date now", now.Format(http.TimeFormat), 0, true},
		{"past date", now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"empty", "", 0, false},
		{"blank", "   ", 0, false},
		{"garbage", "soon", 0, false},
		{"negative", "-5", 0, false},
		{"plus sign", "+5", 0, false},
		{"fraction", "1.5", 0, false},
		{"digits then text", "5s", 0, false},
		{"bad date", "Sun, 32 Jun 2025 12:00:00 GMT", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.ok {
				t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseGRPCPushback(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want time.Duration
		ok   bool
	}{
		{"milliseconds", "250", 250 * time.Millisecond, true},
		{"zero", "0", 0, true},
		{"white space", " 10 ", 10 * time.Millisecond, true},
		{"plus sign, as strconv.Atoi", "+7", 7 * time.Millisecond, true},
		{"large capped", "9223372036854775", math.MaxInt64, true},
		{"out of int64 range capped", "99999999999999999999999", math.MaxInt64, true},
		{"negative stops", "-1", 0, false},
		{"very negative stops", "-99999999999999999999999", 0, false},
		{"garbage stops", "soon", 0, false},
		{"fraction stops", "1.5", 0, false},
		{"empty stops", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseGRPCPushback(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("ParseGRPCPushback(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}
