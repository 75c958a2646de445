package protocol_test

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
)

// The seed corpora live in testdata/fuzz/<FuzzName>/, one file per seed,
// and run with every go test. go test -update writes them again from the
// golden vectors and the hostile inputs below.

// batchSeeds are the seeds of FuzzDecodeBatch besides the golden batches.
func batchSeeds(t testing.TB, f *fixture) map[string][]byte {
	golden := readGolden(t, "telemetry-batch")
	marshal := func(v any) []byte {
		b, err := codec.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return map[string][]byte{
		"truncated":          golden[:len(golden)/2],
		"huge-array-head":    {0xa1, 0x05, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"deep":               bytes.Repeat([]byte{0x81}, 40),
		"nan-number":         marshal(envelope(f.airconHash, "power", map[string]any{"watts": math.NaN()})),
		"timestamp-pair":     marshal(envelope(f.airconHash, "power", map[string]any{"ts": []int64{-1, 999999999}})),
		"location-int-keys":  marshal(envelope(f.mowerHash, "trip", map[string]any{"dock": map[int]int{1: 52, 2: 13}})),
		"undeclared-field":   marshal(envelope(f.airconHash, "power", map[string]any{"wifi_ssid": "home"})),
		"aggregate-count":    marshal(envelope(f.mowerHash, "cuts", map[string]any{"count": 7, "ts": 1795424400})),
		"unknown-manifest":   marshal(envelope([32]byte{1}, "power", map[string]any{"watts": 1.0})),
		"indefinite-reading": append(bytes.TrimSuffix(marshal(envelope(f.airconHash, "power")), []byte{0x80}), 0x81, 0xbf, 0xff),
	}
}

// senmlSeeds are the seeds of FuzzDecodeSenML besides the golden packs:
// a query (parameters joined by &) and a pack.
func senmlSeeds(t testing.TB, f *fixture) map[string][2][]byte {
	marshal := func(v any) []byte {
		b, err := codec.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	air := []byte(strings.Join(query(f.airconHash, "power"), "&"))
	mow := []byte(strings.Join(query(f.mowerHash, "trip"), "&"))
	T := goldenTime.Unix()
	return map[string][2][]byte{
		"base-fields":      {air, marshal([]rec{{bver: 10, bn: "wa", bt: T, bv: 1000}, {n: "tts", v: 230}, {n: "tts", v: 240, tt: 60}})},
		"location":         {mow, marshal([]rec{{n: "dock", u: "lat", v: 52.52, tt: T}, {n: "dock", u: "lon", v: 13.38, tt: T}})},
		"relative-time":    {air, marshal([]rec{{n: "watts", v: 1230.0, tt: -60}})},
		"unit":             {air, marshal([]rec{{n: "watts", u: "W", v: 1230.0}})},
		"float-time":       {mow, marshal([]rec{{n: "zone", v: 3, tt: float64(T) + 0.1}})},
		"bad-query":        {[]byte("manifest=00&stream=power"), marshal([]rec{{n: "watts", v: 1.0}})},
		"base-only":        {air, marshal([]rec{{bt: T}})},
		"overflowing-time": {air, marshal([]rec{{bt: int64(math.MaxInt64), n: "watts", v: 1.0, tt: 1}})},
	}
}

// messageSeeds are the golden messages other than telemetry.
func messageSeeds(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{}
	for _, name := range []string{"auth-token", "enroll-request", "enroll-response", "manifest-response", "telemetry-ack",
		"state-desired", "state-desired-fetch", "state-reported", "commands", "command-result", "consent-list", "consent-receipt"} {
		seeds[name] = readGolden(t, name)
	}
	seeds["nested-setting"] = []byte{0xa1, 0x02, 0xa1, 0x61, 'x', 0x81, 0x01}
	seeds["short-hash"] = []byte{0xa2, 0x01, 0x61, 'm', 0x03, 0x41, 0x00}
	return seeds
}

func readGolden(t testing.TB, name string) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", name+".cbor"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWriteCorpus writes the seed corpora with -update.
func TestWriteCorpus(t *testing.T) {
	if !*update {
		t.Skip("run with -update to write the seed corpora")
	}
	f := newFixture(t)
	write := func(fuzz, name string, args ...[]byte) {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for i, a := range args {
			if fuzz == "FuzzDecodeSenML" && i == 0 {
				b.WriteString("string(" + strconv.Quote(string(a)) + ")\n")
				continue
			}
			b.WriteString("[]byte(" + strconv.Quote(string(a)) + ")\n")
		}
		dir := filepath.Join("testdata", "fuzz", fuzz)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name), []byte(b.String()))
	}
	for _, name := range []string{"telemetry-batch", "telemetry-aggregate", "telemetry-types"} {
		write("FuzzDecodeBatch", name, readGolden(t, name))
	}
	for name, data := range batchSeeds(t, f) {
		write("FuzzDecodeBatch", name, data)
	}
	for _, name := range []string{"telemetry-senml", "telemetry-senml-types"} {
		q := strings.Join(strings.Fields(string(readFile(t, filepath.Join("testdata", name+".query")))), "&")
		write("FuzzDecodeSenML", name, []byte(q), readGolden(t, name))
	}
	for name, s := range senmlSeeds(t, f) {
		write("FuzzDecodeSenML", name, s[0], s[1])
	}
	for name, data := range messageSeeds(t) {
		write("FuzzMessages", name, data)
	}
}

// decodeKinds are the kinds a decoder may return.
var decodeKinds = []protocol.Kind{protocol.ErrMalformed, protocol.ErrTooLarge, protocol.ErrUnknownManifest, protocol.ErrRefused, protocol.ErrSenML}

// checkDecodeError fails unless err is a *BatchError of a decoding kind,
// with its *policy.Violation when it is a refusal.
func checkDecodeError(t *testing.T, err error) {
	t.Helper()
	var be *protocol.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("untyped error %v", err)
	}
	known := false
	for _, k := range decodeKinds {
		known = known || be.Kind == k
	}
	var v *policy.Violation
	if !known || (be.Kind == protocol.ErrRefused && !errors.As(err, &v)) {
		t.Fatalf("error %#v", be)
	}
}

