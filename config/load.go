// Package config loads the sidecar's YAML configuration into plain structs
// and validates it. It reports every problem at once (up to 100), each as
// file:line:col: key.path: message. It starts nothing: besides the file
// itself it only opens the files the configuration names (TLS, NATS
// credentials and NKey files), to check they can be read, and it checks
// the condition lists (retry.on, circuit_breaker.failure_on,
// async.spool_on) with package policy's parser, which the proxy uses too.
// proxy.Build compiles a validated Config into the snapshot the proxy
// serves; cmd/sidecar opens the spool the Config describes.
//
// Keys are those documented in docs/configuration.md; unknown keys are
// errors. Durations are Go durations, sizes are bytes or take a binary
// unit (B, KiB, MiB, GiB, TiB), and ${NAME} in any value is replaced by
// the environment variable NAME ("$$" is a literal "$"). A value from
// ${NAME} is never shown: errors name the variable instead, and Public
// redacts it.
package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// MaxFileSize bounds the configuration file read by Load.
const MaxFileSize = 4 << 20

// LoadTimeout bounds the time Load and Parse take, as a backstop. The
// bounds on the nodes and bytes decoded keep decoding and checking any
// file to about a second, and parsing the densest file of MaxFileSize
// takes a few seconds on a slow, busy machine: only a file that cannot be
// read (a pipe nobody writes to) or a machine too loaded to run the
// sidecar anyway reaches it.
const LoadTimeout = 10 * time.Second

// errTimeout is the cause of the context that enforces LoadTimeout.
var errTimeout = errors.New("config: load timeout")

// Load reads, parses and validates the file at path, expanding ${NAME}
// from the process environment, within LoadTimeout.
func Load(path string) (*Config, error) {
	return LoadContext(context.Background(), path)
}

// LoadContext is Load, giving up when ctx ends. If LoadTimeout runs out
// first the error is an Errors; if ctx ends first it wraps ctx.Err().
// A read that cannot finish (a pipe nobody writes to) is left blocked
// and its goroutine ends with the read.
func LoadContext(ctx context.Context, path string) (*Config, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, LoadTimeout, errTimeout)
	defer cancel()
	data, err := wait(ctx, func() ([]byte, error) { return readFile(path) })
	if err != nil {
		if ctx.Err() != nil {
			return nil, stopError(ctx, path, 0, 0, "reading")
		}
		return nil, err
	}
	return parse(ctx, path, data, os.LookupEnv)
}

// readFile reads at most MaxFileSize+1 bytes of the file at path, so that
// /dev/zero is refused as too large rather than read forever.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxFileSize+1))
}

// wait returns f's results, or ctx's error as soon as ctx ends, leaving f
// to finish in its goroutine, holding nothing the caller needs. Only two
// kinds of work go through wait: parsing at most MaxFileSize, which ends
// within seconds, and reading the file, which ends when the file can be
// read (a pipe's writer shows up) or with the process.
func wait[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// stopError is the error for ctx ending while doing ("reading" or
// "checking") the file, at line:col if known: an Errors if LoadTimeout ran
// out, else ctx.Err(), wrapped.
func stopError(ctx context.Context, file string, line, col int, doing string) error {
	if context.Cause(ctx) != errTimeout {
		return fmt.Errorf("%s: %s the file: %w", file, doing, ctx.Err())
	}
	msg := fmt.Sprintf("%s the file took longer than %s (limit)", doing, LoadTimeout)
	if doing == "reading" {
		msg += "; is it a pipe nobody writes to?"
	}
	return Errors{{File: file, Line: line, Col: col, Msg: msg}}
}

// Parse parses and validates data read from file; lookup resolves ${NAME}
// references. The error, if any, is an Errors listing every problem.
// Parse gives up after LoadTimeout.
func Parse(file string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	return ParseContext(context.Background(), file, data, lookup)
}

// ParseContext is Parse, giving up when ctx ends: the error then wraps
// ctx.Err() (it is an Errors if LoadTimeout ran out first).
func ParseContext(ctx context.Context, file string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, LoadTimeout, errTimeout)
	defer cancel()
	return parse(ctx, file, data, lookup)
}

