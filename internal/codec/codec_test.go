package codec_test

import (
	"bytes"
	"errors"
	"io"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/sensible-iot/sensible/internal/codec"
)

// reading is a typical telemetry reading, as the schemas define them.
type reading struct {
	Stream string  `cbor:"s"`
	At     int64   `cbor:"t"`
	Value  float64 `cbor:"v"`
	Unit   string  `cbor:"u"`
	Seq    uint64  `cbor:"n"`
}

// sentinels are all of the package's error kinds.
var sentinels = []error{
	codec.ErrTooLarge, codec.ErrMalformed, codec.ErrDuplicateKey, codec.ErrIndefiniteLength,
	codec.ErrTag, codec.ErrTooDeep, codec.ErrTooMany, codec.ErrType,
}

// checkKind fails unless err is a *DecodeError of kind want and of no
// other sentinel.
func checkKind(t *testing.T, err, want error) {
	t.Helper()
	var de *codec.DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v (%T), want a *codec.DecodeError", err, err)
	}
	if de.Kind != want || !errors.Is(err, want) {
		t.Errorf("err = %v (library: %v), want %v", err, de.Err, want)
	}
	for _, s := range sentinels {
		if s != want && errors.Is(err, s) {
			t.Errorf("err = %v also matches %v", err, s)
		}
	}
	if err.Error() != want.Error() {
		t.Errorf("message %q, want the sentinel's %q", err.Error(), want.Error())
	}
}

// nest returns depth single-element arrays around 0.
func nest(depth int) []byte {
	return append(bytes.Repeat([]byte{0x81}, depth), 0x00)
}

// mapOf returns a map with n pairs of distinct integer keys.
func mapOf(n int) []byte {
	b, err := codec.Marshal(func() map[int]int {
		m := make(map[int]int, n)
		for i := range n {
			m[i] = i
		}
		return m
	}())
	if err != nil {
		panic(err)
	}
	return b
}

// arrayOf returns an array of n zeros.
func arrayOf(n int) []byte {
	b, err := codec.Marshal(make([]int, n))
	if err != nil {
		panic(err)
	}
	return b
}

