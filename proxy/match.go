package proxy

import (
	"net/http"
	"path"
	"regexp"
	"strings"

	"github.com/sidecar-proxy/sidecar/config"
)

// matcher is a route's compiled match block. Every set condition must hold.
type matcher struct {
	path        string
	prefix      string
	regex       *regexp.Regexp
	methods     []string
	headers     []headerMatch
	host        string // lower case; "" matches any host
	port        string // "" matches any port
	grpcService string
	grpcMethod  string
}

type headerMatch struct{ name, value string }

func compileMatch(m config.Match) *matcher {
	c := &matcher{
		path:        m.Path,
		prefix:      m.PathPrefix,
		methods:     m.Methods,
		grpcService: m.GRPCService,
		grpcMethod:  m.GRPCMethod,
	}
	if m.Host != "" {
		// Validated by config.
		c.host, c.port, _ = config.ParseMatchHost(m.Host)
	}
	if m.PathRegex != "" {
		// Validated by config; anchored so the whole path must match.
		c.regex = regexp.MustCompile(`^(?:` + m.PathRegex + `)$`)
	}
	for name, value := range m.Headers {
		c.headers = append(c.headers, headerMatch{http.CanonicalHeaderKey(name), value})
	}
	return c
}

// matches reports whether r, whose cleaned path is p, meets every condition.
func (m *matcher) matches(r *http.Request, p string) bool {
	switch {
	case m.path != "" && p != m.path:
		return false
	case m.prefix != "" && !hasPathPrefix(p, m.prefix):
		return false
	case m.regex != nil && !m.regex.MatchString(p):
		return false
	case m.methods != nil && !contains(m.methods, r.Method):
		return false
	case m.host != "" && !m.hostMatches(r):
		return false
	case m.grpcService != "" && !m.grpcMatches(p):
		return false
	}
	for _, h := range m.headers {
		if !contains(r.Header[h.name], h.value) {
			return false
		}
	}
	return true
}

// grpcMatches reports whether p is /<service>/<method> for the configured
// service and, when set, method.
func (m *matcher) grpcMatches(p string) bool {
	svc, method, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	return ok && svc == m.grpcService && (m.grpcMethod == "" || method == m.grpcMethod)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// hasPathPrefix matches whole segments: /api matches /api, /api/ and
// /api/x but not /apix. A prefix ending in / is a plain string prefix.
func hasPathPrefix(p, prefix string) bool {
	if !strings.HasPrefix(p, prefix) {
		return false
	}
	return len(p) == len(prefix) || prefix[len(prefix)-1] == '/' || p[len(prefix)] == '/'
}

// hostMatches reports whether r's target host (r.Host: the host of a
// request in absolute form, else its Host header; the authority of a
// CONNECT) is the matcher's, case-insensitive. A matcher with a port
// matches only that port; a target without one has its scheme's default
// (defaultPort).
func (m *matcher) hostMatches(r *http.Request) bool {
	host, port := splitHostPort(r.Host)
	if !strings.EqualFold(host, m.host) {
		return false
	}
	if m.port == "" {
		return true
	}
	if port == "" {
		port = defaultPort(r)
	}
	return port == m.port || strings.TrimLeft(port, "0") == m.port
}

// splitHostPort splits a request's host[:port], "[v6]" or "[v6]:port"
// without allocating; port is "" when there is none.
func splitHostPort(hostport string) (host, port string) {
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return hostport, ""
		}
		host, rest := hostport[1:end], hostport[end+1:]
		if len(rest) > 1 && rest[0] == ':' {
			port = rest[1:]
		}
		return host, port
	}
	if i := strings.IndexByte(hostport, ':'); i >= 0 && strings.IndexByte(hostport[i+1:], ':') < 0 {
		return hostport[:i], hostport[i+1:]
	}
	return hostport, ""
}

// defaultPort is the port of r's target when it names none: 443 for a
// CONNECT or an https:// target, else 80.
func defaultPort(r *http.Request) string {
	if r.Method == http.MethodConnect || r.URL != nil && r.URL.Scheme == "https" {
		return "443"
	}
	return "80"
}

// cleanPath returns p with dot segments and repeated slashes resolved, so
// that "..", "//" and percent-encoded slashes (already decoded into p by
// net/url) cannot escape a prefix. A trailing slash is kept.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] == '/' && !strings.Contains(p, "//") && !strings.Contains(p, "/.") {
		return p // the common case: already clean, no allocation
	}
	c := path.Clean("/" + p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}
