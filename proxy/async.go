package proxy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/sidecar-proxy/sidecar/config"
	"github.com/sidecar-proxy/sidecar/policy"
	"github.com/sidecar-proxy/sidecar/spool"
)

// HeaderSpoolID is on a 202 answer of an async route: the spooled
// message's ID.
const HeaderSpoolID = "Sidecar-Spool-Id"

// spoolFullRetryAfter is the Retry-After of a spool_full or spool_error
// answer.
const spoolFullRetryAfter = 5 * time.Second

// asyncPolicy is a route's compiled async block.
type asyncPolicy struct {
	always      bool // when: always; else upstream_down
	spoolOn     policy.Conditions
	idemHeader  string // canonical
	fifo        bool
	maxInFlight int // deliveries at once with ordering none; at least 1
	backoff     policy.Backoff
	maxAttempts int           // 0: no limit
	maxAge      time.Duration // 0: no limit
	maxBody     int64
	// dedupe is set with a dedupe_window: a request with the app's own
	// key is appended with spool.Deduper.AppendOnce (the store keeps the
	// window, from async.dedupe_window).
	dedupe bool
	// rate paces the deliveries; nil: not paced.
	rate *deliveryRate
}

// deliveryRate is async.rate: at most perSecond delivery attempts a
// second, burst at once.
type deliveryRate struct {
	perSecond float64
	burst     int
}

func compileAsync(a *config.Async) *asyncPolicy {
	if a == nil {
		return nil
	}
	on, _ := policy.ParseConditions(a.SpoolOn) // validated by config
	return &asyncPolicy{
		always:      a.When == "always",
		spoolOn:     on,
		idemHeader:  http.CanonicalHeaderKey(a.IdempotencyHeader),
		fifo:        a.Ordering != "none",
		maxInFlight: max(a.MaxInFlight, 1),
		backoff:     policy.Backoff{Base: a.Backoff.Base.D(), Max: a.Backoff.Max.D()},
		maxAttempts: a.MaxAttempts,
		maxAge:      a.MaxAge.D(),
		maxBody:     int64(a.MaxBody),
		dedupe:      a.DedupeWindow > 0,
		rate:        compileRate(a.Rate),
	}
}

func compileRate(r *config.DeliveryRate) *deliveryRate {
	if r == nil {
		return nil
	}
	return &deliveryRate{perSecond: r.PerSecond, burst: max(r.Burst, 1)}
}

// spooler connects the listeners' handlers to the store and the
// deliverers: a handler appends, then wakes the route's deliverer.
type spooler struct {
	store spool.Store
	// dedupe is store as a spool.Deduper; nil if it does not de-duplicate.
	dedupe spool.Deduper
	group  *deliveryGroup // the deliverers, and their wake channels
	log    *slog.Logger
	// full is set while appends are refused as full, so that the change
	// is logged once each way, not once per request.
	full atomic.Bool
}

// wake signals the route's deliverer that a message was appended.
func (sp *spooler) wake(route string) {
	select {
	case sp.group.wake(route) <- struct{}{}:
	default:
	}
}

