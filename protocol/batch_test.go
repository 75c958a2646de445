package protocol_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
)

// TestGenericCBORFailsCheck shows the seam this package closes: readings
// sent as generic CBOR come back as integers and maps, which the cloud's
// check refuses; sent as a typed batch they come back as the enforcer
// made them, and pass.
func TestGenericCBORFailsCheck(t *testing.T) {
	f := newFixture(t)
	for _, b := range []protocol.Batch{f.powerBatch(t), f.tripBatch(t, goldenTime.Add(time.Minute))} {
		generic, err := codec.Marshal(b.Readings)
		if err != nil {
			t.Fatal(err)
		}
		var back []policy.Reading
		if err := codec.Unmarshal(generic, &back); err != nil {
			t.Fatal(err)
		}
		pb := b.Policy()
		pb.Readings = back
		var v *policy.Violation
		if err := f.reg.Check(pb); !errors.As(err, &v) {
			t.Errorf("%s: generic CBOR passed the check, or failed otherwise: %v", b.Stream, err)
		}
		data, err := b.MarshalCBOR()
		if err != nil {
			t.Fatal(err)
		}
		typed, err := protocol.DecodeBatch(data, f.reg)
		if err != nil {
			t.Fatal(err)
		}
		if !sameBatch(b, *typed) {
			t.Errorf("%s: typed batch came back as %+v", b.Stream, typed.Readings)
		}
		if err := f.reg.Check(typed.Policy()); err != nil {
			t.Errorf("%s: typed batch refused: %v", b.Stream, err)
		}
	}
}

