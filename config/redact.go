package config

import (
	"encoding"
	"net/http"
	"reflect"
	"strings"
)

// Redacted is what /v1/config shows in place of a secret.
const Redacted = "[redacted]"

// Public returns v, a Config or a part of one, as plain maps and lists
// keyed by the YAML names, ready for JSON, with every secret replaced by
// Redacted: fields tagged secret:"true", the user information of URLs in
// fields tagged secret:"userinfo", and the values of credential headers in
// a headers map (match.headers).
func Public(v any) any { return public(reflect.ValueOf(v), "") }

func public(v reflect.Value, key string) any {
	if m, ok := v.Interface().(encoding.TextMarshaler); ok && v.Kind() != reflect.Pointer && v.Kind() != reflect.Struct {
		text, _ := m.MarshalText()
		return string(text)
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return public(v.Elem(), key)
	case reflect.Struct:
		out := map[string]any{}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			if f.Tag.Get("secret") == "userinfo" {
				out[name] = redactUserinfo(v.Field(i).String())
				continue
			}
			if f.Tag.Get("secret") == "true" {
				if v.Field(i).String() != "" {
					out[name] = Redacted
				} else {
					out[name] = ""
				}
				continue
			}
			out[name] = public(v.Field(i), name)
		}
		return out
	case reflect.Map:
		out := map[string]any{}
		for _, k := range v.MapKeys() {
			if key == "headers" && isCredentialHeader(k.String()) {
				out[k.String()] = Redacted
				continue
			}
			out[k.String()] = public(v.MapIndex(k), "")
		}
		return out
	case reflect.Slice:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = public(v.Index(i), "")
		}
		return out
	}
	return v.Interface()
}

// redactUserinfo replaces the user information (user, password or token)
// of every URL in the comma-separated list s with Redacted.
func redactUserinfo(s string) string {
	urls := strings.Split(s, ",")
	for i, u := range urls {
		scheme, rest, ok := strings.Cut(u, "://")
		if !ok {
			scheme, rest = "", u
		}
		host := rest
		if end := strings.IndexAny(rest, "/?#"); end >= 0 {
			host = rest[:end]
		}
		if at := strings.LastIndex(host, "@"); at >= 0 {
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

func isCredentialHeader(name string) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key", "X-Auth-Token":
		return true
	}
	return false
}