// parse is ParseContext within ctx, which carries the time bound.
func parse(ctx context.Context, file string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	if len(data) > MaxFileSize {
		return nil, Errors{{File: file, Msg: fmt.Sprintf("file is larger than %d bytes", MaxFileSize)}}
	}
	root, err := wait(ctx, func() (*yaml.Node, error) { return parseYAML(file, data) })
	if err != nil {
		if ctx.Err() != nil {
			return nil, stopError(ctx, file, 0, 0, "checking")
		}
		return nil, err
	}
	d := &decoder{ctx: ctx, file: file, lookup: lookup, pos: map[string]Pos{}, env: envPaths{}}
	cfg := &Config{}
	cfg.setDefaults()
	d.decode(root, reflect.ValueOf(cfg).Elem(), "")
	if d.late != nil {
		return nil, stopError(ctx, file, d.late.Line, d.late.Column, "checking")
	}
	if d.stop {
		// Past a bound the Config is partial: checking it would only add
		// errors that are not in the file.
		d.errs.sort()
		return nil, d.errs
	}
	for name, p := range cfg.Policies {
		if p.PerTryTimeout == perTryUnset {
			// per_try_timeout follows timeout, from ${NAME} too.
			d.env.copy("policies."+name+".timeout", "policies."+name+".per_try_timeout")
		}
		p.finish()
	}
	v := &validator{ctx: ctx, file: file, pos: d.pos, env: d.env, errs: d.errs}
	v.config(cfg)
	if ctx.Err() != nil {
		return nil, stopError(ctx, file, 0, 0, "checking")
	}
	if len(v.errs) > 0 {
		v.errs.sort()
		if v.dropped > 0 {
			v.errs = append(v.errs, &Error{File: file, Msg: fmt.Sprintf("%d more errors not shown (limit %d)", v.dropped, maxErrors)})
		}
		return nil, v.errs
	}
	cfg.env = d.env
	return cfg, nil
}

// parseYAML parses data into a yaml.Node tree, without expanding aliases:
// yaml.v3 checks the ratio of aliases to nodes only when it decodes into
// Go values, so the decoder bounds their expansion itself.
func parseYAML(file string, data []byte) (*yaml.Node, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errors{{File: file, Msg: "file is empty"}}
		}
		return nil, Errors{syntaxError(file, data, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Errors{{File: file, Line: extra.Line, Col: extra.Column, Msg: "more than one YAML document"}}
	}
	return &root, nil
}

// syntaxError turns yaml.v3's "yaml: line N: msg" into an *Error at the
// line of the construct that failed, with the column of its first
// character and, where the lines before it tell, the key path it is
// under.
//
// yaml.v3 numbers the lines of its parser's errors from 0 and those of
// its scanner's from 1 (see parserProblems): the parser's are moved one
// line down.
func syntaxError(file string, data []byte, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n != 1 {
		return &Error{File: file, Msg: msg}
	}
	_, msg, _ = strings.Cut(msg, ": ")
	if parserProblems[msg] {
		line++
	}
	e := &Error{File: file, Line: line, Msg: msg}
	lines := strings.SplitAfter(string(data), "\n")
	if line <= len(lines) {
		text := strings.TrimRight(lines[line-1], "\r\n")
		if trimmed := strings.TrimLeft(text, " "); trimmed != "" {
			e.Col = len(text) - len(trimmed) + 1
		}
		e.Path = keyPathAt(lines[:line-1], text)
	}
	return e
}

// parserProblems are the messages of yaml.v3's parser, as opposed to its
// scanner: their line numbers count from 0.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// keyPathAt guesses the key path of line, the text of a line that does
// not parse, from before, the lines above it: it parses them and walks
// down the last entry of each block collection that encloses line's
// indentation, then adds line's own key if it starts with one. It returns
// "" when the lines above do not parse either.
func keyPathAt(before []string, line string) string {
	var doc yaml.Node
	if yaml.Unmarshal([]byte(strings.Join(before, "")), &doc) != nil || len(doc.Content) == 0 {
		return ""
	}
	col := len(line) - len(strings.TrimLeft(line, " ")) + 1
	item := strings.HasPrefix(strings.TrimLeft(line, " "), "- ")
	path := ""
	n := doc.Content[0]
	for {
		last := len(n.Content) - 1
		if last < 0 || n.Style&yaml.FlowStyle != 0 {
			break
		}
		if n.Kind == yaml.MappingNode {
			k, v := n.Content[last-1], n.Content[last]
			if item && k.Column == col && v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				// "key:" then "- item" at the key's own column: the
				// first item of key's sequence.
				return join(path, k.Value) + "[0]"
			}
			if k.Column >= col {
				break // line is a key of this mapping
			}
			path = join(path, k.Value)
			n = n.Content[last]
			continue
		}
		if n.Kind == yaml.SequenceNode {
			// An item's node starts after its "- ": line is inside the
			// last item when it is indented past the dash.
			if item && n.Content[last].Column-2 >= col {
				path += "[" + strconv.Itoa(last+1) + "]" // line starts the next item
				return path
			}
			if n.Content[last].Column > col {
				break
			}
			path += "[" + strconv.Itoa(last) + "]"
			n = n.Content[last]
			continue
		}
		break
	}
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return path // line continues a scalar value
	}
	key, _, ok := strings.Cut(strings.TrimPrefix(strings.TrimLeft(line, " "), "- "), ":")
	if ok && key != "" && !strings.ContainsAny(key, " \t{}[],'\"#&*!|>%@`") {
		path = join(path, key)
	}
	return path
}
