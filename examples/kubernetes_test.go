// Package examples_test checks the example deployments and configurations
// under examples/ with real parsers: the Kubernetes API's types, strict
// YAML decoding and config.Parse (docs/deploying.md, "What the tests
// check").
package examples_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/sidecar-proxy/sidecar/config"
)

// The image's conventions (Dockerfile, examples/container.yaml).
const (
	imageUser   = 65532
	sidecarName = "sidecar"
)

// podMonitor is the part of the Prometheus Operator's PodMonitor
// (monitoring.coreos.com/v1) that the examples use. The CRD has no Go
// types in k8s.io/api; decoded strictly, a field not listed here (a typo,
// or one this test does not know) fails the test.
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		PodTargetLabels   []string             `json:"podTargetLabels,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		PodMetricsEndpoints []struct {
			Port          string `json:"port,omitempty"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// object is one document of a manifest file, decoded.
type object struct {
	where string // file#document, for messages
	dir   string // the manifest's directory: what is applied together
	obj   any    // *appsv1.Deployment, *corev1.ConfigMap, ...
}

// kinds maps apiVersion/kind to a new value of its Go type.
var kinds = map[string]func() any{
	"apps/v1/Deployment":                  func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":                 func() any { return &appsv1.StatefulSet{} },
	"v1/ConfigMap":                        func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                           func() any { return &corev1.Secret{} },
	"v1/Service":                          func() any { return &corev1.Service{} },
	"monitoring.coreos.com/v1/PodMonitor": func() any { return &podMonitor{} },
}

// decodeManifest splits a multi-document YAML file and decodes every
// document strictly into the Go type of its apiVersion and kind: an
// unknown field, a duplicate key, a malformed quantity or an unknown kind
// is an error.
func decodeManifest(name string, data []byte) ([]any, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []any
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s#%d: %v", name, i, err)
		}
		if s := string(bytes.TrimSpace(js)); s == "null" {
			continue // comments only
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("%s#%d: %v", name, i, err)
		}
		newObj := kinds[tm.APIVersion+"/"+tm.Kind]
		if newObj == nil {
			return nil, fmt.Errorf("%s#%d: apiVersion %q kind %q: not a kind this test knows", name, i, tm.APIVersion, tm.Kind)
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("%s#%d (%s): %v", name, i, tm.Kind, err)
		}
		objs = append(objs, obj)
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("%s: no document", name)
	}
	return objs, nil
}

// loadManifests decodes every *.yaml under examples/kubernetes.
func loadManifests(t *testing.T) []object {
	t.Helper()
	var objs []object
	err := filepath.WalkDir("kubernetes", func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".yaml" {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		docs, err := decodeManifest(p, data)
		if err != nil {
			return err
		}
		for i, o := range docs {
			objs = append(objs, object{where: fmt.Sprintf("%s#%d", p, i), dir: filepath.Dir(p), obj: o})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) == 0 {
		t.Fatal("no manifest under examples/kubernetes")
	}
	return objs
}

func TestManifestsDecodeStrictly(t *testing.T) {
	// The decoder is what the other tests stand on: check that it refuses
	// what kubectl's server-side validation would.
	for name, doc := range map[string]string{
		"unknown field": `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  template:
    spec:
      initContainers:
        - name: sidecar
          readinesProbe: {httpGet: {path: /readyz, port: 9902}}`,
		"misplaced restartPolicy": `
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
restartPolicy: Always`,
		"duplicate key": `
apiVersion: v1
kind: Service
metadata: {name: x, name: y}`,
		"bad quantity": `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  template:
    spec:
      containers:
        - name: app
          resources: {limits: {memory: 256MB-ish}}`,
		"unknown kind": `
apiVersion: v1
kind: ConfigMapp
metadata: {name: x}`,
		"PodMonitor field": `
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata: {name: x}
spec:
  podMetricsEndpoints: [{port: probe, pathh: /metrics}]`,
	} {
		if _, err := decodeManifest(name, []byte(doc)); err == nil {
			t.Errorf("%s: decoded without an error", name)
		}
	}
}

// workload is a Deployment or StatefulSet's pod template, with what the
// checks need around it.
type workload struct {
	where    string
	dir      string
	kind     string
	name     string
	selector *metav1.LabelSelector
	pod      *corev1.PodTemplateSpec
	claims   []corev1.PersistentVolumeClaim // a StatefulSet's volumeClaimTemplates
}

func workloads(objs []object) []workload {
	var ws []workload
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{o.where, o.dir, "Deployment", v.Name, v.Spec.Selector, &v.Spec.Template, nil})
		case *appsv1.StatefulSet:
			ws = append(ws, workload{o.where, o.dir, "StatefulSet", v.Name, v.Spec.Selector, &v.Spec.Template, v.Spec.VolumeClaimTemplates})
		}
	}
	return ws
}