// checkTyped fails unless every value of b has the Go type of its field's
// output type, and the check runs on it.
func checkTyped(t *testing.T, reg *policy.Manifests, b *protocol.Batch) {
	t.Helper()
	m, ok := reg.Lookup(b.Manifest)
	if !ok {
		t.Fatal("decoded against a manifest the register does not hold")
	}
	s, ok := m.Stream(b.Stream)
	if !ok {
		t.Fatalf("decoded an undeclared stream %q", b.Stream)
	}
	if len(b.Readings) == 0 || b.Key.Epoch == 0 || b.Key.Seq == 0 {
		t.Fatalf("decoded a batch without readings or with a zero key part: %+v", b)
	}
	for _, r := range b.Readings {
		for k, v := range r {
			typ, ok := s.OutputType(k)
			if !ok || !isGoType(v, typ) {
				t.Fatalf("field %q decoded as %T, output type %q", k, v, typ)
			}
		}
	}
	_ = reg.Check(b.Policy()) // must not panic
}

func isGoType(v any, t policy.Type) bool {
	switch v.(type) {
	case float64:
		return t == policy.Number
	case int64:
		return t == policy.Integer
	case string:
		return t == policy.String
	case bool:
		return t == policy.Bool
	case time.Time:
		return t == policy.Timestamp
	case policy.Point:
		return t == policy.Location
	}
	return false
}

// FuzzDecodeBatch: any body decodes to a batch typed by its manifest, or
// fails with a *BatchError of a decoding kind; never a panic. A decoded
// batch encodes again and decodes to the same batch.
func FuzzDecodeBatch(f *testing.F) {
	fx := newFixture(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := protocol.DecodeBatch(data, fx.reg)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		checkTyped(t, fx.reg, b)
		again, err := b.MarshalCBOR()
		if err != nil {
			t.Fatalf("a decoded batch does not encode: %v", err)
		}
		b2, err := protocol.DecodeBatch(again, fx.reg)
		if err != nil || !sameBatchBits(*b, *b2) {
			t.Fatalf("re-encoded batch decodes to %v, %v; was %v", b2, err, b)
		}
	})
}

