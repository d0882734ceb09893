package spool

import (
	"bytes"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"
)

func TestRecordRoundTrip(t *testing.T) {
	arrived := time.Unix(0, 1700000000123456789)
	tests := []struct {
		name string
		rec  *record
	}{
		{"message full", &record{typ: recMessage, id: "a1", msg: &Message{
			ID: "a1", Route: "events", Method: "POST", Target: "/events?x=1",
			Header:         http.Header{"Content-Type": {"application/json"}, "X-Multi": {"a", "b"}},
			Body:           []byte(`{"k":"v"}`),
			IdempotencyKey: "idem", TraceParent: "00-abc-def-01", Arrived: arrived, Attempts: 3,
		}}},
		{"message empty", &record{typ: recMessage, msg: &Message{}}},
		{"ack", &record{typ: recAck, id: "a1"}},
		{"retry", &record{typ: recRetry, id: "a1", at: arrived.Add(time.Second), attempts: 7}},
		{"retry zero time", &record{typ: recRetry, id: "a1"}},
		{"dead", &record{typ: recDead, id: "a1", attempts: 2, reason: "404 Not Found"}},
		{"replay", &record{typ: recReplay, id: "a1"}},
		{"delete", &record{typ: recDelete, id: "a1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := encodeRecord(tt.rec)
			got, n, err := decodeRecord(append(b, 0xff, 0xee))
			if err != nil || n != len(b) {
				t.Fatalf("decodeRecord(%x) = _, %d, %v, want %d, nil", b, n, err, len(b))
			}
			want := *tt.rec
			if want.msg != nil {
				want.id = want.msg.ID
			}
			if !reflect.DeepEqual(got, &want) {
				t.Errorf("decodeRecord(encodeRecord(%+v)) = %+v, want it back", tt.rec, got)
			}
		})
	}
}

func TestDecodeRecordErrors(t *testing.T) {
	good := encodeRecord(&record{typ: recAck, id: "abc"})
	flip := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 0x10
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errTruncated},
		{"short header", good[:headerSize-1], errTruncated},
		{"short payload", good[:len(good)-1], errTruncated},
		{"bad crc", flip(0), errCorrupt},
		{"bad payload", flip(len(good) - 1), errCorrupt},
		{"bad type", flip(8), errCorrupt},
		{"bad version", flip(9), errCorrupt},
		{"zeros", make([]byte, 64), errCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := decodeRecord(tt.b); !errors.Is(err, tt.want) {
				t.Errorf("decodeRecord(%x) = %v, want %v", tt.b, err, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encodeRecord(&record{typ: recMessage, msg: &Message{ID: "x", Route: "r", Header: http.Header{"A": {"b"}}, Body: []byte("body")}}))
	f.Add(encodeRecord(&record{typ: recRetry, id: "x", at: time.Unix(5, 0), attempts: 1}))
	f.Add(encodeRecord(&record{typ: recDead, id: "x", reason: "r"}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		// The payload decoders see data only behind a valid CRC; call them
		// directly too so the fuzzer reaches them.
		for typ := recMessage; typ <= recDelete; typ++ {
			_, _ = decodePayload(typ, b)
		}
		// Recovery's metadata decoder accepts exactly what the full one
		// does, and agrees with it.
		framed := appendRecord(nil, recMessage, b)
		full, fn, ferr := decodeRecord(framed)
		_, meta, _, mn, merr := decodeMeta(framed)
		if (ferr == nil) != (merr == nil) {
			t.Fatalf("payload %x: decodeRecord = %v, decodeMeta = %v", b, ferr, merr)
		}
		if ferr == nil {
			m := full.msg
			want := messageMeta{id: m.ID, route: m.Route, arrived: timeToNanos(m.Arrived), attempts: m.Attempts}
			key := string(meta.key)
			meta.key = nil
			if !reflect.DeepEqual(meta, want) || key != m.IdempotencyKey || fn != mn {
				t.Fatalf("payload %x: decodeMeta = %+v, %d, want %+v, %d", b, meta, mn, want, fn)
			}
		}
		rec, n, err := decodeRecord(b)
		if err != nil {
			return
		}
		if n < headerSize || n > len(b) {
			t.Fatalf("decodeRecord(%x) size = %d, want in [%d, %d]", b, n, headerSize, len(b))
		}
		// Whatever decodes must re-encode to a record that decodes the same.
		if _, _, err := decodeRecord(encodeRecord(rec)); err != nil {
			t.Fatalf("decodeRecord(encodeRecord(%+v)) = %v, want nil", rec, err)
		}
	})
}

func TestFrameMessageMatchesAppendRecord(t *testing.T) {
	m := testMessage("r", 7, 300)
	m.Header["X-A"] = []string{"1", "2"}
	m.TraceParent, m.IdempotencyKey, m.Attempts = "00-aa-bb-01", "key", 3
	want := appendRecord(nil, recMessage, encodeMessage(m))
	if got := appendFramedMessage(make([]byte, 0, headerSize), m); !bytes.Equal(got, want) {
		t.Fatalf("appendFramedMessage = %x\nwant %x", got, want)
	}
	// A pooled buffer holds an earlier record: none of it may show.
	dirty := bytes.Repeat([]byte{0xff}, 2*len(want))
	if got := appendFramedMessage(dirty[:0], m); !bytes.Equal(got, want) {
		t.Fatalf("appendFramedMessage into a used buffer = %x\nwant %x", got, want)
	}
}
