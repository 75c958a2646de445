package policy

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse: any input either parses into a manifest that validates and
// hashes, or fails with a *ManifestError; never a panic.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"aircon.json", "vacuum.json"} {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"product":"p","version":"1","streams":[{"name":"s","purposes":["x"],"fields":[{"name":"a","type":"number","category":"device.usage","transform":{"op":"round","step":1}}]}]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			var me *ManifestError
			if !errors.As(err, &me) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("parsed manifest does not validate: %v", err)
		}
		if _, err := m.Hash(); err != nil {
			t.Fatalf("parsed manifest does not hash: %v", err)
		}
		if _, err := NewEnforcer(m, "dev", secret); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzCheck: the cloud check of arbitrary numbers, strings and bucket
// indexes never panics and answers nil or a *Violation.
func FuzzCheck(f *testing.F) {
	m := mustParseFile(f, "aircon.json")
	f.Add("power", "watts", 1230.0, "k1:0123456789abcdef0123456789abcdef", int64(3))
	f.Add("occupancy", "people", 2.5, "", int64(-1))
	f.Add("power", "serial", 0.0, "SN-1", int64(0))
	f.Fuzz(func(t *testing.T, stream, field string, x float64, s string, n int64) {
		for _, v := range []any{x, s, n} {
			err := m.Check(stream, Destination{To: "cloud"}, Reading{field: v})
			var vi *Violation
			if err != nil && !errors.As(err, &vi) {
				t.Fatalf("untyped error %v", err)
			}
		}
	})
}
