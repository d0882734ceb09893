// Package wire holds the compact encoding both spool backends use for a
// stored request: uvarint-prefixed strings, varints, and a header block
// (a uvarint count of keys, each a key, a uvarint count of values and the
// values, keys sorted). Decoding never panics on bad input.
package wire

import (
	"encoding/binary"
	"errors"
	"net/http"
	"slices"
)

// ErrMalformed is the error a Decoder records for bad input.
var ErrMalformed = errors.New("wire: malformed data")

// AppendString appends s as a uvarint length and its bytes.
func AppendString(p []byte, s string) []byte {
	p = binary.AppendUvarint(p, uint64(len(s)))
	return append(p, s...)
}

// AppendHeader appends h as a header block, keys sorted.
func AppendHeader(p []byte, h http.Header) []byte {
	var buf [16]string
	keys := buf[:0]
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	p = binary.AppendUvarint(p, uint64(len(keys)))
	for _, k := range keys {
		p = AppendString(p, k)
		vs := h[k]
		p = binary.AppendUvarint(p, uint64(len(vs)))
		for _, v := range vs {
			p = AppendString(p, v)
		}
	}
	return p
}

// HeaderSize bounds the size of h's header block.
func HeaderSize(h http.Header) int {
	n := 8
	for k, vs := range h {
		n += 8 + len(k)
		for _, v := range vs {
			n += 4 + len(v)
		}
	}
	return n
}

// Decoder reads fields from B. The first error sticks in Err, and later
// reads return zero values.
type Decoder struct {
	B   []byte
	Err error
	// MaxField bounds one string or byte field; 0 means only the input's
	// length does.
	MaxField uint64
}

func (d *Decoder) fail() { d.Err = ErrMalformed }

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	if d.Err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.B)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Varint reads a signed varint.
func (d *Decoder) Varint() int64 {
	if d.Err != nil {
		return 0
	}
	v, n := binary.Varint(d.B)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Int reads a uvarint that must fit an int32.
func (d *Decoder) Int() int {
	v := d.Uvarint()
	if v > 1<<31-1 {
		d.fail()
		return 0
	}
	return int(v)
}

// Bytes reads a length-prefixed field; the result aliases B.
func (d *Decoder) Bytes() []byte {
	n := d.Uvarint()
	if d.Err != nil {
		return nil
	}
	if (d.MaxField > 0 && n > d.MaxField) || n > uint64(len(d.B)) {
		d.fail()
		return nil
	}
	b := d.B[:n:n]
	d.B = d.B[n:]
	return b
}

// ReadString reads a length-prefixed string.
func (d *Decoder) ReadString() string { return string(d.Bytes()) }

// Header reads a header block; it returns nil for an empty one.
func (d *Decoder) Header() http.Header {
	nk := d.count()
	if d.Err != nil || nk == 0 {
		return nil
	}
	h := make(http.Header, nk)
	for i := uint64(0); i < nk && d.Err == nil; i++ {
		k := d.ReadString()
		nv := d.count()
		vs := make([]string, 0, nv)
		for j := uint64(0); j < nv && d.Err == nil; j++ {
			vs = append(vs, d.ReadString())
		}
		h[k] = vs
	}
	if d.Err != nil {
		return nil
	}
	return h
}

// SkipHeader reads past a header block without keeping it.
func (d *Decoder) SkipHeader() {
	nk := d.count()
	for i := uint64(0); i < nk && d.Err == nil; i++ {
		d.Bytes()
		nv := d.count()
		for j := uint64(0); j < nv && d.Err == nil; j++ {
			d.Bytes()
		}
	}
}

// count reads a count of items that take at least a byte each.
func (d *Decoder) count() uint64 {
	n := d.Uvarint()
	if n > uint64(len(d.B)) {
		d.fail()
		return 0
	}
	return n
}
