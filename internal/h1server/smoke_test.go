package h1server

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestSmoke(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+r.URL.String()+" "+string(b))
	})}
	go s.Serve(ln)
	defer s.Close()
	for i := 0; i < 3; i++ {
		resp, err := http.Post("http://"+ln.Addr().String()+"/x?y=1", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("%d %v %q", resp.StatusCode, resp.Header, b)
	}
}
