// Package httpsyntax holds the byte-level rules of HTTP/1.1 message
// syntax that the sidecar's framing guard (internal/h1guard), server
// (internal/h1server) and client (internal/h1client) share, so that the
// three judge a message by one definition.
package httpsyntax

// IsTokenByte reports whether c is a tchar (RFC 9110, section 5.6.2):
// what method names and field names are made of.
func IsTokenByte(c byte) bool { return tokenTable[c] }

var tokenTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// ParseHex parses a chunk size: 1 to 16 hex digits, as net/http's
// chunked reader takes them; ok is false for anything else.
func ParseHex(v []byte) (n uint64, ok bool) {
	if len(v) == 0 || len(v) > 16 {
		return 0, false
	}
	for _, c := range v {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(c)
	}
	return n, true
}
