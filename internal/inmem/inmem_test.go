package inmem

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
)

type partly struct{ next, all bool }

func (p partly) Read([]byte) (int, error)   { return 0, io.EOF }
func (p partly) Buffered() (next, all bool) { return p.next, p.all }

func TestWhole(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	pr, pw := io.Pipe()
	defer pw.Close()
	for _, tc := range []struct {
		name string
		r    io.Reader
		want bool
	}{
		{"bytes.Reader", bytes.NewReader([]byte("x")), true},
		{"strings.Reader", strings.NewReader("x"), true},
		{"bytes.Buffer", bytes.NewBufferString("x"), true},
		{"Body", NewBody([]byte("x")), true},
		{"all buffered", partly{true, true}, true},
		{"next only", partly{true, false}, false},
		{"nothing buffered", partly{false, false}, false},
		{"NopCloser(strings.Reader)", io.NopCloser(strings.NewReader("x")), true},
		{"NopCloser(bytes.Buffer)", io.NopCloser(bytes.NewBufferString("x")), true},
		{"NopCloser(connection)", io.NopCloser(c1), false},
		{"a pipe", pr, false},
		{"a connection", c1, false},
	} {
		if got := Whole(tc.r); got != tc.want {
			t.Errorf("Whole(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestBodyReads(t *testing.T) {
	b := NewBody([]byte("hello"))
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "hello" {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
