package policy

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"math"
	"strings"
	"sync"
	"time"
)

// A Point is a location on Earth in degrees.
type Point struct {
	Lat float64 `cbor:"1,keyasint" json:"lat"` // latitude, -90 to 90
	Lon float64 `cbor:"2,keyasint" json:"lon"` // longitude, -180 to 180
}

// A Value is one field value, typed without boxing, for ApplyValues.
// Type says which of the other fields holds it.
type Value struct {
	Type  Type      // which field below holds the value
	Num   float64   // Number
	Int   int64     // Integer (and bucket indexes)
	Str   string    // String (and geohashes, pseudonyms)
	Bool  bool      // Bool
	Time  time.Time // Timestamp
	Point Point     // Location
}

// valueOf converts a Reading value of declared type t.
func valueOf(v any, t Type) (Value, error) {
	if err := checkType(v, t); err != nil {
		return Value{}, err
	}
	out := Value{Type: t}
	switch t {
	case Number:
		out.Num, _ = num(v)
	case Integer:
		switch x := v.(type) {
		case int64:
			out.Int = x
		case int:
			out.Int = int64(x)
		case uint64:
			if x > math.MaxInt64 {
				return Value{}, fmt.Errorf("integer %d out of range", x)
			}
			out.Int = int64(x)
		}
	case String:
		out.Str = v.(string)
	case Bool:
		out.Bool = v.(bool)
	case Timestamp:
		out.Time = v.(time.Time)
	case Location:
		out.Point = v.(Point)
	}
	return out, nil
}

// Any returns the value as a Reading holds it.
func (v Value) Any() any {
	switch v.Type {
	case Number:
		return v.Num
	case Integer:
		return v.Int
	case String:
		return v.Str
	case Bool:
		return v.Bool
	case Timestamp:
		return v.Time
	case Location:
		return v.Point
	}
	return nil
}

func (v Value) number() (float64, error) {
	switch v.Type {
	case Number:
		if math.IsNaN(v.Num) || math.IsInf(v.Num, 0) {
			return 0, fmt.Errorf("not a finite number")
		}
		return v.Num, nil
	case Integer:
		return float64(v.Int), nil
	}
	return 0, fmt.Errorf("want a number, got a %s", v.Type)
}

func numberOf(x float64, t Type) Value {
	if x == 0 {
		x = 0 // no negative zero: it would tell the sign of a value rounded away
	}
	if t == Integer {
		// Saturate rather than wrap at the ends of int64.
		switch r := math.Round(x); {
		case r >= math.MaxInt64:
			return Value{Type: Integer, Int: math.MaxInt64}
		case r <= math.MinInt64:
			return Value{Type: Integer, Int: math.MinInt64}
		default:
			return Value{Type: Integer, Int: int64(r)}
		}
	}
	return Value{Type: Number, Num: x}
}

// pseudonyms finds the pseudonym keys of one stream; the zero value makes
// none (the cloud's side).
type pseudonyms struct {
	keys   map[[2]string]*pseudonymKey
	stream string
}

// apply runs one transform (not its Then) on v. It returns the
// transformed value, or drop = true.
func (t *Transform) apply(v Value, ps pseudonyms) (out Value, drop bool, err error) {
	switch t.Op {
	case "drop":
		return Value{}, true, nil
	case "keep":
		return v, false, nil
	case "round":
		x, err := v.number()
		if err != nil {
			return Value{}, false, err
		}
		return numberOf(math.Round(x/t.Step)*t.Step, v.Type), false, nil
	case "clamp":
		x, err := v.number()
		if err != nil {
			return Value{}, false, err
		}
		return numberOf(math.Min(math.Max(x, *t.Min), *t.Max), v.Type), false, nil
	case "bucketize":
		x, err := v.number()
		if err != nil {
			return Value{}, false, err
		}
		i := 0
		for i < len(t.Bounds) && x >= t.Bounds[i] {
			i++
		}
		return Value{Type: Integer, Int: int64(i)}, false, nil
	case "coarsen_time":
		if v.Type != Timestamp {
			return Value{}, false, fmt.Errorf("want a timestamp, got a %s", v.Type)
		}
		return Value{Type: Timestamp, Time: v.Time.Truncate(time.Duration(t.Bucket)).UTC()}, false, nil
	case "coarsen_location":
		if v.Type != Location {
			return Value{}, false, fmt.Errorf("want a location, got a %s", v.Type)
		}
		if t.Geohash > 0 {
			return Value{Type: String, Str: geohash(v.Point, t.Geohash)}, false, nil
		}
		p := math.Pow(10, float64(t.Decimals))
		return Value{Type: Location, Point: Point{Lat: math.Round(v.Point.Lat*p)/p + 0, Lon: math.Round(v.Point.Lon*p)/p + 0}}, false, nil
	case "pseudonymize":
		if v.Type != String {
			return Value{}, false, fmt.Errorf("want a string, got a %s", v.Type)
		}
		pk := ps.keys[[2]string{ps.stream, t.KeyID}]
		if pk == nil {
			return Value{}, false, fmt.Errorf("pseudonyms are made on the device")
		}
		return Value{Type: String, Str: pk.pseudonym(v.Str)}, false, nil
	}
	return Value{}, false, fmt.Errorf("unknown transform %q", t.Op)
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

const geohashAlphabet = "0123456789bcdefghjkmnpqrstuvwxyz"

// geohash encodes l with p characters: bits alternate between longitude
// and latitude, each halving its interval.
func geohash(l Point, p int) string {
	lat, lon := [2]float64{-90, 90}, [2]float64{-180, 180}
	var b strings.Builder
	bit, ch, even := 0, 0, true
	for b.Len() < p {
		if even {
			ch = ch<<1 | halve(&lon, l.Lon)
		} else {
			ch = ch<<1 | halve(&lat, l.Lat)
		}
		even = !even
		if bit++; bit == 5 {
			b.WriteByte(geohashAlphabet[ch])
			bit, ch = 0, 0
		}
	}
	return b.String()
}

// halve narrows interval to the half holding v and returns 1 for the upper
// half, 0 for the lower.
func halve(interval *[2]float64, v float64) int {
	mid := (interval[0] + interval[1]) / 2
	if v >= mid {
		interval[0] = mid
		return 1
	}
	interval[1] = mid
	return 0
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

// pseudonymKey holds a derived key and a pool of HMAC states under it, so
// that making a pseudonym allocates only the pseudonym.
type pseudonymKey struct {
	id   string
	pool sync.Pool // of *hmacState
}

// hmacState is one pooled HMAC with its scratch buffers, which live on
// the heap with it so that hashing through the interface allocates nothing.
type hmacState struct {
	h       hash.Hash
	in, sum []byte
}

func newPseudonymKey(id string, key []byte) *pseudonymKey {
	pk := &pseudonymKey{id: id}
	pk.pool.New = func() any {
		return &hmacState{h: hmac.New(sha256.New, key), in: make([]byte, 0, 64), sum: make([]byte, 0, sha256.Size)}
	}
	return pk
}

func (pk *pseudonymKey) pseudonym(s string) string {
	st := pk.pool.Get().(*hmacState)
	st.h.Reset()
	st.in = append(st.in[:0], s...)
	st.h.Write(st.in)
	st.sum = st.h.Sum(st.sum[:0])
	var buf [96]byte
	out := append(buf[:0], pk.id...)
	out = append(out, ':')
	out = hex.AppendEncode(out, st.sum[:16])
	pk.pool.Put(st)
	return string(out)
}
