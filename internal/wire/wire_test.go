package wire

import (
	"errors"
	"net/http"
	"reflect"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	h := http.Header{"B": {"1", "2"}, "A": {"x"}, "Empty": {}}
	p := AppendString(nil, "hello")
	p = AppendHeader(p, h)
	p = AppendHeader(p, nil)
	if len(p) > len("hello")+1+HeaderSize(h)+HeaderSize(nil) {
		t.Errorf("encoded %d bytes, over the HeaderSize bound", len(p))
	}
	d := &Decoder{B: p}
	if s := d.ReadString(); s != "hello" {
		t.Errorf("ReadString() = %q", s)
	}
	if got := d.Header(); !reflect.DeepEqual(got, h) {
		t.Errorf("Header() = %v, want %v", got, h)
	}
	if got := d.Header(); got != nil || d.Err != nil || len(d.B) != 0 {
		t.Errorf("empty Header() = %v, err %v, %d bytes left", got, d.Err, len(d.B))
	}
}

func TestMalformed(t *testing.T) {
	full := AppendHeader(nil, http.Header{"Key": {"value"}})
	for n := range len(full) {
		d := &Decoder{B: full[:n]}
		if h := d.Header(); h != nil || !errors.Is(d.Err, ErrMalformed) {
			t.Errorf("Header() of %d of %d bytes = %v, %v; want ErrMalformed", n, len(full), h, d.Err)
		}
		d = &Decoder{B: full[:n]}
		if d.SkipHeader(); n > 0 && d.Err == nil {
			t.Errorf("SkipHeader() of %d of %d bytes: no error", n, len(full))
		}
	}
	d := &Decoder{B: AppendString(nil, "toolong"), MaxField: 3}
	if d.ReadString(); !errors.Is(d.Err, ErrMalformed) {
		t.Errorf("ReadString() over MaxField: %v", d.Err)
	}
	d = &Decoder{B: []byte{0xff, 0xff, 0xff, 0xff, 0x0f}}
	if d.Int(); !errors.Is(d.Err, ErrMalformed) {
		t.Errorf("Int() over 2^31: %v", d.Err)
	}
}
