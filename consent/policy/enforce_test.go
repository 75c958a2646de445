package policy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var secret = []byte("device secret of 16+ bytes")

func TestApplyAircon(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	e, err := NewEnforcer(m, "X9ZZGH47RJ5KVKZ0HXNY27NN98X", secret)
	if err != nil {
		t.Fatal(err)
	}
	// The camera frame never leaves: device only, and dropped.
	if out, err := e.Apply("camera-frame", Reading{"frame": "JPEG..."}); out != nil || err != nil {
		t.Fatalf("camera frame: %+v, %v", out, err)
	}
	ts := time.Date(2026, 11, 23, 14, 37, 12, 0, time.UTC)
	out, err := e.Apply("power", Reading{"ts": ts, "watts": 1234.5, "serial": "SN-0042", "wifi_ssid": "home"})
	if err != nil {
		t.Fatal(err)
	}
	f := out.Fields
	if f["watts"] != 1230.0 || !f["ts"].(time.Time).Equal(time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)) {
		t.Fatalf("power output %+v", f)
	}
	if _, leaked := f["wifi_ssid"]; leaked {
		t.Fatal("an undeclared field left the device")
	}
	p := f["serial"].(string)
	if !strings.HasPrefix(p, "k1:") || strings.Contains(p, "0042") {
		t.Fatalf("pseudonym %q", p)
	}
	// Stable per device, different across devices.
	out2, _ := e.Apply("power", Reading{"serial": "SN-0042"})
	e2, _ := NewEnforcer(m, "another device", secret)
	out3, _ := e2.Apply("power", Reading{"serial": "SN-0042"})
	if out2.Fields["serial"] != p || out3.Fields["serial"] == p {
		t.Fatal("pseudonyms are not stable per device and distinct across devices")
	}
	// The cloud accepts the honest output.
	if err := m.Check("power", Destination{To: "cloud"}, out.Fields); err != nil {
		t.Fatalf("cloud refused honest output: %v", err)
	}
	if _, err := e.Apply("microphone", Reading{"pcm": "..."}); !errors.Is(err, ErrUndeclaredStream) {
		t.Fatalf("undeclared stream: %v", err)
	}
	if _, err := e.Apply("power", Reading{"watts": "a lot"}); !errors.Is(err, ErrValue) {
		t.Fatalf("wrong value type: %v", err)
	}
}

func TestCheckRefusesTampering(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	hour := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	cloud := Destination{To: "cloud"}
	for _, c := range []struct {
		name   string
		stream string
		dest   Destination
		fields Reading
		want   error
	}{
		{"unrounded number", "power", cloud, Reading{"watts": 1234.5}, ErrPrecision},
		{"precise timestamp", "power", cloud, Reading{"ts": hour.Add(37 * time.Minute)}, ErrPrecision},
		{"raw serial", "power", cloud, Reading{"serial": "SN-0042"}, ErrPrecision},
		{"pseudonym under another key", "power", cloud, Reading{"serial": "k0:0123456789abcdef0123456789abcdef"}, ErrPrecision},
		{"undeclared field", "power", cloud, Reading{"wifi_ssid": "home"}, ErrUndeclaredField},
		{"device-only stream", "camera-frame", cloud, Reading{"frame": "JPEG"}, ErrDestination},
		{"undeclared partner", "power", Destination{To: "partner", Partner: "gridco"}, Reading{"watts": 1230.0}, ErrDestination},
		{"undeclared stream", "microphone", cloud, Reading{}, ErrUndeclaredStream},
		{"wrong type", "power", cloud, Reading{"watts": "1230"}, ErrValue},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := m.Check(c.stream, c.dest, c.fields)
			var v *Violation
			if !errors.Is(err, c.want) || !errors.As(err, &v) {
				t.Fatalf("Check = %v, want %v", err, c.want)
			}
		})
	}
}