// find returns the object of type T named name in dir.
func find[T interface{ GetName() string }](objs []object, dir, name string) (T, bool) {
	for _, o := range objs {
		if v, ok := o.obj.(T); ok && o.dir == dir && v.GetName() == name {
			return v, true
		}
	}
	var zero T
	return zero, false
}

func TestManifestNamesAndLabels(t *testing.T) {
	for _, o := range loadManifests(t) {
		m := o.obj.(metav1.Object)
		for _, e := range validation.IsDNS1123Subdomain(m.GetName()) {
			t.Errorf("%s: name %q: %s", o.where, m.GetName(), e)
		}
		checkLabels(t, o.where, m.GetLabels())
	}
	for _, w := range workloads(loadManifests(t)) {
		checkLabels(t, w.where+" template", w.pod.Labels)
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || sel.Empty() {
			t.Errorf("%s: selector %v: %v", w.where, w.selector, err)
		} else if !sel.Matches(labels.Set(w.pod.Labels)) {
			t.Errorf("%s: selector %v does not match the template's labels %v", w.where, w.selector, w.pod.Labels)
		}
	}
}

func checkLabels(t *testing.T, where string, ls map[string]string) {
	t.Helper()
	for k, v := range ls {
		for _, e := range validation.IsQualifiedName(k) {
			t.Errorf("%s: label key %q: %s", where, k, e)
		}
		for _, e := range validation.IsValidLabelValue(v) {
			t.Errorf("%s: label %s value %q: %s", where, k, v, e)
		}
	}
}

// sidecarOf returns the pod's sidecar container, which must be a native
// sidecar: an init container with restartPolicy Always.
func sidecarOf(t *testing.T, w workload) *corev1.Container {
	t.Helper()
	spec := &w.pod.Spec
	for i := range spec.Containers {
		if spec.Containers[i].Name == sidecarName {
			t.Errorf("%s: the sidecar is in containers; want initContainers with restartPolicy: Always", w.where)
		}
	}
	var sc *corev1.Container
	for i := range spec.InitContainers {
		if c := &spec.InitContainers[i]; c.Name == sidecarName {
			sc = c
		}
	}
	if sc == nil {
		t.Fatalf("%s: no init container named %q", w.where, sidecarName)
	}
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("%s: init container %q has restartPolicy %v, want Always (a native sidecar)", w.where, sc.Name, sc.RestartPolicy)
	}
	if len(spec.Containers) == 0 {
		t.Errorf("%s: no app container beside the sidecar", w.where)
	}
	return sc
}

// configPath returns the -config argument of `sidecar run`.
func configPath(t *testing.T, where string, args []string) string {
	t.Helper()
	if len(args) == 0 || args[0] != "run" {
		t.Fatalf("%s: args %q: want run -config FILE ...", where, args)
	}
	var file, format string
	for i := 1; i+1 < len(args); i++ {
		switch args[i] {
		case "-config":
			file = args[i+1]
		case "-log-format":
			format = args[i+1]
		}
	}
	if file == "" || !path.IsAbs(file) {
		t.Fatalf("%s: args %q: want -config with an absolute path", where, args)
	}
	if format != "json" {
		t.Errorf("%s: args %q: want -log-format json", where, args)
	}
	return file
}

// mountOf returns the container's volume mount at dir and the pod's
// volume it mounts.
func mountOf(w workload, c *corev1.Container, dir string) (*corev1.VolumeMount, *corev1.Volume) {
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if path.Clean(m.MountPath) != dir {
			continue
		}
		for j := range w.pod.Spec.Volumes {
			if v := &w.pod.Spec.Volumes[j]; v.Name == m.Name {
				return m, v
			}
		}
		return m, nil
	}
	return nil, nil
}

