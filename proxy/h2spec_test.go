package proxy

import (
	"context"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// h2specKnown are the h2spec cases where a listener deviates, by
// listener protocol and "package/case" as in h2spec's JUnit report, with
// why each is harmless here. internal/h2server passes the whole suite on
// an h2c listener.
var h2specKnown = map[string]map[string]string{
	"auto": {
		"http2/3.5/Sends invalid connection preface": "bytes that are not the HTTP/2 preface are HTTP/1.1 to an auto listener: internal/h1server answers them 400 and closes",
	},
}

// TestH2Spec runs h2spec (github.com/summerwind/h2spec), the HTTP/2
// conformance suite, against an h2c and an auto listener when the binary is on PATH
// (go install github.com/summerwind/h2spec/cmd/h2spec@latest), and fails
// on any case outside h2specKnown. It covers the listener's HTTP/2 server,
// internal/h2server with the limits set in server.go (docs/design.md,
// "HTTP/2 connections").
func TestH2Spec(t *testing.T) {
	bin, err := exec.LookPath("h2spec")
	if err != nil {
		t.Skip("h2spec not on PATH; go install github.com/summerwind/h2spec/cmd/h2spec@latest to run it")
	}
	if testing.Short() {
		t.Skip("h2spec takes about 20s; skipped in -short mode")
	}
	// h2c listeners are served by internal/h2server; auto listeners by
	// internal/h1server, which hands it the connections that open with
	// the preface: both must pass alike.
	for _, proto := range []string{"h2c", "auto"} {
		t.Run(proto, func(t *testing.T) {
			up := newUpstream(t, nil)
			cfg := strings.Replace(oneRoute("{timeout: 5s}"), "address: 127.0.0.1:0", "address: 127.0.0.1:0\n    protocol: "+proto, 1)
			sc := startSidecar(t, cfg, up)
			host, port, _ := strings.Cut(sc.addr["app"], ":")
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
					if c.Failure == nil && c.Error == nil {
						continue
					}
					id := c.Package + "/" + c.Name
					if why, ok := h2specKnown[proto][id]; ok {
						t.Logf("known deviation %s: %s", id, why)
						continue
					}
					t.Errorf("h2spec %s failed", id)
					if i := strings.Index(string(out), "Failures:"); i >= 0 {
						t.Logf("%s", out[i:])
					}
				}
			}
			if n < 100 {
				t.Errorf("h2spec report has %d cases, want the whole suite (145)\n%s", n, out)
			}
		})
	}
}