// TestPropertyApplyThenCheck runs many random readings through the
// manifest: nothing undeclared or device-only leaves, the cloud accepts
// every honest output, and nudging any numeric value off its grid is
// refused.
func TestPropertyApplyThenCheck(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	e, _ := NewEnforcer(m, "dev", secret)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 5000; i++ {
		r := Reading{
			"ts":     time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).UTC(),
			"watts":  rng.Float64() * 5000,
			"serial": string(rune('A'+rng.IntN(26))) + "-" + string(rune('0'+rng.IntN(10))),
			"extra":  rng.Float64(),
		}
		out, err := e.Apply("power", r)
		if err != nil {
			t.Fatal(err)
		}
		for k := range out.Fields {
			if _, ok := map[string]bool{"ts": true, "watts": true, "serial": true}[k]; !ok {
				t.Fatalf("field %q left the device", k)
			}
		}
		if err := m.Check("power", Destination{To: "cloud"}, out.Fields); err != nil {
			t.Fatalf("honest output refused: %v (%+v)", err, out.Fields)
		}
		w := out.Fields["watts"].(float64)
		nudged := Reading{"watts": w + 0.5 + rng.Float64()*8}
		if err := m.Check("power", Destination{To: "cloud"}, nudged); !errors.Is(err, ErrPrecision) {
			t.Fatalf("value off the 10 W grid accepted: %v", nudged)
		}
	}
}

func TestBatchAgainstItsManifest(t *testing.T) {
	v1 := mustParseFile(t, "aircon.json")
	v2 := mustParseFile(t, "aircon.json")
	v2.Version = "2026.12.1"
	v2.Streams[2].Fields[1].Transform.Step = 100 // coarser in v2
	var reg Manifests
	h1, err := reg.Add(v1)
	must(t, err)
	h2, err := reg.Add(v2)
	must(t, err)
	readings := []Reading{{"watts": 1230.0}, {"watts": 40.0}}
	if err := reg.Check(&Batch{Manifest: h1, Stream: "power", Destination: Destination{To: "cloud"}, Readings: readings}); err != nil {
		t.Fatalf("v1 batch refused: %v", err)
	}
	// The same readings are too fine for v2.
	if err := reg.Check(&Batch{Manifest: h2, Stream: "power", Destination: Destination{To: "cloud"}, Readings: readings}); !errors.Is(err, ErrPrecision) {
		t.Fatalf("v2 batch with v1 precision: %v", err)
	}
	if err := reg.Check(&Batch{Manifest: [32]byte{1}, Stream: "power"}); !errors.Is(err, ErrUnknownManifest) {
		t.Fatalf("unknown manifest: %v", err)
	}
	if got, ok := reg.Lookup(h2); !ok || got.Streams[2].Fields[1].Transform.Step != 100 {
		t.Fatalf("Lookup(v2) = %v, %v", got, ok)
	}
	if got, ok := reg.Lookup([32]byte{1}); got != nil || ok {
		t.Fatalf("Lookup of an unknown hash = %v, %v", got, ok)
	}
}

