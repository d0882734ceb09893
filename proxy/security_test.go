package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// Security defaults (issue 16, item 3; docs/design.md, "Security
// defaults") not covered elsewhere: TestNeverAnOpenProxy,
// TestForwardProxyUnknownHostIsRefusedAndNeverDialed,
// TestForwardProxyConnectRefused, TestHopByHopHeadersStripped and
// TestForwardProxyStripsProxyHeaders cover the rest.

// TestNeverAnOpenProxyCatchAllRoute: on a route that matches any host, an
// absolute-form URI or an HTTP/2 :authority naming another host still
// goes to the route's upstream, with the endpoint's Host: the request's
// target never chooses the destination.
func TestNeverAnOpenProxyCatchAllRoute(t *testing.T) {
	up := newUpstream(t, nil)
	decoy, accepts := acceptCounter(t)
	sc := startSidecar(t, strings.Replace(oneRoute("{}"), "address: 127.0.0.1:0", "address: 127.0.0.1:0\n    protocol: auto", 1), up)
	endpoint := strings.TrimPrefix(up.URL, "http://")
	for _, req := range []string{
		"GET http://" + decoy + "/x HTTP/1.1\r\nHost: " + decoy + "\r\n\r\n",
		"GET http://user:pw@" + decoy + "/x HTTP/1.1\r\nHost: " + decoy + "\r\n\r\n",
		"GET http://" + decoy + "/x HTTP/1.1\r\nHost: api.internal\r\n\r\n",
	} {
		resp, body, _ := rawRequest(t, sc.addr["app"], req)
		r := up.lastRequest()
		if resp.StatusCode != http.StatusOK || body != "hello from /x" || r == nil || r.Host != endpoint || r.URL.RequestURI() != "/x" {
			t.Errorf("%q = %d %q, upstream got %v; want 200 from the route's upstream, in origin form with the endpoint's Host", req, resp.StatusCode, body, r)
		}
	}
	// HTTP/2 with prior knowledge: :authority names the decoy.
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protos, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, sc.addr["app"])
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + decoy + "/h2")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("the h2c GET went over %s, want HTTP/2", resp.Proto)
	}
	if r := up.lastRequest(); resp.StatusCode != http.StatusOK || string(body) != "hello from /h2" || r.Host != endpoint {
		t.Errorf("h2c GET with :authority %s = %d %q, upstream Host %q; want 200 from the route's upstream with Host %s", decoy, resp.StatusCode, body, r.Host, endpoint)
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("the decoy was dialed %d times, want never", n)
	}
}

// TestForwardProxyTargetOverHost: on a forward_proxy listener an
// absolute-form request is routed by its target's host, whatever its Host
// header says, and a Host naming a known host does not carry a request
// for an unknown target.
func TestForwardProxyTargetOverHost(t *testing.T) {
	decoy, accepts := acceptCounter(t)
	inv := newUpstream(t, nil)
	sc := startSidecar(t, forwardConfig, inv, inv, tunnelUpstream(t))
	resp, body, _ := rawRequest(t, sc.addr["app"], "GET http://inventory.internal/x HTTP/1.1\r\nHost: "+decoy+"\r\n\r\n")
	if resp.StatusCode != http.StatusOK || body != "hello from /x" {
		t.Errorf("GET http://inventory.internal/x with Host %s = %d %q, want 200 from inventory's upstream", decoy, resp.StatusCode, body)
	}
	resp, body, _ = rawRequest(t, sc.addr["app"], "GET http://"+decoy+"/x HTTP/1.1\r\nHost: inventory.internal\r\n\r\n")
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get(HeaderOutcome) != "no_route" {
		t.Errorf("GET http://%s/x with Host inventory.internal = %d %s %q, want 403 no_route", decoy, resp.StatusCode, resp.Header.Get(HeaderOutcome), body)
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("the decoy was dialed %d times, want never", n)
	}
	if n := inv.count.Load(); n != 1 {
		t.Errorf("inventory's upstream saw %d requests, want 1", n)
	}
}

// TestHopByHopAnswerFieldsStripped: the hop-by-hop fields of an upstream's
// answer, Proxy-Authenticate and Proxy-Connection among them, and the
// fields its Connection names, never reach the app, on a reverse and a
// forward_proxy listener alike; and a request's TE keeps only
// "trailers".
func TestHopByHopAnswerFieldsStripped(t *testing.T) {
	answer := "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n" +
		"Proxy-Authenticate: Basic realm=\"upstream\"\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTe: trailers\r\n" +
		"X-End: kept\r\nContent-Length: 2\r\n\r\nok"
	tes := make(chan []string, 1)
	up := newRawServer(t, func(_ int, c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		tes <- req.Header.Values("Te")
		io.WriteString(c, answer)
	})
	url := "http://" + up.addr()
	for _, tt := range []struct{ name, cfg, req string }{
		{"reverse_proxy", strings.Replace(oneRoute("{}"), "UPSTREAM0", url, 1), "GET /x HTTP/1.1\r\nHost: x\r\nTe: gzip, trailers\r\nConnection: Te\r\n\r\n"},
		{"forward_proxy", strings.Replace(forwardConfig, "UPSTREAM0", url, 1), "GET http://inventory.internal/x HTTP/1.1\r\nHost: inventory.internal\r\nTe: gzip, trailers\r\nConnection: Te\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sc := startSidecar(t, tt.cfg, newUpstream(t, nil), newUpstream(t, nil), newUpstream(t, nil))
			resp, body, _ := rawRequest(t, sc.addr["app"], tt.req)
			if resp.StatusCode != http.StatusOK || body != "ok" || resp.Header.Get("X-End") != "kept" {
				t.Fatalf("GET = %d %q X-End %q, want 200 %q with X-End", resp.StatusCode, body, resp.Header.Get("X-End"), "ok")
			}
			for _, h := range []string{"X-Hop", "Keep-Alive", "Proxy-Authenticate", "Proxy-Connection", "Upgrade", "Te"} {
				if v := resp.Header.Values(h); len(v) > 0 {
					t.Errorf("the app got the upstream's hop-by-hop %s: %q", h, v)
				}
			}
			if te := <-tes; len(te) != 1 || te[0] != "trailers" {
				t.Errorf("the upstream got TE %q, want only trailers", te)
			}
		})
	}
}
