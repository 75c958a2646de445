package protocol_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
)

// randomManifest builds a valid manifest of random streams: every field
// type and transform, chains, destinations with partners, device-only
// streams and aggregates (consent/policy's property test has the same
// generator, without the aggregates and the kept values).
func randomManifest(rng *rand.Rand, n int) *policy.Manifest {
	m := &policy.Manifest{Product: "p", Version: fmt.Sprint(n)}
	for si := 0; si < 1+rng.IntN(3); si++ {
		s := policy.Stream{Name: fmt.Sprintf("s%d", si), Purposes: []string{"x"}}
		if rng.IntN(5) > 0 {
			s.Destinations = []policy.Destination{{To: "cloud"}}
			s.Consent = "x"
			if rng.IntN(2) == 0 {
				s.Destinations = append(s.Destinations, policy.Destination{To: "partner", Partner: "pco", Consent: "share"})
			}
		}
		for fi := 0; fi < 1+rng.IntN(7); fi++ {
			f := policy.Field{Name: fmt.Sprintf("f%d", fi), Category: "device.usage"}
			switch rng.IntN(12) {
			case 0:
				f.Type, f.Transform = policy.Number, policy.Transform{Op: "round", Step: []float64{0.1, 0.5, 2, 10}[rng.IntN(4)]}
			case 1:
				lo, hi := -rng.Float64()*100, rng.Float64()*100+1
				f.Type, f.Transform = policy.Number, policy.Transform{Op: "clamp", Min: &lo, Max: &hi, Then: &policy.Transform{Op: "round", Step: 1}}
			case 2:
				f.Type, f.Transform = []policy.Type{policy.Integer, policy.Number}[rng.IntN(2)], policy.Transform{Op: "bucketize", Bounds: []float64{0, 10, 100}}
			case 3:
				f.Type, f.Transform = policy.Timestamp, policy.Transform{Op: "coarsen_time", Bucket: policy.Duration([]time.Duration{time.Minute, 15 * time.Minute, time.Hour}[rng.IntN(3)])}
			case 4:
				f.Type, f.Transform = policy.Location, policy.Transform{Op: "coarsen_location", Decimals: rng.IntN(4)}
			case 5:
				f.Type, f.Transform = policy.Location, policy.Transform{Op: "coarsen_location", Geohash: 1 + rng.IntN(8)}
			case 6:
				f.Type, f.Transform = policy.String, policy.Transform{Op: "pseudonymize", KeyID: "k"}
			case 7:
				f.Type, f.Transform = []policy.Type{policy.String, policy.Bool, policy.Number}[rng.IntN(3)], policy.Transform{Op: "drop"}
			case 8:
				f.Type, f.Transform = policy.Timestamp, policy.Transform{Op: "keep"}
			case 9:
				f.Type, f.Transform = policy.Bool, policy.Transform{Op: "keep"}
			case 10:
				f.Type, f.Transform = policy.Integer, policy.Transform{Op: "round", Step: 5}
			case 11:
				f.Type, f.Transform = []policy.Type{policy.Number, policy.Integer, policy.String, policy.Location}[rng.IntN(4)], policy.Transform{Op: "keep"}
			}
			s.Fields = append(s.Fields, f)
		}
		if rng.IntN(4) == 0 {
			a := &policy.Aggregate{Window: policy.Duration([]time.Duration{time.Minute, time.Hour}[rng.IntN(2)]), Func: "count", MinSamples: rng.IntN(3)}
			for _, f := range s.Fields {
				if (f.Type == policy.Number || f.Type == policy.Integer) && f.Transform.Op != "drop" && f.Transform.Op != "bucketize" && rng.IntN(2) == 0 {
					a.Func, a.Field = []string{"sum", "mean", "min", "max"}[rng.IntN(4)], f.Name
					break
				}
			}
			s.Aggregate = a
		}
		m.Streams = append(m.Streams, s)
	}
	return m
}

// randomTime is a time from 1970 to 2096, with nanoseconds, or whole
// seconds, or whole milliseconds.
func randomTime(rng *rand.Rand) time.Time {
	s := rng.Int64N(4e9)
	switch rng.IntN(3) {
	case 0:
		return time.Unix(s, rng.Int64N(1e9)).UTC()
	case 1:
		return time.Unix(s, 0).UTC()
	}
	return time.Unix(s, rng.Int64N(1000)*1e6).UTC()
}

