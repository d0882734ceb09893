package proxy

import "testing"

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

func TestHostIs(t *testing.T) {
	tests := []struct {
		host, want string
		ok         bool
	}{
		{"api.internal", "api.internal", true},
		{"API.Internal:8080", "api.internal", true},
		{"[::1]:80", "::1", true},
		{"api.internal.evil", "api.internal", false},
	}
	for _, tt := range tests {
		if got := hostIs(tt.host, tt.want); got != tt.ok {
			t.Errorf("hostIs(%q, %q) = %v, want %v", tt.host, tt.want, got, tt.ok)
		}
	}
}
