package h2client

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// encodeHeaders encodes req's header block into cc.hbuf with the
// connection's HPACK encoder; under wmu. Everything is checked before
// anything is encoded: a refused request leaves the encoder's table as
// the peer's decoder knows it.
func (cc *conn) encodeHeaders(req *http.Request, rb *reqBody) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	host, err := httpguts.PunycodeHostPort(host)
	if err != nil {
		return fmt.Errorf("h2client: %w", err)
	}
	if !httpguts.ValidHostHeader(host) {
		return errors.New("h2client: invalid Host header")
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !validToken(method) {
		return fmt.Errorf("h2client: invalid method %q", method)
	}
	if method == http.MethodConnect {
		return errors.New("h2client: CONNECT is not supported")
	}
	if v := req.Header["Upgrade"]; len(v) > 0 && v[0] != "" {
		// HTTP/2 has no Upgrade (RFC 9113, section 8.6); net/http's
		// transport refuses it too.
		return errors.New("h2client: a protocol upgrade cannot be sent over HTTP/2")
	}
	path := req.URL.RequestURI()
	if !validPseudoPath(path) {
		return fmt.Errorf("h2client: invalid request :path %q", path)
	}
	size := fieldSize(":authority", host) + fieldSize(":method", method) + fieldSize(":path", path) + fieldSize(":scheme", req.URL.Scheme)
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("h2client: invalid header field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("h2client: invalid header field value for %q", k)
			}
			size += fieldSize(k, v)
		}
	}
	for k := range rb.trailer {
		if !httpguts.ValidHeaderFieldName(k) || isConnectionSpecific(strings.ToLower(k)) {
			return fmt.Errorf("h2client: invalid trailer field name %q", k)
		}
	}
	if max := cc.peerMaxHeaderList; max > 0 && size > int64(max) {
		return fmt.Errorf("h2client: request header list of %d bytes, over the upstream's limit of %d", size, max)
	}

	cc.hbuf.Reset()
	enc := cc.henc
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: host})
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: method})
	enc.WriteField(hpack.HeaderField{Name: ":path", Value: path})
	enc.WriteField(hpack.HeaderField{Name: ":scheme", Value: req.URL.Scheme})
	for k, vv := range req.Header {
		lk := cc.lowerName(k)
		switch lk {
		case "host", "content-length", "connection", "proxy-connection", "transfer-encoding", "upgrade", "keep-alive", "trailer":
			// :authority, framing, and connection-specific fields
			// (RFC 9113, section 8.2.2) are not sent as they are.
			continue
		case "te":
			if httpguts.HeaderValuesContainsToken(vv, "trailers") {
				enc.WriteField(hpack.HeaderField{Name: "te", Value: "trailers"})
			}
			continue
		case "user-agent":
			// At most one; an empty one is none.
			if len(vv) > 0 && vv[0] != "" {
				enc.WriteField(hpack.HeaderField{Name: lk, Value: vv[0]})
			}
			continue
		}
		for _, v := range vv {
			enc.WriteField(hpack.HeaderField{Name: lk, Value: v})
		}
	}
	if len(rb.trailer) > 0 {
		keys := make([]string, 0, len(rb.trailer))
		for k := range rb.trailer {
			keys = append(keys, http.CanonicalHeaderKey(k))
		}
		sort.Strings(keys)
		enc.WriteField(hpack.HeaderField{Name: "trailer", Value: strings.Join(keys, ",")})
	}
	cl := rb.cl
	if rb.small != nil && cl >= 0 {
		cl = int64(len(*rb.small))
	}
	if sendContentLength(method, cl) {
		enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(cl, 10)})
	}
	return nil
}

// encodeTrailers encodes request trailers into cc.hbuf; under wmu.
func (cc *conn) encodeTrailers(trailer http.Header) error {
	for k, vv := range trailer {
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("h2client: invalid trailer field value for %q", k)
			}
		}
	}
	cc.hbuf.Reset()
	for k, vv := range trailer {
		lk := cc.lowerName(k)
		for _, v := range vv {
			cc.henc.WriteField(hpack.HeaderField{Name: lk, Value: v})
		}
	}
	return nil
}

// sendContentLength is net/http's rule: a known length above zero, or
// zero for the methods that usually carry a body.
func sendContentLength(method string, cl int64) bool {
	if cl != 0 {
		return cl > 0
	}
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		return true
	}
	return false
}

func fieldSize(name, value string) int64 { return int64(len(name) + len(value) + 32) }

func validPseudoPath(v string) bool { return len(v) > 0 && v[0] == '/' || v == "*" }

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return true
}

// isConnectionSpecific reports a field HTTP/2 forbids (RFC 9113, section
// 8.2.2); te is allowed in requests only.
func isConnectionSpecific(lower string) bool {
	switch lower {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// commonLower is the lower-case form of the usual header names.
var commonLower = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges", "age",
		"authorization", "cache-control", "content-disposition", "content-encoding", "content-language",
		"content-length", "content-type", "cookie", "date", "etag", "expect", "expires", "forwarded",
		"from", "host", "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
		"last-modified", "link", "location", "origin", "pragma", "range", "referer", "retry-after",
		"server", "set-cookie", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via",
		"connection", "keep-alive", "proxy-connection", "traceparent", "tracestate",
		"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-request-id",
		"grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "grpc-status", "grpc-message",
		"grpc-retry-pushback-ms", "grpc-previous-rpc-attempts", "grpc-status-details-bin",
	} {
		m[http.CanonicalHeaderKey(k)] = k
	}
	return m
}()

