package proxy

import (
	"bufio"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// grpcTimeoutSyntax is gRPC's grammar of grpc-timeout: 1 to 8 digits and
// a unit.
var grpcTimeoutSyntax = regexp.MustCompile(`^[0-9]{1,8}[HMSmun]$`)

// grpcUnits are the grpc-timeout units.
var grpcUnits = map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}

// FuzzGRPCTimeout holds parseGRPCTimeout to gRPC's grammar (a value is
// accepted exactly when it matches it, and then is its digits times its
// unit, capped at the largest duration), and formatGRPCTimeout to it
// too: any positive duration formats to a value of the grammar that
// parses back to no less than it, and less than one unit more (the
// deadline is never shortened, and rounded up by at most one unit).
// Seeds: testdata/fuzz/FuzzGRPCTimeout, and below.
func FuzzGRPCTimeout(f *testing.F) {
	for _, v := range []string{"1S", "100m", "99999999H", "123456789n", "0n", "5", "S", "-1S", "+1S", "1s", "1.5S", " 1S", "00000001u", "١S"} {
		f.Add(v, int64(1500*time.Millisecond))
	}
	f.Fuzz(func(t *testing.T, v string, n int64) {
		d, err := parseGRPCTimeout(v)
		if ok := grpcTimeoutSyntax.MatchString(v); ok != (err == nil) {
			t.Fatalf("parseGRPCTimeout(%q) error %v, want an error exactly when it is not 1-8 digits and a unit", v, err)
		}
		if err == nil {
			var digits int64
			for _, c := range v[:len(v)-1] {
				digits = digits*10 + int64(c-'0')
			}
			unit := grpcUnits[v[len(v)-1]]
			want := maxDuration
			if digits <= int64(maxDuration/unit) {
				want = time.Duration(digits) * unit
			}
			if d != want {
				t.Fatalf("parseGRPCTimeout(%q) = %v, want %v", v, d, want)
			}
		} else if d != 0 {
			t.Fatalf("parseGRPCTimeout(%q) = %v, %v; want 0 with the error", v, d, err)
		}
		// Formatting any duration.
		in := time.Duration(n)
		s := formatGRPCTimeout(in)
		if !grpcTimeoutSyntax.MatchString(s) {
			t.Fatalf("formatGRPCTimeout(%v) = %q, not a grpc-timeout", in, s)
		}
		back, err := parseGRPCTimeout(s)
		if err != nil {
			t.Fatalf("parseGRPCTimeout(formatGRPCTimeout(%v) = %q): %v", in, s, err)
		}
		if in <= 0 {
			if back != 0 {
				t.Fatalf("formatGRPCTimeout(%v) = %q, want an expired deadline (0)", in, s)
			}
			return
		}
		if unit := grpcUnits[s[len(s)-1]]; back < in || back-in >= unit {
			t.Fatalf("formatGRPCTimeout(%v) = %q reads back as %v: want at least it, and less than one %v more", in, s, back, unit)
		}
	})
}

// fuzzRoutes is the route table FuzzRouteMatch matches against, and
// refRoute the same table stated independently, from docs/configuration.md.
const fuzzRoutes = `
version: 1
upstreams:
  u: {endpoints: ["UPSTREAM0"]}
listeners:
  - name: app
    address: 127.0.0.1:0
    routes:
      - {name: exact, match: {path: /exact}, upstream: u}
      - {name: tenant, match: {path_prefix: /api, headers: {x-tenant: acme}}, upstream: u}
      - {name: writes, match: {path_prefix: /api, methods: [POST, PUT]}, upstream: u}
      - {name: api, match: {path_prefix: /api}, upstream: u}
      - {name: files, match: {path_prefix: /files/}, upstream: u}
      - {name: regex, match: {path_regex: "/v[0-9]+/users"}, upstream: u}
      - {name: host, match: {host: "internal.example:8080"}, upstream: u}
      - {name: grpc, match: {grpc_service: pkg.Greeter, grpc_method: Hello}, upstream: u}
`