func TestApplyValuesMatchesApply(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	e, _ := NewEnforcer(m, "dev", secret)
	ts := time.Date(2026, 11, 23, 14, 37, 12, 0, time.UTC)
	r := Reading{"ts": ts, "watts": 1234.5, "serial": "SN-0042", "other": 1.0}
	want, err := e.Apply("power", r)
	must(t, err)
	in := []NamedValue{
		{"ts", Value{Type: Timestamp, Time: ts}}, {"watts", Value{Type: Number, Num: 1234.5}},
		{"serial", Value{Type: String, Str: "SN-0042"}}, {"other", Value{Type: Number, Num: 1}},
	}
	// Many goroutines share the enforcer and its pooled HMAC states.
	done := make(chan error, 8)
	for range 8 {
		go func() {
			var out []NamedValue
			for range 200 {
				var dests []Destination
				var err error
				out, dests, err = e.ApplyValues("power", in, out[:0])
				if err != nil {
					done <- err
					return
				}
				if len(out) != len(want.Fields) || len(dests) != len(want.Destinations) {
					done <- fmt.Errorf("ApplyValues gave %v, Apply %v", out, want.Fields)
					return
				}
				for _, nv := range out {
					if !sameValue(nv.Value.Any(), want.Fields[nv.Name]) {
						done <- fmt.Errorf("%s: ApplyValues %v, Apply %v", nv.Name, nv.Value.Any(), want.Fields[nv.Name])
						return
					}
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// A value of the wrong type is refused; device-only streams send none.
	if _, _, err := e.ApplyValues("power", []NamedValue{{"watts", Value{Type: String, Str: "1"}}}, nil); !errors.Is(err, ErrValue) {
		t.Fatalf("wrong type: %v", err)
	}
	if out, dests, err := e.ApplyValues("camera-frame", []NamedValue{{"frame", Value{Type: String, Str: "x"}}}, nil); len(out) != 0 || dests != nil || err != nil {
		t.Fatalf("camera frame: %v %v %v", out, dests, err)
	}
}

func TestReviewFixes(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	// A long pseudonym key ID (a UUID) is refused at validation, and the
	// cloud check of an odd pseudonym never panics.
	long := *m
	long.Streams = append([]Stream(nil), m.Streams...)
	long.Streams[2].Fields = append([]Field(nil), m.Streams[2].Fields...)
	long.Streams[2].Fields[2].Transform.KeyID = "0b4e7a0e-5f43-4c0b-9c55-0c56c1e2c4a1-extra"
	if err := long.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("long key_id: %v", err)
	}
	if err := long.Check("power", Destination{To: "cloud"}, Reading{"serial": "k1:0123456789abcdef0123456789abcdef"}); !errors.Is(err, ErrPrecision) {
		t.Errorf("pseudonym under another key: %v", err)
	}
	// No negative zero leaves the device.
	e, _ := NewEnforcer(m, "dev", secret)
	out, _ := e.Apply("power", Reading{"watts": -3.0})
	if w := out.Fields["watts"].(float64); w != 0 || math.Signbit(w) {
		t.Errorf("-3 W rounded to %v (sign bit %v)", w, math.Signbit(w))
	}
	// Integers as CBOR decodes them (uint64) pass the cloud check.
	if err := m.Check("occupancy", Destination{To: "cloud"}, Reading{"people": uint64(2)}); err != nil {
		t.Errorf("uint64 count: %v", err)
	}
	// Chains: only clamp may be followed; durations are whole seconds.
	bad := mustParseFile(t, "aircon.json")
	bad.Streams[2].Fields[1].Transform.Then = &Transform{Op: "clamp", Min: ptr(0), Max: ptr(0.4)}
	if err := bad.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("round then clamp: %v", err)
	}
	half := mustParseFile(t, "aircon.json")
	half.Streams[2].Fields[0].Transform.Bucket = Duration(1500 * time.Millisecond)
	if err := half.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("sub-second bucket: %v", err)
	}
}

func ptr(f float64) *float64 { return &f }

func TestManifestCopiedAndIntegersSaturate(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	var reg Manifests
	h, err := reg.Add(m)
	must(t, err)
	e, err := NewEnforcer(m, "dev", secret)
	must(t, err)
	// Changing the caller's manifest changes neither the registered
	// version nor the enforcer's.
	m.Streams[2].Fields[1].Transform.Step = 1000
	if err := reg.Check(&Batch{Manifest: h, Stream: "power", Destination: Destination{To: "cloud"}, Readings: []Reading{{"watts": 1230.0}}}); err != nil {
		t.Fatalf("registered manifest changed under its hash: %v", err)
	}
	out, _ := e.Apply("power", Reading{"watts": 1234.0})
	if out.Fields["watts"] != 1230.0 {
		t.Fatalf("enforcer's manifest changed: %v", out.Fields)
	}
	// Integers at the ends of int64 saturate; a uint64 past it is refused.
	if _, err := e.Apply("power", Reading{"watts": 1.0}); err != nil {
		t.Fatal(err)
	}
	if v := numberOf(1e300, Integer); v.Int != math.MaxInt64 {
		t.Fatalf("1e300 as an integer = %d", v.Int)
	}
	if _, err := valueOf(uint64(math.MaxUint64), Integer); err == nil {
		t.Fatal("uint64 past int64 accepted")
	}
}

func TestGeohashKnownValues(t *testing.T) {
	// Reference values from the geohash definition (e.g. the Wikipedia
	// example: 57.64911, 10.40744 is u4pruydqqvj).
	for _, c := range []struct {
		p    Point
		n    int
		want string
	}{
		{Point{57.64911, 10.40744}, 11, "u4pruydqqvj"},
		{Point{0, 0}, 5, "s0000"},
		{Point{-90, -180}, 4, "0000"},
	} {
		if got := geohash(c.p, c.n); got != c.want {
			t.Errorf("geohash(%v, %d) = %s, want %s", c.p, c.n, got, c.want)
		}
	}
}
