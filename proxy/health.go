package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sidecar-proxy/sidecar/config"
)

// Active health checks (docs/policies.md, "Active health checks"): every
// endpoint of an upstream with health_check has a checker goroutine, owned
// by the pool, that probes it every interval (jittered) over the pool's
// own transport, so with the upstream's protocol, TLS and pooled
// connections. Unhealthy consecutive failures set downUnhealthy, which
// Route.pick skips; healthy consecutive passes clear it. An endpoint
// starts healthy ("unchecked"), so that a starting sidecar serves at once.

// healthPolicy is an upstream's compiled health_check.
type healthPolicy struct {
	path               string
	interval, timeout  time.Duration
	healthy, unhealthy int
	grpc               bool
}

func compileHealth(h *config.HealthCheck) *healthPolicy {
	if h == nil {
		return nil
	}
	return &healthPolicy{
		path:      h.Path,
		interval:  h.Interval.D(),
		timeout:   h.Timeout.D(),
		healthy:   h.Healthy,
		unhealthy: h.Unhealthy,
		grpc:      h.GRPC,
	}
}

// The states of an endpoint's health, as /v1/routes names them.
const (
	healthUnchecked int32 = iota // no check has ended yet: taken as healthy
	healthHealthy
	healthUnhealthy
)

var healthNames = [...]string{"unchecked", "healthy", "unhealthy"}

// endpointHealth is an endpoint's health-check state.
type endpointHealth struct {
	ctx  context.Context // ends when the checker is stopped
	stop context.CancelFunc
	done chan struct{}     // closed when the checker has returned
	req  *http.Request     // the check, built once
	rt   http.RoundTripper // the endpoint's: the pool's, or a resolved one's own

	state  atomic.Int32 // healthUnchecked, healthHealthy or healthUnhealthy
	passed atomic.Int64 // checks that passed since the checker started
	failed atomic.Int64 // checks that failed
	// lastError is why the last check failed; nil after a pass.
	lastError atomic.Pointer[string]

	// passes and fails in a row: the checker goroutine's own.
	passes, fails int
}

// grpcHealthCheck is a grpc.health.v1.HealthCheckRequest for service "",
// framed: uncompressed, length 0.
var grpcHealthCheck = []byte{0, 0, 0, 0, 0}

// startChecker starts ep's health checker.
func (p *Pool) startChecker(ep *Endpoint) {
	hp := p.health
	ctx, stop := context.WithCancel(context.Background())
	h := &endpointHealth{ctx: ctx, stop: stop, done: make(chan struct{})}
	u := *ep.URL
	host := u.Host
	if ep.host != "" {
		host = ep.host // a resolved endpoint: the name it was resolved from
	}
	req := &http.Request{Method: http.MethodGet, URL: &u, Host: host, Header: http.Header{"User-Agent": {"sidecar-health-check"}}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	if hp.grpc {
		u.Path = "/grpc.health.v1.Health/Check"
		req.Method = http.MethodPost
		req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/2.0", 2, 0
		req.Header["Content-Type"] = []string{"application/grpc"}
		req.Header["Te"] = []string{"trailers"}
		req.ContentLength = int64(len(grpcHealthCheck))
	} else {
		u.Path = hp.path
	}
	h.req = req
	h.rt = p.rt
	if ep.rt != nil {
		h.rt = ep.rt // a resolved endpoint's own connections
	}
	ep.health.Store(h)
	p.checkers.Add(1)
	go func() {
		defer p.checkers.Done()
		defer close(h.done)
		p.runChecks(ep, h)
	}()
}

// runChecks checks ep every interval, ±15%, the first time at a random
// point within the first interval: checkers started together, by one
// sidecar or by a fleet, do not probe in step.
func (p *Pool) runChecks(ep *Endpoint, h *endpointHealth) {
	hp := p.health
	t := p.clock.NewTimer(time.Duration(rand.Int64N(int64(hp.interval))))
	defer t.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-t.C():
		}
		err := p.check(h)
		if h.ctx.Err() != nil {
			return // stopped mid-check: not the endpoint's fault
		}
		p.recordCheck(ep, h, err)
		t.Reset(jitter(hp.interval))
	}
}

