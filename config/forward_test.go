package config

import (
	"errors"
	"strings"
	"testing"
)

const forward = `
version: 1
upstreams:
  inv: {endpoints: ["https://inventory.internal:443"]}
listeners:
  - name: egress
    address: 127.0.0.1:3128
    mode: forward_proxy
    routes:
      - {name: inventory, match: {host: inventory.internal}, upstream: inv, connect: true}
      - {name: inventory-admin, match: {host: "inventory.internal:8443", path_prefix: /admin}, upstream: inv}
`

func TestForwardProxyLoads(t *testing.T) {
	cfg, err := Parse("f.yaml", []byte(forward), noEnv)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	l := cfg.Listeners[0]
	if l.Mode != ModeForwardProxy || !l.Routes[0].Connect || l.Routes[1].Connect {
		t.Errorf("mode = %q, connect = %v, %v; want forward_proxy, true, false", l.Mode, l.Routes[0].Connect, l.Routes[1].Connect)
	}
	cfg, err = Parse("m.yaml", []byte(minimal), noEnv)
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	if got := cfg.Listeners[0].Mode; got != ModeReverseProxy {
		t.Errorf("default mode = %q, want reverse_proxy", got)
	}
	if cfg.Listeners[0].Routes[0].Connect {
		t.Error("default connect = true, want false")
	}
	// connect: false is allowed anywhere, as the default it is.
	if _, err := Parse("m.yaml", []byte(strings.Replace(minimal, "upstream: inv}", "upstream: inv, connect: false}", 1)), noEnv); err != nil {
		t.Errorf("connect: false on a reverse_proxy listener: %v", err)
	}
}

func TestForwardProxyErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"bad mode", strings.Replace(forward, "mode: forward_proxy", "mode: forward", 1),
			[]string{`f.yaml:8:11: listeners[0].mode: invalid value "forward" (want one of reverse_proxy, forward_proxy)`}},
		{"route without host", strings.Replace(forward, "match: {host: inventory.internal}", "match: {path_prefix: /}", 1),
			[]string{`f.yaml:10:34: listeners[0].routes[0].match.host: missing key: every route of a forward_proxy listener needs match.host, or it would route requests for any host (an open proxy)`}},
		{"route without match", strings.Replace(forward, "match: {host: inventory.internal}, ", "", 1),
			[]string{`f.yaml:10:9: listeners[0].routes[0].match.host: missing key`}},
		{"connect on a reverse_proxy listener", strings.Replace(minimal, "upstream: inv}", "upstream: inv, connect: true}", 1),
			[]string{`t.yaml:9:45: listeners[0].routes[0].connect: connect: true needs a listener with mode: forward_proxy`}},
		{"connect not a boolean", strings.Replace(forward, "connect: true", "connect: yes", 1),
			[]string{`listeners[0].routes[0].connect: invalid boolean "yes" (want true or false)`}},
		{"host with a scheme", strings.Replace(forward, "host: inventory.internal}", "host: \"http://inventory.internal\"}", 1),
			[]string{`listeners[0].routes[0].match.host: invalid host "http://inventory.internal": want the host alone, without a scheme`}},
		{"host with a path", strings.Replace(forward, "host: inventory.internal}", "host: inventory.internal/items}", 1),
			[]string{`match.host: invalid host "inventory.internal/items": want a host name or IP address, optionally with :port, and no scheme or path`}},
		{"wildcard host", strings.Replace(forward, "host: inventory.internal}", `host: "*.internal"}`, 1),
			[]string{`match.host: invalid host "*.internal": wildcards are not supported: name each host`}},
		{"bad port", strings.Replace(forward, `"inventory.internal:8443"`, `"inventory.internal:99999"`, 1),
			[]string{`listeners[0].routes[1].match.host: invalid host "inventory.internal:99999": invalid port "99999"`}},
		{"empty port", strings.Replace(forward, `"inventory.internal:8443"`, `"inventory.internal:"`, 1),
			[]string{`match.host: invalid host "inventory.internal:": empty port`}},
		{"host checked on a reverse_proxy listener too", strings.Replace(minimal, "upstream: inv}", "upstream: inv, match: {host: a/b}}", 1),
			[]string{`listeners[0].routes[0].match.host: invalid host "a/b"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := "f.yaml"
			if !strings.Contains(tt.yaml, "forward_proxy") && !strings.Contains(tt.yaml, "mode:") {
				file = "t.yaml"
			}
			_, err := Parse(file, []byte(tt.yaml), noEnv)
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("Parse = %v, want Errors", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse error =\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestParseMatchHost(t *testing.T) {
	tests := []struct {
		in, host, port string
		ok             bool
	}{
		{"inventory.internal", "inventory.internal", "", true},
		{"Inventory.Internal:8080", "inventory.internal", "8080", true},
		{"inventory.internal:08080", "inventory.internal", "8080", true},
		{"10.0.0.7", "10.0.0.7", "", true},
		{"10.0.0.7:443", "10.0.0.7", "443", true},
		{"::1", "::1", "", true},
		{"http://a", "", "", false},
		{"[::1]", "::1", "", true},
		{"[::1]:8080", "::1", "8080", true},
		{"svc_a.internal", "svc_a.internal", "", true},
		{"", "", "", false},
		{"a..b", "", "", false},
		{"a:b", "", "", false},
		{"a:0", "", "", false},
		{"a:+80", "", "", false},
		{"[::1", "", "", false},
		{"[::1]x", "", "", false},
		{"[10.0.0.1]:80", "", "", false},
		{"a b", "", "", false},
		{"*", "", "", false},
	}
	for _, tt := range tests {
		h, p, err := ParseMatchHost(tt.in)
		if (err == nil) != tt.ok || err == nil && (h != tt.host || p != tt.port) {
			t.Errorf("ParseMatchHost(%q) = %q, %q, %v; want %q, %q, ok %v", tt.in, h, p, err, tt.host, tt.port, tt.ok)
		}
	}
}
