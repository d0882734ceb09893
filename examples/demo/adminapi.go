package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// The admin API's answers, as a client decodes them (docs/operations.md).

type routeView struct {
	Name  string `json:"name"`
	Stats struct {
		Attempts int `json:"attempts"`
		Budget   *struct {
			Requests  int64   `json:"requests"`
			Retries   int64   `json:"retries"`
			Available float64 `json:"available"`
		} `json:"retry_budget"`
	} `json:"stats"`
	Endpoints []struct {
		URL     string `json:"url"`
		Breaker *struct {
			State   string `json:"state"`
			RetryIn string `json:"retry_in"`
			Counts  struct {
				Requests            uint32 `json:"requests"`
				Successes           uint32 `json:"successes"`
				Failures            uint32 `json:"failures"`
				ConsecutiveFailures uint32 `json:"consecutive_failures"`
			} `json:"counts"`
		} `json:"circuit_breaker"`
	} `json:"endpoints"`
}

type spoolView struct {
	Routes map[string]struct {
		Depth    int64 `json:"depth"`
		Dead     int64 `json:"dead"`
		Delivery *struct {
			Delivered    int64 `json:"delivered"`
			Retried      int64 `json:"retried"`
			DeadLettered int64 `json:"dead_lettered"`
			HeadBlocked  bool  `json:"head_blocked"`
			HeadAttempts int   `json:"head_attempts"`
		} `json:"delivery"`
	} `json:"routes"`
}

type spoolMessage struct {
	ID       string `json:"id"`
	Attempts int    `json:"attempts"`
	Message  struct {
		Method         string `json:"method"`
		Target         string `json:"target"`
		IdempotencyKey string `json:"idempotency_key"`
		Body           string `json:"body"`
	} `json:"message"`
}

// adminClient reads the sidecar's admin API over HTTP, as an operator's
// curl would.
type adminClient struct {
	base string
	hc   *http.Client
}

func (a *adminClient) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

func (a *adminClient) getJSON(ctx context.Context, path string, v any) error {
	b, err := a.get(ctx, path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// route returns GET /v1/routes' entry for the route name.
func (a *adminClient) route(ctx context.Context, name string) (routeView, error) {
	var rs struct {
		Routes []routeView `json:"routes"`
	}
	if err := a.getJSON(ctx, "/v1/routes", &rs); err != nil {
		return routeView{}, err
	}
	for _, r := range rs.Routes {
		if r.Name == name {
			return r, nil
		}
	}
	return routeView{}, fmt.Errorf("GET /v1/routes: no route %q", name)
}

func (a *adminClient) spool(ctx context.Context) (spoolView, error) {
	var v spoolView
	err := a.getJSON(ctx, "/v1/spool", &v)
	return v, err
}

// message returns GET /v1/spool/messages/{id}.
func (a *adminClient) message(ctx context.Context, id string) (spoolMessage, error) {
	var m spoolMessage
	err := a.getJSON(ctx, "/v1/spool/messages/"+url.PathEscape(id), &m)
	return m, err
}

// metrics is a scrape of GET /metrics: its sample lines.
type metrics []string

func (a *adminClient) metrics(ctx context.Context) (metrics, error) {
	b, err := a.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	var m metrics
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if line := sc.Text(); line != "" && !strings.HasPrefix(line, "#") {
			m = append(m, line)
		}
	}
	return m, sc.Err()
}

// lines returns the samples of the metric name whose labels include every
// one of labels (`route="orders"`, ...).
func (m metrics) lines(name string, labels ...string) []string {
	var out []string
	for _, l := range m {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		ok := true
		for _, want := range labels {
			if !strings.Contains(l, want) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

// value returns the sum of the samples lines(name, labels...) selects,
// and whether there was any.
func (m metrics) value(name string, labels ...string) (float64, bool) {
	var sum float64
	ls := m.lines(name, labels...)
	for _, l := range ls {
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, len(ls) > 0
}
