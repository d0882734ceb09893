package examples_test

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/sidecar-proxy/sidecar/config"
)

// No container engine runs here: these tests check the Compose file and
// the sidecar configurations it uses, not the containers.

const composeDir = "compose"

// composeFile holds the Compose keys the example uses; decoded with
// KnownFields, any other key fails the test (so that this struct is
// extended, and its checks with it, when the file grows).
type composeFile struct {
	Name     string                     `yaml:"name"`
	Services map[string]*composeService `yaml:"services"`
	Volumes  map[string]*struct{}       `yaml:"volumes"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	WorkingDir  string            `yaml:"working_dir"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	NetworkMode string            `yaml:"network_mode"`
	DependsOn   []string          `yaml:"depends_on"`
	Restart     string            `yaml:"restart"`
}

// interpolate replaces $$, $NAME, ${NAME}, ${NAME:-default} and
// ${NAME-default} as Compose does; any other form is an error.
func interpolate(s string, env map[string]string) (string, error) {
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		s = s[i+1:]
		switch {
		case strings.HasPrefix(s, "$"):
			b.WriteByte('$')
			s = s[1:]
		case strings.HasPrefix(s, "{"):
			end := strings.IndexByte(s, '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %q", s)
			}
			expr := s[1:end]
			s = s[end+1:]
			name, def, unsetOnly := expr, "", false
			if n, d, ok := strings.Cut(expr, ":-"); ok {
				name, def = n, d
			} else if n, d, ok := strings.Cut(expr, "-"); ok {
				name, def, unsetOnly = n, d, true
			}
			if !validVar(name) {
				return "", fmt.Errorf("unsupported interpolation ${%s}", expr)
			}
			v, set := env[name]
			if !set || (v == "" && !unsetOnly) {
				v = def
			}
			b.WriteString(v)
		default:
			n := 0
			for n < len(s) && (s[n] == '_' || s[n] >= 'A' && s[n] <= 'Z' || s[n] >= 'a' && s[n] <= 'z' || n > 0 && s[n] >= '0' && s[n] <= '9') {
				n++
			}
			if n == 0 {
				return "", fmt.Errorf("a lone $ before %q: write $$", s)
			}
			b.WriteString(env[s[:n]])
			s = s[n:]
		}
	}
}

