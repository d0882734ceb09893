package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sidecar-proxy/sidecar/spool"
)

// List limits of GET /v1/spool/messages.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

// credentialHeaders are the request headers whose values GET
// /v1/spool/messages/{id} shows as "[redacted]" (canonical names).
var credentialHeaders = map[string]bool{
	"Authorization":       true,
	"Proxy-Authorization": true,
	"Cookie":              true,
	"X-Api-Key":           true,
	"X-Auth-Token":        true,
}

const redacted = "[redacted]"

// authorized wraps a mutating handler: with a token configured, the request
// needs "Authorization: Bearer <token>", compared in constant time.
func (s *Server) authorized(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.tokenGiven(r) {
			unauthorized(w)
			return
		}
		next(w, r)
	})
}

// tokenGiven reports whether r carries the admin token, or no token is
// configured. The token's hash is compared in constant time.
func (s *Server) tokenGiven(r *http.Request) bool {
	if !s.hasToken {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) == 1 && ok
}

func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="sidecar admin"`)
	writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "this call needs Authorization: Bearer <token> with the admin token"})
}

// store returns the spool, or answers 404 and returns nil when there is none.
func (s *Server) store(w http.ResponseWriter) spool.Store {
	st := s.spoolStore()
	if st == nil {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "no spool: no route is async"})
	}
	return st
}

// writeStoreError answers a store error with its status: 404 unknown or
// settled ID, 409 wrong state, 503 store closed or failed, 500 otherwise.
func writeStoreError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, spool.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, spool.ErrState):
		status = http.StatusConflict
	case errors.Is(err, spool.ErrClosed), errors.Is(err, spool.ErrFailed):
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{"error": err.Error()})
}

func parseState(v, def string) (spool.State, bool) {
	switch v {
	case "":
		return parseState(def, "")
	case "pending":
		return spool.Pending, true
	case "dead":
		return spool.Dead, true
	}
	return 0, false
}

// MessageInfo is a spooled message's metadata as the admin API shows it
// in JSON; the CLI decodes the same type.
type MessageInfo struct {
	ID          string `json:"id"`
	Route       string `json:"route"`
	State       string `json:"state"`
	Size        int64  `json:"size"`
	Arrived     string `json:"arrived"`
	Attempts    int    `json:"attempts"`
	NextAttempt string `json:"next_attempt,omitempty"`
	Leased      bool   `json:"leased"`
	DeadReason  string `json:"dead_reason,omitempty"`
}

func newInfoView(in spool.Info) MessageInfo {
	v := MessageInfo{
		ID:         in.ID,
		Route:      in.Route,
		State:      in.State.String(),
		Size:       in.Size,
		Attempts:   in.Attempts,
		Leased:     in.Leased,
		DeadReason: in.DeadReason,
	}
	if !in.Arrived.IsZero() {
		v.Arrived = in.Arrived.UTC().Format(time.RFC3339Nano)
	}
	if !in.NextAttempt.IsZero() {
		v.NextAttempt = in.NextAttempt.UTC().Format(time.RFC3339Nano)
	}
	return v
}

// spoolList serves GET /v1/spool/messages?route=&state=&after=&limit=.
func (s *Server) spoolList(w http.ResponseWriter, r *http.Request) {
	st := s.store(w)
	if st == nil {
		return
	}
	q := r.URL.Query()
	state, ok := parseState(q.Get("state"), "pending")
	if !ok {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "state must be pending or dead"})
		return
	}
	limit := defaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": "limit must be a positive integer"})
			return
		}
		limit = min(n, maxListLimit)
	}
	infos, err := st.List(q.Get("route"), state, q.Get("after"), limit)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	msgs := make([]MessageInfo, 0, len(infos))
	for _, in := range infos {
		msgs = append(msgs, newInfoView(in))
	}
	out := map[string]any{"messages": msgs}
	if len(infos) == limit {
		out["next_after"] = infos[len(infos)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

// messageView is a stored request as JSON. Body is the body itself when it
// is valid UTF-8 (body_encoding "text"), else its standard base64
// (body_encoding "base64"); body_size is its length in bytes.
type messageView struct {
	Method         string              `json:"method"`
	Target         string              `json:"target"`
	Headers        map[string][]string `json:"headers"`
	IdempotencyKey string              `json:"idempotency_key,omitempty"`
	TraceParent    string              `json:"traceparent,omitempty"`
	Body           string              `json:"body"`
	BodyEncoding   string              `json:"body_encoding"`
	BodySize       int                 `json:"body_size"`
}

func newMessageView(m *spool.Message) messageView {
	v := messageView{
		Method:         m.Method,
		Target:         m.Target,
		Headers:        make(map[string][]string, len(m.Header)),
		IdempotencyKey: m.IdempotencyKey,
		TraceParent:    m.TraceParent,
		BodySize:       len(m.Body),
	}
	for k, vals := range m.Header {
		if credentialHeaders[http.CanonicalHeaderKey(k)] {
			red := make([]string, len(vals))
			for i := range red {
				red[i] = redacted
			}
			vals = red
		}
		v.Headers[k] = vals
	}
	if utf8.Valid(m.Body) {
		v.Body, v.BodyEncoding = string(m.Body), "text"
	} else {
		v.Body, v.BodyEncoding = base64.StdEncoding.EncodeToString(m.Body), "base64"
	}
	return v
}

// spoolShow serves GET /v1/spool/messages/{id}.
func (s *Server) spoolShow(w http.ResponseWriter, r *http.Request) {
	st := s.store(w)
	if st == nil {
		return
	}
	// With a token configured, the message's headers and body need it:
	// they are the app's data. Its metadata does not. A wrong token is
	// refused rather than ignored.
	full := s.tokenGiven(r)
	if !full && r.Header.Get("Authorization") != "" {
		unauthorized(w)
		return
	}
	m, in, err := st.Get(r.PathValue("id"))
	if err != nil {
		writeStoreError(w, err)
		return
	}
	if !full {
		writeJSON(w, http.StatusOK, struct {
			MessageInfo
			Message messageMetaView `json:"message"`
		}{newInfoView(in), messageMetaView{
			Method:         m.Method,
			Target:         targetWithoutQuery(m.Target),
			IdempotencyKey: m.IdempotencyKey,
			TraceParent:    m.TraceParent,
			BodySize:       len(m.Body),
			Hidden:         "the query, headers and body need Authorization: Bearer <token> with the admin token",
		}})
		return
	}
	writeJSON(w, http.StatusOK, struct {
		MessageInfo
		Message messageView `json:"message"`
	}{newInfoView(in), newMessageView(m)})
}

// targetWithoutQuery is a stored request's target with its query, which
// may carry credentials (?token=...) as the headers do, replaced by
// [redacted] (docs/operations.md, "Admin API").
func targetWithoutQuery(target string) string {
	if path, _, ok := strings.Cut(target, "?"); ok {
		return path + "?" + redacted
	}
	return target
}

// messageMetaView is a stored request without its headers and body, for
// a caller without the admin token when one is configured; hidden says
// why they are missing.
type messageMetaView struct {
	Method         string `json:"method"`
	Target         string `json:"target"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	TraceParent    string `json:"traceparent,omitempty"`
	BodySize       int    `json:"body_size"`
	Hidden         string `json:"hidden"`
}