func randomValue(rng *rand.Rand, t policy.Type) any {
	switch t {
	case policy.Number:
		return (rng.Float64() - 0.5) * 1e4
	case policy.Integer:
		return rng.Int64N(1000) - 100
	case policy.Bool:
		return rng.IntN(2) == 0
	case policy.Timestamp:
		return randomTime(rng)
	case policy.Location:
		return policy.Point{Lat: rng.Float64()*180 - 90, Lon: rng.Float64()*360 - 180}
	}
	return fmt.Sprintf("id-%d", rng.IntN(1e6))
}

// outputs runs readings of stream s through the enforcer (or its
// aggregator) and returns what leaves.
func outputs(t *testing.T, rng *rand.Rand, e *policy.Enforcer, s *policy.Stream) []policy.Reading {
	var out []policy.Reading
	if s.Aggregate != nil {
		a, err := e.Aggregator(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Unix(1e9+rng.Int64N(3e9), 0)
		for range 1 + rng.IntN(20) {
			r := policy.Reading{}
			for _, f := range s.Fields {
				r[f.Name] = randomValue(rng, f.Type)
			}
			if err := a.Add(start.Add(time.Duration(rng.Int64N(int64(3*time.Hour)))), r); err != nil {
				t.Fatal(err)
			}
		}
		for _, o := range a.Flush(start.Add(24 * time.Hour)) {
			out = append(out, o.Fields)
		}
		return out
	}
	for range 1 + rng.IntN(6) {
		r := policy.Reading{"undeclared": rng.Float64()}
		for _, f := range s.Fields {
			if rng.IntN(5) > 0 {
				r[f.Name] = randomValue(rng, f.Type)
			}
		}
		o, err := e.Apply(s.Name, r)
		if err != nil {
			t.Fatal(err)
		}
		if o != nil {
			out = append(out, o.Fields)
		}
	}
	return out
}

// TestPropertyRoundTrip: over random manifests and readings, what the
// enforcer lets leave is encoded, decoded against the manifest it names,
// comes back as it was, and passes the cloud's check, as CBOR always and
// as SenML whenever SenML can carry it; a field the manifest does not
// declare, or a value finer than its transform, is refused after the
// round trip.
func TestPropertyRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 12))
	reg := &policy.Manifests{}
	var batches, senml, refusedSenML, tampered int
	for mi := range 300 {
		m := randomManifest(rng, mi)
		if err := m.Validate(); err != nil {
			t.Fatalf("generator made an invalid manifest: %v", err)
		}
		h, err := reg.Add(m)
		if err != nil {
			t.Fatal(err)
		}
		e, err := policy.NewEnforcer(m, "dev", pseudonymSecret)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range m.Streams {
			readings := outputs(t, rng, e, &s)
			if len(readings) == 0 {
				continue
			}
			if len(s.Destinations) == 0 {
				if s.Aggregate == nil {
					t.Fatalf("device-only stream %s let %v leave", s.Name, readings)
				}
				continue // an aggregate kept on the device: nothing to send
			}
			for _, d := range s.Destinations {
				b := protocol.Batch{Manifest: h, Stream: s.Name, Key: protocol.Key{Epoch: rng.Uint64() | 1, Seq: uint64(mi + 1)},
					Partner: d.Partner, Readings: readings}
				batches++
				roundTripCBOR(t, reg, b)
				switch q, body, err := b.MarshalSenML(m); {
				case err == nil:
					senml++
					got, err := protocol.DecodeSenML(q, body, reg)
					if err != nil {
						t.Fatalf("SenML of %v: %v", readings, err)
					}
					checkSame(t, reg, b, got)
				case errors.Is(err, protocol.ErrSenML):
					refusedSenML++
				default:
					t.Fatalf("MarshalSenML: %v", err)
				}
				if tamper(t, rng, reg, m, b) {
					tampered++
				}
			}
		}
	}
	if batches < 300 || senml < batches/4 || tampered < batches/2 {
		t.Fatalf("%d batches, %d as SenML, %d tampered: the generator is too weak", batches, senml, tampered)
	}
	t.Logf("%d batches, %d also as SenML, %d that SenML cannot carry, %d tampered and refused", batches, senml, refusedSenML, tampered)
}

