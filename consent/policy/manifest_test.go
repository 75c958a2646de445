package policy

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func mustParseFile(t testing.TB, name string) *Manifest {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParseAircon(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	if len(m.Streams) != 3 || m.Streams[1].Aggregate == nil || m.Streams[2].Fields[1].Transform.Step != 10 {
		t.Fatalf("parsed %+v", m)
	}
	h1, err := m.Hash()
	if err != nil {
		t.Fatal(err)
	}
	// The hash is of the content, not the file's spacing.
	data, _ := os.ReadFile("testdata/aircon.json")
	m2, err := Parse([]byte(strings.ReplaceAll(string(data), "\n", " ")))
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := m2.Hash()
	if h1 != h2 {
		t.Fatal("hash depends on the file's layout")
	}
	m2.Streams[2].Fields[1].Transform.Step = 5
	if h3, _ := m2.Hash(); h3 == h1 {
		t.Fatal("hash did not change with the content")
	}
}

func TestParseBadManifests(t *testing.T) {
	base, err := os.ReadFile("testdata/aircon.json")
	if err != nil {
		t.Fatal(err)
	}
	src := string(base)
	cases := []struct {
		name     string
		old, new string
		line     int
		problem  string
	}{
		{"unknown transform", `{"op": "round", "step": 10}`, `{"op": "blur"}`, 33, `unknown transform "blur"`},
		{"unknown category", `"category": "device.sensor.power"`, `"category": "device.sensor.mood"`, 33, `unknown category "device.sensor.mood"`},
		{"duplicate stream", `"name": "power"`, `"name": "occupancy"`, 28, `duplicate stream "occupancy"`},
		{"partner without consent", `"destinations": [{"to": "cloud"}],
      "consent": "analytics"`, `"destinations": [{"to": "cloud"}, {"to": "partner", "partner": "gridco"}],
      "consent": "analytics"`, 36, "a partner destination needs a consent purpose"},
		{"transform not fitting the type", `{"op": "pseudonymize", "key_id": "k1"}`, `{"op": "round", "step": 1}`, 34, "round does not fit a string field"},
		{"missing purpose", `"purposes": ["analytics"]`, `"purposes": []`, 30, "missing purpose"},
		{"unknown key", `"cloud_retention": "8760h"`, `"cloud_retention": "8760h", "colour": "red"`, 38, `unknown key "colour"`},
		{"wrong JSON type", `"step": 10`, `"step": "ten"`, 33, "want float64"},
		{"syntax error", `"version": "2026.11.1",`, `"version": "2026.11.1",,`, 3, "not valid JSON"},
		{"no legal basis", `"contract": true,`, ``, 14, "needs a consent purpose or contract"},
		{"bad duration", `"bucket": "15m"`, `"bucket": "fortnight"`, 19, "bad duration"},
		{"negative duration", `"cloud_retention": "8760h"`, `"cloud_retention": "-8760h"`, 38, "bad duration"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(src, c.old) {
				t.Fatalf("test bug: %q not in the manifest", c.old)
			}
			_, err := Parse([]byte(strings.Replace(src, c.old, c.new, 1)))
			var me *ManifestError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &me) {
				t.Fatalf("err = %v, want a ManifestError", err)
			}
			if !strings.Contains(me.Problem, c.problem) || me.Line != c.line {
				t.Fatalf("got line %d %q (%v), want line %d containing %q", me.Line, me.Problem, err, c.line, c.problem)
			}
		})
	}
}
