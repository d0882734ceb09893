// Package h2spectest runs h2spec (github.com/summerwind/h2spec), the
// HTTP/2 conformance suite, against a server in a test, for the tests of
// internal/h2server and of the proxy's listeners.
package h2spectest

import (
	"context"
	"encoding/xml"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Run runs h2spec against the h2c server at addr and fails t on every
// case that does not pass, but those in known ("package/case" as in
// h2spec's JUnit report, to why the deviation is harmless), which it
// logs. It skips t when h2spec is not on PATH (.ci/run installs it) and
// in -short mode.
func Run(t *testing.T, addr string, known map[string]string) {
	t.Helper()
	bin, err := exec.LookPath("h2spec")
	if err != nil {
		t.Skip("h2spec not on PATH; go install github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible to run it")
	}
	if testing.Short() {
		t.Skip("h2spec takes seconds; skipped in -short mode")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	// A case can time out on a loaded machine (h2spec waits 3 s for
	// each answer): the cases that failed run once more, alone, and fail
	// the test only if they fail again.
	out, cases, n := runH2spec(t, bin, host, port)
	var failed []string
	for _, c := range cases {
		if c.failed {
			if why, ok := known[c.id]; ok {
				t.Logf("known deviation %s: %s", c.id, why)
				continue
			}
			failed = append(failed, c.spec)
		}
	}
	if len(failed) > 0 {
		t.Logf("h2spec: %d cases failed; running them again alone: %s", len(failed), strings.Join(failed, " "))
		out, cases, _ = runH2spec(t, bin, host, port, failed...)
		for _, c := range cases {
			if c.failed {
				t.Errorf("h2spec %s failed twice", c.id)
			}
		}
		if t.Failed() {
			if i := strings.Index(string(out), "Failures:"); i >= 0 {
				t.Logf("%s", out[i:])
			}
		}
	}
	if n < 100 {
		t.Errorf("h2spec report has %d cases, want the whole suite (145)\n%s", n, out)
	}
}

// h2specCase is one case of an h2spec report: its spec ID (as h2spec
// takes it on its command line), its ID as h2specKnown names it, and
// whether it failed.
type h2specCase struct {
	spec, id string
	failed   bool
}

// runH2spec runs h2spec against host:port, the specs given or all, and
// returns its output, its cases and how many there were.
func runH2spec(t *testing.T, bin, host, port string, specs ...string) ([]byte, []h2specCase, int) {
	t.Helper()
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := append([]string{"-h", host, "-p", port, "-o", "3", "-j", report}, specs...)
	out, _ := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if i := strings.LastIndex(string(out), "Finished in"); i >= 0 {
		t.Logf("h2spec: %s", strings.TrimSpace(string(out[i:])))
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("h2spec wrote no report: %v\n%s", err, out)
	}
	var suites struct {
		Suites []struct {
			Cases []struct {
				Package string    `xml:"package,attr"`
				Name    string    `xml:"classname,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(raw, &suites); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	var cases []h2specCase
	for _, s := range suites.Suites {
		for _, c := range s.Cases {
			cases = append(cases, h2specCase{spec: c.Package, id: c.Package + "/" + c.Name, failed: c.Failure != nil || c.Error != nil})
		}
	}
	return out, cases, len(cases)
}
