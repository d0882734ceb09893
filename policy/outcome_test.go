package policy

import "testing"

func TestParseCondition(t *testing.T) {
	tests := []struct {
		in   string
		want Condition
		ok   bool
	}{
		{"connect_error", Condition{Kind: KindOutcome, Outcome: ConnectError}, true},
		{"breaker_open", Condition{Kind: KindOutcome, Outcome: BreakerOpen}, true},
		{"503", Condition{Kind: KindHTTPStatus, Code: 503}, true},
		{"5xx", Condition{Kind: KindHTTPClass, Code: 5}, true},
		{"4XX", Condition{Kind: KindHTTPClass, Code: 4}, true},
		{"unavailable", Condition{Kind: KindGRPC, Code: 14}, true},
		{"deadline_exceeded", Condition{Kind: KindGRPC, Code: 4}, true},
		{"ok", Condition{}, false},
		{"canceled", Condition{}, false},
		{"status", Condition{}, false},
		{"600", Condition{}, false},
		{"50x", Condition{}, false},
		{"Unavailable", Condition{}, false},
	}
	for _, tt := range tests {
		got, err := ParseCondition(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseCondition(%q) = %+v, %v; want %+v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if tt.ok && got.String() != map[string]string{"4XX": "4xx"}[tt.in] && got.String() != tt.in {
			t.Errorf("ParseCondition(%q).String() = %q", tt.in, got.String())
		}
	}
}

func TestConditionsMatch(t *testing.T) {
	cs, err := ParseConditions([]string{"connect_error", "503", "4xx", "unavailable"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		o          Outcome
		http, grpc int
		want       bool
	}{
		{ConnectError, 0, -1, true},
		{Reset, 0, -1, false},
		{Status, 503, -1, true},
		{Status, 502, -1, false},
		{Status, 404, -1, true},
		{Status, 200, 14, true},
		{Status, 200, 13, false},
		{OK, 200, -1, false},
	}
	for _, tt := range tests {
		if got := cs.Match(tt.o, tt.http, tt.grpc); got != tt.want {
			t.Errorf("Match(%v, %d, %d) = %v, want %v", tt.o, tt.http, tt.grpc, got, tt.want)
		}
	}
	if Outcome(200).String() != "outcome(200)" || Canceled.String() != "canceled" {
		t.Errorf("Outcome.String mismatch")
	}
}
