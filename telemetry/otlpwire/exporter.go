// Package otlpwire exports spans over OTLP/HTTP with the http/protobuf
// encoding: an sdktrace.SpanExporter that writes each batch straight into
// the protobuf bytes of an ExportTraceServiceRequest, in a buffer reused
// from batch to batch, and POSTs them. It is configured by the standard
// OTEL_EXPORTER_OTLP_* variables, as the SDK's otlptracehttp exporter is;
// docs/observability.md lists what it supports.
package otlpwire

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Defaults of the OTLP exporter specification.
const (
	DefaultEndpoint = "http://localhost:4318"
	tracesPath      = "/v1/traces"
	DefaultTimeout  = 10 * time.Second

	contentType     = "application/x-protobuf"
	userAgent       = "sidecar-otlpwire (Go)"
	maxResponseBody = 1 << 20 // enough for any ExportTraceServiceResponse
	maxErrorBody    = 256     // of a failed response's body, in an error

	// The back-off between retries: doubling from firstBackoff up to
	// maxBackoff, each wait drawn between half and all of it. A
	// Retry-After from the receiver is honoured when longer.
	firstBackoff = 500 * time.Millisecond
	maxBackoff   = 5 * time.Second
)

// Config is what the exporter sends where. Env reads it from the
// environment; tests build one directly.
type Config struct {
	// URL is the full traces URL, such as http://localhost:4318/v1/traces.
	URL string
	// Header is sent with every export (Content-Type and User-Agent are
	// set by the exporter).
	Header http.Header
	// Timeout bounds one export, its retries included.
	Timeout time.Duration
	// Gzip compresses each request body.
	Gzip bool
	// TLS is the client's TLS configuration for an https URL; nil for the
	// system's roots and no client certificate.
	TLS *tls.Config
}