// serveAsync serves a request on an async route: it reads the body up to
// max_body, stamps the idempotency key, then either spools at once (when:
// always) or tries the upstream first and spools on a spool_on outcome
// (when: upstream_down).
func (h *handler) serveAsync(sp *spooler, w http.ResponseWriter, r *http.Request, rt *Route, start time.Time) {
	a := rt.async
	if r.ContentLength > a.maxBody {
		writeError(w, r, policy.TooLarge, rt.Name, 0, "request body over async.max_body", 0)
		return
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		var pooled *[]byte
		if a.always && r.ContentLength >= 0 && r.ContentLength <= asyncBufSize {
			// Spooled at once: the store keeps nothing of the body once
			// Append returns (spool.Store), so its buffer is recycled.
			pooled = asyncBufs.Get().(*[]byte)
			defer asyncBufs.Put(pooled)
		}
		b, err := readBody(r.Body, r.ContentLength, a.maxBody, pooled)
		if err != nil {
			ab, _ := r.Body.(*appBody)
			if o := ab.failure(); o != policy.OK {
				writeError(w, r, o, rt.Name, 0, "reading the request body: "+err.Error(), 0)
			} else if r.Context().Err() == nil {
				writeError(w, r, policy.BadRequest, rt.Name, 0, "reading the request body: "+err.Error(), 0)
			}
			return
		}
		if int64(len(b)) > a.maxBody {
			writeError(w, r, policy.TooLarge, rt.Name, 0, "request body over async.max_body", 0)
			return
		}
		body = b
	}
	am, once := newMessage(r, rt, body)
	defer am.release()
	msg := &am.Message
	if rt.obs.tracer() != nil {
		// The message keeps the request's SERVER span as its origin:
		// every delivery attempt links to it.
		if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() {
			msg.TraceParent = traceParent(sc)
		}
	}
	if a.always {
		sp.enqueue(w, r, rt, msg, once, 0)
		return
	}
	if once && sp.dedupe != nil {
		// A repeat of a request already spooled gets its 202 without
		// another call upstream (docs/policies.md, "Async
		// de-duplication").
		if id, ok, err := sp.dedupe.Duplicate(r.Context(), rt.Name, msg.IdempotencyKey); err == nil && ok {
			msg.ID = id
			sp.answerDuplicate(w, rt, msg, 0)
			return
		}
	}
	out := r.Clone(r.Context())
	out.Header.Set(a.idemHeader, msg.IdempotencyKey)
	out.ContentLength = int64(len(body))
	out.Body = http.NoBody
	if body != nil {
		out.Body = io.NopCloser(bytes.NewReader(body))
	}
	ue := rt.tryUpstream(w, out, start)
	if ue == nil {
		return // the upstream's answer went to the app
	}
	h.log.Debug("upstream request failed", "route", rt.Name, "outcome", ue.Outcome.String(), "error", ue.Err)
	switch {
	case ue.Outcome == policy.Canceled:
		// The app went away; there is no one to answer.
	case a.spoolsOn(ue.Outcome, ue.Status):
		sp.enqueue(w, r, rt, msg, once, ue.Attempts)
	default:
		writeError(w, r, ue.Outcome, rt.Name, ue.Attempts, "", ue.RetryAfter)
	}
}

// spoolsOn reports whether an upstream_down request whose attempt loop
// ended with outcome o is spooled: o is listed in async.spool_on, or o is
// status and the upstream's status is. It is the one test of spool_on,
// used by the attempt loop to end early and by serveAsync to decide.
func (a *asyncPolicy) spoolsOn(o policy.Outcome, status int) bool {
	return a.spoolOn.Match(o, status, -1)
}

// tryUpstream sends an upstream_down request through the route's async
// attempt loop (asyncAttempt, which ends on an answer that spoolsOn lists
// instead of passing it on) and, when the loop returns an answer, passes
// it to the app as the sync path does, behind a gate. Otherwise, or when
// the answer's body broke off before anything of it reached the app, it
// writes nothing and returns how the call ended, for serveAsync to
// decide.
func (rt *Route) tryUpstream(w http.ResponseWriter, out *http.Request, start time.Time) *UpstreamError {
	g := newGate(w)
	defer g.release()
	if ue := rt.forward(rt.asyncAttempt, g, out, start); ue != nil {
		return ue
	}
	_ = g.commit()
	return nil
}

// readBody reads up to limit+1 bytes of body; a known length is read into
// a buffer of its size, or into buf when one is given (it has room).
func readBody(body io.Reader, length, limit int64, buf *[]byte) ([]byte, error) {
	if length < 0 || length > limit {
		return io.ReadAll(io.LimitReader(body, limit+1))
	}
	var b []byte
	if buf != nil {
		b = (*buf)[:length]
	} else {
		b = make([]byte, length, length+1)
	}
	if _, err := io.ReadFull(body, b); err != nil {
		return nil, err
	}
	// The declared length is all there is: net/http ends the body there.
	return b, nil
}

// asyncBufs recycles the body buffers of requests spooled at once, up to
// asyncBufSize bytes.
var asyncBufs = sync.Pool{New: func() any { b := make([]byte, asyncBufSize); return &b }}

const asyncBufSize = 16 << 10

