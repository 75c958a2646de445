package codec_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/sensible-iot/sensible/internal/codec"
)

// vector is one example of RFC 8949 Appendix A, as published by the
// cbor/test-vectors repository.
type vector struct {
	Hex        string          `json:"hex"`
	Roundtrip  bool            `json:"roundtrip"`
	Decoded    json.RawMessage `json:"decoded"`    // absent when Diagnostic is set
	Diagnostic string          `json:"diagnostic"` // set when the value has no JSON form
}

// Expected outcome of the Appendix A vectors against the strict decoder.
const (
	wantAccepted    = 62 // every well-formed vector without an indefinite length or a tag
	wantRejected    = 20 // 11 with indefinite lengths, 8 with tags, 1 in notWellFormed
	wantRoundtripOK = 55 // accepted, roundtrip true, not in roundtripExceptions
)

// notWellFormed lists the vectors that RFC 8949 no longer allows, with the
// reason. The strict decoder must reject them with ErrMalformed, and the
// head walker must agree that they are not well-formed.
var notWellFormed = map[string]string{
	"f818": "simple(24) in two bytes: RFC 7049 had it; RFC 8949 §3.3 makes 0xf8 followed by a byte below 0x20 not well-formed, and dropped the example",
}

// roundtripExceptions lists the vectors marked roundtrip that Marshal of
// the strictly decoded value does not reproduce, each with the bytes it
// gives instead and why.
var roundtripExceptions = map[string]struct{ got, why string }{
	"f7": {"f6", "undefined decodes to nil in any, and Marshal writes nil as null"},
}

// diagValues gives, for every diagnostic-only vector, the Go value a
// decoder must produce: the strict one for those without tags or
// indefinite lengths, the lenient one of this test for the others.
var diagValues = map[string]any{
	"Infinity":     math.Inf(1),
	"-Infinity":    math.Inf(-1),
	"NaN":          math.NaN(),
	"undefined":    nil,
	"simple(16)":   cbor.SimpleValue(16),
	"simple(24)":   cbor.SimpleValue(24),
	"simple(255)":  cbor.SimpleValue(255),
	"h''":          []byte{},
	"h'01020304'":  []byte{1, 2, 3, 4},
	"{1: 2, 3: 4}": map[any]any{uint64(1): uint64(2), uint64(3): uint64(4)},

	`0("2013-03-21T20:04:00Z")`:    time.Date(2013, 3, 21, 20, 4, 0, 0, time.UTC),
	"1(1363896240)":                time.Unix(1363896240, 0),
	"1(1363896240.5)":              time.Unix(1363896240, 500_000_000),
	"23(h'01020304')":              cbor.Tag{Number: 23, Content: []byte{1, 2, 3, 4}},
	"24(h'6449455446')":            cbor.Tag{Number: 24, Content: []byte("dIETF")},
	`32("http://www.example.com")`: cbor.Tag{Number: 32, Content: "http://www.example.com"},
	"(_ h'0102', h'030405')":       []byte{1, 2, 3, 4, 5},
}

// vectorsPath finds ../shared/testvectors/cbor/appendix_a.json relative to
// the repository root (the directory holding go.mod).
func vectorsPath(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "..", "shared", "testvectors", "cbor", "appendix_a.json")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

