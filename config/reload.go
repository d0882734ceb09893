package config

import (
	"reflect"
	"strings"
)

// RestartNeeded returns the keys that differ between cur, the running
// configuration, and next, and that a reload cannot apply: the admin keys
// (the admin and probe listeners and the token are set up at start),
// every spool key while the spool is open (spoolOpen: its store was
// opened with them), and the telemetry keys but access_log (the tracer
// and the meter are built at start). See docs/operations.md, "Reload".
// The keys come in a stable order, as key paths ("spool.jetstream.url").
func RestartNeeded(cur, next *Config, spoolOpen bool) []string {
	var keys []string
	keys = diffKeys(keys, "admin", reflect.ValueOf(cur.Admin), reflect.ValueOf(next.Admin))
	if spoolOpen {
		keys = diffKeys(keys, "spool", reflect.ValueOf(cur.Spool), reflect.ValueOf(next.Spool))
	}
	ct, nt := cur.Telemetry, next.Telemetry
	ct.AccessLog, nt.AccessLog = false, false
	keys = diffKeys(keys, "telemetry", reflect.ValueOf(ct), reflect.ValueOf(nt))
	return keys
}

// diffKeys appends the key paths, under prefix, of the fields of structs a
// and b that differ, descending into nested structs.
func diffKeys(keys []string, prefix string, a, b reflect.Value) []string {
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := prefix + "." + name
		fa, fb := a.Field(i), b.Field(i)
		if f.Type.Kind() == reflect.Struct {
			keys = diffKeys(keys, key, fa, fb)
			continue
		}
		if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			keys = append(keys, key)
		}
	}
	return keys
}