// envLookup resolves ${NAME} for the sidecar's configuration from the
// container's environment: a value, or a key of a Secret or ConfigMap
// applied with it. Anything else is unset, as it would be in the pod.
func envLookup(t *testing.T, objs []object, w workload, c *corev1.Container) func(string) (string, bool) {
	t.Helper()
	if len(c.EnvFrom) > 0 {
		t.Errorf("%s: envFrom: name each variable in env instead, so that the test can follow it", w.where)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, ok := find[*corev1.Secret](objs, w.dir, ref.Name)
			if !ok {
				t.Errorf("%s: env %s: no Secret %q in %s", w.where, e.Name, ref.Name, w.dir)
				continue
			}
			if v, ok := s.StringData[ref.Key]; ok {
				env[e.Name] = v
			} else if v, ok := s.Data[ref.Key]; ok {
				env[e.Name] = string(v)
			} else {
				t.Errorf("%s: env %s: Secret %q has no key %q", w.where, e.Name, ref.Name, ref.Key)
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, ok := find[*corev1.ConfigMap](objs, w.dir, ref.Name)
			if v, has := cm.Data[ref.Key]; ok && has {
				env[e.Name] = v
			} else {
				t.Errorf("%s: env %s: no key %q in a ConfigMap %q in %s", w.where, e.Name, ref.Key, ref.Name, w.dir)
			}
		}
	}
	return func(name string) (string, bool) { v, ok := env[name]; return v, ok }
}

// sidecarConfig finds the ConfigMap the sidecar's -config names, through
// its volume mount, and parses it with config.Parse.
func sidecarConfig(t *testing.T, objs []object, w workload, sc *corev1.Container, checked map[string]bool) *config.Config {
	t.Helper()
	file := configPath(t, w.where, sc.Args)
	dir, key := path.Dir(file), path.Base(file)
	m, vol := mountOf(w, sc, dir)
	if m == nil || vol == nil || vol.ConfigMap == nil {
		t.Fatalf("%s: no ConfigMap volume mounted on %s, the directory of -config %s", w.where, dir, file)
	}
	if m.SubPath != "" || m.SubPathExpr != "" {
		t.Errorf("%s: the configuration is mounted with subPath: the kubelet never updates it, so live reload never sees a change", w.where)
	}
	if !m.ReadOnly {
		t.Errorf("%s: mount %s: want readOnly", w.where, m.MountPath)
	}
	for _, it := range vol.ConfigMap.Items {
		if it.Path == key {
			key = it.Key
		}
	}
	cm, ok := find[*corev1.ConfigMap](objs, w.dir, vol.ConfigMap.Name)
	if !ok {
		t.Fatalf("%s: no ConfigMap %q in %s", w.where, vol.ConfigMap.Name, w.dir)
	}
	data, ok := cm.Data[key]
	if !ok {
		t.Fatalf("%s: ConfigMap %q has no key %q (-config %s)", w.where, cm.Name, key, file)
	}
	checked[w.dir+"/"+cm.Name] = true
	cfg, err := config.Parse(cm.Name+"/"+key, []byte(data), envLookup(t, objs, w, sc))
	if err != nil {
		t.Fatalf("%s: the sidecar configuration in ConfigMap %q does not validate:\n%v", w.where, cm.Name, err)
	}
	return cfg
}