// Env reads the exporter's configuration from the OTEL_EXPORTER_OTLP_*
// variables; the OTEL_EXPORTER_OTLP_TRACES_* form of each wins over the
// general one:
//   - TRACES_ENDPOINT, the traces URL used as it is, or ENDPOINT, a base
//     URL to which /v1/traces is appended; default http://localhost:4318.
//     The scheme is http or https.
//   - HEADERS: key=value pairs separated by commas, values percent-decoded.
//   - TIMEOUT: milliseconds, default 10000.
//   - COMPRESSION: gzip or none.
//   - CERTIFICATE: a PEM file of the CAs to trust; CLIENT_CERTIFICATE and
//     CLIENT_KEY: PEM files of a client certificate and its key.
//
// An error never carries a header's value: headers carry API keys.
func Env(getenv func(string) string) (Config, error) {
	get := func(name string) (string, string) {
		if v := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_" + name)); v != "" {
			return v, "OTEL_EXPORTER_OTLP_TRACES_" + name
		}
		return strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_" + name)), "OTEL_EXPORTER_OTLP_" + name
	}
	cfg := Config{Timeout: DefaultTimeout, Header: http.Header{}}

	raw, name := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	asIs := raw != ""
	if !asIs {
		raw, name = strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_ENDPOINT")), "OTEL_EXPORTER_OTLP_ENDPOINT"
		if raw == "" {
			raw = DefaultEndpoint
		}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Config{}, fmt.Errorf("%s: want an http:// or https:// URL with a host", name)
	}
	if !asIs {
		u.Path = strings.TrimSuffix(u.Path, "/") + tracesPath
		u.RawPath = ""
	}
	cfg.URL = u.String()

	if v, name := get("HEADERS"); v != "" {
		if err := parseHeaders(cfg.Header, v); err != nil {
			return Config{}, fmt.Errorf("%s: %w", name, err)
		}
	}
	if v, name := get("TIMEOUT"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return Config{}, fmt.Errorf("%s %q: want a positive number of milliseconds", name, v)
		}
		cfg.Timeout = time.Duration(ms) * time.Millisecond
	}
	if v, name := get("COMPRESSION"); v != "" {
		switch v {
		case "gzip":
			cfg.Gzip = true
		case "none":
		default:
			return Config{}, fmt.Errorf("%s %q: want gzip or none", name, v)
		}
	}
	var tc *tls.Config
	if v, name := get("CERTIFICATE"); v != "" {
		pem, err := os.ReadFile(v)
		if err != nil {
			return Config{}, fmt.Errorf("%s: %w", name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return Config{}, fmt.Errorf("%s %s: no PEM certificate", name, v)
		}
		tc = &tls.Config{RootCAs: pool}
	}
	certFile, certName := get("CLIENT_CERTIFICATE")
	keyFile, keyName := get("CLIENT_KEY")
	if (certFile == "") != (keyFile == "") {
		return Config{}, fmt.Errorf("%s and %s: set both or neither", certName, keyName)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return Config{}, fmt.Errorf("%s, %s: %w", certName, keyName, err)
		}
		if tc == nil {
			tc = &tls.Config{}
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if tc != nil && u.Scheme != "https" {
		return Config{}, fmt.Errorf("%s: TLS certificates are set but the URL is not https", name)
	}
	cfg.TLS = tc
	return cfg, nil
}

// parseHeaders adds to h the headers of a list such as
// "api-key=abc%20d,x-tenant=t1". Its errors name an entry by position
// only: an entry may be a secret.
func parseHeaders(h http.Header, list string) error {
	for i, entry := range strings.Split(list, ",") {
		if strings.TrimSpace(entry) == "" {
			continue
		}
		k, v, ok := strings.Cut(entry, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || !validHeaderKey(k) {
			return fmt.Errorf("entry %d: want key=value with a header name as the key", i+1)
		}
		dv, err := url.PathUnescape(v)
		if err != nil {
			return fmt.Errorf("entry %d (%s): the value is not percent-encoded correctly", i+1, k)
		}
		h.Set(k, strings.TrimSpace(dv))
	}
	return nil
}

func validHeaderKey(k string) bool {
	for _, c := range []byte(k) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// Exporter is the OTLP/HTTP span exporter. The SDK calls ExportSpans from
// one goroutine at a time; a mutex keeps that so for any caller, since
// every export reuses the same buffers.
type Exporter struct {
	cfg    Config
	url    string // cfg.URL without its user info, for errors
	client *http.Client
	header http.Header

	// stopped is cancelled by Shutdown: an export in flight stops.
	stopped context.Context
	stop    context.CancelFunc

	mu   sync.Mutex
	buf  []byte       // the encoded request
	zbuf bytes.Buffer // the gzipped request
	gz   *gzip.Writer
}

// New returns an exporter for cfg.
func New(cfg Config) (*Exporter, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("otlp: endpoint: want an http:// or https:// URL")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	if cfg.TLS != nil {
		tr.TLSClientConfig = cfg.TLS.Clone()
	}
	h := cfg.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set("Content-Type", contentType)
	h.Set("User-Agent", userAgent)
	if cfg.Gzip {
		h.Set("Content-Encoding", "gzip")
	}
	e := &Exporter{
		cfg:    cfg,
		url:    u.Redacted(),
		client: &http.Client{Transport: tr},
		header: h,
	}
	e.stopped, e.stop = context.WithCancel(context.Background())
	if cfg.Gzip {
		e.gz = gzip.NewWriter(&e.zbuf)
	}
	return e, nil
}

// NewFromEnv returns an exporter configured by the environment (Env).
func NewFromEnv() (*Exporter, error) {
	cfg, err := Env(os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("otlp: %w", err)
	}
	return New(cfg)
}

var (
	errShutdown = errors.New("otlp: exporter is shut down")
	errTimeout  = fmt.Errorf("export timeout (OTEL_EXPORTER_OTLP_TIMEOUT): %w", context.DeadlineExceeded)
)

// ExportSpans encodes spans and POSTs them, retrying while the receiver
// answers 429, 502, 503 or 504, within the configured timeout and ctx.
// A partial success (some spans rejected) is reported to the OpenTelemetry
// error handler, not returned.
func (e *Exporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if len(spans) == 0 {
		return nil
	}
	if e.stopped.Err() != nil {
		return errShutdown
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.buf = AppendRequest(e.buf[:0], spans)
	body := e.buf
	if e.cfg.Gzip {
		e.zbuf.Reset()
		e.gz.Reset(&e.zbuf)
		if _, err := e.gz.Write(body); err != nil {
			return fmt.Errorf("otlp: gzip: %w", err)
		}
		if err := e.gz.Close(); err != nil {
			return fmt.Errorf("otlp: gzip: %w", err)
		}
		body = e.zbuf.Bytes()
	}
	ctx, cancel := context.WithTimeoutCause(ctx, e.cfg.Timeout, errTimeout)
	defer cancel()
	defer context.AfterFunc(e.stopped, cancel)()

	backoff := firstBackoff
	for attempt := 1; ; attempt++ {
		wait, err := e.post(ctx, body)
		if err == nil || wait < 0 {
			return err
		}
		// Retryable: wait for the longer of the back-off and Retry-After,
		// unless the deadline comes first.
		d := backoff/2 + rand.N(backoff/2+1)
		d = max(d, wait)
		backoff = min(2*backoff, maxBackoff)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return fmt.Errorf("%w (attempt %d; no time left to retry)", err, attempt)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (attempt %d; %w)", err, attempt, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// post sends body once. It returns nil when the receiver took it; else
// the error and how long to wait before a retry: at least 0 when the
// answer was retryable (the Retry-After, or 0 for none), -1 when not.
func (e *Exporter) post(ctx context.Context, body []byte) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return -1, fmt.Errorf("otlp: POST %s: %w", e.url, err)
	}
	req.Header = e.header.Clone()
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	resp, err := e.client.Do(req)
	if err != nil {
		return -1, fmt.Errorf("otlp: %w", err) // the client's error names the URL without user info
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		partialSuccess(resp)
		return 0, nil
	}
	excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody)) // so the connection can be reused
	err = fmt.Errorf("otlp: POST %s: %s: %q", e.url, resp.Status, bytes.TrimSpace(excerpt))
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return retryAfter(resp.Header.Get("Retry-After")), err
	}
	return -1, err
}

// partialSuccess reports the spans a receiver says it rejected.
func partialSuccess(resp *http.Response) {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil || len(b) == 0 || !strings.HasPrefix(resp.Header.Get("Content-Type"), contentType) {
		return
	}
	var r coltracepb.ExportTraceServiceResponse
	if proto.Unmarshal(b, &r) != nil {
		return
	}
	if ps := r.GetPartialSuccess(); ps != nil && (ps.GetRejectedSpans() != 0 || ps.GetErrorMessage() != "") {
		otel.Handle(fmt.Errorf("otlp: partial success: %d spans rejected: %q", ps.GetRejectedSpans(), ps.GetErrorMessage()))
	}
}

// retryAfter is how long a Retry-After header asks to wait: seconds or an
// HTTP date; 0 when absent or unreadable.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t))
	}
	return 0
}

// Shutdown stops an export in flight and refuses later ones. It returns
// ctx's error if ctx is done.
func (e *Exporter) Shutdown(ctx context.Context) error {
	e.stop()
	e.client.CloseIdleConnections()
	return ctx.Err()
}