// FuzzDecodeSenML: as FuzzDecodeBatch, for SenML packs and the query
// (parameters joined by &) that carries their header. A decoded batch
// encodes as SenML again and decodes to the same batch.
func FuzzDecodeSenML(f *testing.F) {
	fx := newFixture(f)
	f.Fuzz(func(t *testing.T, q string, data []byte) {
		var query []string
		if q != "" {
			query = strings.Split(q, "&")
		}
		b, err := protocol.DecodeSenML(query, data, fx.reg)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		checkTyped(t, fx.reg, b)
		m, _ := fx.reg.Lookup(b.Manifest)
		q2, again, err := b.MarshalSenML(m)
		if err != nil {
			t.Fatalf("a decoded batch does not encode as SenML: %v", err)
		}
		b2, err := protocol.DecodeSenML(q2, again, fx.reg)
		if err != nil || !sameBatchBits(*b, *b2) {
			t.Fatalf("re-encoded pack decodes to %v, %v; was %v", b2, err, b)
		}
		if _, err := b.MarshalCBOR(); err != nil {
			t.Fatalf("a decoded batch does not encode as CBOR: %v", err)
		}
	})
}

// FuzzMessages decodes any input strictly as every other v1 message: no
// panic, and what decodes encodes to bytes that decode and encode to the
// same bytes again.
func FuzzMessages(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzMessage[protocol.Token](t, data)
		fuzzMessage[protocol.EnrollRequest](t, data)
		fuzzMessage[protocol.Enrollment](t, data)
		fuzzMessage[protocol.ManifestResponse](t, data)
		fuzzMessage[protocol.Desired](t, data)
		fuzzMessage[protocol.Reported](t, data)
		fuzzMessage[protocol.Commands](t, data)
		fuzzMessage[protocol.CommandResult](t, data)
		fuzzMessage[protocol.Consents](t, data)
		fuzzMessage[protocol.Ack](t, data)
	})
}

func fuzzMessage[T any](t *testing.T, data []byte) {
	var v T
	if err := codec.Unmarshal(data, &v); err != nil {
		return
	}
	once, err := codec.Marshal(v)
	if err != nil {
		t.Fatalf("%T decoded but does not encode: %v", v, err)
	}
	var w T
	if err := codec.Unmarshal(once, &w); err != nil {
		t.Fatalf("%T re-encoded does not decode: %v", v, err)
	}
	twice, err := codec.Marshal(w)
	if err != nil || !bytes.Equal(once, twice) {
		t.Fatalf("%T: %x then %x (%v)", v, once, twice, err)
	}
}

// sameBatchBits is sameBatch with floats compared bit for bit (so that 0
// and -0 differ), and any NaN equal to any other.
func sameBatchBits(a, b protocol.Batch) bool {
	if a.Manifest != b.Manifest || a.Stream != b.Stream || a.Key != b.Key || a.Partner != b.Partner || len(a.Readings) != len(b.Readings) {
		return false
	}
	for i := range a.Readings {
		if len(a.Readings[i]) != len(b.Readings[i]) {
			return false
		}
		for k, x := range a.Readings[i] {
			if !sameBits(x, b.Readings[i][k]) {
				return false
			}
		}
	}
	return true
}

func sameBits(x, y any) bool {
	switch a := x.(type) {
	case float64:
		b, ok := y.(float64)
		return ok && (math.Float64bits(a) == math.Float64bits(b) || math.IsNaN(a) && math.IsNaN(b))
	case policy.Point:
		b, ok := y.(policy.Point)
		return ok && sameBits(a.Lat, b.Lat) && sameBits(a.Lon, b.Lon)
	case time.Time:
		b, ok := y.(time.Time)
		return ok && a.Equal(b)
	}
	return x == y
}