// portNumber resolves a probe's or a monitor's port, by name or number,
// among the container's ports.
func portNumber(c *corev1.Container, p intstr.IntOrString) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, true
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// probePort returns the port of admin.probe_address, which must listen on
// the pod's IP: the kubelet and Prometheus never reach its loopback.
func probePort(t *testing.T, where string, cfg *config.Config) int32 {
	t.Helper()
	host, port, err := net.SplitHostPort(cfg.Admin.ProbeAddress)
	if err != nil {
		t.Fatalf("%s: admin.probe_address %q: want host:port (probes reach the pod on its IP, never its loopback)", where, cfg.Admin.ProbeAddress)
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		t.Errorf("%s: admin.probe_address %q: want 0.0.0.0 or [::], the pod's every address", where, cfg.Admin.ProbeAddress)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return int32(n)
}

func checkProbes(t *testing.T, w workload, sc *corev1.Container, port int32) {
	t.Helper()
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		paths []string
	}{
		{"startupProbe", sc.StartupProbe, []string{"/readyz", "/healthz"}},
		{"readinessProbe", sc.ReadinessProbe, []string{"/readyz", "/healthz"}},
		// Never /readyz: it answers 503 while the sidecar drains or its
		// JetStream server is away, and a restart would not help.
		{"livenessProbe", sc.LivenessProbe, []string{"/healthz"}},
	} {
		if p.probe == nil {
			if p.name != "startupProbe" {
				t.Errorf("%s: the sidecar has no %s", w.where, p.name)
			}
			continue
		}
		g := p.probe.HTTPGet
		if g == nil {
			t.Errorf("%s: %s: want httpGet on the probe listener", w.where, p.name)
			continue
		}
		if n, ok := portNumber(sc, g.Port); !ok || n != port {
			t.Errorf("%s: %s: port %s is %d, want admin.probe_address's %d", w.where, p.name, g.Port.String(), n, port)
		}
		if !slices.Contains(p.paths, g.Path) {
			t.Errorf("%s: %s: path %q, want one of %q", w.where, p.name, g.Path, p.paths)
		}
	}
	var declared bool
	for _, cp := range sc.Ports {
		declared = declared || cp.ContainerPort == port
	}
	if !declared {
		t.Errorf("%s: the sidecar declares no container port %d (admin.probe_address)", w.where, port)
	}
	a := w.pod.Annotations
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != strconv.Itoa(int(port)) || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: Prometheus annotations %v: want scrape \"true\", port %q, path /metrics", w.where, a, strconv.Itoa(int(port)))
	}
}

func checkSecurity(t *testing.T, w workload, sc *corev1.Container) {
	t.Helper()
	s := sc.SecurityContext
	if s == nil {
		t.Errorf("%s: the sidecar has no securityContext", w.where)
		return
	}
	is := func(b *bool) bool { return b != nil && *b }
	switch {
	case !is(s.RunAsNonRoot):
		t.Errorf("%s: sidecar: want runAsNonRoot: true", w.where)
	case s.RunAsUser == nil || *s.RunAsUser != imageUser:
		t.Errorf("%s: sidecar: want runAsUser: %d, the image's user", w.where, imageUser)
	case !is(s.ReadOnlyRootFilesystem):
		t.Errorf("%s: sidecar: want readOnlyRootFilesystem: true", w.where)
	case s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation:
		t.Errorf("%s: sidecar: want allowPrivilegeEscalation: false", w.where)
	case s.Capabilities == nil || !slices.Contains(s.Capabilities.Drop, "ALL"):
		t.Errorf("%s: sidecar: want capabilities: {drop: [ALL]}", w.where)
	}
	if ps := w.pod.Spec.SecurityContext; ps == nil || !is(ps.RunAsNonRoot) {
		t.Errorf("%s: want the pod's securityContext runAsNonRoot: true", w.where)
	}
	r := sc.Resources
	for _, q := range []struct {
		q    resource.Quantity
		what string
	}{
		{r.Requests[corev1.ResourceCPU], "requests.cpu"},
		{r.Requests[corev1.ResourceMemory], "requests.memory"},
		{r.Limits[corev1.ResourceMemory], "limits.memory"},
	} {
		if q.q.IsZero() {
			t.Errorf("%s: sidecar: no resources.%s", w.where, q.what)
		}
	}
	if req, lim := r.Requests[corev1.ResourceMemory], r.Limits[corev1.ResourceMemory]; req.Cmp(lim) > 0 {
		t.Errorf("%s: sidecar: memory request %s above its limit %s", w.where, req.String(), lim.String())
	}
}