// refRoute is the first route of fuzzRoutes that matches a request with
// cleaned path p, or "".
func refRoute(r *http.Request, p string) string {
	segPrefix := func(prefix string) bool { return p == prefix || strings.HasPrefix(p, prefix+"/") }
	digitsThen := func(s, rest string) bool { // [0-9]+ then rest, exactly
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i > 0 && s[i:] == rest
	}
	host, port := r.Host, "80"
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host, port = host[:i], host[i+1:]
	}
	tenant := false
	for _, v := range r.Header.Values("X-Tenant") {
		tenant = tenant || v == "acme"
	}
	switch {
	case p == "/exact":
		return "exact"
	case segPrefix("/api") && tenant:
		return "tenant"
	case segPrefix("/api") && (r.Method == "POST" || r.Method == "PUT"):
		return "writes"
	case segPrefix("/api"):
		return "api"
	case strings.HasPrefix(p, "/files/"):
		return "files"
	case strings.HasPrefix(p, "/v") && digitsThen(p[2:], "/users"):
		return "regex"
	case strings.EqualFold(host, "internal.example") && strings.TrimLeft(port, "0") == "8080":
		return "host"
	case p == "/pkg.Greeter/Hello":
		return "grpc"
	}
	return ""
}

// refClean resolves dot segments and empty segments of a decoded path,
// segment by segment, keeping a trailing slash: what the route match and
// the upstream see (docs/design.md: "..", "//" and percent-encoded
// slashes do not escape a prefix).
func refClean(p string) string {
	var out []string
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	c := "/" + strings.Join(out, "/")
	if c != "/" && strings.HasSuffix(p, "/") {
		c += "/"
	}
	return c
}

// FuzzRouteMatch parses request heads as the sidecar's server does and
// holds route matching to the rules of docs/configuration.md, stated
// independently (refRoute): the path is cleaned first (refClean: no dot
// or empty segment is left, whatever the percent-encoding), cleaning is
// idempotent, and the route chosen is the first whose every condition
// holds. Seeds: testdata/fuzz/FuzzRouteMatch, and below.
func FuzzRouteMatch(f *testing.F) {
	_, snap := newHandler(f, fuzzRoutes, nil)
	l := snap.Listeners[0]
	for _, s := range [][4]string{
		{"GET", "/exact", "x", ""}, {"GET", "/api/x", "x", "acme"}, {"POST", "/api", "x", ""}, {"GET", "/apix", "x", ""},
		{"GET", "/api/../exact", "x", ""}, {"GET", "/api%2F..%2Fexact", "x", ""}, {"GET", "/files", "x", ""},
		{"GET", "/files/a/./b//c", "x", ""}, {"GET", "/v12/users", "x", ""}, {"GET", "/v/users", "x", ""},
		{"GET", "/anything", "Internal.Example:08080", ""}, {"GET", "http://internal.example:8080/x", "y", ""},
		{"POST", "/pkg.Greeter/Hello", "x", ""}, {"GET", "//exact", "x", ""}, {"GET", "/./api/./", "x", "acme"},
		{"PUT", "/api/%2e%2e/exact", "x", ""}, {"GET", "*", "x", ""}, {"GET", "/exact?q=/api", "x", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, method, target, host, tenant string) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\n"
		if tenant != "" {
			raw += "X-Tenant: " + tenant + "\r\n"
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil {
			return // refused before routing
		}
		p := cleanPath(r.URL.Path)
		if want := refClean(r.URL.Path); p != want {
			t.Fatalf("cleanPath(%q) = %q, want %q", r.URL.Path, p, want)
		}
		if again := cleanPath(p); again != p {
			t.Fatalf("cleanPath(%q) = %q, not idempotent", p, again)
		}
		got := ""
		if rt := l.route(r, p); rt != nil {
			got = rt.Name
		}
		if want := refRoute(r, p); got != want {
			t.Fatalf("%s %s (Host %q, X-Tenant %q), cleaned %q: route %q, want %q", method, target, r.Host, r.Header.Values("X-Tenant"), p, got, want)
		}
	})
}
