package otlpwire

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		url     string
		header  map[string]string
		timeout time.Duration
		gzip    bool
		wantErr string
	}{
		{name: "defaults", url: "http://localhost:4318/v1/traces", timeout: 10 * time.Second},
		{name: "base endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318"},
			url: "https://collector:4318/v1/traces"},
		{name: "base endpoint with a path", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/otlp/"},
			url: "http://collector:4318/otlp/v1/traces"},
		{name: "traces endpoint as is", env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT":        "http://ignored:1",
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom/path",
		}, url: "http://collector:4318/custom/path"},
		{name: "headers decoded", env: map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "api-key=se%20cret%2Cx , X-Tenant = t1,,"},
			header: map[string]string{"Api-Key": "se cret,x", "X-Tenant": "t1"}},
		{name: "traces headers win", env: map[string]string{
			"OTEL_EXPORTER_OTLP_HEADERS":        "a=1",
			"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=2",
		}, header: map[string]string{"B": "2", "A": ""}},
		{name: "timeout and gzip", env: map[string]string{
			"OTEL_EXPORTER_OTLP_TIMEOUT":            "2500",
			"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
			"OTEL_EXPORTER_OTLP_COMPRESSION":        "none",
		}, timeout: 2500 * time.Millisecond, gzip: true},
		{name: "bad endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
			wantErr: "OTEL_EXPORTER_OTLP_ENDPOINT: want an http:// or https:// URL"},
		{name: "bad timeout", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "10s"},
			wantErr: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT "10s"`},
		{name: "bad compression", env: map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"},
			wantErr: `OTEL_EXPORTER_OTLP_COMPRESSION "zstd": want gzip or none`},
		{name: "bad header entry", env: map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "a=1,topsecretvalue"},
			wantErr: "OTEL_EXPORTER_OTLP_HEADERS: entry 2: want key=value"},
		{name: "bad header escape", env: map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "k=topsecret%zz"},
			wantErr: "OTEL_EXPORTER_OTLP_HEADERS: entry 1 (k): the value is not percent-encoded"},
		{name: "client certificate without key", env: map[string]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "c.pem"},
			wantErr: "set both or neither"},
		{name: "missing CA file", env: map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": filepath.Join(t.TempDir(), "none.pem")},
			wantErr: "OTEL_EXPORTER_OTLP_CERTIFICATE: open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Env(envOf(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Env = %v, want an error with %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("Env error %q carries a header value", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.url != "" && cfg.URL != tt.url {
				t.Errorf("URL = %q, want %q", cfg.URL, tt.url)
			}
			for k, v := range tt.header {
				if got := cfg.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tt.timeout != 0 && cfg.Timeout != tt.timeout {
				t.Errorf("Timeout = %v, want %v", cfg.Timeout, tt.timeout)
			}
			if cfg.Gzip != tt.gzip {
				t.Errorf("Gzip = %v, want %v", cfg.Gzip, tt.gzip)
			}
		})
	}
}

// receiver is an OTLP/HTTP trace receiver on loopback: answer decides
// each response (nil: 200 with an empty ExportTraceServiceResponse); it
// keeps every request's headers and decoded spans.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	headers []http.Header
	spans   int
	times   []time.Time
	errs    []string
	answer  func(n int, w http.ResponseWriter, r *http.Request) bool // true: answered
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request) bool) *receiver {
	rc := &receiver{answer: answer}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	rc.mu.Lock()
	rc.headers = append(rc.headers, r.Header.Clone())
	rc.times = append(rc.times, time.Now())
	n := len(rc.headers)
	rc.mu.Unlock()
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			rc.fail("gzip: " + err.Error())
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	var req coltracepb.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(b, &req)
	}
	if err != nil || r.URL.Path != "/v1/traces" || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-protobuf" {
		rc.fail(r.Method + " " + r.URL.Path + " " + r.Header.Get("Content-Type") + " " + errString(err))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if rc.answer != nil && rc.answer(n, w, r) {
		return
	}
	rc.mu.Lock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			rc.spans += len(ss.GetSpans())
		}
	}
	rc.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (rc *receiver) fail(s string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.errs = append(rc.errs, s)
}

func (rc *receiver) check(t *testing.T, requests, spans int) {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.errs) > 0 {
		t.Errorf("receiver: bad requests: %q", rc.errs)
	}
	if len(rc.headers) != requests || rc.spans != spans {
		t.Errorf("receiver got %d requests, %d spans; want %d, %d", len(rc.headers), rc.spans, requests, spans)
	}
}

func exporterFromEnv(t *testing.T, env map[string]string) *Exporter {
	t.Helper()
	cfg, err := Env(envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Shutdown(context.Background()) })
	return e
}

// TestExportHeadersGzip: the environment's headers go with each export,
// gzipped when asked; the receiver decodes every span.
func TestExportHeadersGzip(t *testing.T) {
	spans := proxySpans(t, 100)
	for _, compression := range []string{"none", "gzip"} {
		t.Run(compression, func(t *testing.T) {
			rc := newReceiver(t, nil)
			e := exporterFromEnv(t, map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":    rc.URL,
				"OTEL_EXPORTER_OTLP_HEADERS":     "api-key=k%3D1,x-tenant=acme",
				"OTEL_EXPORTER_OTLP_COMPRESSION": compression,
			})
			for range 2 {
				if err := e.ExportSpans(t.Context(), spans); err != nil {
					t.Fatal(err)
				}
			}
			rc.check(t, 2, 200)
			h := rc.headers[1]
			if h.Get("Api-Key") != "k=1" || h.Get("X-Tenant") != "acme" {
				t.Errorf("receiver got headers api-key %q, x-tenant %q; want k=1, acme", h.Get("Api-Key"), h.Get("X-Tenant"))
			}
			if got, want := h.Get("Content-Encoding"), map[string]string{"none": "", "gzip": "gzip"}[compression]; got != want {
				t.Errorf("Content-Encoding = %q, want %q", got, want)
			}
		})
	}
}

// TestExportRetryAfter: a 503 with Retry-After: 1 is retried no sooner
// than a second later, and the retry delivers.
func TestExportRetryAfter(t *testing.T) {
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	e := exporterFromEnv(t, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rc.URL + "/v1/traces"})
	if err := e.ExportSpans(t.Context(), proxySpans(t, 10)); err != nil {
		t.Fatal(err)
	}
	rc.check(t, 2, 10)
	if d := rc.times[1].Sub(rc.times[0]); d < time.Second {
		t.Errorf("retried %v after a 503 with Retry-After: 1, want at least 1s", d)
	}
}

// TestExportRetryBackoff: 429, 502 and 504 are retried with back-off;
// the fourth attempt delivers.
func TestExportRetryBackoff(t *testing.T) {
	codes := []int{http.StatusTooManyRequests, http.StatusBadGateway, http.StatusGatewayTimeout}
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n <= len(codes) {
			w.WriteHeader(codes[n-1])
			return true
		}
		return false
	})
	e := exporterFromEnv(t, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL, "OTEL_EXPORTER_OTLP_TIMEOUT": "10000"})
	if err := e.ExportSpans(t.Context(), proxySpans(t, 10)); err != nil {
		t.Fatal(err)
	}
	rc.check(t, 4, 10)
	for i := 1; i < 4; i++ {
		if d := rc.times[i].Sub(rc.times[i-1]); d < firstBackoff/2 {
			t.Errorf("attempt %d came %v after the previous one, want at least %v", i+1, d, firstBackoff/2)
		}
	}
}

// TestExportNotRetried: a 400 fails the export at once, and its error
// names the status but no header value.
func TestExportNotRetried(t *testing.T) {
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "bad spans", http.StatusBadRequest)
		return true
	})
	e := exporterFromEnv(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL,
		"OTEL_EXPORTER_OTLP_HEADERS":  "authorization=Bearer%20topsecret",
	})
	err := e.ExportSpans(t.Context(), proxySpans(t, 2))
	if err == nil || !strings.Contains(err.Error(), "400 Bad Request") || !strings.Contains(err.Error(), "bad spans") {
		t.Fatalf("ExportSpans = %v, want the 400 and its body", err)
	}
	if strings.Contains(err.Error(), "topsecret") {
		t.Errorf("error %q carries a header value", err)
	}
	rc.check(t, 1, 0)
}

// TestExportTimeout: a receiver that does not answer fails the export
// after OTEL_EXPORTER_OTLP_TIMEOUT; a 503 whose Retry-After is past the
// deadline fails it without waiting.
func TestExportTimeout(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return true
		}
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	defer close(release)
	e := exporterFromEnv(t, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL, "OTEL_EXPORTER_OTLP_TIMEOUT": "300"})
	start := time.Now()
	err := e.ExportSpans(t.Context(), proxySpans(t, 2))
	if d := time.Since(start); err == nil || d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("ExportSpans to a silent receiver = %v after %v, want an error after 300ms", err, d)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ExportSpans error = %v, want a deadline exceeded", err)
	}
	start = time.Now()
	err = e.ExportSpans(t.Context(), proxySpans(t, 2))
	if d := time.Since(start); err == nil || !strings.Contains(err.Error(), "503") || d > 250*time.Millisecond {
		t.Errorf("ExportSpans answered 503 with Retry-After beyond the deadline = %v after %v, want the 503 at once", err, d)
	}
}

// TestExportPartialSuccess: rejected spans are reported to the
// OpenTelemetry error handler; the export succeeds.
func TestExportPartialSuccess(t *testing.T) {
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{
			RejectedSpans: 3, ErrorMessage: "too old",
		}})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
		return true
	})
	var mu sync.Mutex
	var handled []error
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		handled = append(handled, err)
	}))
	t.Cleanup(func() { otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {})) })
	e := exporterFromEnv(t, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL})
	if err := e.ExportSpans(t.Context(), proxySpans(t, 4)); err != nil {
		t.Fatalf("ExportSpans with a partial success = %v, want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 1 || !strings.Contains(handled[0].Error(), "3 spans rejected") || !strings.Contains(handled[0].Error(), "too old") {
		t.Errorf("handled errors = %v, want one partial success with 3 spans rejected", handled)
	}
}

// TestExportShutdown: Shutdown stops an export in flight, and later
// exports fail.
func TestExportShutdown(t *testing.T) {
	arrived := make(chan struct{})
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		close(arrived)
		<-r.Context().Done()
		return true
	})
	e := exporterFromEnv(t, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL})
	done := make(chan error)
	go func() { done <- e.ExportSpans(context.Background(), proxySpans(t, 2)) }()
	<-arrived
	if err := e.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Errorf("the export in flight at Shutdown = nil, want an error")
	}
	if err := e.ExportSpans(t.Context(), proxySpans(t, 2)); !errors.Is(err, errShutdown) {
		t.Errorf("ExportSpans after Shutdown = %v, want %v", err, errShutdown)
	}
}

// TestExportTLS: over https with the receiver's CA from
// OTEL_EXPORTER_OTLP_CERTIFICATE and a client certificate from
// OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY.
func TestExportTLS(t *testing.T) {
	rc := &receiver{}
	rc.Server = httptest.NewUnstartedServer(http.HandlerFunc(rc.serve))
	var peerCerts int
	rc.answer = func(n int, w http.ResponseWriter, r *http.Request) bool {
		rc.mu.Lock()
		peerCerts = len(r.TLS.PeerCertificates)
		rc.mu.Unlock()
		return false
	}
	// The client certificate is the server's own (httptest's), asked
	// for but not verified: this checks that it is sent.
	rc.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	rc.StartTLS()
	defer rc.Close()
	cert := rc.TLS.Certificates[0]
	dir := t.TempDir()
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	for name, b := range map[string][]byte{"ca.pem": certPEM, "key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e := exporterFromEnv(t, map[string]string{
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":           rc.URL + "/v1/traces",
		"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE":        filepath.Join(dir, "ca.pem"),
		"OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": filepath.Join(dir, "ca.pem"),
		"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY":         filepath.Join(dir, "key.pem"),
	})
	if err := e.ExportSpans(t.Context(), proxySpans(t, 2)); err != nil {
		t.Fatal(err)
	}
	rc.check(t, 1, 2)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if peerCerts != 1 {
		t.Errorf("the receiver saw %d client certificates, want 1", peerCerts)
	}
}
