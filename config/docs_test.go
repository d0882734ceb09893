package config

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// keyPaths returns the key path of every configuration key under t, as
// "listeners[].routes[].match.path_prefix", with the key's own name.
func keyPaths(t reflect.Type, prefix string, out map[string]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		switch t.Kind() {
		case reflect.Slice:
			prefix += "[]"
		case reflect.Map:
			prefix += ".*"
		}
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == reflect.TypeFor[Duration]() || t == reflect.TypeFor[Size]() {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		p := name
		if prefix != "" {
			p = prefix + "." + name
		}
		out[p] = name
		keyPaths(f.Type, p, out)
	}
}

// Every key of the configuration is documented in docs/configuration.md,
// in a table row of its own.
func TestEveryKeyDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	keyPaths(reflect.TypeFor[Config](), "", keys)
	for path, name := range keys {
		// Rows name a key alone ("| `dir` |") or with its parents
		// ("| `retry.backoff.base` |").
		found := false
		for _, line := range strings.Split(string(doc), "\n") {
			if !strings.HasPrefix(line, "| `") {
				continue
			}
			first, _, _ := strings.Cut(line[2:], " |")
			for i, cell := range strings.Split(first, "`") {
				if i%2 == 1 && (cell == name || strings.HasSuffix(cell, "."+name) || strings.HasPrefix(cell, name+".")) {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("%s: the key %q has no row in docs/configuration.md", path, name)
		}
	}
}

// examples/full.yaml sets every key, as its header says.
func TestFullExampleSetsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../examples/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, prefix)
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, prefix+"[]")
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				have[p] = true
				// Map keys (upstream and policy names, match headers) count
				// as "*".
				if prefix == "upstreams" || prefix == "policies" || strings.HasSuffix(prefix, ".headers") {
					p = prefix + ".*"
					have[p] = true
				}
				walk(n.Content[i+1], p)
			}
		}
	}
	walk(&root, "")
	keys := map[string]string{}
	keyPaths(reflect.TypeFor[Config](), "", keys)
	for path := range keys {
		if !have[path] {
			t.Errorf("examples/full.yaml does not set %s", path)
		}
	}
}
