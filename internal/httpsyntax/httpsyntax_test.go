package httpsyntax

import (
	"testing"

	"golang.org/x/net/http/httpguts"
)

// The token table agrees with x/net's definition on every byte.
func TestIsTokenByte(t *testing.T) {
	for c := 0; c < 256; c++ {
		if got, want := IsTokenByte(byte(c)), httpguts.IsTokenRune(rune(c)); got != want {
			t.Errorf("IsTokenByte(%#x) = %v, want %v", c, got, want)
		}
	}
}

func TestParseHex(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "a": 10, "FF": 255, "10": 16, "ffffffffffffffff": 1<<64 - 1} {
		if n, ok := ParseHex([]byte(in)); !ok || n != want {
			t.Errorf("ParseHex(%q) = %d, %v; want %d", in, n, ok, want)
		}
	}
	for _, in := range []string{"", "x", "1 ", "+1", "0x1", "11111111111111111"} {
		if _, ok := ParseHex([]byte(in)); ok {
			t.Errorf("ParseHex(%q) took it", in)
		}
	}
}
