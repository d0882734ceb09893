package h1server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/h1guard"
)

// The differential tests send the same bytes to net/http's server and to
// this one, both behind h1guard and serving diffHandler, and compare what
// comes back: every response's status, framing, header fields (but Date)
// and body, and whether and when the connection ended.

const diffMaxHeaderBytes = 4 << 10

// diffHandler refuses what h1guard refuses, as the proxy's handler does,
// and otherwise answers according to the path.
func diffHandler(w http.ResponseWriter, r *http.Request) {
	if err := h1guard.FromContext(r.Context()).Next(); err != nil {
		w.Header().Set("Connection", "close")
		http.Error(w, "guard: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("X-Method", r.Method)
	switch p := r.URL.Path; {
	case p == "/ping":
		io.WriteString(w, "pong")
	case p == "/noread":
		io.WriteString(w, "not read")
	case p == "/flush":
		io.WriteString(w, "a")
		w.(http.Flusher).Flush()
		io.WriteString(w, "b")
	case p == "/trailers":
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Trailer", "X-T")
		io.WriteString(w, "body")
		w.Header().Set("X-T", "t")
		w.Header().Set(http.TrailerPrefix+"X-U", "u")
	case p == "/big":
		io.WriteString(w, strings.Repeat("x", 10000))
	case p == "/cl":
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	case p == "/short":
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "hello")
	case p == "/close":
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	case p == "/keepalive":
		w.Header().Set("Connection", "keep-alive")
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ka")
	case p == "/early":
		w.Header().Set("Link", "</x>")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "after hints")
	case p == "/twice":
		w.WriteHeader(http.StatusAccepted)
		w.WriteHeader(http.StatusTeapot)
	case p == "/nobody":
		w.WriteHeader(http.StatusOK)
	case p == "/html":
		io.WriteString(w, "<html><body>hi</body></html>")
	case p == "/panic":
		panic(http.ErrAbortHandler)
	case strings.HasPrefix(p, "/status/"):
		code, _ := strconv.Atoi(p[len("/status/"):])
		w.WriteHeader(code)
		io.WriteString(w, "s")
	default:
		b, err := io.ReadAll(r.Body)
		var hk []string
		for k, vv := range r.Header {
			hk = append(hk, fmt.Sprintf("%s=%q", k, vv))
		}
		slices.Sort(hk)
		var tk []string
		for k, vv := range r.Trailer {
			tk = append(tk, fmt.Sprintf("%s=%q", k, vv))
		}
		slices.Sort(tk)
		u := r.URL
		fmt.Fprintf(w, "%s %q %s %d.%d host=%q url=[%q %q %q %q %q %q %v] cl=%d te=%q close=%v\nheader %s\nbody %q err=%v\ntrailer %s\n",
			r.Method, r.RequestURI, r.Proto, r.ProtoMajor, r.ProtoMinor, r.Host,
			u.Scheme, u.Opaque, u.Host, u.Path, u.RawPath, u.RawQuery, u.ForceQuery,
			r.ContentLength, r.TransferEncoding, r.Close, strings.Join(hk, " "), b, err, strings.Join(tk, " "))
	}
}

// startBoth serves diffHandler with net/http's server and with this one.
func startBoth(t testing.TB) (std, ours string) {
	t.Helper()
	ln1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{
		Handler:           http.HandlerFunc(diffHandler),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    diffMaxHeaderBytes,
		ConnContext:       h1guard.ConnContext,
		ErrorLog:          quietLog(),
	}
	go hs.Serve(h1guard.Listen(ln1))
	t.Cleanup(func() { hs.Close() })
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Handler:           http.HandlerFunc(diffHandler),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    diffMaxHeaderBytes,
		ConnContext:       h1guard.ConnContext,
		ErrorLog:          quietLog(),
	}
	go s.Serve(h1guard.Listen(ln2))
	t.Cleanup(func() { s.Close() })
	return ln1.Addr().String(), ln2.Addr().String()
}

// ping ends most inputs: a request whose answer closes the connection,
// so that reading to EOF reads every answer, and shows whether the
// connection was still serving.
const ping = "GET /ping HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"

// exchangeRaw sends in on a new connection, half-closes it if halfClose,
// and returns a description of everything read back until the server
// closed (or 3 s passed: "timeout").
func exchangeRaw(t testing.TB, addr, in string, halfClose bool) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	go func() {
		io.WriteString(c, in)
		if halfClose {
			c.(*net.TCPConn).CloseWrite()
		}
	}()
	br := bufio.NewReader(c)
	var out []string
	for range 20 {
		d, more := readOneResponse(br)
		out = append(out, d)
		if !more {
			break
		}
	}
	return strings.Join(out, "\n")
}