// enqueue appends msg and answers 202 once it is durable, or the error that
// kept it from being stored. With once, msg is appended de-duplicated by
// its key, and a repeat is answered with the first message's 202.
//
// The file spool waits for the disk at most the route's timeout
// (spool.Limits.AppendWait, set by the sidecar's command): a disk that
// stalls answers the app 503 spool_error then, not never (docs/spool.md,
// "A disk that stalls").
func (sp *spooler) enqueue(w http.ResponseWriter, r *http.Request, rt *Route, msg *spool.Message, once bool, attempts int) {
	msg.Attempts = attempts
	var err error
	if once && sp.dedupe != nil {
		err = sp.dedupe.AppendOnce(r.Context(), msg)
	} else {
		err = sp.store.Append(r.Context(), msg)
	}
	switch {
	case err == nil:
	case r.Context().Err() != nil:
		return // the app went away: nothing acknowledged, nobody to answer
	case errors.Is(err, spool.ErrUnconfirmed):
		sp.log.Warn("spool did not confirm an async request within the route's timeout; answered 503 spool_error, the message may still be stored and delivered",
			"route", rt.Name, "error", err)
		writeError(w, r, policy.SpoolError, rt.Name, attempts, "the spool did not confirm the message in time; it may still be stored and delivered", spoolFullRetryAfter)
		return
	case errors.Is(err, spool.ErrDuplicate):
		sp.answerDuplicate(w, rt, msg, attempts)
		return
	case errors.Is(err, spool.ErrFull):
		if !sp.full.Swap(true) {
			sp.log.Info("spool full: async requests are refused with 503 spool_full until messages are delivered", "route", rt.Name, "error", err)
		}
		writeError(w, r, policy.SpoolFull, rt.Name, attempts, "", spoolFullRetryAfter)
		return
	case errors.Is(err, spool.ErrTooLarge):
		writeError(w, r, policy.TooLarge, rt.Name, attempts, "request too large to spool", 0)
		return
	default:
		writeError(w, r, policy.SpoolError, rt.Name, attempts, "", spoolFullRetryAfter)
		return
	}
	if sp.full.Load() && sp.full.Swap(false) {
		sp.log.Info("spool accepts messages again", "route", rt.Name)
	}
	sp.wake(rt.Name)
	writeSpooled(w, msg.ID, attempts)
}

// answerDuplicate answers a request that repeats the idempotency key of
// a message spooled within the route's dedupe_window as its first
// request was answered: 202 with that message's ID (msg.ID).
func (sp *spooler) answerDuplicate(w http.ResponseWriter, rt *Route, msg *spool.Message, attempts int) {
	sp.group.countsFor(rt.Name).deduplicated.Add(1)
	sp.log.Debug("async request de-duplicated", "route", rt.Name, "id", msg.ID)
	writeSpooled(w, msg.ID, attempts)
}

// writeSpooled writes the 202 of a spooled message id. Its body is
// {"spooled":true,"id":"<id>"} and a newline; a spool's IDs are hex
// digits, written as they are, and any other ID is encoded by
// encoding/json.
func writeSpooled(w http.ResponseWriter, id string, attempts int) {
	const head, tail = `{"spooled":true,"id":"`, "\"}\n"
	var body []byte // an ID that needs encoding/json's escapes
	n := len(head) + len(id) + len(tail)
	if !plainID(id) {
		body, _ = json.Marshal(struct {
			Spooled bool   `json:"spooled"`
			ID      string `json:"id"`
		}{true, id})
		body = append(body, '\n')
		n = len(body)
	}
	hd := w.Header()
	hd[HeaderSpoolID] = []string{id}
	if attempts > 0 {
		hd.Set(HeaderAttempts, strconv.Itoa(attempts))
	}
	// The constant values are shared: nothing changes a value in place.
	hd["Content-Type"] = jsonContentType
	hd["Cache-Control"] = noStore
	hd["Content-Length"] = contentLength(n)
	w.WriteHeader(http.StatusAccepted)
	if body != nil {
		w.Write(body)
		return
	}
	// In pieces, into the server's buffer: nothing to allocate.
	io.WriteString(w, head)
	io.WriteString(w, id)
	io.WriteString(w, tail)
}

