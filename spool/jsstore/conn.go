package jsstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// TLS configures the TLS client of the NATS connection; the zero value
// means plain TCP unless the URL is tls://.
type TLS struct {
	// CAFile is a PEM bundle of roots; empty means the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate for mTLS; empty
	// means none.
	CertFile string
	KeyFile  string
	// ServerName overrides the name verified; empty means the URL's host.
	ServerName string
	// InsecureSkipVerify turns certificate verification off.
	InsecureSkipVerify bool
}

func (t TLS) enabled() bool { return t != TLS{} }

// connOptions turns opts into nats.go options.
func connOptions(opts *Options, log *slog.Logger) ([]nats.Option, error) {
	no := []nats.Option{
		nats.Name("sidecar spool"),
		nats.Timeout(opts.ConnectTimeout),
		// Reconnect forever with a back-off, and never buffer a publish
		// while disconnected: Append fails instead of acknowledging a
		// message that is not stored.
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.CustomReconnectDelay(func(attempts int) time.Duration {
			return min(250*time.Millisecond<<min(attempts, 6), 10*time.Second)
		}),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("jetstream spool: disconnected from NATS", "error", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("jetstream spool: reconnected to NATS", "url", redactURLs(nc.ConnectedUrl()))
		}),
	}
	switch {
	case opts.CredsFile != "":
		no = append(no, nats.UserCredentials(opts.CredsFile))
	case opts.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(opts.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("jetstream: nkey_file %s: %w", opts.NKeyFile, err)
		}
		no = append(no, o)
	}
	if opts.User != "" {
		no = append(no, nats.UserInfo(opts.User, opts.Password))
	}
	if opts.Token != "" {
		no = append(no, nats.Token(opts.Token))
	}
	if opts.TLS.enabled() {
		cfg, err := tlsConfig(opts.TLS)
		if err != nil {
			return nil, err
		}
		no = append(no, nats.Secure(cfg))
	}
	return no, nil
}

func tlsConfig(t TLS) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // an explicit, logged choice of the operator
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("jetstream: tls ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("jetstream: tls ca_file %s: no certificates", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("jetstream: tls cert_file and key_file go together")
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("jetstream: tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// redactURLs hides the userinfo (user, password or token) of each URL of
// a comma-separated list: "nats://TOKEN@host" becomes
// "nats://REDACTED@host".
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		pre, rest := "", p
		if j := strings.Index(p, "://"); j >= 0 {
			pre, rest = p[:j+3], p[j+3:]
		}
		// The last '@' ends the userinfo (a password may hold '/', '?'
		// or '#'); a NATS URL has no path that could hold one.
		if k := strings.LastIndex(rest, "@"); k >= 0 {
			parts[i] = pre + "REDACTED@" + rest[k+1:]
		}
	}
	return strings.Join(parts, ",")
}
