//go:build !unix

package main

import "io"

// holdPort holds nothing here: while down, the upstream's port is merely
// closed. Connections are refused all the same, but another program
// could take the port before the upstream comes back.
func holdPort(string) (io.Closer, error) { return nil, nil }
