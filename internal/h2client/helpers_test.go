package h2client

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestMain fails the package's tests if any goroutine outlives them:
// every connection's reader and every body writer must have ended.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// h2cServer serves h over h2c with prior knowledge on loopback, with
// net/http's HTTP/2 server; it counts the connections it accepted.
type h2cServer struct {
	srv   *http.Server
	url   string
	conns atomic.Int32
}

func newH2CServer(t *testing.T, h http.HandlerFunc, configure ...func(*http.Server)) *h2cServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	s := &h2cServer{url: "http://" + ln.Addr().String()}
	s.srv = &http.Server{Handler: h, Protocols: protos, ConnState: func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}}
	for _, f := range configure {
		f(s.srv)
	}
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

// newTransport returns a Transport whose connections close when the test
// ends.
func newTransport(t *testing.T) *Transport {
	tr := &Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// rawServer accepts HTTP/2 connections on loopback and runs serve on
// each: a test's script of frames.
type rawServer struct {
	ln    net.Listener
	url   string
	conns atomic.Int32
}

func newRawServer(t *testing.T, serve func(n int, c *rawConn)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln, url: "http://" + ln.Addr().String()}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(s.conns.Add(1))
			rc := newRawConn(c)
			go func() {
				defer c.Close()
				if rc.handshake() == nil {
					serve(n, rc)
				}
			}()
		}
	}()
	return s
}

// rawConn is the server side of one connection, driven by a test.
type rawConn struct {
	net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
}

func newRawConn(c net.Conn) *rawConn {
	rc := &rawConn{Conn: c}
	rc.fr = http2.NewFramer(c, c)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	return rc
}

// handshake reads the client's preface and sends empty SETTINGS.
func (c *rawConn) handshake(settings ...http2.Setting) error {
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != http2.ClientPreface {
		return io.ErrUnexpectedEOF
	}
	return c.fr.WriteSettings(settings...)
}

// request is a request as a raw server read it.
type request struct {
	id     uint32
	fields map[string]string
	body   []byte
}

// readRequest reads frames until a request's HEADERS arrive and, when
// full, until its END_STREAM; it acknowledges SETTINGS on the way.
func (c *rawConn) readRequest(full bool) (*request, error) {
	var req *request
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if req != nil {
				return req, nil // trailers
			}
			req = &request{id: f.StreamID, fields: map[string]string{}}
			for _, hf := range f.Fields {
				req.fields[hf.Name] = hf.Value
			}
			if !full || f.StreamEnded() {
				return req, nil
			}
		case *http2.DataFrame:
			if req != nil && f.StreamID == req.id {
				req.body = append(req.body, f.Data()...)
				if f.StreamEnded() {
					return req, nil
				}
			}
		}
	}
}

// writeHeaders sends a header block of name, value pairs.
func (c *rawConn) writeHeaders(id uint32, end bool, kv ...string) error {
	c.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		c.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: end, EndHeaders: true})
}

// drain reads frames until the connection ends.
func (c *rawConn) drain() {
	for {
		if _, err := c.fr.ReadFrame(); err != nil {
			return
		}
	}
}
