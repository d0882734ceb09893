package config

import (
	"encoding"
	"reflect"
	"strconv"
	"strings"
)

// Redacted is what /v1/config shows in place of a secret.
const Redacted = "[redacted]"

// Public returns v, a Config or a part of one, as plain maps and lists
// keyed by the YAML names, ready for JSON, with every secret replaced by
// Redacted: fields tagged secret:"true", the user information of URLs in
// fields tagged secret:"userinfo", every value of a headers map
// (match.headers: a header a route matches on may be a shared secret
// whatever its name), and, when v is a *Config, every value that came
// from ${NAME}. For a part of a Config, PublicAt redacts the latter too.
func Public(v any) any {
	c, _ := v.(*Config)
	return PublicAt(c, "", v)
}

// PublicAt is Public for v, the part of c at the key path path (such as
// "listeners[0].routes[1].match"; "" for c itself): the values under it
// that came from ${NAME} show as Redacted too. c may be nil.
func PublicAt(c *Config, path string, v any) any {
	var env envPaths
	if c != nil {
		env = c.env
	}
	return public(reflect.ValueOf(v), "", path, env)
}

// public returns the public form of v, found at key path path under the
// key key ("" in a list).
func public(v reflect.Value, key, path string, env envPaths) any {
	if len(env[path]) > 0 {
		return Redacted
	}
	if m, ok := v.Interface().(encoding.TextMarshaler); ok && v.Kind() != reflect.Pointer && v.Kind() != reflect.Struct {
		text, _ := m.MarshalText()
		return string(text)
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return public(v.Elem(), key, path, env)
	case reflect.Struct:
		out := map[string]any{}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			p := join(path, name)
			switch {
			case f.Tag.Get("secret") == "true" && v.Field(i).String() == "":
				out[name] = ""
			case f.Tag.Get("secret") == "true":
				out[name] = Redacted
			case f.Tag.Get("secret") == "userinfo" && len(env[p]) == 0:
				out[name] = redactUserinfo(v.Field(i).String())
			default:
				out[name] = public(v.Field(i), name, p, env)
			}
		}
		return out
	case reflect.Map:
		out := map[string]any{}
		for _, k := range v.MapKeys() {
			if key == "headers" {
				out[k.String()] = Redacted
				continue
			}
			out[k.String()] = public(v.MapIndex(k), "", join(path, k.String()), env)
		}
		return out
	case reflect.Slice:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = public(v.Index(i), "", path+"["+strconv.Itoa(i)+"]", env)
		}
		return out
	}
	return v.Interface()
}

// redactUserinfo replaces the user information (user, password or token)
// of every URL in the comma-separated list s with Redacted. The userinfo
// ends at the last "@" of a URL, even past a "/", "?" or "#" (a password
// may hold them; a NATS URL has no path), as the JetStream backend's own
// redaction does.
func redactUserinfo(s string) string {
	urls := strings.Split(s, ",")
	for i, u := range urls {
		scheme, rest, ok := strings.Cut(u, "://")
		if !ok {
			scheme, rest = "", u
		}
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			rest = Redacted + rest[at:]
		}
		if ok {
			urls[i] = scheme + "://" + rest
		} else {
			urls[i] = rest
		}
	}
	return strings.Join(urls, ",")
}