// lowerName is a header name in lower case, as HTTP/2 sends it; under
// wmu.
func (cc *conn) lowerName(k string) string {
	if v, ok := commonLower[k]; ok {
		return v
	}
	if v, ok := cc.lower[k]; ok {
		return v
	}
	v := strings.ToLower(k)
	if len(cc.lower) < 1024 {
		cc.lower[k] = v
	}
	return v
}

// canonical is a received field name's canonical key; the reader's.
func (cc *conn) canonical(name string) string {
	if v, ok := cc.canon[name]; ok {
		return v
	}
	v := http.CanonicalHeaderKey(name)
	if len(cc.canon) < 1024 {
		cc.canon[name] = v
	}
	return v
}

var errHeadersTooLarge = errors.New("h2client: response header list larger than MaxResponseHeaderBytes")

// parseResponse reads response headers: a final response, or (info not
// nil) an informational one.
func (cc *conn) parseResponse(f *headerBlock, isHead bool) (*http.Response, *info1xx, error) {
	if f.truncated {
		return nil, nil, errHeadersTooLarge
	}
	status := ""
	for _, hf := range f.PseudoFields() {
		if hf.Name != ":status" {
			return nil, nil, fmt.Errorf("h2client: pseudo-header %q in a response", hf.Name)
		}
		status = hf.Value
	}
	if len(status) != 3 || status[0] < '1' || status[0] > '5' || !isDigit(status[1]) || !isDigit(status[2]) {
		return nil, nil, fmt.Errorf("h2client: malformed or missing :status %q", status)
	}
	code := int(status[0]-'0')*100 + int(status[1]-'0')*10 + int(status[2]-'0')
	regular := f.RegularFields()
	header := make(http.Header, len(regular))
	strs := make([]string, len(regular))
	var trailer http.Header
	for _, hf := range regular {
		if isConnectionSpecific(hf.Name) || hf.Name == "te" {
			return nil, nil, fmt.Errorf("h2client: connection-specific field %q in a response", hf.Name)
		}
		key := cc.canonical(hf.Name)
		if key == "Trailer" && code >= 200 {
			if trailer == nil {
				trailer = http.Header{}
			}
			for _, v := range strings.Split(hf.Value, ",") {
				if v = textproto.TrimString(v); v != "" {
					trailer[http.CanonicalHeaderKey(v)] = nil
				}
			}
			continue
		}
		if vv := header[key]; vv != nil {
			header[key] = append(vv, hf.Value)
			continue
		}
		vv := strs[:1:1]
		strs = strs[1:]
		vv[0] = hf.Value
		header[key] = vv
	}
	if code < 200 {
		if code == http.StatusSwitchingProtocols {
			return nil, nil, errors.New("h2client: 101 Switching Protocols in HTTP/2")
		}
		if f.endStream {
			return nil, nil, errors.New("h2client: informational response with END_STREAM")
		}
		return nil, &info1xx{code: code, header: textproto.MIMEHeader(header)}, nil
	}
	text := "200 OK"
	if code != http.StatusOK {
		text = status + " " + http.StatusText(code)
	}
	resp := &http.Response{
		Status:        text,
		StatusCode:    code,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        header,
		Trailer:       trailer,
		ContentLength: -1,
	}
	if cls := header["Content-Length"]; len(cls) > 0 {
		cl, ok := parseContentLength(cls)
		if !ok {
			return nil, nil, fmt.Errorf("h2client: malformed Content-Length %q", cls)
		}
		resp.ContentLength = cl
	} else if f.endStream && !isHead {
		resp.ContentLength = 0
	}
	return resp, nil, nil
}

// parseTrailers reads the trailers that end a response.
func (cc *conn) parseTrailers(f *headerBlock) (http.Header, error) {
	switch {
	case f.truncated:
		return nil, errHeadersTooLarge
	case !f.endStream:
		return nil, errors.New("h2client: HEADERS without END_STREAM after the response headers")
	case len(f.PseudoFields()) > 0:
		return nil, errors.New("h2client: pseudo-header in trailers")
	}
	regular := f.RegularFields()
	t := make(http.Header, len(regular))
	strs := make([]string, len(regular))
	for _, hf := range regular {
		if isConnectionSpecific(hf.Name) || hf.Name == "te" {
			return nil, fmt.Errorf("h2client: connection-specific field %q in trailers", hf.Name)
		}
		key := cc.canonical(hf.Name)
		if vv := t[key]; vv != nil {
			t[key] = append(vv, hf.Value)
			continue
		}
		vv := strs[:1:1]
		strs = strs[1:]
		vv[0] = hf.Value
		t[key] = vv
	}
	return t, nil
}

// parseContentLength takes Content-Length values that all agree.
func parseContentLength(vv []string) (int64, bool) {
	var n int64 = -1
	for _, v := range vv {
		if v == "" || len(v) > 18 {
			return 0, false
		}
		var m int64
		for i := 0; i < len(v); i++ {
			if !isDigit(v[i]) {
				return 0, false
			}
			m = m*10 + int64(v[i]-'0')
		}
		if n >= 0 && m != n {
			return 0, false
		}
		n = m
	}
	return n, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
