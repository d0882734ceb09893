package config

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// Pos is a position in the source file, 1-based.
type Pos struct{ Line, Col int }

// decoder turns a yaml.Node tree into Go values by reflection, recording
// where every key path was written (pos) and which scalars came from
// ${NAME} (env), and collecting every error instead of stopping at the
// first.
type decoder struct {
	file   string
	env    envPaths
	lookup func(string) (string, bool)
	errs   Errors
	pos    map[string]Pos
	nodes  int // decoded so far, to stop alias bombs
	depth  int
}

// Bounds on the decoded tree: YAML aliases can expand a small file into a
// huge or endless one.
const (
	maxNodes = 100_000
	maxDepth = 64
)

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: n.Line, Col: n.Column, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// defaulter is implemented by config structs that have non-zero defaults.
// The decoder calls it on every struct value it creates, before decoding
// the file's keys over it.
type defaulter interface{ setDefaults() }

var (
	durationType = reflect.TypeFor[Duration]()
	sizeType     = reflect.TypeFor[Size]()
)

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.nodes++
	if d.nodes > maxNodes || d.depth > maxDepth {
		if d.nodes == maxNodes+1 || d.depth == maxDepth+1 {
			d.errorf(n, path, "document too large or too deeply nested (alias expansion?)")
		}
		d.depth = maxDepth + 2
		d.nodes = maxNodes + 2
		return
	}
	d.depth++
	defer func() { d.depth-- }()
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	if path != "" {
		d.pos[path] = Pos{n.Line, n.Column}
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		if v.Kind() == reflect.Pointer && v.IsNil() && v.Type().Elem().Kind() == reflect.Struct {
			// "retry:" with nothing after it is a present, empty block.
			v.Set(newValue(v.Type().Elem()))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(newValue(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	default:
		d.decodeScalar(n, v, path)
	}
}

// newValue returns a pointer to a new T with its defaults set.
func newValue(t reflect.Type) reflect.Value {
	p := reflect.New(t)
	if df, ok := p.Interface().(defaulter); ok {
		df.setDefaults()
	}
	return p
}

type fieldIndex map[string]int

var fieldCache sync.Map // reflect.Type -> fieldIndex

func fieldsOf(t reflect.Type) fieldIndex {
	if fi, ok := fieldCache.Load(t); ok {
		return fi.(fieldIndex)
	}
	fi := fieldIndex{}
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name != "" && name != "-" {
			fi[name] = i
		}
	}
	fieldCache.Store(t, fi)
	return fi
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "want a mapping, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Value == "<<" && k.Tag == "!!merge" {
			d.decodeMerge(val, v, path)
			continue
		}
		key := join(path, k.Value)
		if seen[k.Value] {
			d.errorf(k, key, "duplicate key")
			continue
		}
		seen[k.Value] = true
		idx, ok := fields[k.Value]
		if !ok {
			d.errorf(k, key, "unknown key%s", suggest(k.Value, fields))
			continue
		}
		d.decode(val, v.Field(idx), key)
	}
}

// decodeMerge applies a YAML merge key ("<<: *defaults") to a struct.
func (d *decoder) decodeMerge(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.SequenceNode {
		for _, m := range n.Content {
			d.decodeMerge(m, v, path)
		}
		return
	}
	d.decodeStruct(n, v, path)
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "want a mapping, got %s", describe(n))
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	et := v.Type().Elem()
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := join(path, k.Value)
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "want a string key, got %s", describe(k))
			continue
		}
		if v.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
			d.errorf(k, key, "duplicate key")
			continue
		}
		d.pos[key] = Pos{k.Line, k.Column}
		var ev reflect.Value
		if et.Kind() == reflect.Pointer {
			ev = reflect.New(et).Elem()
			ev.Set(newValue(et.Elem()))
		} else {
			ev = reflect.New(et).Elem()
		}
		d.decode(val, ev, key)
		d.pos[key] = Pos{k.Line, k.Column}
		v.SetMapIndex(reflect.ValueOf(k.Value), ev)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "want a list, got %s", describe(n))
		return
	}
	et := v.Type().Elem()
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		ev := s.Index(i)
		if et.Kind() == reflect.Pointer {
			ev.Set(newValue(et.Elem()))
		}
		d.decode(item, ev, path+"["+strconv.Itoa(i)+"]")
	}
	v.Set(s)
}

func (d *decoder) decodeScalar(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, path, "want a single value, got %s", describe(n))
		return
	}
	s, vars, err := expandEnv(n.Value, d.lookup)
	if err != nil {
		d.errorf(n, path, "%v", err)
		return
	}
	if len(vars) > 0 {
		d.env[path] = vars
	}
	// Errors name the value as shown: quoted, or, when it came from the
	// environment, only the variables it came from.
	shown := showValue(s, vars)
	switch {
	case v.Type() == durationType:
		dur, err := parseDuration(s)
		if err != nil {
			d.errorf(n, path, "%s", err.show(shown))
			return
		}
		v.SetInt(int64(dur))
		return
	case v.Type() == sizeType:
		sz, err := parseSize(s)
		if err != nil {
			d.errorf(n, path, "%s", err.show(shown))
			return
		}
		v.SetInt(int64(sz))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		switch s {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			d.errorf(n, path, "invalid boolean %s (want true or false)", shown)
		}
	case reflect.Int, reflect.Int64:
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v.OverflowInt(i) {
			d.errorf(n, path, "invalid integer %s", shown)
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.errorf(n, path, "invalid number %s", shown)
			return
		}
		v.SetFloat(f)
	default:
		d.errorf(n, path, "unsupported value") // unreachable for the schema's types
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

// expandEnv replaces ${NAME} with the environment variable NAME and
// returns the names it replaced, in order. An unset variable is an error;
// "$$" stands for a literal "$".
func expandEnv(s string, lookup func(string) (string, bool)) (string, []string, error) {
	if !strings.Contains(s, "$") {
		return s, nil, nil
	}
	var vars []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", nil, fmt.Errorf("unterminated ${ in %q", s)
			}
			name := s[i+2 : i+end]
			if !validEnvName(name) {
				return "", nil, fmt.Errorf("invalid environment variable name %q", name)
			}
			val, ok := lookup(name)
			if !ok {
				return "", nil, fmt.Errorf("environment variable %s is not set", name)
			}
			b.WriteString(val)
			if !slices.Contains(vars, name) {
				vars = append(vars, name)
			}
			i += end
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), vars, nil
}

func validEnvName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// suggest returns ` (did you mean "x"?)` for a key close to a known one.
func suggest(key string, fields fieldIndex) string {
	best, bestDist := "", 3
	for name := range fields {
		if dist := editDistance(key, name); dist < bestDist || dist == bestDist && name < best {
			best, bestDist = name, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
