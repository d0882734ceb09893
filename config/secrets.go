package config

import (
	"fmt"
	"strconv"
	"strings"
)

// Values that came from ${NAME} are never printed: an error names the
// variables instead of the value (showValue), and Public shows Redacted.
// config cannot tell which variables hold secrets (a password, a token,
// a URL with user information), so it treats every one as secret.

// envPaths maps the key path of every scalar that came, in whole or in
// part, from ${NAME} expansion to the names of its variables.
type envPaths map[string][]string

// copy records that the value at path to came from where the value at
// from did (a default taken from another key).
func (e envPaths) copy(from, to string) {
	if vars := e[from]; len(vars) > 0 {
		e[to] = vars
	}
}

// hiddenValue is what an error says in place of a value from vars.
func hiddenValue(vars []string) string {
	names := make([]string, len(vars))
	for i, v := range vars {
		names[i] = "${" + v + "}"
	}
	return "(value from " + strings.Join(names, ", ") + " not shown)"
}

// showValue returns s quoted for an error message or, when it came from
// the variables vars, hiddenValue(vars).
func showValue(s string, vars []string) string {
	if len(vars) > 0 {
		return hiddenValue(vars)
	}
	return strconv.Quote(s)
}

// valueError is a problem with a scalar value whose message names the
// value in place of the %s of format, so the decoder can hide a value
// from the environment.
type valueError struct {
	format, value string
}

// Error shows the value quoted.
func (e *valueError) Error() string { return e.show(strconv.Quote(e.value)) }

// show formats the message with shown in place of the value.
func (e *valueError) show(shown string) string { return fmt.Sprintf(e.format, shown) }

// q returns s, the value at path, quoted for an error message, or, when
// it came from the environment, the names of its variables only.
func (v *validator) q(path, s string) string { return showValue(s, v.env[path]) }

// val is q for a value of another type, formatted with %v (numbers,
// durations).
func (v *validator) val(path string, x any) string {
	if vars := v.env[path]; len(vars) > 0 {
		return hiddenValue(vars)
	}
	return fmt.Sprint(x)
}

// url is q for a URL or a comma-separated list of them: the user
// information of a value from the file is redacted, as in Public.
func (v *validator) url(path, s string) string {
	return showValue(redactUserinfo(s), v.env[path])
}

// fromEnv reports whether the value at path came from the environment.
func (v *validator) fromEnv(path string) bool { return len(v.env[path]) > 0 }
