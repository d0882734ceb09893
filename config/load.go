// Package config loads the sidecar's YAML configuration into plain structs
// and validates it. It reports every problem at once, each as
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
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxFileSize bounds the configuration file read by Load.
const MaxFileSize = 4 << 20

// Load reads, parses and validates the file at path, expanding ${NAME}
// from the process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse parses and validates data read from file; lookup resolves ${NAME}
// references. The error, if any, is an Errors listing every problem.
func Parse(file string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	if len(data) > MaxFileSize {
		return nil, Errors{{File: file, Msg: fmt.Sprintf("file is larger than %d bytes", MaxFileSize)}}
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errors{{File: file, Msg: "file is empty"}}
		}
		return nil, Errors{syntaxError(file, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Errors{{File: file, Line: extra.Line, Col: extra.Column, Msg: "more than one YAML document"}}
	}
	d := &decoder{file: file, lookup: lookup, pos: map[string]Pos{}, env: envPaths{}}
	cfg := &Config{}
	cfg.setDefaults()
	d.decode(&root, reflect.ValueOf(cfg).Elem(), "")
	for name, p := range cfg.Policies {
		if p.PerTryTimeout == perTryUnset {
			// per_try_timeout follows timeout, from ${NAME} too.
			d.env.copy("policies."+name+".timeout", "policies."+name+".per_try_timeout")
		}
		p.finish()
	}
	v := &validator{file: file, pos: d.pos, env: d.env, errs: d.errs}
	v.config(cfg)
	if len(v.errs) > 0 {
		v.errs.sort()
		return nil, v.errs
	}
	cfg.env = d.env
	return cfg, nil
}

// syntaxError turns yaml.v3's "yaml: line N: msg" into an *Error at line N.
func syntaxError(file string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		_, msg, _ = strings.Cut(msg, ": ")
		return &Error{File: file, Line: line, Col: 1, Msg: msg}
	}
	return &Error{File: file, Msg: msg}
}
