package proxy

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/sidecar-proxy/sidecar/config"
)

func TestCleanPath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "/"},
		{"/", "/"},
		{"/a/b", "/a/b"},
		{"/a/b/", "/a/b/"},
		{"/a/../b", "/b"},
		{"/../../etc", "/etc"},
		{"//a//b", "/a/b"},
		{"/a/./b/.", "/a/b"},
		{"/a/b/../", "/a/"},
		{"a/b", "/a/b"},
		{"/.well-known/x", "/.well-known/x"},
	}
	for _, tt := range tests {
		if got := cleanPath(tt.in); got != tt.want {
			t.Errorf("cleanPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHasPathPrefix(t *testing.T) {
	tests := []struct {
		path, prefix string
		want         bool
	}{
		{"/api", "/api", true},
		{"/api/", "/api", true},
		{"/api/x", "/api", true},
		{"/apix", "/api", false},
		{"/ap", "/api", false},
		{"/files/a", "/files/", true},
		{"/files", "/files/", false},
		{"/anything", "/", true},
	}
	for _, tt := range tests {
		if got := hasPathPrefix(tt.path, tt.prefix); got != tt.want {
			t.Errorf("hasPathPrefix(%q, %q) = %v, want %v", tt.path, tt.prefix, got, tt.want)
		}
	}
}

func TestHostMatches(t *testing.T) {
	tests := []struct {
		match, method, target string // target: an absolute URL, or host:port for CONNECT
		ok                    bool
	}{
		{"api.internal", "GET", "http://api.internal/x", true},
		{"api.internal", "GET", "http://API.Internal:8080/x", true},
		{"api.internal", "GET", "http://api.internal.evil/x", false},
		{"api.internal", "GET", "http://evil/api.internal", false},
		{"api.internal", "CONNECT", "api.internal:443", true},
		{"::1", "GET", "http://[::1]:80/", true},
		{"[::1]:80", "GET", "http://[::1]/", true},
		{"[::1]:8080", "GET", "http://[::1]/", false},
		{"api.internal:8080", "GET", "http://api.internal:8080/", true},
		{"api.internal:8080", "GET", "http://api.internal:08080/", true},
		{"api.internal:8080", "GET", "http://api.internal:9090/", false},
		{"api.internal:8080", "GET", "http://api.internal/", false},
		{"api.internal:80", "GET", "http://api.internal/", true},
		{"api.internal:443", "GET", "https://api.internal/", true},
		{"api.internal:443", "CONNECT", "api.internal:443", true},
		{"api.internal:443", "CONNECT", "api.internal", true},
		{"api.internal:443", "CONNECT", "api.internal:8443", false},
		{"10.0.0.7", "GET", "http://10.0.0.7:81/", true},
	}
	for _, tt := range tests {
		m := compileMatch(config.Match{Host: tt.match})
		var r *http.Request
		if tt.method == "CONNECT" {
			r = &http.Request{Method: "CONNECT", Host: tt.target, URL: &url.URL{Host: tt.target}}
		} else {
			u, err := url.Parse(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			r = &http.Request{Method: tt.method, Host: u.Host, URL: u}
		}
		if got := m.hostMatches(r); got != tt.ok {
			t.Errorf("match.host %q, %s %s: matches = %v, want %v", tt.match, tt.method, tt.target, got, tt.ok)
		}
	}
}
