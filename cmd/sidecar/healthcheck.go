package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/sidecar-proxy/sidecar/config"
)

// exitUnhealthy is healthcheck's exit code when the sidecar answered, but
// not 200.
const exitUnhealthy = 1

// runHealthcheck is "sidecar healthcheck": it asks the admin API (or the
// probe listener) at -admin for /healthz, or /readyz with -ready, and
// exits 0 on 200, 1 on any other answer, 3 when nothing answers within
// -timeout, 2 on bad usage. It is the command for an image's HEALTHCHECK
// and a Kubernetes exec probe.
func runHealthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sidecar healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", config.DefaultAdminAddress, "admin or probe listener address (host:port)")
	ready := fs.Bool("ready", false, "check /readyz (ready to serve) instead of /healthz (alive)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sidecar healthcheck: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	host, port, err := net.SplitHostPort(*addr)
	if err != nil || port == "" {
		fmt.Fprintf(stderr, "sidecar healthcheck: invalid -admin %q: want host:port\n", *addr)
		return exitUsage
	}
	// A probe listener bound to every address answers on loopback too,
	// and the admin API wants a loopback Host.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	url := "http://" + net.JoinHostPort(host, port) + path
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "sidecar healthcheck: %v\n", err)
		return exitUsage
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "sidecar healthcheck: %s: %v\n", url, err)
		return exitFailure
	}
	defer resp.Body.Close()
	var body struct {
		Reason string `json:"reason"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		msg := fmt.Sprintf("sidecar healthcheck: %s answered %d", url, resp.StatusCode)
		if body.Reason != "" {
			msg += ": " + body.Reason
		}
		fmt.Fprintln(stderr, msg)
		return exitUnhealthy
	}
	fmt.Fprintf(stdout, "%s: ok\n", url)
	return exitOK
}