func TestUnmarshalRejects(t *testing.T) {
	anyTarget := func() any { return new(any) }
	tests := []struct {
		name   string
		data   []byte
		target func() any // nil means any
		want   error
	}{
		{name: "duplicate int key", data: unhex("a2 01 01 01 02"), want: codec.ErrDuplicateKey},
		{name: "duplicate text key", data: unhex("a2 6161 01 6161 02"), want: codec.ErrDuplicateKey},
		{name: "duplicate key not shortest", data: unhex("a2 01 00 1801 00"), want: codec.ErrDuplicateKey},
		{name: "duplicate key in nested map", data: unhex("81 a2 20 00 20 00"), want: codec.ErrDuplicateKey},
		{name: "duplicate field", data: unhex("a2 6173 6161 6173 6162"), target: func() any { return new(reading) }, want: codec.ErrDuplicateKey},
		{name: "duplicate key into Go map", data: unhex("a2 6161 01 6161 02"), target: func() any { return new(map[string]int) }, want: codec.ErrDuplicateKey},
		{name: "duplicate float key", data: unhex("a2 f93c00 00 fb3ff0000000000000 00"), want: codec.ErrDuplicateKey},

		{name: "indefinite array", data: unhex("9f 01 ff"), want: codec.ErrIndefiniteLength},
		{name: "indefinite map", data: unhex("bf 6161 01 ff"), want: codec.ErrIndefiniteLength},
		{name: "indefinite bytes", data: unhex("5f 41 00 ff"), want: codec.ErrIndefiniteLength},
		{name: "indefinite text", data: unhex("7f 61 61 ff"), want: codec.ErrIndefiniteLength},
		{name: "indefinite empty array nested", data: unhex("82 01 9f ff"), want: codec.ErrIndefiniteLength},
		{name: "indefinite into struct", data: unhex("bf 6173 6161 ff"), target: func() any { return new(reading) }, want: codec.ErrIndefiniteLength},

		{name: "epoch time tag", data: unhex("c1 1a 514b67b0"), want: codec.ErrTag},
		{name: "text time tag", data: unhex("c0 74 323031332d30332d32315432303a30343a30305a"), target: func() any { return new(time.Time) }, want: codec.ErrTag},
		{name: "bignum tag", data: unhex("c2 41 01"), want: codec.ErrTag},
		{name: "negative bignum tag", data: unhex("c3 49 010000000000000000"), target: func() any { return new(big.Int) }, want: codec.ErrTag},
		{name: "self-described tag", data: unhex("d9d9f7 01"), want: codec.ErrTag},
		{name: "COSE_Sign1 tag", data: unhex("d2 84 40 a0 f6 40"), want: codec.ErrTag},
		{name: "tag in array", data: unhex("82 01 d820 60"), want: codec.ErrTag},

		{name: "too deep", data: nest(codec.DefaultMaxDepth + 1), want: codec.ErrTooDeep},
		{name: "too deep maps", data: append(bytes.Repeat(unhex("a1 00"), codec.DefaultMaxDepth+1), 0x00), want: codec.ErrTooDeep},
		{name: "array over limit", data: arrayOf(codec.DefaultMaxArray + 1), want: codec.ErrTooMany},
		{name: "array head over limit", data: unhex("9a 00010000"), want: codec.ErrTooMany},
		{name: "map over limit", data: mapOf(codec.DefaultMaxMap + 1), want: codec.ErrTooMany},
		{name: "map head over limit", data: unhex("ba 7fffffff"), want: codec.ErrTooMany},

		{name: "empty", data: nil, want: codec.ErrMalformed},
		{name: "truncated uint16", data: unhex("19 01"), want: codec.ErrMalformed},
		{name: "truncated uint64", data: unhex("1b 00000000"), want: codec.ErrMalformed},
		{name: "truncated float64", data: unhex("fb 3ff0"), want: codec.ErrMalformed},
		{name: "truncated text", data: unhex("63 6161"), want: codec.ErrMalformed},
		{name: "truncated bytes length", data: unhex("5a 0000"), want: codec.ErrMalformed},
		{name: "truncated array", data: unhex("83 01 02"), want: codec.ErrMalformed},
		{name: "truncated map value", data: unhex("a1 01"), want: codec.ErrMalformed},
		{name: "truncated into struct", data: unhex("a2 6173 6161 6174"), target: func() any { return new(reading) }, want: codec.ErrMalformed},
		{name: "bytes length overflows int", data: unhex("5b ffffffffffffffff 00"), want: codec.ErrMalformed},
		{name: "trailing byte", data: unhex("01 02"), want: codec.ErrMalformed},
		{name: "trailing item", data: unhex("a0 a0"), want: codec.ErrMalformed},
		{name: "reserved ai 28", data: unhex("1c"), want: codec.ErrMalformed},
		{name: "reserved ai 29", data: unhex("3d"), want: codec.ErrMalformed},
		{name: "reserved ai 30", data: unhex("5e"), want: codec.ErrMalformed},
		{name: "reserved ai in array", data: unhex("82 01 fc"), want: codec.ErrMalformed},
		{name: "break alone", data: unhex("ff"), want: codec.ErrMalformed},
		{name: "break in definite array", data: unhex("82 01 ff"), want: codec.ErrMalformed},
		{name: "indefinite uint", data: unhex("1f"), want: codec.ErrMalformed},
		{name: "two-byte simple below 32", data: unhex("f8 18"), want: codec.ErrMalformed},
		{name: "invalid UTF-8", data: unhex("62 c328"), want: codec.ErrMalformed},
		{name: "invalid UTF-8 key", data: unhex("a1 61 ff 00"), target: func() any { return new(reading) }, want: codec.ErrMalformed},

		{name: "text into int", data: unhex("6161"), target: func() any { return new(int) }, want: codec.ErrType},
		{name: "negative into uint", data: unhex("20"), target: func() any { return new(uint64) }, want: codec.ErrType},
		{name: "overflow int8", data: unhex("19 0100"), target: func() any { return new(int8) }, want: codec.ErrType},
		{name: "array into struct", data: unhex("80"), target: func() any { return new(reading) }, want: codec.ErrType},
		{name: "wrong field type", data: unhex("a1 6174 6161"), target: func() any { return new(reading) }, want: codec.ErrType},
		{name: "unknown field", data: unhex("a2 6173 6161 627a7a 01"), target: func() any { return new(reading) }, want: codec.ErrType},
		{name: "field in other case", data: unhex("a1 6153 6161"), target: func() any { return new(reading) }, want: codec.ErrType},
		{name: "integer key into struct", data: unhex("a1 01 01"), target: func() any { return new(reading) }, want: codec.ErrType},
		{name: "array as map key", data: unhex("a1 80 01"), want: codec.ErrType},
		{name: "byte string into string", data: unhex("41 61"), target: func() any { return new(string) }, want: codec.ErrType},
		{name: "nil target", data: unhex("01"), target: func() any { return nil }, want: codec.ErrType},
		{name: "non-pointer target", data: unhex("01"), target: func() any { return 0 }, want: codec.ErrType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target := tt.target
			if target == nil {
				target = anyTarget
			}
			err := codec.Unmarshal(tt.data, target())
			if err == nil {
				t.Fatalf("Unmarshal(%x) succeeded, want %v", tt.data, tt.want)
			}
			checkKind(t, err, tt.want)
		})
	}
}