// envelope returns a batch written by hand, with the given readings.
func envelope(hash [32]byte, stream string, readings ...any) map[int]any {
	return map[int]any{1: hash[:], 2: stream, 3: []uint64{7, 1}, 5: readings}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := codec.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeBatchRefuses(t *testing.T) {
	f := newFixture(t)
	air, mow := f.airconHash, f.mowerHash
	with := func(m map[int]any, k int, v any) map[int]any {
		m[k] = v
		return m
	}
	without := func(m map[int]any, k int) map[int]any {
		delete(m, k)
		return m
	}
	big := make([]byte, protocol.MaxBatchBody+1)
	for _, tc := range []struct {
		name   string
		data   []byte
		kind   protocol.Kind
		policy error // the policy error it must also match, if any
	}{
		{"not CBOR", []byte{0xff}, protocol.ErrMalformed, nil},
		{"too large", big, protocol.ErrTooLarge, nil},
		{"trailing bytes", append(mustMarshal(t, envelope(air, "power", map[string]any{"watts": 1230.0})), 0), protocol.ErrMalformed, nil},
		{"unknown key", mustMarshal(t, with(envelope(air, "power", map[string]any{"watts": 1230.0}), 6, 1)), protocol.ErrMalformed, nil},
		{"text keys", mustMarshal(t, map[string]any{"1": air[:]}), protocol.ErrMalformed, nil},
		{"short hash", mustMarshal(t, with(envelope(air, "power", map[string]any{"watts": 1230.0}), 1, air[:31])), protocol.ErrMalformed, nil},
		{"no stream", mustMarshal(t, without(envelope(air, "power", map[string]any{"watts": 1230.0}), 2)), protocol.ErrMalformed, nil},
		{"no key", mustMarshal(t, without(envelope(air, "power", map[string]any{"watts": 1230.0}), 3)), protocol.ErrMalformed, nil},
		{"zero epoch", mustMarshal(t, with(envelope(air, "power", map[string]any{"watts": 1230.0}), 3, []uint64{0, 1})), protocol.ErrMalformed, nil},
		{"key of three", mustMarshal(t, with(envelope(air, "power", map[string]any{"watts": 1230.0}), 3, []uint64{1, 2, 3})), protocol.ErrMalformed, nil},
		{"empty partner", mustMarshal(t, with(envelope(air, "power", map[string]any{"watts": 1230.0}), 4, "")), protocol.ErrMalformed, nil},
		{"no readings", mustMarshal(t, envelope(air, "power")), protocol.ErrMalformed, nil},
		{"empty reading", mustMarshal(t, envelope(air, "power", map[string]any{})), protocol.ErrMalformed, nil},
		{"tag", append(mustMarshal(t, envelope(air, "power"))[:len(mustMarshal(t, envelope(air, "power")))-1], 0x81, 0xa1, 0x62, 't', 's', 0xc1, 0x01), protocol.ErrMalformed, nil},
		{"unknown manifest", mustMarshal(t, envelope([32]byte{1}, "power", map[string]any{"watts": 1230.0})), protocol.ErrUnknownManifest, policy.ErrUnknownManifest},
		{"undeclared stream", mustMarshal(t, envelope(air, "microphone", map[string]any{"pcm": "..."})), protocol.ErrRefused, policy.ErrUndeclaredStream},
		{"undeclared field", mustMarshal(t, envelope(air, "power", map[string]any{"watts": 1230.0, "wifi_ssid": "home"})), protocol.ErrRefused, policy.ErrUndeclaredField},
		{"dropped field", mustMarshal(t, envelope(mow, "trip", map[string]any{"camera": "<jpeg>"})), protocol.ErrRefused, policy.ErrDropped},
		{"not an aggregate output", mustMarshal(t, envelope(air, "occupancy", map[string]any{"count": 4})), protocol.ErrRefused, policy.ErrUndeclaredField},
		{"timestamp as text", mustMarshal(t, envelope(air, "power", map[string]any{"ts": "2026-11-23T09:00:00Z"})), protocol.ErrRefused, policy.ErrValue},
		{"timestamp with zero nanoseconds", mustMarshal(t, envelope(air, "power", map[string]any{"ts": []int64{1795424400, 0}})), protocol.ErrRefused, policy.ErrValue},
		{"timestamp with a second of nanoseconds", mustMarshal(t, envelope(air, "power", map[string]any{"ts": []int64{1795424400, 1e9}})), protocol.ErrRefused, policy.ErrValue},
		{"NaN", mustMarshal(t, envelope(air, "power", map[string]any{"watts": math.NaN()})), protocol.ErrRefused, policy.ErrValue},
		{"infinite latitude", mustMarshal(t, envelope(mow, "trip", map[string]any{"dock": map[int]float64{1: math.Inf(1), 2: 0}})), protocol.ErrRefused, policy.ErrValue},
		{"number as text", mustMarshal(t, envelope(air, "power", map[string]any{"watts": "1230"})), protocol.ErrRefused, policy.ErrValue},
		{"number no double holds", mustMarshal(t, envelope(air, "power", map[string]any{"watts": uint64(1<<53 + 1)})), protocol.ErrRefused, policy.ErrValue},
		{"integer as float", mustMarshal(t, envelope(mow, "trip", map[string]any{"zone": 3.0})), protocol.ErrRefused, policy.ErrValue},
		{"integer out of range", mustMarshal(t, envelope(mow, "trip", map[string]any{"zone": uint64(math.MaxUint64)})), protocol.ErrRefused, policy.ErrValue},
		{"bool as integer", mustMarshal(t, envelope(mow, "trip", map[string]any{"rain": 0})), protocol.ErrRefused, policy.ErrValue},
		{"location as array", mustMarshal(t, envelope(mow, "trip", map[string]any{"dock": []float64{52.52, 13.38}})), protocol.ErrRefused, policy.ErrValue},
		{"location with a third key", mustMarshal(t, envelope(mow, "trip", map[string]any{"dock": map[int]float64{1: 52.52, 2: 13.38, 3: 0}})), protocol.ErrRefused, policy.ErrValue},
		{"location without longitude", mustMarshal(t, envelope(mow, "trip", map[string]any{"dock": map[int]float64{1: 52.52}})), protocol.ErrRefused, policy.ErrValue},
		{"geohash as location", mustMarshal(t, envelope(mow, "trip", map[string]any{"area": map[int]float64{1: 52.52, 2: 13.38}})), protocol.ErrRefused, policy.ErrValue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := protocol.DecodeBatch(tc.data, f.reg)
			var be *protocol.BatchError
			if !errors.As(err, &be) || !errors.Is(err, tc.kind) {
				t.Fatalf("err = %v, want a *BatchError of kind %q", err, tc.kind)
			}
			if tc.policy != nil && !errors.Is(err, tc.policy) {
				t.Fatalf("err = %v, want it to match %v", err, tc.policy)
			}
			var v *policy.Violation
			if tc.kind == protocol.ErrRefused && !errors.As(err, &v) {
				t.Fatalf("a refusal without its *policy.Violation: %v", err)
			}
			if len(err.Error()) > 200 {
				t.Fatalf("error text of %d bytes: %s", len(err.Error()), err)
			}
		})
	}
}

func TestDecodeBatchAccepts(t *testing.T) {
	f := newFixture(t)
	// Integers for numbers, both key orders, a partner: all fine.
	data := mustMarshal(t, map[int]any{
		5: []any{map[string]any{"blade_rpm": 3150, "dock": map[int]any{2: 13, 1: 52.5}, "ts": []int64{-1, 5e8}}},
		4: "garden-co", 3: []uint64{9, 9}, 2: "trip", 1: f.mowerHash[:],
	})
	b, err := protocol.DecodeBatch(data, f.reg)
	if err != nil {
		t.Fatal(err)
	}
	r := b.Readings[0]
	if r["blade_rpm"] != 3150.0 || r["dock"] != (policy.Point{Lat: 52.5, Lon: 13}) || !r["ts"].(time.Time).Equal(time.Unix(-1, 5e8)) {
		t.Fatalf("decoded %#v", r)
	}
	if b.Destination() != (policy.Destination{To: "partner", Partner: "garden-co"}) {
		t.Fatalf("destination %+v", b.Destination())
	}
	if err := f.reg.Check(b.Policy()); err != nil {
		t.Fatalf("check: %v", err)
	}
}

