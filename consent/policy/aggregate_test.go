package policy

import (
	"errors"
	"testing"
	"time"
)

func TestAggregateOccupancy(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	e, _ := NewEnforcer(m, "dev", secret)
	if _, err := e.Apply("occupancy", Reading{"people": int64(2)}); err == nil {
		t.Fatal("an aggregated stream left reading by reading")
	}
	a, err := e.Aggregator("occupancy")
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	// Window 9:00-9:15: four samples, mean 1.5. Window 9:15-9:30: two
	// samples, fewer than k = 3: suppressed. Window 9:30: still open.
	for i, n := range []int64{1, 2, 1, 2} {
		must(t, a.Add(base.Add(time.Duration(i)*3*time.Minute), Reading{"people": n, "ts": base}))
	}
	must(t, a.Add(base.Add(16*time.Minute), Reading{"people": int64(5)}))
	must(t, a.Add(base.Add(20*time.Minute), Reading{"people": int64(7)}))
	must(t, a.Add(base.Add(31*time.Minute), Reading{"people": int64(1)}))
	outs := a.Flush(base.Add(35 * time.Minute))
	if len(outs) != 1 {
		t.Fatalf("%d outputs, want 1 (one window suppressed, one open)", len(outs))
	}
	f := outs[0].Fields
	if f["people"] != 1.5 || !f["ts"].(time.Time).Equal(base) || len(f) != 2 {
		t.Fatalf("window output %+v", f)
	}
	if err := m.Check("occupancy", Destination{To: "cloud"}, f); err != nil {
		t.Fatalf("cloud refused the aggregate: %v", err)
	}
	// The open window comes out later; nothing comes out twice.
	if outs := a.Flush(base.Add(35 * time.Minute)); len(outs) != 0 {
		t.Fatalf("flushed again: %+v", outs)
	}
	// The cloud refuses raw readings and misaligned windows for an
	// aggregated stream.
	for name, fields := range map[string]Reading{
		"a raw reading":     {"people": 2.0, "ts": base.Add(3 * time.Minute)},
		"unaggregated ts":   {"ts": base.Add(time.Minute)},
		"an undeclared one": {"camera": "x"},
	} {
		if err := m.Check("occupancy", Destination{To: "cloud"}, fields); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	var v *Violation
	if err := m.Check("occupancy", Destination{To: "cloud"}, Reading{"ts": base.Add(time.Minute)}); !errors.As(err, &v) || !errors.Is(err, ErrPrecision) {
		t.Errorf("misaligned window: %v", err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestAggregateKeepsFieldPrecision(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	s := &m.Streams[2] // power: watts rounded to 10
	s.Aggregate = &Aggregate{Window: Duration(time.Hour), Func: "max", Field: "watts"}
	must(t, m.Validate())
	e, err := NewEnforcer(m, "dev", secret)
	must(t, err)
	a, err := e.Aggregator("power")
	must(t, err)
	base := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	must(t, a.Add(base, Reading{"watts": 1234.5678}))
	outs := a.Flush(base.Add(2 * time.Hour))
	if len(outs) != 1 || outs[0].Fields["watts"] != 1230.0 {
		t.Fatalf("max over one sample: %+v", outs[0].Fields)
	}
	if err := m.Check("power", Destination{To: "cloud"}, outs[0].Fields); err != nil {
		t.Fatalf("honest max refused: %v", err)
	}
	if err := m.Check("power", Destination{To: "cloud"}, Reading{"watts": 1234.5678}); !errors.Is(err, ErrPrecision) {
		t.Fatalf("unrounded max accepted: %v", err)
	}
}

func TestOutputType(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	geo := Stream{Name: "g", Fields: []Field{
		{Name: "where", Type: Location, Transform: Transform{Op: "coarsen_location", Geohash: 5}},
		{Name: "near", Type: Location, Transform: Transform{Op: "coarsen_location", Decimals: 2}},
		{Name: "level", Type: Number, Transform: Transform{Op: "clamp", Min: new(0.0), Max: new(1.0), Then: &Transform{Op: "bucketize", Bounds: []float64{0.5}}}},
		{Name: "gone", Type: Number, Transform: Transform{Op: "clamp", Min: new(0.0), Max: new(1.0), Then: &Transform{Op: "drop"}}},
	}}
	for _, tc := range []struct {
		stream *Stream
		name   string
		want   Type
		ok     bool
	}{
		{mustStream(t, m, "power"), "watts", Number, true},
		{mustStream(t, m, "power"), "ts", Timestamp, true},
		{mustStream(t, m, "power"), "serial", String, true},
		{mustStream(t, m, "power"), "other", "", false},
		{mustStream(t, m, "camera-frame"), "frame", "", false},
		{mustStream(t, m, "occupancy"), "people", Number, true}, // the mean of integers
		{mustStream(t, m, "occupancy"), "ts", Timestamp, true},
		{mustStream(t, m, "occupancy"), "count", "", false},
		{&geo, "where", String, true},
		{&geo, "near", Location, true},
		{&geo, "level", Integer, true},
		{&geo, "gone", "", false},
	} {
		got, ok := tc.stream.OutputType(tc.name)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s.%s: %q, %v; want %q, %v", tc.stream.Name, tc.name, got, ok, tc.want, tc.ok)
		}
	}
	counted := Stream{Name: "c", Fields: []Field{{Name: "ts", Type: Timestamp, Transform: Transform{Op: "keep"}}},
		Aggregate: &Aggregate{Func: "count", Window: Duration(time.Minute)}}
	if typ, ok := counted.OutputType("count"); typ != Integer || !ok {
		t.Errorf("count: %q, %v", typ, ok)
	}
}

func mustStream(t *testing.T, m *Manifest, name string) *Stream {
	t.Helper()
	s, ok := m.Stream(name)
	if !ok {
		t.Fatalf("no stream %q", name)
	}
	return s
}