// checkSpool checks where the sidecar keeps its spool: the file backend
// on a writable volume larger than spool.max_bytes (else the kubelet
// evicts the pod before the app gets 503 spool_full); JetStream on no
// volume at all.
func checkSpool(t *testing.T, w workload, sc *corev1.Container, cfg *config.Config) {
	t.Helper()
	if cfg.Spool.Backend == "jetstream" {
		for _, m := range sc.VolumeMounts {
			if !m.ReadOnly {
				t.Errorf("%s: JetStream spool, but a writable volume is mounted on %s", w.where, m.MountPath)
			}
		}
		return
	}
	dir := path.Clean(cfg.Spool.Dir)
	if !path.IsAbs(dir) {
		t.Fatalf("%s: spool.dir %q: want an absolute path on a volume", w.where, cfg.Spool.Dir)
	}
	var m *corev1.VolumeMount
	for d := dir; d != "/"; d = path.Dir(d) {
		for i := range sc.VolumeMounts {
			if path.Clean(sc.VolumeMounts[i].MountPath) == d {
				m = &sc.VolumeMounts[i]
			}
		}
		if m != nil {
			break
		}
	}
	if m == nil || m.ReadOnly {
		t.Fatalf("%s: spool.dir %s is on no writable volume (the root filesystem is read-only)", w.where, dir)
	}
	var size resource.Quantity
	switch _, vol := mountOf(w, sc, path.Clean(m.MountPath)); {
	case vol != nil && vol.EmptyDir != nil:
		if vol.EmptyDir.SizeLimit != nil {
			size = *vol.EmptyDir.SizeLimit
		}
	case vol != nil && vol.PersistentVolumeClaim != nil:
		t.Logf("%s: spool on claim %s: its size is not in the manifest", w.where, vol.PersistentVolumeClaim.ClaimName)
		return
	case vol == nil && w.kind == "StatefulSet":
		for _, c := range w.claims {
			if c.Name == m.Name {
				size = c.Spec.Resources.Requests[corev1.ResourceStorage]
				if !slices.Contains(c.Spec.AccessModes, corev1.ReadWriteOnce) && !slices.Contains(c.Spec.AccessModes, corev1.ReadWriteOncePod) {
					t.Errorf("%s: claim %s: want ReadWriteOnce (one sidecar per spool)", w.where, c.Name)
				}
			}
		}
		if ps := w.pod.Spec.SecurityContext; ps == nil || ps.FSGroup == nil || *ps.FSGroup != imageUser {
			t.Errorf("%s: the spool is on a claim: want the pod's fsGroup %d so the image's user can write it", w.where, imageUser)
		}
	default:
		t.Fatalf("%s: the spool's volume %s is neither an emptyDir nor a claim", w.where, m.Name)
	}
	if size.IsZero() {
		t.Errorf("%s: the spool's volume %s has no size (sizeLimit, or storage request)", w.where, m.Name)
	} else if int64(cfg.Spool.MaxBytes) >= size.Value() {
		t.Errorf("%s: spool.max_bytes %s is not below its volume's %s: the kubelet would evict the pod before the app gets 503 spool_full", w.where, cfg.Spool.MaxBytes, size.String())
	}
}

// checkApp checks that the app calls the sidecar's listeners on loopback.
func checkApp(t *testing.T, w workload, cfg *config.Config) {
	t.Helper()
	used := map[string]bool{}
	for _, c := range w.pod.Spec.Containers {
		for _, e := range c.Env {
			if a, ok := strings.CutPrefix(e.Value, "http://"); ok && strings.HasPrefix(a, "127.0.0.1:") {
				used[strings.TrimSuffix(a, "/")] = true
			}
		}
	}
	for _, l := range cfg.Listeners {
		if !used[l.Address] {
			t.Errorf("%s: no app container's env calls listener %s on http://%s", w.where, l.Name, l.Address)
		}
		delete(used, l.Address)
	}
	for a := range used {
		t.Errorf("%s: the app calls http://%s, where the sidecar has no listener", w.where, a)
	}
}