func TestUnmarshalTooLarge(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		// A reserved head: decoding would give ErrMalformed, so ErrTooLarge
		// shows the size was checked first.
		{"malformed", append([]byte{0x1c}, make([]byte, codec.DefaultMaxBody)...)},
		{"valid byte string", append(unhex("5a 00010000"), make([]byte, 1<<16)...)},
		{"huge", make([]byte, 64<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v any
			err := codec.Unmarshal(tt.data, &v)
			checkKind(t, err, codec.ErrTooLarge)
			var de *codec.DecodeError
			if errors.As(err, &de) && de.Err != nil {
				t.Errorf("Err = %v, want nil: nothing was decoded", de.Err)
			}
			if v != nil {
				t.Errorf("v = %v, want untouched", v)
			}
		})
	}

	// The largest accepted body: a byte string filling MaxBody exactly.
	data := append(unhex("5a 0000fffb"), make([]byte, codec.DefaultMaxBody-5)...)
	var b []byte
	if err := codec.Unmarshal(data, &b); err != nil || len(b) != codec.DefaultMaxBody-5 {
		t.Errorf("Unmarshal of %d bytes: len %d, %v", len(data), len(b), err)
	}
}

func TestUnmarshalAccepts(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"depth at limit", nest(codec.DefaultMaxDepth)},
		{"array at limit", arrayOf(codec.DefaultMaxArray)},
		{"map at limit", mapOf(codec.DefaultMaxMap)},
		{"same key in sibling maps", unhex("82 a1 01 00 a1 01 00")},
		{"text and bytes keys alike", unhex("a2 6161 00 4161 00")},
		{"int and float keys alike", unhex("a2 01 00 f93c00 00")},
		{"not shortest", unhex("1a 00000001")},
		{"simple value", unhex("f0")},
		{"undefined", unhex("f7")},
		{"NaN", unhex("fa 7fc00000")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v any
			if err := codec.Unmarshal(tt.data, &v); err != nil {
				t.Errorf("Unmarshal(%x): %v", tt.data, err)
			}
		})
	}
}

func TestUnmarshalStruct(t *testing.T) {
	want := reading{Stream: "temp", At: 1700000000, Value: 21.5, Unit: "Cel", Seq: 7}
	data, err := codec.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var got reading
	if err := codec.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}

	// Absent fields keep their zero value; integers that fit are accepted
	// for floats.
	got = reading{}
	if err := codec.Unmarshal(unhex("a2 6173 6161 6176 18 2a"), &got); err != nil {
		t.Fatal(err)
	}
	if want := (reading{Stream: "a", Value: 42}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestDecodeErrorUnwrap(t *testing.T) {
	var v any
	err := codec.Unmarshal(unhex("83 01"), &v)
	if !errors.Is(err, codec.ErrMalformed) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("err = %v: want both ErrMalformed and io.ErrUnexpectedEOF in its tree", err)
	}
	err = codec.Unmarshal(unhex("a2 01 01 01 02"), &v)
	var dup *cbor.DupMapKeyError
	if !errors.As(err, &dup) {
		t.Errorf("err = %v: want the library's *cbor.DupMapKeyError in its tree", err)
	}
}

