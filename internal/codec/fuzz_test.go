package codec_test

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/sensible-iot/sensible/internal/codec"
)

// fuzzReading and fuzzBatch stand for the schemas: text and integer keys,
// nested structs, a slice of them, a map and byte strings.
type fuzzReading struct {
	Stream string            `cbor:"s"`
	At     int64             `cbor:"t"`
	Value  float64           `cbor:"v"`
	Unit   string            `cbor:"u"`
	Labels map[string]string `cbor:"l"`
	Raw    []byte            `cbor:"r"`
}

type fuzzBatch struct {
	Manifest []byte        `cbor:"1,keyasint"`
	Seq      uint64        `cbor:"2,keyasint"`
	Readings []fuzzReading `cbor:"3,keyasint"`
}

// tolerant is the decoder for responses and notifications.
var tolerant = func() *codec.Decoder {
	d, err := codec.NewTolerantDecoder(codec.Limits{})
	if err != nil {
		panic(err)
	}
	return d
}()

// errKind returns the Kind of a *DecodeError.
func errKind(err error) error {
	var de *codec.DecodeError
	if errors.As(err, &de) {
		return de.Kind
	}
	return nil
}

// FuzzUnmarshal checks that the strict decoder (and the tolerant one) never panics, that every
// error is a *DecodeError of exactly one kind, that nothing accepted has
// an indefinite length or a tag, and that what is accepted re-encodes to
// bytes that decode to an equal value and re-encode identically.
func FuzzUnmarshal(f *testing.F) {
	batch, err := codec.Marshal(fuzzBatch{
		Manifest: []byte{0xde, 0xad},
		Seq:      9,
		Readings: []fuzzReading{{Stream: "t", At: 1700000000, Value: 21.5, Unit: "Cel", Labels: map[string]string{"room": "hall"}}},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(batch)
	for _, h := range []string{
		"a3 01 42 dead 02 09 03 80",
		"a2 01 01 01 02",
		"9f 01 ff",
		"c1 1a 514b67b0",
		"83 01 02",
		"a1 f97e00 00",
		"a2 f97e00 00 f97e00 01",
		"f7",
	} {
		f.Add(unhex(h))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		scan, scanErr := scanHeads(data)

		var v any
		err := codec.Unmarshal(data, &v)
		checkFuzzErr(t, err)
		if err == nil {
			checkAcceptable(t, data, scan, scanErr)
			enc, err := codec.Marshal(v)
			if err != nil {
				t.Fatalf("Marshal(%#v) of an accepted value: %v", v, err)
			}
			var v2 any
			if err := codec.Unmarshal(enc, &v2); err != nil {
				t.Fatalf("Unmarshal(Marshal(v)) = %v; encoding %x", err, enc)
			}
			if !same(v, v2) {
				t.Fatalf("round trip changed the value:\n%#v\n%#v", v, v2)
			}
			enc2, err := codec.Marshal(v2)
			// Several NaN keys in one map have no deterministic order
			// (see the package Caveats).
			if err != nil || !bytes.Equal(enc, enc2) && !hasNaNKey(v) {
				t.Fatalf("second encoding %x, %v; want %x", enc2, err, enc)
			}
		}

		var b fuzzBatch
		err = codec.Unmarshal(data, &b)
		checkFuzzErr(t, err)
		// The tolerant decoder accepts all the strict one does, into the
		// same value, and refuses nothing else but for another reason
		// than a key that names no field.
		var tb fuzzBatch
		terr := tolerant.Unmarshal(data, &tb)
		checkFuzzErr(t, terr)
		switch {
		case err == nil && terr != nil:
			t.Fatalf("tolerant decoder refuses what the strict one accepts: %v", terr)
		case err == nil && !reflect.DeepEqual(b, tb) && !hasNaNValue(b):
			t.Fatalf("tolerant decoder gave %+v, strict %+v", tb, b)
		case err != nil && terr != nil && !errors.Is(err, codec.ErrType) && !errors.Is(terr, errKind(err)):
			t.Fatalf("strict decoder: %v; tolerant: %v", err, terr)
		}
		if err == nil {
			checkAcceptable(t, data, scan, scanErr)
			enc, err := codec.Marshal(b)
			if err != nil {
				t.Fatalf("Marshal(%+v) of an accepted value: %v", b, err)
			}
			var b2 fuzzBatch
			if err := codec.Unmarshal(enc, &b2); err != nil {
				t.Fatalf("Unmarshal(Marshal(b)) = %v; encoding %x", err, enc)
			}
			if !reflect.DeepEqual(b, b2) && !hasNaNValue(b) {
				t.Fatalf("round trip changed the value:\n%+v\n%+v", b, b2)
			}
			if enc2, err := codec.Marshal(b2); err != nil || !bytes.Equal(enc, enc2) {
				t.Fatalf("second encoding %x, %v; want %x", enc2, err, enc)
			}
		}
	})
}

// checkFuzzErr fails unless err is nil or a *DecodeError of exactly one
// kind, with that kind's message.
func checkFuzzErr(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var de *codec.DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v (%T), want a *codec.DecodeError", err, err)
	}
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
			if de.Kind != s {
				t.Fatalf("err matches %v but its Kind is %v", s, de.Kind)
			}
		}
	}
	if n != 1 || err.Error() != de.Kind.Error() {
		t.Fatalf("err = %q (library: %v) matches %d sentinels, want 1", err, de.Err, n)
	}
}

// checkAcceptable fails if the head walker disagrees with an accepted
// input: it must be well-formed, without indefinite lengths or tags.
func checkAcceptable(t *testing.T, data []byte, scan headScan, scanErr error) {
	t.Helper()
	if scanErr != nil || scan.indefinite || scan.tag {
		t.Fatalf("accepted %x, but the head walk says %v, indefinite %v, tag %v", data, scanErr, scan.indefinite, scan.tag)
	}
}

// hasNaNKey reports whether a value decoded into any has a map with a NaN
// key.
func hasNaNKey(v any) bool {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if hasNaNKey(e) {
				return true
			}
		}
	case map[any]any:
		for k, e := range x {
			if f, ok := k.(float64); ok && math.IsNaN(f) || hasNaNKey(e) {
				return true
			}
		}
	}
	return false
}

// hasNaNValue reports whether a reading holds NaN, which DeepEqual never
// finds equal to itself.
func hasNaNValue(b fuzzBatch) bool {
	for _, r := range b.Readings {
		if math.IsNaN(r.Value) {
			return true
		}
	}
	return false
}
