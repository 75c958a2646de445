package protocol_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
)

// SenML-CBOR labels, for packs written by hand.
const (
	bver, bn, bt, bu, bv, bs = -1, -2, -3, -4, -5, -6
	n, u, v, vs, vb, s, tt   = 0, 1, 2, 3, 4, 5, 6
	ut, vd                   = 7, 8
)

// rec is a SenML record written by hand.
type rec = map[int]any

func query(hash [32]byte, stream string) []string {
	b := protocol.Batch{Manifest: hash, Stream: stream, Key: protocol.Key{Epoch: 5, Seq: 6}}
	return b.Query()
}

func TestSenMLMapping(t *testing.T) {
	f := newFixture(t)
	T := goldenTime.Unix()
	for _, tc := range []struct {
		name   string
		stream string
		pack   []rec
		want   []policy.Reading
	}{
		{"base time and relative t", "power",
			[]rec{{bt: T, n: "watts", v: 1230.0}, {n: "watts", tt: 3600, v: 990.0}},
			[]policy.Reading{{"ts": goldenTime, "watts": 1230.0}, {"ts": goldenTime.Add(time.Hour), "watts": 990.0}}},
		{"base name and base value", "power",
			[]rec{{bn: "wa", n: "tts", bv: 1000, v: 230, tt: T}},
			[]policy.Reading{{"ts": goldenTime, "watts": 1230.0}}},
		{"a base-only record first", "power",
			[]rec{{bver: 10, bt: T}, {n: "watts", v: 1230}},
			[]policy.Reading{{"ts": goldenTime, "watts": 1230.0}}},
		{"same time, different fields: one reading", "power",
			[]rec{{n: "watts", v: 1230.0, tt: T}, {n: "serial", vs: "k1:0123456789abcdef0123456789abcdef", tt: T}},
			[]policy.Reading{{"ts": goldenTime, "watts": 1230.0, "serial": "k1:0123456789abcdef0123456789abcdef"}}},
		{"same time, a field again: two readings", "power",
			[]rec{{n: "watts", v: 1230.0, tt: T}, {n: "watts", v: 1240.0, tt: T}},
			[]policy.Reading{{"ts": goldenTime, "watts": 1230.0}, {"ts": goldenTime, "watts": 1240.0}}},
		{"no time", "power",
			[]rec{{n: "watts", v: 1230.0}},
			[]policy.Reading{{"watts": 1230.0}}},
		{"a float time", "trip",
			[]rec{{n: "zone", v: 3, tt: float64(T) + 0.25}},
			[]policy.Reading{{"ts": goldenTime.Add(250 * time.Millisecond), "zone": int64(3)}}},
		{"an integral float for an integer", "trip",
			[]rec{{n: "zone", v: 3.0}},
			[]policy.Reading{{"zone": int64(3)}}},
		{"a location", "trip",
			[]rec{{n: "dock", u: "lat", v: 52.52, tt: T}, {n: "dock", u: "lon", v: 13.38, tt: T}, {n: "rain", vb: true, tt: T}},
			[]policy.Reading{{"ts": goldenTime, "dock": policy.Point{Lat: 52.52, Lon: 13.38}, "rain": true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hash := f.airconHash
			if tc.stream == "trip" {
				hash = f.mowerHash
			}
			b, err := protocol.DecodeSenML(query(hash, tc.stream), mustMarshal(t, tc.pack), f.reg)
			if err != nil {
				t.Fatal(err)
			}
			want := protocol.Batch{Manifest: hash, Stream: tc.stream, Key: protocol.Key{Epoch: 5, Seq: 6}, Readings: tc.want}
			if !sameBatch(want, *b) {
				t.Fatalf("readings %v, want %v", b.Readings, tc.want)
			}
		})
	}
}

func TestSenMLRefuses(t *testing.T) {
	f := newFixture(t)
	// A stream without a timestamp field.
	levels := &policy.Manifest{Product: "p", Version: "1", Streams: []policy.Stream{{
		Name: "levels", Purposes: []string{"x"}, Consent: "x", Destinations: []policy.Destination{{To: "cloud"}},
		Fields: []policy.Field{{Name: "level", Type: policy.Number, Category: "device.usage", Transform: policy.Transform{Op: "keep"}}},
	}}}
	levelsHash, err := f.reg.Add(levels)
	if err != nil {
		t.Fatal(err)
	}
	T := goldenTime.Unix()
	air, mow := query(f.airconHash, "power"), query(f.mowerHash, "trip")
	for _, tc := range []struct {
		name   string
		query  []string
		pack   any
		kind   protocol.Kind
		policy error
	}{
		{"not an array", air, rec{n: "watts", v: 1.0}, protocol.ErrMalformed, nil},
		{"an empty pack", air, []rec{}, protocol.ErrMalformed, nil},
		{"base values only", air, []rec{{bt: T}}, protocol.ErrMalformed, nil},
		{"an empty record", air, []rec{{}}, protocol.ErrMalformed, nil},
		{"text labels", air, []map[string]any{{"n": "watts", "v": 1.0}}, protocol.ErrMalformed, nil},
		{"no name", air, []rec{{v: 1.0}}, protocol.ErrMalformed, nil},
		{"no value", air, []rec{{n: "watts"}}, protocol.ErrMalformed, nil},
		{"two values", air, []rec{{n: "watts", v: 1.0, vs: "1"}}, protocol.ErrMalformed, nil},
		{"a name that is a number", air, []rec{{n: 1, v: 1.0}}, protocol.ErrMalformed, nil},
		{"a base unit", air, []rec{{bu: "W", n: "watts", v: 1230.0}}, protocol.ErrSenML, nil},
		{"a unit", air, []rec{{n: "watts", u: "W", v: 1230.0}}, protocol.ErrSenML, nil},
		{"a sum", air, []rec{{n: "watts", s: 1230.0}}, protocol.ErrSenML, nil},
		{"a base sum", air, []rec{{bs: 1.0, n: "watts", v: 1230.0}}, protocol.ErrSenML, nil},
		{"an update time", air, []rec{{n: "watts", v: 1230.0, ut: 60}}, protocol.ErrSenML, nil},
		{"a data value", air, []rec{{n: "serial", vd: []byte("x")}}, protocol.ErrSenML, nil},
		{"an unknown label", air, []rec{{n: "watts", v: 1230.0, 9: 1}}, protocol.ErrSenML, nil},
		{"a must-understand label", air, []rec{{n: "watts", v: 1230.0, -10: 1}}, protocol.ErrSenML, nil},
		{"another version", air, []rec{{bver: 11, n: "watts", v: 1230.0}}, protocol.ErrSenML, nil},
		{"a relative time", air, []rec{{n: "watts", v: 1230.0, tt: -60}}, protocol.ErrSenML, nil},
		{"the timestamp field as a record", air, []rec{{n: "ts", v: float64(T)}}, protocol.ErrSenML, nil},
		{"a time without a timestamp field", query(levelsHash, "levels"), []rec{{n: "level", v: 1.0, tt: T}}, protocol.ErrSenML, nil},
		{"lon before lat", mow, []rec{{n: "dock", u: "lon", v: 13.38}, {n: "dock", u: "lat", v: 52.52}}, protocol.ErrSenML, nil},
		{"lat without lon", mow, []rec{{n: "dock", u: "lat", v: 52.52}}, protocol.ErrSenML, nil},
		{"lat then another field", mow, []rec{{n: "dock", u: "lat", v: 52.52}, {n: "rain", vb: true}}, protocol.ErrSenML, nil},
		{"lat and lon at different times", mow, []rec{{n: "dock", u: "lat", v: 52.52, tt: T}, {n: "dock", u: "lon", v: 13.38, tt: T + 1}}, protocol.ErrSenML, nil},
		{"a location without units", mow, []rec{{n: "dock", v: 52.52}}, protocol.ErrSenML, nil},
		{"a location as text", mow, []rec{{n: "dock", vs: "52.52,13.38"}}, protocol.ErrSenML, nil},
		{"an undeclared field", air, []rec{{n: "wifi_ssid", vs: "home"}}, protocol.ErrRefused, policy.ErrUndeclaredField},
		{"a dropped field", mow, []rec{{n: "camera", vs: "<jpeg>"}}, protocol.ErrRefused, policy.ErrDropped},
		{"text for a number", air, []rec{{n: "watts", vs: "1230"}}, protocol.ErrRefused, policy.ErrValue},
		{"NaN", air, []rec{{n: "watts", v: math.NaN()}}, protocol.ErrRefused, policy.ErrValue},
		{"an infinite longitude", mow, []rec{{n: "dock", u: "lat", v: 1.0}, {n: "dock", u: "lon", v: math.Inf(-1)}}, protocol.ErrRefused, policy.ErrValue},
		{"NaN for an integer", mow, []rec{{n: "zone", v: math.NaN()}}, protocol.ErrRefused, policy.ErrValue},
		{"a fraction for an integer", mow, []rec{{n: "zone", v: 2.5}}, protocol.ErrRefused, policy.ErrValue},
		{"a number for a bool", mow, []rec{{n: "rain", v: 1}}, protocol.ErrRefused, policy.ErrValue},
		{"an unknown manifest", query([32]byte{1}, "power"), []rec{{n: "watts", v: 1230.0}}, protocol.ErrUnknownManifest, policy.ErrUnknownManifest},
		{"an undeclared stream", query(f.airconHash, "microphone"), []rec{{n: "pcm", vs: "..."}}, protocol.ErrRefused, policy.ErrUndeclaredStream},
		{"no query", nil, []rec{{n: "watts", v: 1230.0}}, protocol.ErrMalformed, nil},
		{"a query parameter twice", append(air, "stream=power"), []rec{{n: "watts", v: 1230.0}}, protocol.ErrMalformed, nil},
		{"an unknown query parameter", append(air, "device=x"), []rec{{n: "watts", v: 1230.0}}, protocol.ErrMalformed, nil},
		{"an upper-case manifest", []string{"manifest=" + strings.ToUpper(air[0][len("manifest="):]), air[1], air[2], air[3]}, []rec{{n: "watts", v: 1230.0}}, protocol.ErrMalformed, nil},
		{"a leading zero", []string{air[0], air[1], "epoch=05", air[3]}, []rec{{n: "watts", v: 1230.0}}, protocol.ErrMalformed, nil},
		{"a zero sequence number", []string{air[0], air[1], air[2], "seq=0"}, []rec{{n: "watts", v: 1230.0}}, protocol.ErrMalformed, nil},
		{"an empty partner", append(air, "partner="), []rec{{n: "watts", v: 1230.0}}, protocol.ErrMalformed, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := protocol.DecodeSenML(tc.query, mustMarshal(t, tc.pack), f.reg)
			var be *protocol.BatchError
			if !errors.As(err, &be) || !errors.Is(err, tc.kind) {
				t.Fatalf("err = %v, want a *BatchError of kind %q", err, tc.kind)
			}
			if tc.policy != nil && !errors.Is(err, tc.policy) {
				t.Fatalf("err = %v, want it to match %v", err, tc.policy)
			}
		})
	}
}