func validVar(s string) bool {
	for i, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

// loadCompose reads compose.yaml, interpolates its values with env (keys
// are never interpolated, as in Compose) and decodes it strictly.
func loadCompose(t *testing.T, env map[string]string) *composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(composeDir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	var walk func(n *yaml.Node) error
	walk = func(n *yaml.Node) error {
		for i, c := range n.Content {
			if n.Kind == yaml.MappingNode && i%2 == 0 {
				continue
			}
			if c.Kind == yaml.ScalarNode {
				v, err := interpolate(c.Value, env)
				if err != nil {
					return fmt.Errorf("line %d: %v", c.Line, err)
				}
				c.Value = v
			}
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(&root); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	out, err := yaml.Marshal(&root)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	dec.KnownFields(true)
	var f composeFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("compose.yaml (with %v): %v", env, err)
	}
	return &f
}

func TestComposeInterpolate(t *testing.T) {
	env := map[string]string{"A": "x", "E": ""}
	for in, want := range map[string]string{
		"a$$b":          "a$b",
		"${A}/$A":       "x/x",
		"${B:-def}":     "def",
		"${E:-def}":     "def",
		"${E-def}":      "",
		"${B-def}":      "def",
		"${A:-def}.yml": "x.yml",
		"%{http_code}":  "%{http_code}",
	} {
		if got, err := interpolate(in, env); err != nil || got != want {
			t.Errorf("interpolate(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"${A:?required}", "${", "50$ off"} {
		if _, err := interpolate(in, env); err == nil {
			t.Errorf("interpolate(%q): no error", in)
		}
	}
}

// bindSource returns the host path of a bind mount "SRC:DST[:ro]",
// relative to the test's directory, or "" for a named volume.
func bindSource(v string) (src, dst string, ro bool) {
	parts := strings.Split(v, ":")
	src, dst = parts[0], parts[1]
	ro = len(parts) > 2 && parts[2] == "ro"
	if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
		return filepath.Join(composeDir, src), dst, ro
	}
	return "", dst, ro
}

// hostPath maps a path inside service s's container to the host through
// its bind mounts.
func hostPath(s *composeService, p string) (string, bool) {
	for _, v := range s.Volumes {
		src, dst, _ := bindSource(v)
		if rel, ok := strings.CutPrefix(p, dst+"/"); ok && src != "" {
			return filepath.Join(src, filepath.FromSlash(rel)), true
		}
	}
	return "", false
}

// flagValue returns the value after name in args.
func flagValue(args []string, name string) string {
	if i := slices.Index(args, name); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// echoFlags parses examples/echo/main.go and returns the flags it defines.
func echoFlags(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("echo", "main.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
			if x, ok := sel.X.(*ast.Ident); ok && x.Name == "flag" {
				if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					name, _ := strconv.Unquote(lit.Value)
					names = append(names, name)
				}
			}
		}
		return true
	})
	return names
}

// checkCompose checks one interpolation of the file; it returns the
// sidecar configuration file it selects (a host path).
func checkCompose(t *testing.T, f *composeFile) string {
	t.Helper()
	for _, name := range []string{"app", "sidecar", "echo", "nats"} {
		if f.Services[name] == nil {
			t.Fatalf("no service %q", name)
		}
	}
	for name, s := range f.Services {
		if (s.Image == "") == (s.Build == nil) {
			t.Errorf("%s: want an image or a build", name)
		}
		if b := s.Build; b != nil {
			if _, err := os.Stat(filepath.Join(composeDir, b.Context, b.Dockerfile)); err != nil {
				t.Errorf("%s: build: %v", name, err)
			}
		}
		for _, v := range s.Volumes {
			if strings.Count(v, ":") < 1 {
				t.Errorf("%s: volume %q: want SRC:DST", name, v)
				continue
			}
			src, dst, _ := bindSource(v)
			if !path.IsAbs(dst) {
				t.Errorf("%s: volume %q: the container path must be absolute", name, v)
			}
			if src == "" {
				if _, ok := f.Volumes[strings.Split(v, ":")[0]]; !ok {
					t.Errorf("%s: named volume %q is not declared under volumes", name, v)
				}
			} else if _, err := os.Stat(src); err != nil {
				t.Errorf("%s: bind mount %q: %v", name, v, err)
			}
		}
		for _, d := range s.DependsOn {
			if f.Services[d] == nil {
				t.Errorf("%s: depends_on %q: no such service", name, d)
			}
		}
		if other, ok := strings.CutPrefix(s.NetworkMode, "service:"); ok {
			if f.Services[other] == nil {
				t.Errorf("%s: network_mode %q: no such service", name, s.NetworkMode)
			}
			if len(s.Ports) > 0 {
				t.Errorf("%s: ports with network_mode %s: publish them on %s", name, s.NetworkMode, other)
			}
		} else if s.NetworkMode != "" {
			t.Errorf("%s: network_mode %q: this test knows only service:NAME", name, s.NetworkMode)
		}
		for _, p := range s.Ports {
			if strings.Count(p, ":") != 2 {
				t.Errorf("%s: port %q: want HOST_IP:HOST_PORT:CONTAINER_PORT (no port published on every address)", name, p)
			}
		}
		if !slices.Contains([]string{"", "no", "always", "on-failure", "unless-stopped"}, s.Restart) {
			t.Errorf("%s: restart %q", name, s.Restart)
		}
	}

	// The sidecar: the repository's image, in the app's network namespace.
	sc, app := f.Services["sidecar"], f.Services["app"]
	if sc.Build == nil || filepath.Clean(filepath.Join(composeDir, sc.Build.Context, sc.Build.Dockerfile)) != filepath.Join("..", "Dockerfile") {
		t.Errorf("sidecar: build %+v: want the repository's Dockerfile", sc.Build)
	}
	if sc.NetworkMode != "service:app" {
		t.Fatalf("sidecar: network_mode %q: want service:app (the app calls it on 127.0.0.1)", sc.NetworkMode)
	}
	if len(sc.Command) == 0 || sc.Command[0] != "run" || flagValue(sc.Command, "-log-format") != "json" {
		t.Errorf("sidecar: command %q: want run -config FILE -log-format json", sc.Command)
	}
	file := flagValue(sc.Command, "-config")
	host, ok := hostPath(sc, file)
	if !ok {
		t.Fatalf("sidecar: -config %q is in no bind mount", file)
	}
	data, err := os.ReadFile(host)
	if err != nil {
		t.Fatalf("sidecar: -config %s: %v", file, err)
	}
	cfg, err := config.Parse(host, data, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("sidecar: %s does not validate:\n%v", host, err)
	}

	// Its upstreams are services of the file, on the ports they serve.
	echoPort := "8080"
	if _, p, err := net.SplitHostPort(flagValue(f.Services["echo"].Command, "-addr")); err == nil {
		echoPort = p
	}
	ports := map[string]string{"echo": echoPort, "nats": "4222"}
	for name, u := range cfg.Upstreams {
		for _, ep := range u.Endpoints {
			pu, err := url.Parse(ep)
			if err != nil || ports[pu.Hostname()] != pu.Port() {
				t.Errorf("%s: upstream %s endpoint %s: want a service of compose.yaml on its port (%v)", host, name, ep, ports)
			}
		}
	}
	if cfg.Spool.Backend == "jetstream" {
		pu, err := url.Parse(cfg.Spool.JetStream.URL)
		if err != nil || ports[pu.Hostname()] != pu.Port() {
			t.Errorf("%s: spool.jetstream.url %s: want the nats service on 4222", host, cfg.Spool.JetStream.URL)
		}
	} else {
		var spoolVol bool
		for _, v := range sc.Volumes {
			src, dst, ro := bindSource(v)
			spoolVol = spoolVol || src == "" && !ro && strings.HasPrefix(cfg.Spool.Dir, dst+"/")
		}
		if !spoolVol {
			t.Errorf("%s: spool.dir %s is on no named volume of the sidecar", host, cfg.Spool.Dir)
		}
	}

	// The probe listener is published by the service that owns the
	// network namespace.
	_, probe, err := net.SplitHostPort(cfg.Admin.ProbeAddress)
	if err != nil {
		t.Fatalf("%s: admin.probe_address %q", host, cfg.Admin.ProbeAddress)
	}
	if !slices.ContainsFunc(app.Ports, func(p string) bool { return strings.HasSuffix(p, ":"+probe) }) {
		t.Errorf("app: ports %q: want the sidecar's probe port %s published", app.Ports, probe)
	}

	// The app calls the sidecar's listeners, and nothing else on loopback.
	script := strings.Join(append(slices.Clone(app.Entrypoint), app.Command...), " ")
	for _, l := range cfg.Listeners {
		if !strings.Contains(script, "http://"+l.Address+"/") {
			t.Errorf("app: never calls listener %s on http://%s/", l.Name, l.Address)
		}
	}
	for _, w := range strings.Fields(script) {
		if a, ok := strings.CutPrefix(w, "http://127.0.0.1:"); ok {
			port, _, _ := strings.Cut(a, "/")
			if !slices.ContainsFunc(cfg.Listeners, func(l *config.Listener) bool { return l.Address == "127.0.0.1:"+port }) {
				t.Errorf("app: calls %s, where the sidecar has no listener", w)
			}
		}
	}

	// The flaky upstream is examples/echo, with flags it has.
	echo := f.Services["echo"]
	if !slices.Contains(echo.Command, "./examples/echo") || flagValue(echo.Command, "-fail-ratio") == "" {
		t.Errorf("echo: command %q: want go run ./examples/echo ... -fail-ratio R", echo.Command)
	}
	known := echoFlags(t)
	for _, a := range echo.Command {
		if name, ok := strings.CutPrefix(a, "-"); ok && !slices.Contains(known, name) {
			t.Errorf("echo: flag %s: examples/echo defines only %q", a, known)
		}
	}
	if !slices.Contains(f.Services["nats"].Command, "-js") {
		t.Errorf("nats: command %q: want -js (JetStream)", f.Services["nats"].Command)
	}
	return host
}

func TestCompose(t *testing.T) {
	configs, err := filepath.Glob(filepath.Join(composeDir, "sidecar", "*.yaml"))
	if err != nil || len(configs) < 2 {
		t.Fatalf("sidecar configurations in %s/sidecar: %q, %v", composeDir, configs, err)
	}
	used := map[string]bool{}
	t.Run("default", func(t *testing.T) {
		used[checkCompose(t, loadCompose(t, nil))] = true
	})
	// Each configuration is chosen by SIDECAR_CONFIG=<its name>.
	for _, c := range configs {
		name := strings.TrimSuffix(filepath.Base(c), ".yaml")
		t.Run(name, func(t *testing.T) {
			used[checkCompose(t, loadCompose(t, map[string]string{"SIDECAR_CONFIG": name}))] = true
		})
	}
	for _, c := range configs {
		if !used[c] {
			t.Errorf("%s: no SIDECAR_CONFIG selects it", c)
		}
	}
}