func loadVectors(t *testing.T) []vector {
	t.Helper()
	path := vectorsPath(t)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("RFC 8949 Appendix A vectors not found: expected at %s (../shared/testvectors relative to the repository root)", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return vs
}

// lenientMode reads what the strict decoder refuses: indefinite lengths
// and tags. It still rejects duplicate keys.
func lenientMode(t *testing.T) cbor.DecMode {
	t.Helper()
	dm, err := cbor.DecOptions{
		DupMapKey:   cbor.DupMapKeyEnforcedAPF,
		IndefLength: cbor.IndefLengthAllowed,
		TagsMd:      cbor.TagsAllowed,
	}.DecMode()
	if err != nil {
		t.Fatal(err)
	}
	return dm
}

func TestAppendixA(t *testing.T) {
	vs := loadVectors(t)
	lenient := lenientMode(t)
	var accepted, rejected, roundtripped int
	for _, v := range vs {
		t.Run(v.Hex, func(t *testing.T) {
			data, err := hex.DecodeString(v.Hex)
			if err != nil {
				t.Fatalf("bad hex: %v", err)
			}
			if (v.Decoded == nil) == (v.Diagnostic == "") {
				t.Fatalf("vector needs exactly one of decoded and diagnostic")
			}
			if why, ok := notWellFormed[v.Hex]; ok {
				if _, err := scanHeads(data); err != errWalkInvalid {
					t.Errorf("head walk: %v, want %v (%s)", err, errWalkInvalid, why)
				}
				var got any
				if err := codec.Unmarshal(data, &got); !errors.Is(err, codec.ErrMalformed) {
					t.Errorf("Unmarshal: %v, want ErrMalformed (%s)", err, why)
				}
				rejected++
				return
			}
			if v.Diagnostic != "" {
				// The library's diagnostic notation must agree with the
				// vector's; this checks the vector is read as intended.
				if got, err := cbor.Diagnose(data); err != nil || got != v.Diagnostic {
					t.Errorf("Diagnose = %q, %v; want %q", got, err, v.Diagnostic)
				}
			}
			scan, err := scanHeads(data)
			if err != nil {
				t.Fatalf("head walk: %v", err)
			}

			var got any
			err = codec.Unmarshal(data, &got)
			if err == nil {
				accepted++
				if scan.indefinite || scan.tag {
					t.Errorf("strict decoder accepted an input with indefinite length %v or tag %v", scan.indefinite, scan.tag)
				}
				if err := checkValue(v, got); err != nil {
					t.Errorf("strict: %v", err)
				}
				if v.Roundtrip {
					if checkRoundtrip(t, v, data, got) {
						roundtripped++
					}
				}
				return
			}

			rejected++
			switch {
			case errors.Is(err, codec.ErrIndefiniteLength):
				if !scan.indefinite {
					t.Errorf("rejected with %v, but the input has no indefinite length", err)
				}
			case errors.Is(err, codec.ErrTag):
				if !scan.tag {
					t.Errorf("rejected with %v, but the input has no tag", err)
				}
			default:
				t.Fatalf("rejected with %v, want only ErrIndefiniteLength or ErrTag", err)
			}
			// The vector itself must still be right: read it leniently.
			// (Marshal is not tried: it writes neither tags nor
			// indefinite lengths.)
			var lax any
			if err := lenient.Unmarshal(data, &lax); err != nil {
				t.Fatalf("lenient decode: %v", err)
			}
			if err := checkValue(v, lax); err != nil {
				t.Errorf("lenient: %v", err)
			}
		})
	}
	if accepted != wantAccepted || rejected != wantRejected || roundtripped != wantRoundtripOK {
		t.Errorf("accepted %d, rejected %d, round-tripped %d of %d vectors; want %d, %d, %d",
			accepted, rejected, roundtripped, len(vs), wantAccepted, wantRejected, wantRoundtripOK)
	}
}

// checkRoundtrip checks that Marshal(got) reproduces data, or fails as
// roundtripExceptions says. It reports whether the bytes matched.
func checkRoundtrip(t *testing.T, v vector, data []byte, got any) bool {
	t.Helper()
	enc, err := codec.Marshal(got)
	if err != nil {
		t.Errorf("Marshal(%#v): %v", got, err)
		return false
	}
	if ex, ok := roundtripExceptions[v.Hex]; ok {
		if hex.EncodeToString(enc) != ex.got {
			t.Errorf("Marshal = %x, want %s (%s)", enc, ex.got, ex.why)
		}
		return false
	}
	if !bytes.Equal(enc, data) {
		t.Errorf("Marshal(%#v) = %x, want %x", got, enc, data)
		return false
	}
	return true
}

// checkValue compares a decoded value with what the vector says.
func checkValue(v vector, got any) error {
	if v.Diagnostic != "" {
		want, ok := diagValues[v.Diagnostic]
		if !ok {
			return fmt.Errorf("no expected value for diagnostic %q: add it to diagValues", v.Diagnostic)
		}
		if !same(want, got) {
			return fmt.Errorf("decoded %#v, want %#v", got, want)
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(v.Decoded))
	dec.UseNumber()
	var want any
	if err := dec.Decode(&want); err != nil {
		return fmt.Errorf("vector's decoded value: %v", err)
	}
	return matchJSON(want, got)
}

// matchJSON compares a value decoded from JSON (with json.Number) with one
// decoded from CBOR into any.
func matchJSON(want, got any) error {
	switch w := want.(type) {
	case nil, bool, string:
		if want != got {
			return fmt.Errorf("got %#v, want %#v", got, want)
		}
	case json.Number:
		s := w.String()
		if strings.ContainsAny(s, ".eE") {
			f, err := w.Float64()
			if err != nil {
				return err
			}
			if !same(f, got) {
				return fmt.Errorf("got %#v, want float %s", got, s)
			}
			return nil
		}
		wi, ok := new(big.Int).SetString(s, 10)
		if !ok {
			return fmt.Errorf("bad integer %q in vector", s)
		}
		gi := toBig(got)
		if gi == nil || gi.Cmp(wi) != 0 {
			return fmt.Errorf("got %#v, want integer %s", got, s)
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("got %#v, want array of %d", got, len(w))
		}
		for i := range w {
			if err := matchJSON(w[i], g[i]); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
	case map[string]any:
		g, ok := got.(map[any]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("got %#v, want map of %d", got, len(w))
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				return fmt.Errorf("key %q missing", k)
			}
			if err := matchJSON(wv, gv); err != nil {
				return fmt.Errorf("[%q]: %w", k, err)
			}
		}
	default:
		return fmt.Errorf("unexpected JSON value %#v", want)
	}
	return nil
}

// toBig returns an integer decoded into any as a big.Int, or nil.
func toBig(v any) *big.Int {
	switch x := v.(type) {
	case uint64:
		return new(big.Int).SetUint64(x)
	case int64:
		return big.NewInt(x)
	case big.Int:
		return &x
	case *big.Int:
		return x
	}
	return nil
}

// same reports whether two values decoded into any are equal, where NaN
// equals NaN, 0.0 differs from -0.0, times compare as instants and maps
// may have NaN keys (counted, not compared, since they cannot be looked
// up).
func same(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && (x == y && math.Signbit(x) == math.Signbit(y) || math.IsNaN(x) && math.IsNaN(y))
	case time.Time:
		y, ok := b.(time.Time)
		return ok && x.Equal(y)
	case []byte:
		y, ok := b.([]byte)
		return ok && bytes.Equal(x, y)
	case big.Int:
		y, ok := b.(big.Int)
		return ok && x.Cmp(&y) == 0
	case cbor.Tag:
		y, ok := b.(cbor.Tag)
		return ok && x.Number == y.Number && same(x.Content, y.Content)
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !same(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[any]any:
		y, ok := b.(map[any]any)
		if !ok || len(x) != len(y) {
			return false
		}
		nans := 0
		for k, xv := range x {
			if f, ok := k.(float64); ok && math.IsNaN(f) {
				nans++
				continue
			}
			yv, ok := y[k]
			if !ok || !same(xv, yv) {
				return false
			}
		}
		for k := range y {
			if f, ok := k.(float64); ok && math.IsNaN(f) {
				nans--
			}
		}
		return nans == 0
	}
	return reflect.DeepEqual(a, b)
}
