package jsstore

import (
	"encoding/binary"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/sidecar-proxy/sidecar/spool"
)

// envelopeVersion is the first byte of every envelope.
const envelopeVersion = 1

var errEnvelope = errors.New("jsstore: damaged envelope")

// encodeEnvelope returns m's envelope: everything but its ID and attempts.
func encodeEnvelope(m *spool.Message) []byte {
	n := 1 + len(m.Route) + len(m.Method) + len(m.Target) + len(m.IdempotencyKey) + len(m.TraceParent) + 64 + len(m.Body)
	for k, vs := range m.Header {
		n += len(k) + 8
		for _, v := range vs {
			n += len(v) + 4
		}
	}
	b := make([]byte, 0, n)
	b = append(b, envelopeVersion)
	for _, s := range []string{m.Route, m.Method, m.Target, m.IdempotencyKey, m.TraceParent} {
		b = appendString(b, s)
	}
	var arrived int64
	if !m.Arrived.IsZero() {
		arrived = m.Arrived.UnixNano()
	}
	b = binary.AppendVarint(b, arrived)
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range m.Header {
			if !yield(k) {
				return
			}
		}
	})
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = binary.AppendUvarint(b, uint64(len(m.Header[k])))
		for _, v := range m.Header[k] {
			b = appendString(b, v)
		}
	}
	return append(b, m.Body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeEnvelope decodes an envelope into a message without ID and
// attempts. The body is copied out of b.
func decodeEnvelope(b []byte) (*spool.Message, error) {
	d := decoder{b: b}
	if len(b) == 0 || b[0] != envelopeVersion {
		return nil, errEnvelope
	}
	d.b = d.b[1:]
	m := &spool.Message{}
	for _, p := range []*string{&m.Route, &m.Method, &m.Target, &m.IdempotencyKey, &m.TraceParent} {
		*p = d.string()
	}
	if ns := d.varint(); ns != 0 {
		m.Arrived = time.Unix(0, ns)
	}
	if nk := d.uvarint(); nk > 0 && d.err == nil {
		if nk > uint64(len(d.b)) {
			return nil, errEnvelope
		}
		m.Header = make(http.Header, nk)
		for range nk {
			k := d.string()
			nv := d.uvarint()
			if nv > uint64(len(d.b)) {
				return nil, errEnvelope
			}
			vs := make([]string, 0, nv)
			for range nv {
				vs = append(vs, d.string())
			}
			m.Header[k] = vs
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	m.Body = slices.Clone(d.b)
	if m.Body == nil {
		m.Body = []byte{}
	}
	return m, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errEnvelope
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errEnvelope
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.err = errEnvelope
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