// readOneResponse describes the next response: status line, header
// fields (but Date) sorted, framing and body; more is false once the
// stream ended.
func readOneResponse(br *bufio.Reader) (string, bool) {
	tp := func() (string, error) {
		l, err := br.ReadString('\n')
		return strings.TrimRight(l, "\r\n"), err
	}
	status, err := tp()
	if err != nil {
		if status != "" {
			return fmt.Sprintf("partial %q, then %s", status, errKind(err)), false
		}
		return "end: " + errKind(err), false
	}
	var fields []string
	hdr := http.Header{}
	for {
		l, err := tp()
		if err != nil {
			return fmt.Sprintf("%s: head cut: %s", status, errKind(err)), false
		}
		if l == "" {
			break
		}
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimSpace(v)
		hdr.Add(k, v)
		if http.CanonicalHeaderKey(k) != "Date" {
			fields = append(fields, http.CanonicalHeaderKey(k)+": "+v)
		}
	}
	slices.Sort(fields)
	code, _ := strconv.Atoi(strings.Fields(status + " 0 0")[1])
	desc := status + " [" + strings.Join(fields, "; ") + "]"
	if _, ok := hdr["Date"]; !ok && code >= 200 {
		desc += " no-date"
	}
	if code >= 100 && code <= 199 {
		return desc, true
	}
	var body []byte
	switch {
	case hdr.Get("X-Method") == "HEAD" || code == 204 || code == 304:
		desc += " nobody"
	case hdr.Get("Transfer-Encoding") == "chunked":
		body, err = io.ReadAll(httputil.NewChunkedReader(br))
		if err != nil {
			return desc + " chunked body: " + errKind(err), false
		}
		var tr []string
		for {
			l, err := tp()
			if err != nil {
				return desc + " trailer: " + errKind(err), false
			}
			if l == "" {
				break
			}
			tr = append(tr, l)
		}
		slices.Sort(tr)
		desc += fmt.Sprintf(" chunked %q trailer %q", body, tr)
	case hdr.Get("Content-Length") != "":
		n, _ := strconv.Atoi(hdr.Get("Content-Length"))
		body = make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return desc + " cl body: " + errKind(err), false
		}
		desc += fmt.Sprintf(" cl %q", body)
	default:
		body, err = io.ReadAll(br)
		desc += fmt.Sprintf(" to-eof %q (%s)", body, errKind(err))
		return desc, false
	}
	return desc, true
}

func errKind(err error) string {
	switch {
	case err == nil:
		return "eof"
	case err == io.EOF:
		return "eof"
	case strings.Contains(err.Error(), "reset"):
		return "eof" // RST or FIN: the connection ended either way
	case strings.Contains(err.Error(), "timeout"):
		return "timeout"
	}
	return err.Error()
}

type diffCase struct {
	name      string
	in        string
	halfClose bool // else ping is appended
}

