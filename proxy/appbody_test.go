package proxy

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-proxy/sidecar/policy"
)

// closedAfterEOF is a request body that the server closes once it has
// been read to its end, as net/http's does when the response starts.
type closedAfterEOF struct {
	r      io.Reader
	closed bool
}

func (b *closedAfterEOF) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errors.New("http: invalid Read on closed Body")
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.closed = true
	}
	return n, err
}

func (b *closedAfterEOF) Close() error { b.closed = true; return nil }

// TestAppBodyEndIsFinal: a read after the body's end sees the end again,
// whatever the server did to the body meanwhile. A transport checks the
// end of a body with a known length by reading once more; an error there
// made it drop the upstream connection in the middle of the response
// (TestLargeBodiesBothWays failed so about once in 50 runs under load).
func TestAppBodyEndIsFinal(t *testing.T) {
	for _, idle := range []time.Duration{0, 30 * time.Second} {
		t.Run("body_idle_timeout="+idle.String(), func(t *testing.T) {
			r := httptest.NewRequest("POST", "/", nil)
			r.Body = &closedAfterEOF{r: strings.NewReader("hello")}
			b := newAppBody(httptest.NewRecorder(), r, idle)
			if got, err := io.ReadAll(b); string(got) != "hello" || err != nil {
				t.Fatalf("ReadAll = %q, %v; want hello", got, err)
			}
			if n, err := b.Read(make([]byte, 8)); n != 0 || err != io.EOF {
				t.Errorf("Read after the end = %d, %v; want 0, EOF", n, err)
			}
			if o := b.failure(); o != policy.OK {
				t.Errorf("failure() = %v after a whole body, want ok", o)
			}
		})
	}
}

// cancelingBody is a body whose read fails as the app-facing server's
// does on a deadline: it cancels the request's context first, then
// returns the error (after a moment, to widen the window).
type cancelingBody struct {
	cancel  context.CancelFunc
	started chan struct{}
}

func (b *cancelingBody) Read([]byte) (int, error) {
	close(b.started)
	b.cancel()
	time.Sleep(2 * time.Millisecond)
	return 0, os.ErrDeadlineExceeded
}
func (b *cancelingBody) Close() error { return nil }

// TestCancelFromAFailingReadIsTheReadsOutcome: when a read of the app's
// body fails, the server cancels the request before the read returns;
// an attempt loop that sees the cancellation first still classifies the
// failure as the read's (request_timeout), not as the app gone away,
// which would leave the app unanswered.
func TestCancelFromAFailingReadIsTheReadsOutcome(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := &cancelingBody{cancel: cancel, started: make(chan struct{})}
	ab := &appBody{body: body}
	go ab.Read(make([]byte, 8))
	<-body.started
	<-ctx.Done() // as the attempt loop sees it: canceled, the read not yet returned
	if o := classify(ctx.Err(), ctx, ctx, ab); o != policy.RequestTimeout {
		t.Errorf("classify = %v, want request_timeout", o)
	}
}
