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
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-o", "3", "-j", report).CombinedOutput()
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
	n, failed := 0, false
	for _, s := range suites.Suites {
		for _, c := range s.Cases {
			n++
			if c.Failure == nil && c.Error == nil {
				continue
			}
			id := c.Package + "/" + c.Name
			if why, ok := known[id]; ok {
				t.Logf("known deviation %s: %s", id, why)
				continue
			}
			t.Errorf("h2spec %s failed", id)
			failed = true
		}
	}
	if failed {
		if i := strings.Index(string(out), "Failures:"); i >= 0 {
			t.Logf("%s", out[i:])
		}
	}
	if n < 100 {
		t.Errorf("h2spec report has %d cases, want the whole suite (145)\n%s", n, out)
	}
}
