package spool

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"time"

	"github.com/sidecar-proxy/sidecar/internal/wire"
)

// recordType says what a record holds. The values are part of the on-disk
// format: never renumber them.
type recordType uint8

const (
	recMessage recordType = 1 // a whole Message
	recAck     recordType = 2 // id: delivered, settled
	recRetry   recordType = 3 // id, next attempt, attempts: pending again
	recDead    recordType = 4 // id, attempts, reason: dead-lettered
	recReplay  recordType = 5 // id: dead -> pending, attempts reset
	recDelete  recordType = 6 // id: removed, settled
)

const (
	headerSize    = 12       // crc(4) length(4) type(1) version(1) reserved(2)
	recordVersion = 1        // current payload encoding version
	maxPayload    = 1 << 30  // sanity bound on a record's payload length
	maxField      = 64 << 20 // sanity bound on one decoded string or body
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var (
	// errTruncated means the bytes end before the record does.
	errTruncated = errors.New("spool: truncated record")
	// errCorrupt means the record is complete but fails its checks.
	errCorrupt = errors.New("spool: corrupt record")
)

// record is one decoded log record. Which fields are set depends on typ.
type record struct {
	typ      recordType
	id       string
	msg      *Message  // recMessage
	at       time.Time // recRetry: next attempt
	attempts int       // recRetry, recDead
	reason   string    // recDead
}

// appendFramedMessage writes the framed message record of m into dst,
// which must be empty with room for a record header at least, and returns
// it.
func appendFramedMessage(dst []byte, m *Message) []byte {
	buf := appendMessage(dst[:headerSize], m)
	frame(buf, recMessage)
	return buf
}

// frame fills in the header of buf, a record whose payload follows
// headerSize bytes reserved for it.
func frame(buf []byte, typ recordType) {
	binary.LittleEndian.PutUint32(buf[4:8], uint32(len(buf)-headerSize))
	buf[8] = byte(typ)
	buf[9] = recordVersion
	buf[10], buf[11] = 0, 0
	setChecksum(buf)
}

// appendRecord appends the framed record (header and payload) to dst.
func appendRecord(dst []byte, typ recordType, payload []byte) []byte {
	start := len(dst)
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[4:8], uint32(len(payload)))
	h[8] = byte(typ)
	h[9] = recordVersion
	dst = append(dst, h[:]...)
	dst = append(dst, payload...)
	crc := crc32.Checksum(dst[start+4:], crcTable)
	binary.LittleEndian.PutUint32(dst[start:start+4], crc)
	return dst
}

// encodeRecord returns the framed bytes of r.
func encodeRecord(r *record) []byte {
	var p []byte
	switch r.typ {
	case recMessage:
		p = encodeMessage(r.msg)
	case recAck, recReplay, recDelete:
		p = wire.AppendString(nil, r.id)
	case recRetry:
		p = wire.AppendString(nil, r.id)
		p = binary.AppendVarint(p, timeToNanos(r.at))
		p = binary.AppendUvarint(p, uint64(r.attempts))
	case recDead:
		p = wire.AppendString(nil, r.id)
		p = binary.AppendUvarint(p, uint64(r.attempts))
		p = wire.AppendString(p, r.reason)
	}
	return appendRecord(make([]byte, 0, headerSize+len(p)), r.typ, p)
}

// decodeRecord decodes the record at the start of b and returns it with its
// framed size. It returns errTruncated if b ends inside the record and
// errCorrupt if the header, checksum or payload is invalid. It never panics.
func decodeRecord(b []byte) (*record, int, error) {
	size, err := checkFrame(b)
	if err != nil {
		return nil, 0, err
	}
	r, err := decodePayload(recordType(b[8]), b[headerSize:size])
	if err != nil {
		return nil, 0, errCorrupt
	}
	return r, size, nil
}

// checkFrame checks the header and checksum of the record at the start of
// b and returns its framed size.
func checkFrame(b []byte) (int, error) {
	if len(b) < headerSize {
		return 0, errTruncated
	}
	typ := recordType(b[8])
	if b[9] != recordVersion || typ < recMessage || typ > recDelete || b[10] != 0 || b[11] != 0 {
		return 0, errCorrupt
	}
	n := binary.LittleEndian.Uint32(b[4:8])
	if n > maxPayload {
		return 0, errCorrupt
	}
	size := headerSize + int(n)
	if len(b) < size {
		return 0, errTruncated
	}
	if crc32.Checksum(b[4:size], crcTable) != binary.LittleEndian.Uint32(b[0:4]) {
		return 0, errCorrupt
	}
	return size, nil
}