func TestMarshalSenMLRefuses(t *testing.T) {
	f := newFixture(t)
	power := func(readings ...policy.Reading) protocol.Batch {
		return protocol.Batch{Manifest: f.airconHash, Stream: "power", Key: goldenKey, Readings: readings}
	}
	twoTimes := &policy.Manifest{Product: "p", Version: "1", Streams: []policy.Stream{{
		Name: "span", Purposes: []string{"x"}, Consent: "x", Destinations: []policy.Destination{{To: "cloud"}},
		Fields: []policy.Field{
			{Name: "start", Type: policy.Timestamp, Category: "device.usage", Transform: policy.Transform{Op: "keep"}},
			{Name: "end", Type: policy.Timestamp, Category: "device.usage", Transform: policy.Transform{Op: "keep"}},
		},
	}}}
	spanHash, err := twoTimes.Hash()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    protocol.Batch
		m    *policy.Manifest
		kind protocol.Kind
	}{
		{"a time SenML reads as relative", power(policy.Reading{"ts": time.Unix(1<<28-1, 0), "watts": 1.0}), f.aircon, protocol.ErrSenML},
		{"a time finer than a double", power(policy.Reading{"ts": goldenTime.Add(1), "watts": 1.0}), f.aircon, protocol.ErrSenML},
		{"a reading holding only its time", power(policy.Reading{"ts": goldenTime}), f.aircon, protocol.ErrSenML},
		{"readings SenML cannot tell apart", power(policy.Reading{"ts": goldenTime, "watts": 1.0}, policy.Reading{"ts": goldenTime, "serial": "k1:0123456789abcdef0123456789abcdef"}), f.aircon, protocol.ErrSenML},
		{"readings without time SenML cannot tell apart", power(policy.Reading{"watts": 1.0}, policy.Reading{"serial": "k1:0123456789abcdef0123456789abcdef"}), f.aircon, protocol.ErrSenML},
		{"a second timestamp field", protocol.Batch{Manifest: spanHash, Stream: "span", Key: goldenKey, Readings: []policy.Reading{{"start": goldenTime, "end": goldenTime}}}, twoTimes, protocol.ErrSenML},
		{"another manifest", power(policy.Reading{"watts": 1.0}), f.mower, protocol.ErrInvalid},
		{"a timestamp that is not a time", power(policy.Reading{"ts": 1795424400}), f.aircon, protocol.ErrInvalid},
	} {
		if _, _, err := tc.b.MarshalSenML(tc.m); !errors.Is(err, tc.kind) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.kind)
		}
	}
	// Readings of one time stay apart when a field they share comes
	// first.
	b := power(policy.Reading{"ts": goldenTime, "watts": 1.0, "serial": "k1:0123456789abcdef0123456789abcdef"},
		policy.Reading{"ts": goldenTime, "watts": 2.0})
	q, body, err := b.MarshalSenML(f.aircon)
	if err != nil {
		t.Fatal(err)
	}
	got, err := protocol.DecodeSenML(q, body, f.reg)
	if err != nil || !sameBatch(b, *got) {
		t.Fatalf("round trip: %v, %v", got, err)
	}
}