func roundTripCBOR(t *testing.T, reg *policy.Manifests, b protocol.Batch) {
	t.Helper()
	data, err := b.MarshalCBOR()
	if err != nil {
		t.Fatalf("MarshalCBOR: %v", err)
	}
	got, err := protocol.DecodeBatch(data, reg)
	if err != nil {
		t.Fatalf("DecodeBatch of %v: %v", b.Readings, err)
	}
	checkSame(t, reg, b, got)
}

func checkSame(t *testing.T, reg *policy.Manifests, want protocol.Batch, got *protocol.Batch) {
	t.Helper()
	if !sameBatch(want, *got) {
		t.Fatalf("round trip changed the batch:\nsent %v\ngot  %v", want.Readings, got.Readings)
	}
	if err := reg.Check(got.Policy()); err != nil {
		t.Fatalf("honest batch refused after the round trip: %v\nreadings %v", err, got.Readings)
	}
}

// tamper sends the batch again with one reading changed: an undeclared
// field added, or a value made finer than its transform. After the round
// trip, the decoder or the check must refuse it. It reports whether it
// found something to tamper with.
func tamper(t *testing.T, rng *rand.Rand, reg *policy.Manifests, m *policy.Manifest, b protocol.Batch) bool {
	t.Helper()
	s, _ := m.Stream(b.Stream)
	i := rng.IntN(len(b.Readings))
	r := policy.Reading{}
	for k, v := range b.Readings[i] {
		r[k] = v
	}
	var name string
	var want error
	if rng.IntN(3) == 0 {
		name, want = "undeclared", policy.ErrUndeclaredField
		r[name] = rng.Float64()
	} else {
		for k, v := range r {
			if fv, ok := finer(rng, s, k, v); ok {
				name, want = k, policy.ErrPrecision
				r[k] = fv
				break
			}
		}
		if name == "" {
			return false // nothing here can be made finer
		}
	}
	bad := b
	bad.Readings = append([]policy.Reading(nil), b.Readings...)
	bad.Readings[i] = r
	data, err := bad.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	refused := func(format string) {
		t.Helper()
		got, err := protocol.DecodeBatch(data, reg)
		if err == nil {
			err = reg.Check(got.Policy())
		}
		if !errors.Is(err, want) {
			t.Fatalf("%s: field %q tampered to %v: %v, want %v", format, name, r[name], err, want)
		}
	}
	refused("CBOR")
	if q, body, err := bad.MarshalSenML(m); err == nil {
		got, err := protocol.DecodeSenML(q, body, reg)
		if err == nil {
			err = reg.Check(got.Policy())
		}
		if !errors.Is(err, want) {
			t.Fatalf("SenML: field %q tampered to %v: %v, want %v", name, r[name], err, want)
		}
	}
	return true
}

// finer returns v made finer than field name's transform allows, if it
// can be.
func finer(rng *rand.Rand, s *policy.Stream, name string, v any) (any, bool) {
	if a := s.Aggregate; a != nil {
		switch x := v.(type) {
		case time.Time:
			return x.Add(time.Second), true
		case int64:
			if a.MinSamples > 0 {
				return int64(a.MinSamples - 1), true
			}
		case float64:
			if a.Func == "min" || a.Func == "max" {
				return finer(rng, &policy.Stream{Fields: s.Fields}, a.Field, x)
			}
		}
		return nil, false
	}
	var f *policy.Field
	for i := range s.Fields {
		if s.Fields[i].Name == name {
			f = &s.Fields[i]
		}
	}
	last := &f.Transform
	for last.Then != nil {
		last = last.Then
	}
	switch last.Op {
	case "round":
		step := last.Step
		if x, ok := v.(float64); ok {
			return x + step*(0.1+0.8*rng.Float64()), true
		}
		if x, ok := v.(int64); ok && step > 1 {
			return x + 1, true
		}
	case "coarsen_time":
		return v.(time.Time).Add(time.Second), true
	case "coarsen_location":
		if g, ok := v.(string); ok {
			if last.Geohash < 12 {
				return g + "0", true
			}
			return nil, false
		}
		p := v.(policy.Point)
		d := 3 * math.Pow(10, -float64(last.Decimals+1))
		if p.Lat+d > 90 {
			d = -d
		}
		return policy.Point{Lat: p.Lat + d, Lon: p.Lon}, true
	case "bucketize":
		return int64(len(last.Bounds) + 1), true
	case "pseudonymize":
		return "not-a-pseudonym", true
	}
	return nil, false
}