// plainID reports whether id's characters need no escape in JSON.
func plainID(id string) bool {
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

var (
	jsonContentType = []string{"application/json"}
	noStore         = []string{"no-store"}
)

// contentLengths holds the Content-Length values of the 202 bodies'
// usual lengths (a spool ID's length is fixed per backend), made once.
var contentLengths = func() (s [128][]string) {
	for i := range s {
		s[i] = []string{strconv.Itoa(i)}
	}
	return s
}()

// contentLength is the Content-Length value of n, shared for the usual n.
func contentLength(n int) []string {
	if n < len(contentLengths) {
		return contentLengths[n]
	}
	return []string{strconv.Itoa(n)}
}

// newMessage is what the spool keeps of r: method, the target as it is
// forwarded (cleaned path and query), the end-to-end headers without
// Sidecar-* ones, with X-Forwarded-For appended as a proxied request gets
// it, the body, and the idempotency key (the app's, or a new random one).
// once reports that the route de-duplicates and the key is the app's.
// The message is pooled: the caller hands it back with release once the
// request is answered.
func newMessage(r *http.Request, rt *Route, body []byte) (m *asyncMessage, once bool) {
	a := rt.async
	m = asyncMessages.Get().(*asyncMessage)
	// The value slices are the request's, shared: below, fields are only
	// deleted or replaced, never changed in place, and the store encodes
	// the message before Append returns, keeping none of it.
	hd := m.header
	if hd == nil {
		hd = make(http.Header, len(r.Header)+2)
	}
	for k, vv := range r.Header {
		if !strings.HasPrefix(k, "Sidecar-") {
			hd[k] = vv
		}
	}
	removeHopByHop(hd)
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := hd["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		m.vals[0] = ip
		hd["X-Forwarded-For"] = m.vals[0:1:1]
	}
	if rt.preserveHost {
		m.vals[1] = r.Host
		hd["Host"] = m.vals[1:2:2]
	}
	var key string
	if v := hd[a.idemHeader]; len(v) > 0 {
		key = v[0]
	}
	once = a.dedupe && key != "" // only the app's own keys repeat
	if key == "" {
		key = newIdempotencyKey()
		m.vals[2] = key
		hd[a.idemHeader] = m.vals[2:3:3]
	}
	target := r.URL.RequestURI()
	if p := cleanPath(r.URL.Path); p != r.URL.Path {
		u := *r.URL
		u.Path, u.RawPath = p, ""
		target = u.RequestURI()
	}
	m.header = hd
	m.Message = spool.Message{
		Route:          rt.Name,
		Method:         r.Method,
		Target:         target,
		Header:         hd,
		Body:           body,
		IdempotencyKey: key,
		TraceParent:    r.Header.Get("Traceparent"),
		Arrived:        time.Now(),
	}
	return m, once
}

// asyncMessage is a spooled request's message with its header map and
// room for the values newMessage adds, pooled: a store keeps nothing of
// a message's Header once Append returns (spool.Store).
type asyncMessage struct {
	spool.Message
	header http.Header
	vals   [3]string // X-Forwarded-For, Host, the idempotency key
}

var asyncMessages = sync.Pool{New: func() any { return new(asyncMessage) }}

// maxPooledHeader is the most fields a pooled message's header map keeps
// room for: a map grown past it by an unusual request is dropped.
const maxPooledHeader = 32

// release returns m to the pool; nothing of it may be used after.
func (m *asyncMessage) release() {
	if len(m.header) > maxPooledHeader {
		m.header = nil
	} else {
		clear(m.header)
	}
	m.Message = spool.Message{}
	m.vals = [3]string{}
	asyncMessages.Put(m)
}

// newIdempotencyKey returns 32 random hex digits.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	var s [2 * len(b)]byte
	hex.Encode(s[:], b[:])
	return string(s[:]) // one allocation, where EncodeToString makes two
}

// hopByHop are the headers that only concern one connection (RFC 9110
// section 7.6.1), as httputil.ReverseProxy removes them.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop deletes the hop-by-hop headers of h and those Connection
// names. It is on every forwarded request's and answer's path, and
// allocates nothing for a canonical name.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for v != "" {
			var name string
			name, v, _ = strings.Cut(v, ",")
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}
