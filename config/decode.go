package config

import (
	"context"
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
	ctx    context.Context // checked every checkEvery nodes: Parse's time bound
	file   string
	env    envPaths
	lookup func(string) (string, bool)
	errs   Errors
	pos    map[string]Pos
	nodes  int        // nodes visited so far, an aliased or merged node once per visit
	bytes  int        // bytes of key paths and values visited so far, likewise
	depth  int        // nesting of the node being decoded, merge keys included
	stop   bool       // a bound was hit: decode nothing more
	late   *yaml.Node // where decoding stopped because ctx ended
}

// Bounds on the work of decoding. The YAML tree itself is bounded by
// MaxFileSize, but an alias or a merge key visits its node again at every
// use, so a few hundred bytes can ask for billions of visits. The bounds
// count every visit: mapping keys, merge keys and the mappings they merge
// too. examples/full.yaml takes about one node per 11 bytes and 2 bytes of
// key paths and values per byte, so a 4 MiB file written like it stays
// under 400,000 nodes and 10 MiB: the bounds leave room for that and for
// aliases on top, while the worst a file can ask for within them (routes
// aliased until a million nodes) decodes in under a second and 200 MiB.
const (
	maxNodes   = 1_000_000
	maxBytes   = 64 << 20
	maxDepth   = 64
	maxErrors  = 100     // reported for one file; see also Parse
	checkEvery = 1 << 10 // nodes between two looks at the time bound
)

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	switch {
	case len(d.errs) > maxErrors:
		return
	case len(d.errs) == maxErrors:
		// An alias repeats its node's errors at every use: stop there.
		d.errs = append(d.errs, &Error{File: d.file, Line: n.Line, Col: n.Column, Msg: fmt.Sprintf("too many errors (limit %d); stopped here", maxErrors)})
		d.stop = true
		return
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: n.Line, Col: n.Column, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// visit counts a visit of n, at path, and reports whether decoding may go
// on. Past a bound it records one error and stops all decoding.
func (d *decoder) visit(n *yaml.Node, path string) bool {
	if d.stop {
		return false
	}
	d.nodes++
	d.bytes += len(path) + len(n.Value)
	switch {
	case d.nodes > maxNodes:
		d.errorf(n, path, "too many YAML nodes after expanding aliases and merge keys (limit %d)", maxNodes)
	case d.bytes > maxBytes:
		d.errorf(n, path, "too much YAML after expanding aliases and merge keys (limit %d MiB of keys and values)", maxBytes>>20)
	case d.depth >= maxDepth:
		d.errorf(n, path, "nested too deeply, counting aliases and merge keys (limit %d levels)", maxDepth)
	case d.nodes%checkEvery == 0 && d.ctx.Err() != nil:
		d.late = n
	default:
		return true
	}
	d.stop = true
	return false
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
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
	n = resolve(n)
	if !d.visit(n, path) {
		return
	}
	d.depth++
	defer func() { d.depth-- }()
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = resolve(n.Content[0])
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
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(newValue(v.Type().Elem()))
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path, map[string]bool{})
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

// decodeStruct decodes the mapping n into the struct v, skipping the keys
// in set, which a mapping that takes precedence has set already, and adds
// the keys it sets to set. A YAML merge key is shallow: a key written in
// the mapping beats the same key in the mappings it merges, and a mapping
// earlier in a merge list beats a later one.
func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string, set map[string]bool) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "want a mapping, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	seen := map[string]bool{}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content) && !d.stop; i += 2 {
		k, val := resolve(n.Content[i]), n.Content[i+1]
		if !d.visit(k, "") {
			return
		}
		if k.Value == "<<" && k.Tag == "!!merge" {
			merges = append(merges, val)
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
		if !set[k.Value] {
			d.decode(val, v.Field(idx), key)
		}
	}
	for k := range seen {
		set[k] = true
	}
	for _, m := range merges {
		d.decodeMerge(m, v, path, set)
	}
}

// decodeMerge applies the value of a YAML merge key ("<<: *defaults" or
// "<<: [*a, *b]") to a struct.
func (d *decoder) decodeMerge(n *yaml.Node, v reflect.Value, path string, set map[string]bool) {
	n = resolve(n)
	if !d.visit(n, path) {
		return
	}
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	d.depth++
	defer func() { d.depth-- }()
	for _, m := range items {
		if m = resolve(m); m != n && !d.visit(m, path) {
			return
		}
		d.decodeStruct(m, v, path, set)
	}
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
	for i := 0; i+1 < len(n.Content) && !d.stop; i += 2 {
		k, val := resolve(n.Content[i]), n.Content[i+1]
		if !d.visit(k, "") {
			return
		}
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
		if d.stop {
			return
		}
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
	d.bytes += max(0, len(s)-len(n.Value))
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
// "$$" stands for a literal "$". A value longer than MaxFileSize once
// expanded is an error too.
func expandEnv(s string, lookup func(string) (string, bool)) (string, []string, error) {
	if !strings.Contains(s, "$") {
		return s, nil, nil
	}
	var vars []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if b.Len() > MaxFileSize {
			break
		}
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
	if b.Len() > MaxFileSize {
		return "", nil, fmt.Errorf("longer than %d bytes after expanding environment variables", MaxFileSize)
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