func TestManifestsSidecar(t *testing.T) {
	objs := loadManifests(t)
	ws := workloads(objs)
	if len(ws) == 0 {
		t.Fatal("no Deployment or StatefulSet")
	}
	checked := map[string]bool{}
	var variants []string
	for _, w := range ws {
		t.Run(w.kind+"/"+w.name, func(t *testing.T) {
			sc := sidecarOf(t, w)
			cfg := sidecarConfig(t, objs, w, sc, checked)
			variants = append(variants, cfg.Spool.Backend)
			port := probePort(t, w.where, cfg)
			checkProbes(t, w, sc, port)
			checkSecurity(t, w, sc)
			checkSpool(t, w, sc, cfg)
			checkApp(t, w, cfg)

			// The kubelet's SIGKILL must not cut the drain short.
			tg := w.pod.Spec.TerminationGracePeriodSeconds
			need := cfg.ShutdownDelay.D() + cfg.ShutdownGrace.D() + 5*time.Second
			if tg == nil {
				t.Errorf("%s: no terminationGracePeriodSeconds: want at least shutdown_delay + shutdown_grace + 5s = %v", w.where, need)
			} else if time.Duration(*tg)*time.Second < need {
				t.Errorf("%s: terminationGracePeriodSeconds %d: want at least shutdown_delay + shutdown_grace + 5s = %v", w.where, *tg, need)
			}
		})
	}
	for _, o := range objs {
		if cm, ok := o.obj.(*corev1.ConfigMap); ok && !checked[o.dir+"/"+cm.Name] {
			t.Errorf("%s: ConfigMap %q is mounted by no sidecar, so its configuration was not checked", o.where, cm.Name)
		}
	}
	for _, b := range []string{"file", "jetstream"} {
		if !slices.Contains(variants, b) {
			t.Errorf("no example runs the %s spool backend", b)
		}
	}
}

func TestManifestsServices(t *testing.T) {
	objs := loadManifests(t)
	ws := workloads(objs)
	for _, o := range objs {
		s, ok := o.obj.(*corev1.Service)
		if !ok {
			continue
		}
		var matched bool
		for _, w := range ws {
			if w.dir != o.dir || !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(w.pod.Labels)) || len(s.Spec.Selector) == 0 {
				continue
			}
			matched = true
			for _, p := range s.Spec.Ports {
				var found bool
				for _, c := range w.pod.Spec.Containers {
					n, ok := portNumber(&c, p.TargetPort)
					found = found || ok && n > 0
				}
				if !found {
					t.Errorf("%s: Service %s port %s: target port %s is no port of %s's app containers", o.where, s.Name, p.Name, p.TargetPort.String(), w.name)
				}
			}
		}
		if !matched {
			t.Errorf("%s: Service %s selects no pod of %s", o.where, s.Name, o.dir)
		}
	}
	for _, o := range objs {
		ss, ok := o.obj.(*appsv1.StatefulSet)
		if !ok || ss.Spec.ServiceName == "" {
			continue
		}
		if s, ok := find[*corev1.Service](objs, o.dir, ss.Spec.ServiceName); !ok || s.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("%s: serviceName %q: want a headless Service (clusterIP: None) of that name", o.where, ss.Spec.ServiceName)
		}
	}
}

func TestPodMonitor(t *testing.T) {
	objs := loadManifests(t)
	ws := workloads(objs)
	var n int
	for _, o := range objs {
		pm, ok := o.obj.(*podMonitor)
		if !ok {
			continue
		}
		n++
		sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Fatalf("%s: selector %v: %v", o.where, pm.Spec.Selector, err)
		}
		if len(pm.Spec.PodMetricsEndpoints) == 0 {
			t.Fatalf("%s: no podMetricsEndpoints", o.where)
		}
		for _, w := range ws {
			if !sel.Matches(labels.Set(w.pod.Labels)) {
				t.Errorf("%s: selector %v does not select %s %s", o.where, pm.Spec.Selector, w.kind, w.name)
				continue
			}
			sc := sidecarOf(t, w)
			cfg := sidecarConfig(t, objs, w, sc, map[string]bool{})
			want := probePort(t, w.where, cfg)
			for _, ep := range pm.Spec.PodMetricsEndpoints {
				// The operator takes port as a container port's name.
				if got, ok := portNumber(sc, intstr.FromString(ep.Port)); !ok || got != want {
					t.Errorf("%s: port %q is %d in %s %s, want the probe listener's %d", o.where, ep.Port, got, w.kind, w.name, want)
				}
				if ep.Path != "/metrics" {
					t.Errorf("%s: path %q, want /metrics", o.where, ep.Path)
				}
				if ep.Interval != "" {
					if _, err := time.ParseDuration(ep.Interval); err != nil {
						t.Errorf("%s: interval %q: %v", o.where, ep.Interval, err)
					}
				}
			}
		}
	}
	if n == 0 {
		t.Error("no PodMonitor under examples/kubernetes")
	}
}
