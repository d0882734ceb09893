package jsstore

import (
	"encoding/hex"
	"strings"

	"github.com/sidecar-proxy/sidecar/spool"
)

const (
	statePending = "pending"
	stateDead    = "dead"
)

func stateToken(st spool.State) string {
	if st == spool.Dead {
		return stateDead
	}
	return statePending
}

// routeToken encodes a route name as a NATS subject token.
func routeToken(route string) string { return "r" + hex.EncodeToString([]byte(route)) }

func parseRouteToken(tok string) (string, bool) {
	if !strings.HasPrefix(tok, "r") {
		return "", false
	}
	b, err := hex.DecodeString(tok[1:])
	return string(b), err == nil
}

// idToken encodes a message ID as a NATS subject token: as is if it holds
// only letters, digits, '-' and '_', else "~" and its hex encoding.
func idToken(id string) string {
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "~" + hex.EncodeToString([]byte(id))
		}
	}
	return id
}

func parseIDToken(tok string) (string, bool) {
	if !strings.HasPrefix(tok, "~") {
		return tok, tok != ""
	}
	b, err := hex.DecodeString(tok[1:])
	return string(b), err == nil
}

// subject is a parsed message subject.
type subject struct {
	id    string
	state spool.State
	route string
}

// parseSubject parses "<STREAM>.<id>.<state>.<route>".
func parseSubject(stream, subj string) (subject, bool) {
	rest, ok := strings.CutPrefix(subj, stream+".")
	if !ok {
		return subject{}, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return subject{}, false
	}
	id, ok1 := parseIDToken(parts[0])
	route, ok2 := parseRouteToken(parts[2])
	var st spool.State
	switch parts[1] {
	case statePending:
	case stateDead:
		st = spool.Dead
	default:
		return subject{}, false
	}
	return subject{id: id, state: st, route: route}, ok1 && ok2
}
