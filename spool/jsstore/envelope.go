package jsstore

import (
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/wire"
	"github.com/sidecar-proxy/sidecar/spool"
)

// envelopeVersion is the first byte of every envelope.
const envelopeVersion = 1

var errEnvelope = errors.New("jsstore: damaged envelope")

// encodeEnvelope returns m's envelope: everything but its ID and attempts.
func encodeEnvelope(m *spool.Message) []byte {
	n := 1 + len(m.Route) + len(m.Method) + len(m.Target) + len(m.IdempotencyKey) + len(m.TraceParent) + 64 +
		len(m.Body) + wire.HeaderSize(m.Header)
	b := make([]byte, 0, n)
	b = append(b, envelopeVersion)
	for _, s := range [...]string{m.Route, m.Method, m.Target, m.IdempotencyKey, m.TraceParent} {
		b = wire.AppendString(b, s)
	}
	var arrived int64
	if !m.Arrived.IsZero() {
		arrived = m.Arrived.UnixNano()
	}
	b = binary.AppendVarint(b, arrived)
	b = wire.AppendHeader(b, m.Header)
	return append(b, m.Body...)
}

// decodeEnvelope decodes an envelope into a message without ID and
// attempts. The body is copied out of b.
func decodeEnvelope(b []byte) (*spool.Message, error) {
	if len(b) == 0 || b[0] != envelopeVersion {
		return nil, errEnvelope
	}
	d := &wire.Decoder{B: b[1:]}
	m := &spool.Message{}
	for _, p := range []*string{&m.Route, &m.Method, &m.Target, &m.IdempotencyKey, &m.TraceParent} {
		*p = d.ReadString()
	}
	if ns := d.Varint(); ns != 0 {
		m.Arrived = time.Unix(0, ns)
	}
	m.Header = d.Header()
	if d.Err != nil {
		return nil, errEnvelope
	}
	m.Body = slices.Clone(d.B)
	if m.Body == nil {
		m.Body = []byte{}
	}
	return m, nil
}
