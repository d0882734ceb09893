package h2client

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerBlock is a decoded HEADERS block (with its CONTINUATIONs). The
// reader goroutine decodes into one per connection, reused: the framer's
// own decoding (Framer.ReadMetaHeaders) allocates a frame, a closure and
// a growing field slice for every block, twice per gRPC call.
type headerBlock struct {
	streamID   uint32
	endStream  bool
	fields     []hpack.HeaderField
	nPseudo    int
	remain     uint32 // header list bytes left under MaxResponseHeaderBytes
	truncated  bool   // the list went over it
	invalid    error  // a field that is not allowed
	sawRegular bool
}

func (b *headerBlock) PseudoFields() []hpack.HeaderField  { return b.fields[:b.nPseudo] }
func (b *headerBlock) RegularFields() []hpack.HeaderField { return b.fields[b.nPseudo:] }

// emit is the HPACK decoder's callback: it checks each field as
// net/http's framer does (valid names and values, pseudo-header fields
// first, no duplicate pseudo-header) and keeps it within the budget.
func (cc *conn) emit(hf hpack.HeaderField) {
	b := &cc.hb
	if b.invalid != nil || b.truncated {
		return
	}
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		b.invalid = fmt.Errorf("h2client: invalid value of header field %q", hf.Name)
		return
	}
	if strings.HasPrefix(hf.Name, ":") {
		if b.sawRegular {
			b.invalid = errors.New("h2client: pseudo-header field after a regular one")
			return
		}
		for _, p := range b.fields {
			if p.Name == hf.Name {
				b.invalid = fmt.Errorf("h2client: duplicate pseudo-header %q", hf.Name)
				return
			}
		}
		b.nPseudo++
	} else {
		b.sawRegular = true
		if !validWireName(hf.Name) {
			b.invalid = fmt.Errorf("h2client: invalid header field name %q", hf.Name)
			return
		}
	}
	size := hf.Size()
	if size > b.remain {
		b.truncated = true
		return
	}
	b.remain -= size
	b.fields = append(b.fields, hf)
}

// validWireName: a token in lower case.
func validWireName(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !httpguts.IsTokenRune(rune(c)) || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// headerFragment feeds a HEADERS or CONTINUATION frame's fragment to the
// decoder (the framer has checked their order); at END_HEADERS it
// returns the block, or a stream error for a block with a field that is
// not allowed. Errors of HPACK itself end the connection.
func (cc *conn) headerFragment(f http2.Frame) (*headerBlock, error) {
	b := &cc.hb
	var frag []byte
	var ended bool
	switch f := f.(type) {
	case *http2.HeadersFrame:
		*b = headerBlock{streamID: f.StreamID, endStream: f.StreamEnded(), fields: b.fields[:0], remain: cc.t.maxHeaderBytes()}
		clear(b.fields[:cap(b.fields)])
		frag, ended = f.HeaderBlockFragment(), f.HeadersEnded()
	case *http2.ContinuationFrame:
		frag, ended = f.HeaderBlockFragment(), f.HeadersEnded()
	}
	// As net/http: a fragment far over what is left of the budget, or
	// more after a field that is not allowed, is not decoded.
	if int64(len(frag)) > 2*int64(b.remain)+64 || b.invalid != nil && len(frag) > 0 {
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if _, err := cc.hdec.Write(frag); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if !ended {
		return nil, nil
	}
	if err := cc.hdec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if b.invalid != nil {
		return nil, http2.StreamError{StreamID: b.streamID, Code: http2.ErrCodeProtocol, Cause: b.invalid}
	}
	return b, nil
}
