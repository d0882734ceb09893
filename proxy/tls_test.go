package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testPKI is a CA with a server certificate (127.0.0.1 and upstream.test)
// and a client certificate, written as PEM files.
type testPKI struct {
	caFile, clientCert, clientKey string
	pool                          *x509.CertPool
	server                        tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage, dns []string, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, DNSNames: dns, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pki := &testPKI{pool: x509.NewCertPool()}
	pki.pool.AddCert(ca)
	pki.caFile = write("ca.pem", "CERTIFICATE", caDER)
	srvDER, srvKey := leaf(2, x509.ExtKeyUsageServerAuth, []string{"upstream.test"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	pki.server = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	cliDER, cliKey := leaf(3, x509.ExtKeyUsageClientAuth, nil, nil)
	pki.clientCert = write("client.pem", "CERTIFICATE", cliDER)
	keyDER, _ := x509.MarshalECPrivateKey(cliKey)
	pki.clientKey = write("client-key.pem", "EC PRIVATE KEY", keyDER)
	return pki
}

// tlsUpstream answers with the protocol and whether a client certificate
// was presented.
func tlsUpstream(t *testing.T, pki *testPKI, h2, requireClientCert bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.server}}
	if requireClientCert {
		srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		srv.TLS.ClientCAs = pki.pool
	}
	srv.EnableHTTP2 = h2
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func TestTLSUpstreams(t *testing.T) {
	pki := newTestPKI(t)
	plain := tlsUpstream(t, pki, false, false)
	h2 := tlsUpstream(t, pki, true, false)
	mtls := tlsUpstream(t, pki, false, true)
	byName := strings.Replace(plain.URL, "127.0.0.1", "localhost", 1) // the certificate does not name localhost
	tests := []struct {
		name, endpoint, upstream string
		want                     int
		wantBody, wantOutcome    string
	}{
		{"https with the CA", plain.URL, `tls: {ca_file: "` + pki.caFile + `"}`, 200, "HTTP/1.1", ""},
		{"h2 over TLS with ALPN", h2.URL, `protocol: h2, tls: {ca_file: "` + pki.caFile + `"}`, 200, "HTTP/2.0", ""},
		{"unknown authority is refused", plain.URL, `tls: {}`, 502, "", "connect_error"},
		{"verification is on without a tls block", plain.URL, `connect_timeout: 2s`, 502, "", "connect_error"},
		{"name mismatch is refused", byName, `tls: {ca_file: "` + pki.caFile + `"}`, 502, "", "connect_error"},
		{"server_name overrides the name checked", byName, `tls: {ca_file: "` + pki.caFile + `", server_name: upstream.test}`, 200, "HTTP/1.1", ""},
		{"verification off", plain.URL, `tls: {insecure_skip_verify: true}`, 200, "HTTP/1.1", ""},
		{"mTLS without a client certificate fails", mtls.URL, `tls: {ca_file: "` + pki.caFile + `"}`, 502, "", ""},
		{"mTLS with the client certificate", mtls.URL, `tls: {ca_file: "` + pki.caFile + `", cert_file: "` + pki.clientCert + `", key_file: "` + pki.clientKey + `"}`, 200, "HTTP/1.1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := strings.Replace(oneRoute("{timeout: 5s}"), `up: {endpoints: ["UPSTREAM0"]}`, `up: {endpoints: ["`+tt.endpoint+`"], `+tt.upstream+`}`, 1)
			sc := startSidecar(t, cfg)
			resp, body := get(t, sc.url("/"))
			if resp.StatusCode != tt.want || tt.wantBody != "" && body != tt.wantBody {
				t.Errorf("GET = %d %q, want %d %q", resp.StatusCode, body, tt.want, tt.wantBody)
			}
			if tt.wantOutcome != "" && resp.Header.Get(HeaderOutcome) != tt.wantOutcome {
				t.Errorf("%s = %q, want %s", HeaderOutcome, resp.Header.Get(HeaderOutcome), tt.wantOutcome)
			}
			if strings.Contains(tt.upstream, "insecure_skip_verify: true") && !strings.Contains(sc.logs.String(), "TLS certificate verification is OFF") {
				t.Errorf("no warning logged for disabled verification; logs:\n%s", sc.logs.String())
			}
		})
	}
}
