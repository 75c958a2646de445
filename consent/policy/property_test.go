package policy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// randomManifest builds a valid manifest of random streams, fields and
// transforms.
func randomManifest(rng *rand.Rand) *Manifest {
	m := &Manifest{Product: "p", Version: "1"}
	for si := 0; si < 1+rng.IntN(3); si++ {
		s := Stream{Name: fmt.Sprintf("s%d", si), Purposes: []string{"x"}}
		if rng.IntN(4) > 0 {
			s.Destinations = []Destination{{To: "cloud"}}
			s.Consent = "x"
			if rng.IntN(2) == 0 {
				s.Destinations = append(s.Destinations, Destination{To: "partner", Partner: "pco", Consent: "share"})
			}
		}
		for fi := 0; fi < 1+rng.IntN(6); fi++ {
			f := Field{Name: fmt.Sprintf("f%d", fi), Category: "device.usage"}
			switch rng.IntN(6) {
			case 0:
				f.Type, f.Transform = Number, Transform{Op: "round", Step: []float64{0.1, 0.5, 2, 10}[rng.IntN(4)]}
			case 1:
				lo, hi := -rng.Float64()*100, rng.Float64()*100+1
				f.Type, f.Transform = Number, Transform{Op: "clamp", Min: &lo, Max: &hi, Then: &Transform{Op: "round", Step: 1}}
			case 2:
				f.Type, f.Transform = Integer, Transform{Op: "bucketize", Bounds: []float64{0, 10, 100}}
			case 3:
				f.Type, f.Transform = Timestamp, Transform{Op: "coarsen_time", Bucket: Duration([]time.Duration{time.Minute, 15 * time.Minute, time.Hour}[rng.IntN(3)])}
			case 4:
				f.Type, f.Transform = Location, Transform{Op: "coarsen_location", Decimals: rng.IntN(4)}
			case 5:
				f.Type, f.Transform = String, Transform{Op: []string{"drop", "pseudonymize"}[rng.IntN(2)], KeyID: "k"}
				if f.Transform.Op == "drop" {
					f.Transform.KeyID = ""
				}
			}
			s.Fields = append(s.Fields, f)
		}
		m.Streams = append(m.Streams, s)
	}
	return m
}

func randomValue(rng *rand.Rand, t Type) any {
	switch t {
	case Number:
		return (rng.Float64() - 0.5) * 1e4
	case Integer:
		return rng.Int64N(1000) - 100
	case Timestamp:
		return time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).UTC()
	case Location:
		return Point{Lat: rng.Float64()*180 - 90, Lon: rng.Float64()*360 - 180}
	}
	return fmt.Sprintf("id-%d", rng.IntN(1e6))
}

// TestPropertyRandomManifests: over many random manifests and readings,
// nothing undeclared, dropped or device-only leaves, numbers never leave
// finer than declared, the cloud accepts every honest output, and it
// refuses outputs with an extra field or a number nudged off its grid.
func TestPropertyRandomManifests(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for mi := 0; mi < 300; mi++ {
		m := randomManifest(rng)
		if err := m.Validate(); err != nil {
			t.Fatalf("generator made an invalid manifest: %v", err)
		}
		e, err := NewEnforcer(m, "dev", secret)
		if err != nil {
			t.Fatal(err)
		}
		for ri := 0; ri < 30; ri++ {
			s := &m.Streams[rng.IntN(len(m.Streams))]
			r := Reading{"undeclared": rng.Float64()}
			for _, f := range s.Fields {
				r[f.Name] = randomValue(rng, f.Type)
			}
			out, err := e.Apply(s.Name, r)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Destinations) == 0 {
				if out != nil {
					t.Fatalf("device-only stream %s sent %v", s.Name, out.Fields)
				}
				continue
			}
			if out == nil {
				continue
			}
			for k, v := range out.Fields {
				f := fieldOf(s, k)
				if f == nil || f.Transform.Op == "drop" {
					t.Fatalf("field %q left the device", k)
				}
				if typ, ok := s.OutputType(k); !ok || !isGoType(v, typ) {
					t.Fatalf("field %q left as %T, but its output type is %q (%v)", k, v, typ, ok)
				}
				if f.Transform.Op == "round" {
					if x := v.(float64) / f.Transform.Step; math.Abs(x-math.Round(x)) > 1e-6 {
						t.Fatalf("%s = %v is finer than step %v", k, v, f.Transform.Step)
					}
				}
			}
			for _, d := range s.Destinations {
				if err := m.Check(s.Name, d, out.Fields); err != nil {
					t.Fatalf("honest output refused: %v\nmanifest stream %+v\noutput %+v", err, s, out.Fields)
				}
			}
			extra := Reading{"undeclared": 1.0}
			if err := m.Check(s.Name, s.Destinations[0], extra); !errors.Is(err, ErrUndeclaredField) {
				t.Fatalf("extra field accepted: %v", err)
			}
			for k, v := range out.Fields {
				if f := fieldOf(s, k); f.Transform.Op == "round" {
					nudged := Reading{k: v.(float64) + f.Transform.Step*(0.1+0.8*rng.Float64())}
					if err := m.Check(s.Name, s.Destinations[0], nudged); !errors.Is(err, ErrPrecision) {
						t.Fatalf("value nudged off its grid accepted: %v %v", nudged, err)
					}
				}
			}
		}
	}
}

func fieldOf(s *Stream, name string) *Field {
	for i := range s.Fields {
		if s.Fields[i].Name == name {
			return &s.Fields[i]
		}
	}
	return nil
}

// isGoType reports whether v is the Go type an output of type t has.
func isGoType(v any, t Type) bool {
	switch v.(type) {
	case float64:
		return t == Number
	case int64:
		return t == Integer
	case string:
		return t == String
	case bool:
		return t == Bool
	case time.Time:
		return t == Timestamp
	case Point:
		return t == Location
	}
	return false
}