func TestNewDecoder(t *testing.T) {
	l := codec.Limits{MaxBody: 100, MaxDepth: 4, MaxArray: 16, MaxMap: 16}
	d, err := codec.NewDecoder(l)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Limits(); got != l {
		t.Errorf("Limits() = %+v, want %+v", got, l)
	}
	tests := []struct {
		name string
		data []byte
		want error // nil: accepted
	}{
		{"depth at limit", nest(4), nil},
		{"too deep", nest(5), codec.ErrTooDeep},
		{"array at limit", arrayOf(16), nil},
		{"array over limit", arrayOf(17), codec.ErrTooMany},
		{"map at limit", mapOf(16), nil},
		{"map over limit", mapOf(17), codec.ErrTooMany},
		{"body at limit", append(unhex("58 62"), make([]byte, 98)...), nil},
		{"body over limit", append(unhex("58 63"), make([]byte, 99)...), codec.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v any
			err := d.Unmarshal(tt.data, &v)
			if tt.want == nil {
				if err != nil {
					t.Errorf("Unmarshal: %v", err)
				}
				return
			}
			checkKind(t, err, tt.want)
		})
	}
}

func TestNewDecoderDefaults(t *testing.T) {
	want := codec.Limits{
		MaxBody:  codec.DefaultMaxBody,
		MaxDepth: codec.DefaultMaxDepth,
		MaxArray: codec.DefaultMaxArray,
		MaxMap:   codec.DefaultMaxMap,
	}
	d, err := codec.NewDecoder(codec.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var zero codec.Decoder
	var null *codec.Decoder
	for name, d := range map[string]*codec.Decoder{"NewDecoder": d, "zero": &zero, "nil": null} {
		if got := d.Limits(); got != want {
			t.Errorf("%s: Limits() = %+v, want %+v", name, got, want)
		}
		var v any
		if err := d.Unmarshal(unhex("a1 01 02"), &v); err != nil {
			t.Errorf("%s: Unmarshal: %v", name, err)
		}
		checkKind(t, d.Unmarshal(nest(codec.DefaultMaxDepth+1), &v), codec.ErrTooDeep)
	}

	// Zero fields take defaults, set ones are kept.
	d, err = codec.NewDecoder(codec.Limits{MaxMap: 20})
	if err != nil {
		t.Fatal(err)
	}
	want.MaxMap = 20
	if got := d.Limits(); got != want {
		t.Errorf("Limits() = %+v, want %+v", got, want)
	}
}

func TestNewDecoderInvalid(t *testing.T) {
	for _, l := range []codec.Limits{
		{MaxBody: -1},
		{MaxDepth: -1},
		{MaxDepth: 3},
		{MaxDepth: 65536},
		{MaxArray: -1},
		{MaxArray: 15},
		{MaxMap: -1},
		{MaxMap: 15},
	} {
		d, err := codec.NewDecoder(l)
		if err == nil || d != nil {
			t.Errorf("NewDecoder(%+v) = %v, %v; want an error", l, d, err)
			continue
		}
		if !strings.HasPrefix(err.Error(), "codec: ") {
			t.Errorf("NewDecoder(%+v): error %q lacks the package prefix", l, err)
		}
	}
}

func TestMarshal(t *testing.T) {
	type fields struct {
		Zeta  int `cbor:"z"`
		Alpha int `cbor:"aa"`
		Beta  int `cbor:"b"`
	}
	tests := []struct {
		name string
		v    any
		hex  string
	}{
		// Map keys sort bytewise by their encoding, so shorter heads and
		// lower major types come first.
		{"mixed keys", map[any]any{"b": 1, "a": 2, 10: 3, -1: 4, "aa": 5, 1000: 6, cbor.ByteString("\x00"): 7}, "a7 0a03 1903e8 06 2004 4100 07 6161 02 6162 01 626161 05"},
		{"text keys by length", map[string]int{"bb": 1, "a": 2, "c": 3}, "a3 6161 02 6163 03 626262 01"},
		{"int keys", map[int]bool{1000: true, -1: true, 0: false, 24: true}, "a4 00f4 1818f5 1903e8f5 20f5"},
		{"struct fields sorted", fields{Zeta: 1, Alpha: 2, Beta: 3}, "a3 6162 03 617a 01 626161 02"},
		{"nested", map[string]any{"z": map[int]int{2: 0, 1: 0}, "a": []any{}}, "a2 6161 80 617a a2 0100 0200"},

		// Floats use the shortest width that keeps the value.
		{"float16", 1.5, "f93e00"},
		{"float16 max", 65504.0, "f97bff"},
		{"float16 subnormal", 5.960464477539063e-08, "f90001"},
		{"float32", 100000.0, "fa47c35000"},
		{"float64", 1.1, "fb3ff199999999999a"},
		{"float32 input", float32(0.5), "f93800"},
		{"zero", 0.0, "f90000"},
		{"negative zero", math.Copysign(0, -1), "f98000"},
		{"NaN", math.NaN(), "f97e00"},
		{"NaN with payload", math.Float64frombits(0x7ff8000000000123), "f97e00"},
		{"infinity", math.Inf(-1), "f9fc00"},

		// Integers and lengths use the shortest head.
		{"small int", 23, "17"},
		{"int one byte", 24, "1818"},
		{"negative", -500, "3901f3"},
		{"min int64", int64(math.MinInt64), "3b7fffffffffffffff"},
		{"max uint64", uint64(math.MaxUint64), "1bffffffffffffffff"},
		{"big.Int in range", new(big.Int).Neg(new(big.Int).Lsh(big.NewInt(1), 64)), "3bffffffffffffffff"},
		{"long text", strings.Repeat("x", 24), "7818" + strings.Repeat("78", 24)},

		// No tags: time is integer seconds.
		{"time", time.Unix(1363896240, 500_000_000), "1a514b67b0"},
		{"nil slice", []int(nil), "f6"},
		{"empty slice", []int{}, "80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := codec.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(tt.hex); !bytes.Equal(got, want) {
				t.Errorf("Marshal(%#v) = %x, want %x", tt.v, got, want)
			}
		})
	}
}

