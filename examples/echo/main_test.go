package main

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// get sends n requests to h through a real server and returns the count of
// each status.
func get(t *testing.T, h http.Handler, n int) map[int]int {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	got := map[int]int{}
	for range n {
		resp, err := srv.Client().Post(srv.URL+"/orders?x=1", "application/json", strings.NewReader(`{"a":1}`))
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("status %d: body is not JSON: %v", resp.StatusCode, err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && (body["path"] != "/orders?x=1" || body["body_bytes"] != 7.0) {
			t.Fatalf("echo answered %v", body)
		}
		got[resp.StatusCode]++
	}
	return got
}

func TestEchoNeverFailsByDefault(t *testing.T) {
	h, err := newHandler(0, 503, func() float64 { t.Fatal("drew with -fail-ratio 0"); return 0 })
	if err != nil {
		t.Fatal(err)
	}
	if got := get(t, h, 20); got[200] != 20 {
		t.Fatalf("statuses %v, want 20 × 200", got)
	}
}

func TestEchoFailRatio(t *testing.T) {
	h, err := newHandler(1, 502, rand.Float64)
	if err != nil {
		t.Fatal(err)
	}
	if got := get(t, h, 20); got[502] != 20 {
		t.Fatalf("-fail-ratio 1: statuses %v, want 20 × 502", got)
	}

	r := rand.New(rand.NewPCG(1, 2))
	h, err = newHandler(0.3, 503, r.Float64)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	got := get(t, h, n)
	if got[200]+got[503] != n {
		t.Fatalf("statuses %v, want only 200 and 503", got)
	}
	// 0.3 of 2000 is 600, with a standard deviation of about 20.
	if got[503] < 500 || got[503] > 700 {
		t.Fatalf("-fail-ratio 0.3: %d of %d failed, want about 600", got[503], n)
	}
}

func TestEchoFlagsChecked(t *testing.T) {
	for _, c := range []struct {
		ratio  float64
		status int
		want   string
	}{
		{-0.1, 503, "-fail-ratio"},
		{1.5, 503, "-fail-ratio"},
		{0.5, 200, "-fail-status"},
		{0.5, 600, "-fail-status"},
	} {
		if _, err := newHandler(c.ratio, c.status, rand.Float64); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("newHandler(%g, %d) = %v, want an error about %s", c.ratio, c.status, err, c.want)
		}
	}
}
