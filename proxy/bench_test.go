package proxy

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkProxyGET measures one keep-alive GET with a 64 B answer through
// the sidecar, client and upstream included; compare with
// BenchmarkDirectGET for the sidecar's share.
func BenchmarkProxyGET(b *testing.B) {
	up := newBenchUpstream(b)
	sc := startSidecar(b, oneRoute("{timeout: 5s}"), up)
	benchGET(b, sc.url("/bench"))
}

// BenchmarkDirectGET is the same call straight to the upstream.
func BenchmarkDirectGET(b *testing.B) {
	up := newBenchUpstream(b)
	benchGET(b, up.URL+"/bench")
}

func newBenchUpstream(b *testing.B) *upstream {
	payload := make([]byte, 64)
	return newUpstream(b, func(w http.ResponseWriter, r *http.Request) { w.Write(payload) })
}

func benchGET(b *testing.B, url string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	req, _ := http.NewRequest("GET", url, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