// spoolReplay serves POST /v1/spool/messages/{id}/replay: dead to pending.
func (s *Server) spoolReplay(w http.ResponseWriter, r *http.Request) {
	st := s.store(w)
	if st == nil {
		return
	}
	id := r.PathValue("id")
	if err := st.Replay(id); err != nil {
		writeStoreError(w, err)
		return
	}
	s.log.Info("spool message replayed through the admin API", "id", id)
	writeJSON(w, http.StatusOK, map[string]any{"replayed": id})
}

// spoolDelete serves DELETE /v1/spool/messages/{id}.
func (s *Server) spoolDelete(w http.ResponseWriter, r *http.Request) {
	st := s.store(w)
	if st == nil {
		return
	}
	id := r.PathValue("id")
	if err := st.Delete(id); err != nil {
		writeStoreError(w, err)
		return
	}
	s.log.Info("spool message deleted through the admin API", "id", id)
	writeJSON(w, http.StatusOK, map[string]any{"deleted": id})
}

// spoolPurge serves POST /v1/spool/purge?route=&state=: state is required.
func (s *Server) spoolPurge(w http.ResponseWriter, r *http.Request) {
	st := s.store(w)
	if st == nil {
		return
	}
	q := r.URL.Query()
	state, ok := parseState(q.Get("state"), "-")
	if !ok {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "state must be pending or dead"})
		return
	}
	route := q.Get("route")
	n, err := st.Purge(route, state)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	s.log.Info("spool purged through the admin API", "route", route, "state", state.String(), "purged", n)
	writeJSON(w, http.StatusOK, map[string]any{"purged": n, "route": route, "state": state.String()})
}