// TestCheckAfterDecode: what the decoder types, the check still judges.
func TestCheckAfterDecode(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name    string
		partner string
		reading policy.Reading
		want    error
	}{
		{"finer than its round", "", policy.Reading{"watts": 1234.5}, policy.ErrPrecision},
		{"finer than its coarsen_time", "", policy.Reading{"ts": goldenTime.Add(time.Second)}, policy.ErrPrecision},
		{"not a pseudonym", "", policy.Reading{"serial": "SN-0042"}, policy.ErrPrecision},
		{"an undeclared destination", "pestco", policy.Reading{"watts": 1230.0}, policy.ErrDestination},
	} {
		b := protocol.Batch{Manifest: f.airconHash, Stream: "power", Key: goldenKey, Partner: tc.partner, Readings: []policy.Reading{tc.reading}}
		data, err := b.MarshalCBOR()
		if err != nil {
			t.Fatal(err)
		}
		got, err := protocol.DecodeBatch(data, f.reg)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if err := f.reg.Check(got.Policy()); !errors.Is(err, tc.want) {
			t.Errorf("%s: check says %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestMarshalRefuses(t *testing.T) {
	f := newFixture(t)
	good := f.powerBatch(t)
	for _, tc := range []struct {
		name string
		edit func(b *protocol.Batch)
	}{
		{"no stream", func(b *protocol.Batch) { b.Stream = "" }},
		{"zero epoch", func(b *protocol.Batch) { b.Key.Epoch = 0 }},
		{"zero seq", func(b *protocol.Batch) { b.Key.Seq = 0 }},
		{"no readings", func(b *protocol.Batch) { b.Readings = nil }},
		{"an empty reading", func(b *protocol.Batch) { b.Readings = []policy.Reading{{}} }},
		{"a field without a name", func(b *protocol.Batch) { b.Readings = []policy.Reading{{"": 1.0}} }},
		{"a value of no manifest type", func(b *protocol.Batch) { b.Readings = []policy.Reading{{"watts": []byte{1}}} }},
		{"an integer out of range", func(b *protocol.Batch) { b.Readings = []policy.Reading{{"watts": uint64(math.MaxUint64)}} }},
	} {
		b := good
		tc.edit(&b)
		if _, err := b.MarshalCBOR(); !errors.Is(err, protocol.ErrInvalid) {
			t.Errorf("%s: MarshalCBOR = %v, want ErrInvalid", tc.name, err)
		}
		if _, _, err := b.MarshalSenML(f.aircon); !errors.Is(err, protocol.ErrInvalid) {
			t.Errorf("%s: MarshalSenML = %v, want ErrInvalid", tc.name, err)
		}
	}
	// A batch is never decoded generically.
	data, _ := good.MarshalCBOR()
	var b protocol.Batch
	if err := codec.Unmarshal(data, &b); err == nil {
		t.Fatal("a batch decoded without its manifest")
	}
}

func TestDigest(t *testing.T) {
	f := newFixture(t)
	a, b := f.powerBatch(t), f.powerBatch(t)
	da, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if db, _ := b.Digest(); db != da {
		t.Fatal("equal batches, different digests")
	}
	b.Readings = b.Readings[:1]
	if db, _ := b.Digest(); db == da {
		t.Fatal("different batches, equal digests")
	}
}

// TestErrorText: an error names the place and cuts long names.
func TestErrorText(t *testing.T) {
	f := newFixture(t)
	long := strings.Repeat("x", 1000)
	_, err := protocol.DecodeBatch(mustMarshal(t, envelope(f.airconHash, "power", map[string]any{"watts": 1230.0}, map[string]any{long: 1})), f.reg)
	var be *protocol.BatchError
	if !errors.As(err, &be) || be.Reading != 1 || be.Field != long {
		t.Fatalf("%#v", err)
	}
	if s := err.Error(); len(s) > 200 || !strings.Contains(s, "reading 1") || !strings.Contains(s, "field not declared") {
		t.Fatalf("text %q", s)
	}
	// Of several faults, the first by name, every time.
	data := mustMarshal(t, envelope(f.airconHash, "power", map[string]any{"z": 1, "watts": "x", "b": 2, "a": 3}))
	for range 20 {
		_, err := protocol.DecodeBatch(data, f.reg)
		if !errors.As(err, &be) || be.Field != "a" {
			t.Fatalf("%v", err)
		}
	}
	pack := mustMarshal(t, []rec{{n: 1, bu: "W", 9: 1, u: "W"}})
	for range 20 {
		_, err := protocol.DecodeSenML(query(f.airconHash, "power"), pack, f.reg)
		if !errors.Is(err, protocol.ErrSenML) || !strings.Contains(err.Error(), "base unit") {
			t.Fatalf("%v", err)
		}
	}
}
