package policy

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/internal/codec"
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

// FuzzOpenSigned signs arbitrary payloads with a maker's key and opens
// them, fuzzing the manifest decoder that runs once the signature checks
// out. It must not panic; a refusal is a *ManifestError; an accepted
// manifest validates, holds no negative duration, and signs and opens
// again to the same manifest.
func FuzzOpenSigned(f *testing.F) {
	seed := sha256.Sum256([]byte("policy fuzz maker"))
	maker := ed25519.NewKeyFromSeed(seed[:])
	keys := &consent.KeySet{}
	if err := keys.Add(consent.TrustedKey{KID: []byte("maker-1"), Key: maker.Public(), Role: consent.ControllerKey}); err != nil {
		f.Fatal(err)
	}
	for _, name := range []string{"aircon.json", "vacuum.json"} {
		b, err := codec.Marshal(mustParseFile(f, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		msg, err := consent.SignPayload(payload, maker, []byte("maker-1"))
		if err != nil {
			t.Fatal(err)
		}
		m, err := OpenSigned(context.Background(), msg, keys)
		if err != nil {
			var me *ManifestError
			if !errors.As(err, &me) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not a *ManifestError", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("opened manifest does not validate: %v", err)
		}
		for _, s := range m.Streams {
			ds := []Duration{s.CloudRetention, s.DeviceRetention}
			if s.Aggregate != nil {
				ds = append(ds, s.Aggregate.Window)
			}
			for _, fl := range s.Fields {
				for tr := &fl.Transform; tr != nil; tr = tr.Then {
					ds = append(ds, tr.Bucket)
				}
			}
			for _, d := range ds {
				if d < 0 {
					t.Fatalf("stream %q holds a negative duration %v", s.Name, time.Duration(d))
				}
			}
		}
		h1, err := m.Hash()
		if err != nil {
			t.Fatal(err)
		}
		again, err := m.Sign(maker, []byte("maker-1"))
		if err != nil {
			t.Fatalf("opened manifest does not sign: %v", err)
		}
		m2, err := OpenSigned(context.Background(), again, keys)
		if err != nil {
			t.Fatalf("re-signed manifest does not open: %v", err)
		}
		if h2, _ := m2.Hash(); h2 != h1 {
			t.Fatal("re-signed manifest opened to another manifest")
		}
		if _, err := NewEnforcer(m, "dev", secret); err != nil {
			t.Fatalf("opened manifest has no enforcer: %v", err)
		}
	})
}