// jitter returns d ±15%, at random.
func jitter(d time.Duration) time.Duration {
	return d - d*15/100 + time.Duration(rand.Int64N(int64(d)*30/100+1))
}

// recordCheck counts a check's result and moves the endpoint's state.
func (p *Pool) recordCheck(ep *Endpoint, h *endpointHealth, err error) {
	hp := p.health
	if err == nil {
		h.passed.Add(1)
		h.lastError.Store(nil)
		h.passes++
		h.fails = 0
		switch h.state.Load() {
		case healthUnchecked:
			h.state.Store(healthHealthy)
		case healthUnhealthy:
			if h.passes >= hp.healthy {
				h.state.Store(healthHealthy)
				ep.down.And(^downUnhealthy)
				p.log.Info("endpoint healthy again", "upstream", p.Name, "endpoint", ep.URL.String(), "passes", h.passes)
			}
		}
		return
	}
	h.failed.Add(1)
	msg := err.Error()
	h.lastError.Store(&msg)
	h.fails++
	h.passes = 0
	switch st := h.state.Load(); {
	case st != healthUnhealthy && h.fails >= hp.unhealthy:
		h.state.Store(healthUnhealthy)
		ep.down.Or(downUnhealthy)
		p.log.Warn("endpoint unhealthy: skipped by the load balancer", "upstream", p.Name, "endpoint", ep.URL.String(), "failures", h.fails, "error", msg)
	case st == healthUnchecked:
		h.state.Store(healthHealthy) // healthy until unhealthy failures in a row
	}
}

// check runs one health check of the endpoint h belongs to: nil when it
// passed.
func (p *Pool) check(h *endpointHealth) error {
	hp := p.health
	ctx, cancel := context.WithTimeout(h.ctx, hp.timeout)
	defer cancel()
	req := h.req.WithContext(ctx)
	if hp.grpc {
		req.Body = io.NopCloser(bytes.NewReader(grpcHealthCheck))
	}
	resp, err := h.rt.RoundTrip(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("timeout after %s", hp.timeout)
		}
		return err
	}
	defer resp.Body.Close()
	if hp.grpc {
		return grpcHealthAnswer(resp)
	}
	io.CopyN(io.Discard, resp.Body, 4<<10) // lets the connection be reused
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// errNotServing is a gRPC health answer other than SERVING.
var errNotServing = errors.New("grpc.health.v1: not SERVING")

// grpcHealthAnswer reads a grpc.health.v1.HealthCheckResponse: nil when its
// status is SERVING (1) and the call's grpc-status is 0.
func grpcHealthAnswer(resp *http.Response) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if v := resp.Header.Get(headerGRPCStatus); v != "" { // Trailers-Only: no message
		return fmt.Errorf("grpc-status %s", v)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if err != nil {
		return err
	}
	if v := resp.Trailer.Get(headerGRPCStatus); v != "0" {
		return fmt.Errorf("grpc-status %q", v)
	}
	if len(body) < 5 || body[0] != 0 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
		return errors.New("grpc.health.v1: malformed answer")
	}
	msg := body[5:]
	status := uint64(0) // UNKNOWN
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return errors.New("grpc.health.v1: malformed answer")
		}
		msg = msg[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(msg)
			if m < 0 {
				return errors.New("grpc.health.v1: malformed answer")
			}
			status, msg = v, msg[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, msg)
		if m < 0 {
			return errors.New("grpc.health.v1: malformed answer")
		}
		msg = msg[m:]
	}
	if status != 1 {
		return fmt.Errorf("%w (status %s)", errNotServing, strconv.FormatUint(status, 10))
	}
	return nil
}