func decodePayload(typ recordType, p []byte) (*record, error) {
	d := &wire.Decoder{B: p, MaxField: maxField}
	r := &record{typ: typ}
	switch typ {
	case recMessage:
		m := decodeMessage(d)
		if d.Err == nil {
			r.msg, r.id = m, m.ID
		}
	case recAck, recReplay, recDelete:
		r.id = d.ReadString()
	case recRetry:
		r.id = d.ReadString()
		r.at = nanosToTime(d.Varint())
		r.attempts = d.Int()
	case recDead:
		r.id = d.ReadString()
		r.attempts = d.Int()
		r.reason = d.ReadString()
	}
	if d.Err == nil && len(d.B) != 0 {
		d.Err = errCorrupt
	}
	if d.Err != nil {
		return nil, d.Err
	}
	return r, nil
}

// encodeMessage encodes m as a version-1 message payload: the strings ID,
// Route, Method, Target, IdempotencyKey, TraceParent; Arrived as varint unix
// nanoseconds (0 for the zero time); Attempts as uvarint; the header as a
// uvarint count of keys, each a key string, a uvarint count of values and
// the value strings, keys sorted; then the body as a string. A string is a
// uvarint length followed by its bytes.
func encodeMessage(m *Message) []byte {
	return appendMessage(make([]byte, 0, messageSize(m)), m)
}

// messageSize bounds the size of m's encoded payload.
func messageSize(m *Message) int {
	return 64 + len(m.ID) + len(m.Route) + len(m.Method) + len(m.Target) +
		len(m.IdempotencyKey) + len(m.TraceParent) + len(m.Body) + wire.HeaderSize(m.Header)
}

// appendMessage appends m's encoded payload to p.
func appendMessage(p []byte, m *Message) []byte {
	for _, s := range [...]string{m.ID, m.Route, m.Method, m.Target, m.IdempotencyKey, m.TraceParent} {
		p = wire.AppendString(p, s)
	}
	p = binary.AppendVarint(p, timeToNanos(m.Arrived))
	p = binary.AppendUvarint(p, uint64(max(m.Attempts, 0)))
	p = wire.AppendHeader(p, m.Header)
	p = binary.AppendUvarint(p, uint64(len(m.Body)))
	return append(p, m.Body...)
}

// decodeMessage reads a message payload written by appendMessage.
func decodeMessage(d *wire.Decoder) *Message {
	m := &Message{
		ID:             d.ReadString(),
		Route:          d.ReadString(),
		Method:         d.ReadString(),
		Target:         d.ReadString(),
		IdempotencyKey: d.ReadString(),
		TraceParent:    d.ReadString(),
		Arrived:        nanosToTime(d.Varint()),
		Attempts:       d.Int(),
		Header:         d.Header(),
	}
	body := d.Bytes()
	if d.Err != nil {
		return nil
	}
	if len(body) > 0 {
		m.Body = append([]byte(nil), body...)
	}
	return m
}

// idPlaceholder stands for a generated ID while a message is encoded;
// patchID replaces it.
const idPlaceholder = "000000000000000000000000"

// patchID writes id, of the placeholder's length, over the placeholder in
// the framed message record buf; the checksum must be set again with
// setChecksum.
func patchID(buf []byte, id string) {
	copy(buf[headerSize+1:headerSize+1+len(idPlaceholder)], id)
}

// setChecksum computes the checksum of the framed record buf.
func setChecksum(buf []byte) {
	binary.LittleEndian.PutUint32(buf[0:4], crc32.Checksum(buf[4:], crcTable))
}

// messageMeta is what recovery needs of a message record.
type messageMeta struct {
	id, route string
	arrived   int64
	attempts  int
	key       []byte // IdempotencyKey, within the record's bytes
}

// decodeMeta checks the framed record at the start of b as decodeRecord
// does, but of a message record decodes only its metadata, without
// copying headers or body. meta is set for a message record, rec for
// others.
func decodeMeta(b []byte) (typ recordType, meta messageMeta, rec *record, size int, err error) {
	if len(b) >= headerSize && recordType(b[8]) != recMessage {
		rec, size, err = decodeRecord(b)
		if err != nil {
			return 0, meta, nil, 0, err
		}
		return rec.typ, meta, rec, size, nil
	}
	size, err = checkFrame(b)
	if err != nil {
		return 0, meta, nil, 0, err
	}
	d := &wire.Decoder{B: b[headerSize:size], MaxField: maxField}
	meta.id = d.ReadString()
	meta.route = d.ReadString()
	d.Bytes() // Method
	d.Bytes() // Target
	meta.key = d.Bytes()
	d.Bytes() // TraceParent
	meta.arrived = d.Varint()
	meta.attempts = d.Int()
	d.SkipHeader()
	d.Bytes()
	if d.Err != nil || len(d.B) != 0 {
		return 0, meta, nil, 0, errCorrupt
	}
	return recMessage, meta, nil, size, nil
}

func timeToNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func nanosToTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