func TestMarshalStable(t *testing.T) {
	m := make(map[string]any)
	for i := range 200 {
		m[strings.Repeat("k", i%7)+string(rune('a'+i%26))+string(rune('A'+i/26))] = []any{i, float64(i) / 3, -i}
	}
	first, err := codec.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 { // map iteration order differs each time
		got, err := codec.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, first) {
			t.Fatal("Marshal of one map gave different bytes")
		}
	}
	// A copy built in another order gives the same bytes.
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	if got, _ := codec.Marshal(c); !bytes.Equal(got, first) {
		t.Error("Marshal of an equal map gave different bytes")
	}
	// And what Unmarshal reads back encodes the same again.
	var back any
	if err := codec.Unmarshal(first, &back); err != nil {
		t.Fatal(err)
	}
	if got, _ := codec.Marshal(back); !bytes.Equal(got, first) {
		t.Errorf("re-encoding changed the bytes:\n%x\n%x", got, first)
	}
}

func TestMarshalErrors(t *testing.T) {
	for name, v := range map[string]any{
		"channel":  make(chan int),
		"function": func() {},
		"tag":      cbor.Tag{Number: 1, Content: 0},
		"raw tag":  cbor.RawTag{Number: 1, Content: cbor.RawMessage{0}},
		"bignum":   new(big.Int).Lsh(big.NewInt(1), 64),
	} {
		b, err := codec.Marshal(v)
		if err == nil {
			t.Errorf("%s: Marshal = %x, want an error", name, b)
		} else if !strings.HasPrefix(err.Error(), "codec: ") {
			t.Errorf("%s: error %q lacks the package prefix", name, err)
		}
	}
}

