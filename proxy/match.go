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
	host        string
	grpcService string
	grpcMethod  string
}

type headerMatch struct{ name, value string }

func compileMatch(m config.Match) *matcher {
	c := &matcher{
		path:        m.Path,
		prefix:      m.PathPrefix,
		methods:     m.Methods,
		host:        strings.ToLower(m.Host),
		grpcService: m.GRPCService,
		grpcMethod:  m.GRPCMethod,
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
	case m.host != "" && !hostIs(r.Host, m.host):
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

// hostIs compares a request's Host, port dropped, with a lower-case name.
func hostIs(host, want string) bool {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return strings.EqualFold(host, want)
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
