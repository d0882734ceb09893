// Package inmem tells whether a request body can be read to its end
// without waiting on anyone, so that an HTTP client may read it before it
// sends the request's head and send both in one write. A body that may
// wait on its sender (an app's upload still arriving) must not be read
// ahead: the head goes out first, as net/http's Transport does, so the
// upstream sees the request at once and may answer before the body ends.
package inmem

import (
	"bytes"
	"io"
	"reflect"
	"strings"
)

// Buffered is a body that tells what of it is at hand: whether its next
// Read, and whether all of it, is served without waiting. The app-facing
// servers' request bodies implement it, and the proxy's wrappers pass it
// on.
type Buffered interface {
	Buffered() (next, all bool)
}

// Whole reports whether all of r can be read without waiting: r says so
// (Buffered), or is one of the standard library's in-memory readers, bare
// or in io.NopCloser (as http.NewRequest wraps them).
func Whole(r io.Reader) bool {
	switch b := r.(type) {
	case Buffered:
		_, all := b.Buffered()
		return all
	case *bytes.Reader, *strings.Reader, *bytes.Buffer:
		return true
	}
	switch reflect.TypeOf(r) {
	case nopCloserType, nopCloserWriterToType:
		return Whole(reflect.ValueOf(r).Field(0).Interface().(io.Reader))
	}
	return false
}

// The types io.NopCloser returns, whose one field is the reader wrapped.
var (
	nopCloserType         = reflect.TypeOf(io.NopCloser(nil))
	nopCloserWriterToType = reflect.TypeOf(io.NopCloser(struct {
		io.Reader
		io.WriterTo
	}{}))
)

// Body is a request body held in memory; Whole knows it is.
type Body struct{ bytes.Reader }

// NewBody returns a body that reads b.
func NewBody(b []byte) *Body {
	body := new(Body)
	body.Reset(b)
	return body
}

// Close does nothing: the bytes stay readable by whoever holds them.
func (*Body) Close() error { return nil }

// Buffered reports that all of the body is at hand.
func (*Body) Buffered() (next, all bool) { return true, true }
