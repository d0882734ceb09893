package jsstore_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/sidecar-proxy/sidecar/spool/jsstore"
)

// startAuthServer starts an embedded JetStream server with opts' security
// settings on a random loopback port.
func startAuthServer(t *testing.T, opts server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir = "127.0.0.1", -1, true, t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(&opts)
	if err != nil {
		t.Fatalf("server.NewServer() = %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready within 10s")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// tryOpen opens a store with opts on url, appends one message and closes
// it; it returns the first error.
func tryOpen(t *testing.T, url string, opts jsstore.Options) error {
	t.Helper()
	opts.URL, opts.Stream, opts.Create = url, "AUTH", true
	opts.ConnectTimeout, opts.RequestTimeout = 5*time.Second, 10*time.Second
	s, err := jsstore.Open(t.Context(), opts)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Append(t.Context(), message("r", 1))
}

// TestAuthentication: the credentials of spool.jetstream reach the server:
// a token, a user and password, an NKey seed file. Wrong or missing ones
// fail at open with an error that does not show the secret.
func TestAuthentication(t *testing.T) {
	t.Run("token", func(t *testing.T) {
		srv := startAuthServer(t, server.Options{Authorization: "s3cr3t-token"})
		if err := tryOpen(t, srv.ClientURL(), jsstore.Options{Token: "s3cr3t-token"}); err != nil {
			t.Fatalf("with the token: %v", err)
		}
		err := tryOpen(t, srv.ClientURL(), jsstore.Options{Token: "wrong-token"})
		if err == nil || strings.Contains(err.Error(), "wrong-token") {
			t.Fatalf("with a wrong token: %v, want an error without the token", err)
		}
	})
	t.Run("user and password", func(t *testing.T) {
		srv := startAuthServer(t, server.Options{Username: "spool", Password: "pa55word"})
		if err := tryOpen(t, srv.ClientURL(), jsstore.Options{User: "spool", Password: "pa55word"}); err != nil {
			t.Fatalf("with the password: %v", err)
		}
		err := tryOpen(t, srv.ClientURL(), jsstore.Options{User: "spool", Password: "bad-pa55"})
		if err == nil || strings.Contains(err.Error(), "bad-pa55") {
			t.Fatalf("with a wrong password: %v, want an error without it", err)
		}
		if err := tryOpen(t, srv.ClientURL(), jsstore.Options{}); err == nil {
			t.Fatal("without credentials: nil, want an authorization error")
		}
	})
	t.Run("nkey", func(t *testing.T) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		seedFile := filepath.Join(t.TempDir(), "user.nk")
		if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
			t.Fatal(err)
		}
		srv := startAuthServer(t, server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
		if err := tryOpen(t, srv.ClientURL(), jsstore.Options{NKeyFile: seedFile}); err != nil {
			t.Fatalf("with the nkey seed: %v", err)
		}
		if err := tryOpen(t, srv.ClientURL(), jsstore.Options{}); err == nil {
			t.Fatal("without the nkey: nil, want an authorization error")
		}
		err = tryOpen(t, srv.ClientURL(), jsstore.Options{NKeyFile: filepath.Join(t.TempDir(), "missing.nk")})
		if err == nil || !strings.Contains(err.Error(), "nkey") {
			t.Fatalf("with a missing seed file: %v, want an error naming the nkey file", err)
		}
	})
}

// TestTLS: a server that requires TLS is reached with the configured CA
// (and, when it verifies clients, the client certificate); an unknown CA
// is refused.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	srvCert := newLeaf(t, ca, caKey, dir, "server", x509.ExtKeyUsageServerAuth)
	newLeaf(t, ca, caKey, dir, "client", x509.ExtKeyUsageClientAuth) // client.pem, client-key.pem
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv := startAuthServer(t, server.Options{
		TLS:       true,
		TLSVerify: true,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
	})
	url := strings.Replace(srv.ClientURL(), "nats://", "tls://", 1)
	good := jsstore.TLS{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem")}
	if err := tryOpen(t, url, jsstore.Options{TLS: good}); err != nil {
		t.Fatalf("with the CA and client certificate: %v", err)
	}
	noClient := jsstore.TLS{CAFile: good.CAFile}
	if err := tryOpen(t, url, jsstore.Options{TLS: noClient}); err == nil {
		t.Error("without the client certificate: nil, want a TLS error")
	}
	other, _ := newCA(t)
	writePEM(t, filepath.Join(dir, "other.pem"), "CERTIFICATE", other.Raw)
	if err := tryOpen(t, url, jsstore.Options{TLS: jsstore.TLS{CAFile: filepath.Join(dir, "other.pem"), CertFile: good.CertFile, KeyFile: good.KeyFile}}); err == nil {
		t.Error("with an unknown CA: nil, want a verification error")
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// newLeaf makes a certificate for 127.0.0.1 signed by ca, writes it and
// its key as NAME.pem and NAME-key.pem in dir, and returns it.
func newLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, dir, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", keyDER)
	cert, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
