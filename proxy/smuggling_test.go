package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"testing"
)

// answers sends raw on a new connection and reads every answer until the
// server closes the connection (or 10 s pass: closed is then false).
func answers(t *testing.T, addr, raw string) (got []*http.Response, closed bool) {
	t.Helper()
	c, br := sendRaw(t, addr, raw)
	defer c.Close()
	for len(got) < 8 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			// EOF, or a reset of a connection closed with bytes unread.
			return got, !errors.Is(err, os.ErrDeadlineExceeded)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got = append(got, resp)
	}
	return got, false
}

// TestSmugglingShapesRefused: every request-smuggling shape that
// docs/design.md ("Security defaults": framing) and internal/h1guard name,
// and the ones issue 16 lists, is answered 400 (501 for a transfer coding
// the sidecar does not implement, as net/http and RFC 9112 section 6.1
// say) and the connection closed; the malformed request never reaches
// the upstream whole, and nothing pipelined after it is served. A good
// request pipelined before it is served as usual.
func TestSmugglingShapesRefused(t *testing.T) {
	var mu sync.Mutex
	heads := map[string]int{}    // requests the upstream saw, by path
	complete := map[string]int{} // of those, whose body arrived whole
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		heads[r.URL.Path]++
		mu.Unlock()
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		mu.Lock()
		complete[r.URL.Path]++
		mu.Unlock()
		io.WriteString(w, "hello from "+r.URL.Path)
	})
	sc := startSidecar(t, oneRoute("{}"), up)
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	post := func(fields, body string) string {
		return "POST /bad HTTP/1.1\r\nHost: x\r\n" + fields + "\r\n" + body
	}
	chunked := func(body string) string { return post("Transfer-Encoding: chunked\r\n", body) }
	tests := []struct {
		name string
		raw  string
		// want is the status of the answer to the malformed request.
		want int
		// served: the malformed request is served whole, as net/http's
		// server serves it, and only what follows it is refused.
		served bool
	}{
		// Content-Length and Transfer-Encoding together (CL.TE, TE.CL).
		{"CL then TE", post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"+smuggled), 400, false},
		{"TE then CL", post("Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", "0\r\n\r\n"+smuggled), 400, false},
		{"TE chunked, identity", post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"+smuggled), 501, false},
		// The server refuses a coding it does not implement before it
		// looks at Content-Length, as net/http does: 501, closed.
		{"TE chunked, identity with CL", post("Content-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"+smuggled), 501, false},
		{"TE identity, chunked", post("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"+smuggled), 501, false},
		{"TE twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"+smuggled), 501, false},
		{"TE xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"+smuggled), 501, false},
		{"TE in HTTP/1.0", "POST /bad HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggled, 400, false},
		{"TE in HTTP/1.0 without CL", "POST /bad HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, 400, false},
		// Content-Length values.
		{"CL differing", post("Content-Length: 4\r\nContent-Length: 5\r\n", "abcde"+smuggled), 400, false},
		{"CL list", post("Content-Length: 4, 5\r\n", "abcde"+smuggled), 400, false},
		{"CL signed", post("Content-Length: +4\r\n", "abcd"+smuggled), 400, false},
		{"CL negative", post("Content-Length: -1\r\n", smuggled), 400, false},
		{"CL hex", post("Content-Length: 0x4\r\n", "abcd"+smuggled), 400, false},
		{"CL inner space", post("Content-Length: 4 4\r\n", "abcd"+smuggled), 400, false},
		// Field syntax that other servers read differently.
		{"space before colon, TE", post("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"+smuggled), 400, false},
		{"space before colon, CL", post("Content-Length : 5\r\n", "abcde"+smuggled), 400, false},
		{"obs-fold", "GET /bad HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n" + smuggled, 400, false},
		{"obs-fold hiding TE", post("X-A: b\r\n\tTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"+smuggled), 400, false},
		{"obs-fold after a bare LF", post("X-A: b\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"+smuggled), 400, false},
		{"obs-fold TE value", post("Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"+smuggled), 400, false},
		{"NUL in a value", "GET /bad HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n" + smuggled, 400, false},
		{"CR in a value", "GET /bad HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n" + smuggled, 400, false},
		{"bare CR hiding TE", post("X-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"+smuggled), 400, false},
		{"NUL in a name", "GET /bad HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n" + smuggled, 400, false},
		// Chunked bodies whose framing is junk: the head was fine, so the
		// request may have gone upstream, but never whole.
		{"chunk size junk", chunked("5x\r\nhello\r\n0\r\n\r\n" + smuggled), 400, false},
		{"chunk size 0x", chunked("0x5\r\nhello\r\n0\r\n\r\n" + smuggled), 400, false},
		{"chunk size negative", chunked("-5\r\nhello\r\n0\r\n\r\n" + smuggled), 400, false},
		{"chunk size overflow", chunked("10000000000000005\r\nhello\r\n0\r\n\r\n" + smuggled), 400, false},
		{"chunk size empty", chunked("\r\nhello\r\n0\r\n\r\n" + smuggled), 400, false},
		{"chunk size bare LF", chunked("5\nhello\r\n0\r\n\r\n" + smuggled), 400, false},
		{"chunk data longer than its size", chunked("3\r\nhello\r\n0\r\n\r\n" + smuggled), 400, false},
		{"chunk data bare LF", chunked("5\r\nhello\n0\r\n\r\n" + smuggled), 400, false},
		// A trailer line ended by a bare LF: net/http's server accepts
		// it when a CRLFCRLF follows within 4 KiB (here, in the pipelined
		// request), and so does the sidecar's, which serves the request
		// with its body whole (re-framed upstream: nothing of the bare LF
		// goes on); h1guard, which does not model that look-ahead, fails
		// closed: the pipelined request gets 400 and the connection ends.
		{"trailer bare LF", chunked("5\r\nhello\r\n0\r\nX: y\n\n" + smuggled), 400, true},
	}
	goods := 0 // good requests sent before a malformed one
	for _, tt := range tests {
		for _, pipelinedAfterGood := range []bool{false, true} {
			name := tt.name
			raw := tt.raw
			if pipelinedAfterGood {
				name += ", after a good request"
				raw = "GET /good HTTP/1.1\r\nHost: x\r\n\r\n" + raw
			}
			t.Run(name, func(t *testing.T) {
				mu.Lock()
				wholeBefore := complete["/bad"]
				mu.Unlock()
				got, closed := answers(t, sc.addr["app"], raw)
				var statuses []int
				for _, r := range got {
					statuses = append(statuses, r.StatusCode)
				}
				want := []int{tt.want}
				if tt.served {
					want = []int{200, tt.want}
				}
				if pipelinedAfterGood {
					want = append([]int{200}, want...)
					goods++
				}
				if !slices.Equal(statuses, want) {
					t.Errorf("answers %v, want %v and nothing more: the pipelined request must not be served", statuses, want)
				}
				if len(got) > 0 && got[len(got)-1].StatusCode == tt.want && tt.want == 400 {
					if o := got[len(got)-1].Header.Get(HeaderOutcome); o != "" && o != "bad_request" {
						t.Errorf("400 with %s %q, want bad_request", HeaderOutcome, o)
					}
				}
				if !closed {
					t.Errorf("the connection stayed open after the malformed request")
				}
				mu.Lock()
				whole := complete["/bad"] - wholeBefore
				mu.Unlock()
				if wantWhole := map[bool]int{false: 0, true: 1}[tt.served]; whole != wantWhole {
					t.Errorf("the upstream got the malformed request whole %d times, want %d", whole, wantWhole)
				}
			})
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if n := heads["/smuggled"]; n != 0 {
		t.Errorf("the upstream saw /smuggled %d times, want 0", n)
	}
	if complete["/good"] != goods {
		t.Errorf("the upstream served /good %d times, want %d", complete["/good"], goods)
	}
}