func TestConcurrent(t *testing.T) {
	d, err := codec.NewDecoder(codec.Limits{MaxArray: 100})
	if err != nil {
		t.Fatal(err)
	}
	data, err := codec.Marshal([]reading{{Stream: "a"}, {Stream: "b", Value: 1.5}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	for range 8 {
		go func() {
			var err error
			for range 100 {
				var rs []reading
				if err = d.Unmarshal(data, &rs); err != nil {
					break
				}
				var v any
				if err = codec.Unmarshal(data, &v); err != nil {
					break
				}
				if _, err = codec.Marshal(rs); err != nil {
					break
				}
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	r := reading{Stream: "indoor.temperature", At: 1700000000, Value: 21.5, Unit: "Cel", Seq: 42}
	batch := make([]reading, 100)
	for i := range batch {
		batch[i] = r
		batch[i].At += int64(i)
		batch[i].Value += float64(i) / 10
		batch[i].Seq += uint64(i)
	}
	b.Run("reading", func(b *testing.B) {
		data, err := codec.Marshal(r)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			var got reading
			if err := codec.Unmarshal(data, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("batch100", func(b *testing.B) {
		data, err := codec.Marshal(batch)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			var got []reading
			if err := codec.Unmarshal(data, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestTolerantDecoder(t *testing.T) {
	d, err := codec.NewTolerantDecoder(codec.Limits{MaxBody: 64})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Limits().MaxBody; got != 64 {
		t.Fatalf("MaxBody %d, want 64", got)
	}
	type older struct {
		Stream string `cbor:"s"`
	}
	newer, err := codec.Marshal(map[string]any{"s": "power", "added": 7})
	if err != nil {
		t.Fatal(err)
	}
	var v older
	if err := d.Unmarshal(newer, &v); err != nil || v.Stream != "power" {
		t.Fatalf("tolerant decode of a newer value = %+v, %v", v, err)
	}
	// The strict decoder still refuses the unknown key.
	checkKind(t, codec.Unmarshal(newer, &older{}), codec.ErrType)
	// Everything else stays strict.
	for name, c := range map[string]struct {
		in   string
		kind error
	}{
		"duplicate unknown key": {"a3 61 73 61 78 61 61 01 61 61 02", codec.ErrDuplicateKey},
		"tag":                   {"a1 61 73 c1 01", codec.ErrTag},
		"indefinite":            {"bf 61 73 61 78 ff", codec.ErrIndefiniteLength},
		"trailing bytes":        {"a1 61 73 61 78 00", codec.ErrMalformed},
		"wrong type":            {"a1 61 73 01", codec.ErrType},
	} {
		t.Run(name, func(t *testing.T) {
			checkKind(t, d.Unmarshal(unhex(c.in), &older{}), c.kind)
		})
	}
	checkKind(t, d.Unmarshal(make([]byte, 65), &older{}), codec.ErrTooLarge)
	if _, err := codec.NewTolerantDecoder(codec.Limits{MaxDepth: 1}); err == nil {
		t.Fatal("invalid limits accepted")
	}
}

func TestDecodeErrorField(t *testing.T) {
	type inner struct {
		Value float64 `cbor:"v"`
	}
	type outer struct {
		Name  string  `cbor:"name"`
		Items []inner `cbor:"items"`
	}
	for _, c := range []struct {
		in    any
		field string
	}{
		{map[string]any{"name": 1}, "name"},
		{map[string]any{"items": []any{map[string]any{"v": "x"}}}, "items"},
		{[]int{1}, ""},
	} {
		b, err := codec.Marshal(c.in)
		if err != nil {
			t.Fatal(err)
		}
		var v outer
		err = codec.Unmarshal(b, &v)
		var de *codec.DecodeError
		if !errors.As(err, &de) || de.Field != c.field {
			t.Errorf("Unmarshal(%v): %#v, want Field %q", c.in, err, c.field)
		}
	}
	// A field name alone is not input data: the message stays fixed.
	var v struct {
		N int `cbor:"n"`
	}
	err := codec.Unmarshal(unhex("a1 61 6e 61 78"), &v)
	checkKind(t, err, codec.ErrType)
}