func diffCases() []diffCase {
	long := strings.Repeat("a", diffMaxHeaderBytes+5000)
	cases := []diffCase{
		{"get", "GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n", false},
		{"get_lf", "GET / HTTP/1.1\nHost: x\nX: y\n\n", false},
		{"http10", "GET / HTTP/1.0\r\n\r\n", true},
		{"http10_keepalive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false},
		{"http10_keepalive_cl", "GET /keepalive HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false},
		{"http10_keepalive_big", "GET /big HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
		{"http10_te", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", false},
		{"head", "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"head_big", "HEAD /big HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"head_nobody", "HEAD /nobody HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"post_cl", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", false},
		{"post_cl_crlf_after", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\r\n\r\n", false},
		{"post_chunked", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n", false},
		{"post_chunked_trailer", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\nX-Other: 1\r\n\r\n", false},
		{"post_chunked_upper", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", false},
		{"chunked_bad_size", "PUT /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n", false},
		{"chunked_bare_lf", "PUT /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", false},
		{"chunked_no_crlf_after_data", "PUT /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n", false},
		{"chunked_noread", "PUT /noread HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false},
		{"chunked_noread_bad", "PUT /noread HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", false},
		{"cl_noread", "POST /noread HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", false},
		{"cl_and_te", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false},
		{"te_twice", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"te_identity", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", false},
		{"te_list", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", false},
		{"cl_dup_same", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", false},
		{"cl_dup_differ", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", false},
		{"cl_plus", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", false},
		{"cl_empty", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", false},
		{"cl_huge", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", false},
		{"cl_comma", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", false},
		{"no_host", "GET / HTTP/1.1\r\n\r\n", false},
		{"two_hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},
		{"bad_host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", false},
		{"absolute_form", "GET http://other.example:8080/p?q HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", false},
		{"connect_nohost", "CONNECT example.com:443 HTTP/1.1\r\n\r\n", false},
		{"options_star", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"options_star_body", "OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", false},
		{"options_star_bigbody", "OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + strings.Repeat("b", 5000), false},
		{"escaped_path", "GET /a%20b/%2F?x=%41 HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"bad_escape", "GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"path_specials", "GET /a!b(c)*d'e HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"force_query", "GET /a? HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"query_qq", "GET /a?b?c HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"fragment", "GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"double_slash", "GET //evil.example/x HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"star_get", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"no_slash", "GET a HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"bad_method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"lower_method", "get / HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"bad_version", "GET / HTTP/1.2x\r\nHost: x\r\n\r\n", false},
		{"http2_version", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", false},
		{"http09", "GET / HTTP/0.9\r\nHost: x\r\n\r\n", false},
		{"http12", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", false},
		{"two_spaces", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"no_version", "GET /\r\nHost: x\r\n\r\n", false},
		{"leading_crlf", "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"space_before_colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", false},
		{"space_in_name", "GET / HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", false},
		{"obs_fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n  c\r\n\r\n", false},
		{"obs_fold_first", "GET / HTTP/1.1\r\n X-A: b\r\nHost: x\r\n\r\n", false},
		{"no_colon", "GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", false},
		{"empty_name", "GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", false},
		{"ctl_in_value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", false},
		{"del_in_value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n", false},
		{"obs_text_value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\r\n\r\n", false},
		{"bare_cr_value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", false},
		{"nul_in_name", "GET / HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n", false},
		{"utf8_name", "GET / HTTP/1.1\r\nHost: x\r\nX-\xc3\xa9: b\r\n\r\n", false},
		{"tabs_value", "GET / HTTP/1.1\r\nHost: x\r\nX-A:\t a \t\r\n\r\n", false},
		{"lowercase_names", "GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nx-custom-thing: v\r\nACCEPT: */*\r\n\r\n", false},
		{"repeated_fields", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nX-A: 3\r\n\r\n", false},
		{"many_fields", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-F: v\r\n", 40) + "\r\n", false},
		{"pragma", "GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n", false},
		{"connection_close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", true},
		{"connection_close_list", "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", true},
		{"expect_continue", "POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", false},
		{"expect_continue_noread", "POST /noread HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", false},
		{"expect_other", "POST /p HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 5\r\n\r\nhello", false},
		{"expect_continue_10", "POST /p HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", true},
		{"pipelined", "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiHEAD /3 HTTP/1.1\r\nHost: x\r\n\r\nGET /flush HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"flush", "GET /flush HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"flush_10", "GET /flush HTTP/1.0\r\n\r\n", true},
		{"resp_trailers", "GET /trailers HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_big", "GET /big HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_cl", "GET /cl HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_short", "GET /short HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_close", "GET /close HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_early_hints", "GET /early HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_twice", "GET /twice HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_html_sniff", "GET /html HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_204", "GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_304", "GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_599", "GET /status/599 HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"resp_800", "GET /status/800 HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"abort_handler", "GET /panic HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"huge_head", "GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + long + "\r\n\r\n", false},
		{"huge_line", "GET /" + long + " HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"head_just_fits", "GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + strings.Repeat("a", diffMaxHeaderBytes-100) + "\r\n\r\n", false},
		{"cut_in_line", "GET / HTT", true},
		{"cut_after_line", "GET / HTTP/1.1\r\nHost: x\r\n", true},
		{"cut_in_body", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello", true},
		{"cut_in_chunked", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", true},
		{"empty", "", true},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", true},
		{"h2_preface_http1", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true},
		{"get_with_body_cl", "GET /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", false},
		{"smuggle_te_space", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", false},
		{"smuggle_te_tab", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n", false},
		{"smuggle_te_xchunked", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", false},
		{"smuggle_cl_negative", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", false},
		{"chunk_size_huge", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", false},
		{"chunk_ext_long", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;" + strings.Repeat("e", 5000) + "\r\nx\r\n0\r\n\r\n", false},
		{"trailer_bare_lf", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\n", false},
		{"trailer_forbidden", "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n0\r\n\r\n", false},
		{"trailer_decl_not_chunked", "POST /p HTTP/1.1\r\nHost: x\r\nTrailer: X\r\nContent-Length: 1\r\n\r\na", false},
		{"noread_big_cl", "POST /noread HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + strings.Repeat("z", 300000), false},
		{"read_big_cl", "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + strings.Repeat("z", 70000), false},
		{"upgrade_h2c", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", false},
	}
	return cases
}

func TestDifferential(t *testing.T) {
	std, ours := startBoth(t)
	for _, tc := range diffCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := tc.in
			if !tc.halfClose {
				in += ping
			}
			want := exchangeRaw(t, std, in, tc.halfClose)
			got := exchangeRaw(t, ours, in, tc.halfClose)
			if got != want {
				t.Errorf("input %q\nnet/http:\n%s\nh1server:\n%s", trunc(tc.in), trunc(want), trunc(got))
			}
		})
	}
}

func trunc(s string) string {
	if len(s) > 600 {
		return s[:300] + " ... " + s[len(s)-300:]
	}
	return s
}
