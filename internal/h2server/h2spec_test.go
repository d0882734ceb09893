package h2server

import (
	"context"
	"encoding/xml"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestH2Spec runs h2spec (github.com/summerwind/h2spec), the HTTP/2
// conformance suite, against the server when the binary is on PATH, and
// fails on any case that does not pass: the server has no known
// deviation (proxy's TestH2Spec runs it through the listeners).
func TestH2Spec(t *testing.T) {
	bin, err := exec.LookPath("h2spec")
	if err != nil {
		t.Skip("h2spec not on PATH; go install github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible to run it")
	}
	if testing.Short() {
		t.Skip("h2spec takes seconds; skipped in -short mode")
	}
	body := []byte(strings.Repeat("h2spec ", 10<<10))
	addr := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		// Long enough for the flow-control cases, which skip a short
		// answer.
		w.Write(body)
	}), MaxConcurrentStreams: 100, MaxHeaderBytes: 64 << 10})
	host, port, _ := net.SplitHostPort(addr)
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
	n := 0
	for _, s := range suites.Suites {
		for _, c := range s.Cases {
			n++
			if c.Failure != nil || c.Error != nil {
				t.Errorf("h2spec %s/%s failed", c.Package, c.Name)
			}
		}
	}
	if t.Failed() {
		if i := strings.Index(string(out), "Failures:"); i >= 0 {
			t.Logf("%s", out[i:])
		}
	}
	if n < 100 {
		t.Errorf("h2spec report has %d cases, want the whole suite (145)\n%s", n, out)
	}
}
