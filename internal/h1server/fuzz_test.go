package h1server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// FuzzParseRequest holds the request-head parser to net/http's: for any
// bytes, both refuse the head alike (400, 501, 505, with the same text),
// or both accept it, consume the same bytes and build the same request.
// The seed corpus is in testdata/fuzz/FuzzParseRequest, plus every head
// of the differential test; `go test` runs the seeds, and
// `go test -fuzz FuzzParseRequest ./internal/h1server` looks for more.
func FuzzParseRequest(f *testing.F) {
	for _, tc := range diffCases() {
		if len(tc.in) < 2000 {
			f.Add([]byte(tc.in))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, gotN, gotErr, complete := ourParse(b)
		if !complete {
			return // a live connection would wait for the rest
		}
		want, wantN, wantErr := refParse(b)
		if gotErr != wantErr {
			t.Fatalf("input %q:\nh1server: %s\nnet/http: %s", b, gotErr, wantErr)
		}
		if gotErr != "" {
			return
		}
		if gotN != wantN {
			t.Fatalf("input %q: consumed %d bytes, net/http %d", b, gotN, wantN)
		}
		if d := requestDiff(got, want); d != "" {
			t.Fatalf("input %q: %s", b, d)
		}
	})
}

const fuzzMaxHeaderBytes = 1 << 20

// ourParse runs both passes on b as one read would deliver it.
func ourParse(b []byte) (req *http.Request, n int, errText string, complete bool) {
	c := &conn{srv: &Server{MaxHeaderBytes: fuzzMaxHeaderBytes}, ctx: context.Background()}
	var hs headScan
	done, err := hs.scan(b)
	if err == nil && !done {
		return nil, 0, "", false
	}
	if err == nil {
		var w *response
		w, err = c.buildRequest(b[:hs.end], &hs)
		if err == nil {
			return w.req, hs.end, "", true
		}
	}
	return nil, 0, errClass(err), true
}

func errClass(err error) string {
	var se statusError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%d %s", se.code, se.text)
	case err == errUnsupTE:
		return "501"
	case err == errTooLarge:
		return "431"
	}
	return "400"
}

// refParse is what net/http's server does with a head: http.ReadRequest,
// then its conn.readRequest's checks.
func refParse(b []byte) (*http.Request, int, string) {
	src := bytes.NewReader(b)
	br := bufio.NewReader(src)
	req, err := http.ReadRequest(br)
	if err != nil {
		if m := err.Error(); strings.HasPrefix(m, "too many transfer encodings") || strings.HasPrefix(m, "unsupported transfer encoding") {
			return nil, 0, "501"
		}
		return nil, 0, "400"
	}
	n := len(b) - src.Len() - br.Buffered()
	if !(req.ProtoMajor == 1 || req.ProtoMajor == 2 && req.ProtoMinor == 0 && req.Method == "PRI" && req.RequestURI == "*") {
		return nil, 0, "505 unsupported protocol version"
	}
	// http.ReadRequest dropped the Host fields; the server sees them.
	_, fields, _ := bytes.Cut(b[:n], []byte{'\n'})
	mh, _ := textproto.NewReader(bufio.NewReader(bytes.NewReader(fields))).ReadMIMEHeader()
	hosts, haveHost := mh["Host"]
	isH2Upgrade := req.Method == "PRI" && len(req.Header) == 0 && req.URL.Path == "*" && req.Proto == "HTTP/2.0"
	if req.ProtoAtLeast(1, 1) && (!haveHost || len(hosts) == 0) && !isH2Upgrade && req.Method != "CONNECT" {
		return nil, 0, "400 missing required Host header"
	}
	if len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]) {
		return nil, 0, "400 malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, 0, "400 invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, 0, "400 invalid header value"
			}
		}
	}
	return req, n, ""
}

func requestDiff(got, want *http.Request) string {
	type view struct {
		Method, RequestURI, Proto string
		Major, Minor              int
		URL                       any
		Host                      string
		Header                    http.Header
		ContentLength             int64
		TransferEncoding          []string
		Close                     bool
		Trailer                   http.Header
	}
	v := func(r *http.Request) view {
		return view{r.Method, r.RequestURI, r.Proto, r.ProtoMajor, r.ProtoMinor, *r.URL, r.Host, r.Header,
			r.ContentLength, r.TransferEncoding, r.Close, r.Trailer}
	}
	g, w := v(got), v(want)
	if !reflect.DeepEqual(g, w) {
		return fmt.Sprintf("\nh1server: %+v\nnet/http: %+v", g, w)
	}
	return ""
}
