package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the test if a goroutine outlives the demo: the upstream,
// the sidecar, its deliverers and the admin API must all have stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestDemo runs the demo in fast mode and checks that every phase went as
// expected and that the narration says so.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out strings.Builder
	start := time.Now()
	err := run(ctx, &out, true)
	t.Logf("demo took %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("run = %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"=> Retries absorbed the blips",
		"[ok]     retries absorbed blips: ",
		"[ok]     breaker opened while the upstream was down",
		"[ok]     breaker closed ",
		"[ok]     5 events spooled while the upstream was down",
		"[ok]     5 delivered when it came back, 5 with their Idempotency-Key seen by the upstream; spool depth 0",
		"from=closed to=open",
		"from=open to=half_open",
		"from=half_open to=closed",
		"demo OK",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the output lacks %q", want)
		}
	}
	for _, bad := range []string{"UNEXPECTED", "FAILED"} {
		if strings.Contains(text, bad) {
			t.Errorf("the output says %q", bad)
		}
	}
	// Every spooled event's key reached the upstream.
	if n := len(regexp.MustCompile(`(?m)^ +\+[0-9.]+s +POST .* = spool id `).FindAllString(text, -1)); n != 5 {
		t.Errorf("the upstream's events matched to a spool id: %d lines, want 5", n)
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}
