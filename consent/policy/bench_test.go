package policy

import (
	"testing"
	"time"
)

func benchManifest() *Manifest {
	return &Manifest{Product: "bench", Version: "1", Streams: []Stream{{
		Name: "s", Purposes: []string{"analytics"}, Consent: "analytics",
		Destinations: []Destination{{To: "cloud"}},
		Fields: []Field{
			{Name: "ts", Type: Timestamp, Category: "device.usage", Transform: Transform{Op: "coarsen_time", Bucket: Duration(time.Hour)}},
			{Name: "watts", Type: Number, Category: "device.sensor.power", Transform: Transform{Op: "round", Step: 10}},
			{Name: "temp", Type: Number, Category: "device.sensor.temperature", Transform: Transform{Op: "round", Step: 0.5}},
			{Name: "loc", Type: Location, Category: "user.location", Transform: Transform{Op: "coarsen_location", Decimals: 2}},
			{Name: "serial", Type: String, Category: "device.identifier", Transform: Transform{Op: "pseudonymize", KeyID: "k1"}},
			{Name: "mode", Type: String, Category: "device.settings", Transform: Transform{Op: "keep"}},
		},
	}}}
}

// BenchmarkApply applies a 6-field reading with round, coarsen (time and
// location) and pseudonymize transforms, through the map API.
func BenchmarkApply(b *testing.B) {
	e, err := NewEnforcer(benchManifest(), "dev", secret)
	if err != nil {
		b.Fatal(err)
	}
	r := Reading{"ts": time.Now(), "watts": 1234.5, "temp": 21.37, "loc": Point{52.52001, 13.40495}, "serial": "SN-0042", "mode": "cool"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Apply("s", r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAggregate feeds 1,000,000 readings into 15-minute mean windows
// and flushes them.
func BenchmarkAggregate(b *testing.B) {
	m := mustParseFile(b, "aircon.json")
	e, _ := NewEnforcer(m, "dev", secret)
	base := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	for b.Loop() {
		a, _ := e.Aggregator("occupancy")
		start := time.Now()
		for i := 0; i < 1_000_000; i++ {
			if err := a.Add(base.Add(time.Duration(i)*time.Second), Reading{"people": int64(i % 5)}); err != nil {
				b.Fatal(err)
			}
		}
		outs := a.Flush(base.Add(1_000_001 * time.Second))
		b.ReportMetric(1e6/time.Since(start).Seconds(), "readings/s")
		b.ReportMetric(float64(len(outs)), "windows")
	}
}

// BenchmarkApplyValues applies the same reading through the typed API with
// a reused output buffer.
func BenchmarkApplyValues(b *testing.B) {
	e, err := NewEnforcer(benchManifest(), "dev", secret)
	if err != nil {
		b.Fatal(err)
	}
	in := []NamedValue{
		{"ts", Value{Type: Timestamp, Time: time.Now()}},
		{"watts", Value{Type: Number, Num: 1234.5}},
		{"temp", Value{Type: Number, Num: 21.37}},
		{"loc", Value{Type: Location, Point: Point{52.52001, 13.40495}}},
		{"serial", Value{Type: String, Str: "SN-0042"}},
		{"mode", Value{Type: String, Str: "cool"}},
	}
	out := make([]NamedValue, 0, 8)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if out, _, err = e.ApplyValues("s", in, out[:0]); err != nil {
			b.Fatal(err)
		}
		if len(out) != 6 {
			b.Fatal(len(out))
		}
	}
}
