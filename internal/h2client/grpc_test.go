package h2client

import (
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
)

// grpcServer is grpc-go's own HTTP/2 server with the interop
// TestService, on loopback; it returns its URL.
func grpcServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, interop.NewTestServer())
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return "http://" + ln.Addr().String()
}

// frame is a gRPC length-prefixed message.
func frame(t *testing.T, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 5, 5+len(b))
	binary.BigEndian.PutUint32(out[1:], uint32(len(b)))
	return append(out, b...)
}

// readMessage reads one gRPC message from r into m.
func readMessage(r io.Reader, m proto.Message) error {
	var head [5]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return err
	}
	b := make([]byte, binary.BigEndian.Uint32(head[1:]))
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return proto.Unmarshal(b, m)
}

func grpcRequest(t *testing.T, url, method string, body io.Reader) *http.Request {
	req, err := http.NewRequest("POST", url+"/grpc.testing.TestService/"+method, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	return req
}

// TestGRPCServer speaks gRPC to grpc-go's own server: a unary call whose
// status comes in the trailers, a Trailers-Only error, and a bidi
// ping-pong whose request body streams while answers come.
func TestGRPCServer(t *testing.T) {
	url := grpcServer(t)
	tr := newTransport(t)

	t.Run("unary", func(t *testing.T) {
		in := frame(t, &testgrpc.SimpleRequest{ResponseSize: 300_000, Payload: &testgrpc.Payload{Body: make([]byte, 200_000)}})
		// Unknown length, as the proxy forwards a gRPC call.
		resp, err := tr.RoundTrip(grpcRequest(t, url, "UnaryCall", io.MultiReader(strings.NewReader(string(in)))))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out testgrpc.SimpleResponse
		if err := readMessage(resp.Body, &out); err != nil || len(out.GetPayload().GetBody()) != 300_000 {
			t.Fatalf("response: %v, %d payload bytes", err, len(out.GetPayload().GetBody()))
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
			t.Errorf("grpc-status trailer %q, want 0 (trailers %v)", got, resp.Trailer)
		}
	})

	t.Run("trailers_only", func(t *testing.T) {
		resp, err := tr.RoundTrip(grpcRequest(t, url, "UnimplementedCall", strings.NewReader(string(frame(t, &testgrpc.Empty{})))))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || len(b) != 0 || resp.Header.Get("Grpc-Status") != "12" {
			t.Errorf("= %q, %v, headers %v; want a Trailers-Only UNIMPLEMENTED (12)", b, err, resp.Header)
		}
	})

	t.Run("ping_pong", func(t *testing.T) {
		pr, pw := io.Pipe()
		send := func(size int32) {
			go pw.Write(frame(t, &testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: size}}}))
		}
		// grpc-go sends its response headers with the first message.
		send(10)
		resp, err := tr.RoundTrip(grpcRequest(t, url, "FullDuplexCall", pr))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		for i, size := range []int32{10, 70_000, 3} {
			if i > 0 {
				send(size)
			}
			var out testgrpc.StreamingOutputCallResponse
			if err := readMessage(resp.Body, &out); err != nil || len(out.GetPayload().GetBody()) != int(size) {
				t.Fatalf("message %d: %v, %d bytes; want %d", i, err, len(out.GetPayload().GetBody()), size)
			}
		}
		pw.Close()
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
			t.Errorf("grpc-status %q, want 0", got)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		req := grpcRequest(t, url, "UnaryCall", strings.NewReader(string(frame(t, &testgrpc.SimpleRequest{}))))
		req.Header.Set("Grpc-Timeout", "1n")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		code := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status")
		if code != "4" {
			t.Errorf("grpc-status %q, want DEADLINE_EXCEEDED (4)", code)
		}
	})
}
