package policy

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strings"
	"time"
)

// A Point is a location on Earth in degrees.
type Point struct {
	Lat float64 `cbor:"1,keyasint" json:"lat"`
	Lon float64 `cbor:"2,keyasint" json:"lon"`
}

// apply runs one transform (not its Then) on v, a value of type typ. It
// returns the transformed value, or drop = true.
func (t *Transform) apply(v any, typ Type, pseudo func(keyID, s string) string) (out any, drop bool, err error) {
	switch t.Op {
	case "drop":
		return nil, true, nil
	case "keep":
		return v, false, nil
	case "round":
		x, err := num(v)
		if err != nil {
			return nil, false, err
		}
		return asType(math.Round(x/t.Step)*t.Step, typ), false, nil
	case "clamp":
		x, err := num(v)
		if err != nil {
			return nil, false, err
		}
		return asType(math.Min(math.Max(x, *t.Min), *t.Max), typ), false, nil
	case "bucketize":
		x, err := num(v)
		if err != nil {
			return nil, false, err
		}
		i := 0
		for i < len(t.Bounds) && x >= t.Bounds[i] {
			i++
		}
		return int64(i), false, nil
	case "coarsen_time":
		ts, ok := v.(time.Time)
		if !ok {
			return nil, false, fmt.Errorf("want a timestamp, got %T", v)
		}
		return ts.Truncate(time.Duration(t.Bucket)).UTC(), false, nil
	case "coarsen_location":
		l, ok := v.(Point)
		if !ok {
			return nil, false, fmt.Errorf("want a location, got %T", v)
		}
		if t.Geohash > 0 {
			return geohash(l, t.Geohash), false, nil
		}
		p := math.Pow(10, float64(t.Decimals))
		return Point{Lat: math.Round(l.Lat*p) / p, Lon: math.Round(l.Lon*p) / p}, false, nil
	case "pseudonymize":
		s, ok := v.(string)
		if !ok {
			return nil, false, fmt.Errorf("want a string, got %T", v)
		}
		return pseudo(t.KeyID, s), false, nil
	}
	return nil, false, fmt.Errorf("unknown transform %q", t.Op)
}

func num(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return 0, fmt.Errorf("not a finite number")
		}
		return x, nil
	case int64:
		return float64(x), nil
	case int:
		return float64(x), nil
	case uint64:
		return float64(x), nil
	}
	return 0, fmt.Errorf("want a number, got %T", v)
}

func asType(x float64, typ Type) any {
	if typ == Integer {
		return int64(math.Round(x))
	}
	return x
}

const geohashAlphabet = "0123456789bcdefghjkmnpqrstuvwxyz"

// geohash encodes l with p characters.
func geohash(l Point, p int) string {
	latLo, latHi, lonLo, lonHi := -90.0, 90.0, -180.0, 180.0
	var b strings.Builder
	bit, ch, even := 0, 0, true
	for b.Len() < p {
		if even {
			mid := (lonLo + lonHi) / 2
			if l.Lon >= mid {
				ch = ch<<1 | 1
				lonLo = mid
			} else {
				ch <<= 1
				lonHi = mid
			}
		} else {
			mid := (latLo + latHi) / 2
			if l.Lat >= mid {
				ch = ch<<1 | 1
				latLo = mid
			} else {
				ch <<= 1
				latHi = mid
			}
		}
		even = !even
		if bit++; bit == 5 {
			b.WriteByte(geohashAlphabet[ch])
			bit, ch = 0, 0
		}
	}
	return b.String()
}

// pseudonymizer derives, per device, stream and key ID, an HMAC-SHA256 key
// from the device's secret with HKDF, and writes pseudonyms as
// "<key id>:<first 16 bytes of the MAC in hex>", so the same identifier
// maps to the same pseudonym until the key ID changes.
type pseudonymizer struct {
	secret []byte
	device string
}

func (p pseudonymizer) key(stream, keyID string) []byte {
	k, err := hkdf.Key(sha256.New, p.secret, []byte("sensible pseudonym v1"), p.device+"\x00"+stream+"\x00"+keyID, 32)
	if err != nil {
		panic(err) // fixed sizes: cannot fail
	}
	return k
}

func (p pseudonymizer) pseudonym(key []byte, keyID, s string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return keyID + ":" + hex.EncodeToString(m.Sum(nil)[:16])
}
