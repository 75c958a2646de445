package policy

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"
)

// Violations. A *Violation matches one of these with errors.Is; its text
// is fit for an audit log.
var (
	ErrUndeclaredStream = errors.New("policy: stream not declared")
	ErrUndeclaredField  = errors.New("policy: field not declared")
	ErrDropped          = errors.New("policy: field is never sent")
	ErrDestination      = errors.New("policy: destination not declared")
	ErrPrecision        = errors.New("policy: value finer than its transform allows")
	ErrValue            = errors.New("policy: value of the wrong type")
)

// A Violation says which stream and field broke the manifest, and how.
type Violation struct {
	Stream, Field string // where: the stream, and the field if one is at fault
	Err           error  // one of the Err variables
	Detail        string // what exactly, in words
}

// Error says what broke the manifest, where, for an audit log.
func (v *Violation) Error() string {
	s := fmt.Sprintf("%v: stream %q", v.Err, v.Stream)
	if v.Field != "" {
		s += fmt.Sprintf(" field %q", v.Field)
	}
	if v.Detail != "" {
		s += ": " + v.Detail
	}
	return s
}

// Unwrap returns the kind of violation.
func (v *Violation) Unwrap() error { return v.Err }

// A Reading is one record of a stream: field name to value. Values are
// float64 or int64 (number, integer), string, bool, time.Time
// (timestamp) and Point (location).
type Reading map[string]any

// An Output is what may leave the device for one reading.
type Output struct {
	// Stream is the stream the output belongs to.
	Stream string
	// Fields holds the transformed fields; dropped and undeclared fields
	// are absent.
	Fields Reading
	// Destinations are where the output may go (consent permitting).
	Destinations []Destination
}

// An Enforcer applies one manifest on one device. It is safe for
// concurrent use.
type Enforcer struct {
	m    *Manifest
	keys map[[2]string]*pseudonymKey // (stream, key ID) → pseudonym key, derived once
}

// NewEnforcer returns an enforcer of m for device, whose pseudonyms are
// keyed from secret (the device's own secret: pseudonyms from different
// devices cannot be linked).
func NewEnforcer(m *Manifest, device string, secret []byte) (*Enforcer, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	m, err := m.clone()
	if err != nil {
		return nil, err
	}
	if len(secret) < 16 {
		return nil, errors.New("policy: pseudonym secret shorter than 16 bytes")
	}
	ps := pseudonymizer{secret: secret, device: device}
	e := &Enforcer{m: m, keys: make(map[[2]string]*pseudonymKey)}
	for _, s := range m.Streams {
		for _, f := range s.Fields {
			for t := &f.Transform; t != nil; t = t.Then {
				if t.Op == "pseudonymize" {
					e.keys[[2]string{s.Name, t.KeyID}] = newPseudonymKey(t.KeyID, ps.key(s.Name, t.KeyID))
				}
			}
		}
	}
	return e, nil
}

// Apply decides what of reading may leave the device on stream. It returns
// nil (and no error) when nothing may: the stream is device-only, or every
// field is dropped. Undeclared fields are left out; an undeclared stream is
// an error. A stream with an Aggregate is not sent reading by reading:
// use an Aggregator.
func (e *Enforcer) Apply(stream string, r Reading) (*Output, error) {
	s, ok := e.m.Stream(stream)
	if !ok {
		return nil, &Violation{Stream: stream, Err: ErrUndeclaredStream}
	}
	if len(s.Destinations) == 0 {
		return nil, nil
	}
	if s.Aggregate != nil {
		return nil, fmt.Errorf("%w: %q leaves only through an Aggregator", ErrAggregated, stream)
	}
	out := make(Reading, len(s.Fields))
	for i := range s.Fields {
		f := &s.Fields[i]
		v, ok := r[f.Name]
		if !ok {
			continue
		}
		in, err := valueOf(v, f.Type)
		if err != nil {
			return nil, &Violation{Stream: s.Name, Field: f.Name, Err: ErrValue, Detail: err.Error()}
		}
		tv, keep, err := e.transform(s, f, in)
		if err != nil {
			return nil, err
		}
		if keep {
			out[f.Name] = tv.Any()
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return &Output{Stream: stream, Fields: out, Destinations: s.Destinations}, nil
}

// A NamedValue is one field of a reading for ApplyValues.
type NamedValue struct {
	Name  string // the field
	Value Value  // its value
}

// ApplyValues is Apply without maps or boxing, for devices that send many
// readings: in holds the reading, and what may leave is appended to out,
// which is returned (pass a reused out[:0] and a steady stream costs no
// allocation but the pseudonyms it makes). It returns the destinations, or
// none (and no values) when nothing may leave.
func (e *Enforcer) ApplyValues(stream string, in, out []NamedValue) ([]NamedValue, []Destination, error) {
	s, ok := e.m.Stream(stream)
	if !ok {
		return out, nil, &Violation{Stream: stream, Err: ErrUndeclaredStream}
	}
	if len(s.Destinations) == 0 {
		return out, nil, nil
	}
	if s.Aggregate != nil {
		return out, nil, fmt.Errorf("%w: %q leaves only through an Aggregator", ErrAggregated, stream)
	}
	n := len(out)
	for i := range in {
		f := fieldOfStream(s, in[i].Name)
		if f == nil {
			continue
		}
		if in[i].Value.Type != f.Type {
			return out[:n], nil, &Violation{Stream: s.Name, Field: f.Name, Err: ErrValue, Detail: fmt.Sprintf("a %s is not a %s", in[i].Value.Type, f.Type)}
		}
		tv, keep, err := e.transform(s, f, in[i].Value)
		if err != nil {
			return out[:n], nil, err
		}
		if keep {
			out = append(out, NamedValue{Name: f.Name, Value: tv})
		}
	}
	if len(out) == n {
		return out, nil, nil
	}
	return out, s.Destinations, nil
}

func fieldOfStream(s *Stream, name string) *Field {
	for i := range s.Fields {
		if s.Fields[i].Name == name {
			return &s.Fields[i]
		}
	}
	return nil
}

// transform runs a field's transform chain on v.
func (e *Enforcer) transform(s *Stream, f *Field, v Value) (Value, bool, error) {
	ps := pseudonyms{keys: e.keys, stream: s.Name}
	for t := &f.Transform; t != nil; t = t.Then {
		nv, drop, err := t.apply(v, ps)
		if err != nil {
			return Value{}, false, &Violation{Stream: s.Name, Field: f.Name, Err: ErrValue, Detail: err.Error()}
		}
		if drop {
			return Value{}, false, nil
		}
		v = nv
	}
	return v, true, nil
}

func checkType(v any, t Type) error {
	ok := false
	switch t {
	case Number:
		_, err := num(v)
		ok = err == nil
	case Integer:
		switch v.(type) {
		case int64, int, uint64:
			ok = true
		}
	case String:
		_, ok = v.(string)
	case Bool:
		_, ok = v.(bool)
	case Timestamp:
		_, ok = v.(time.Time)
	case Location:
		var p Point
		p, ok = v.(Point)
		ok = ok && p.Lat >= -90 && p.Lat <= 90 && p.Lon >= -180 && p.Lon <= 180
	}
	if !ok {
		return fmt.Errorf("%T is not a %s", v, t)
	}
	return nil
}

var pseudonymForm = regexp.MustCompile(`^[^:]+:[0-9a-f]{32}$`)

// Check is the cloud's check of what a device sent to dest on stream
// under this manifest: the same rules as Apply, from the other side. A
// field that should not be there, a value finer than its transform allows
// (an unrounded number, a precise location) or an undeclared destination
// is a *Violation.
func (m *Manifest) Check(stream string, dest Destination, fields Reading) error {
	s, ok := m.Stream(stream)
	if !ok {
		return &Violation{Stream: stream, Err: ErrUndeclaredStream}
	}
	declared := false
	for _, d := range s.Destinations {
		if d.To == dest.To && d.Partner == dest.Partner {
			declared = true
		}
	}
	if !declared {
		return &Violation{Stream: stream, Err: ErrDestination, Detail: fmt.Sprintf("%s %s", dest.To, dest.Partner)}
	}
	if s.Aggregate != nil {
		return checkAggregate(s, fields)
	}
	for name, v := range fields {
		i := -1
		for j := range s.Fields {
			if s.Fields[j].Name == name {
				i = j
			}
		}
		if i < 0 {
			return &Violation{Stream: stream, Field: name, Err: ErrUndeclaredField}
		}
		if err := checkField(s, &s.Fields[i], v); err != nil {
			return err
		}
	}
	return nil
}

// checkField checks a received value against its field's transform chain.
// The transforms are idempotent except bucketize and pseudonymize, so a
// value passes when applying the chain again leaves it unchanged; a bucket
// must be an index in range and a pseudonym must have a pseudonym's form.
func checkField(s *Stream, f *Field, v any) error {
	viol := func(err error, format string, args ...any) error {
		return &Violation{Stream: s.Name, Field: f.Name, Err: err, Detail: fmt.Sprintf(format, args...)}
	}
	typ := f.Type
	for t := &f.Transform; t != nil; t = t.Then {
		switch t.Op {
		case "drop":
			return viol(ErrDropped, "")
		case "bucketize":
			x, ok := v.(int64)
			if !ok || x < 0 || x > int64(len(t.Bounds)) {
				return viol(ErrPrecision, "want a bucket index from 0 to %d, got %v", len(t.Bounds), v)
			}
			return nil
		case "pseudonymize":
			str, ok := v.(string)
			if !ok || !pseudonymForm.MatchString(str) || !strings.HasPrefix(str, t.KeyID+":") {
				return viol(ErrPrecision, "not a pseudonym under key %s", t.KeyID)
			}
			return nil
		case "coarsen_location":
			if t.Geohash > 0 {
				str, ok := v.(string)
				if !ok || len(str) != t.Geohash || !isGeohash(str) {
					return viol(ErrPrecision, "want a geohash of %d characters", t.Geohash)
				}
				return nil
			}
		}
	}
	orig, err := valueOf(v, typ) // normalizes integer types, as CBOR decodes them
	if err != nil {
		return viol(ErrValue, "%v", err)
	}
	again := orig
	for t := &f.Transform; t != nil; t = t.Then {
		nv, _, err := t.apply(again, pseudonyms{})
		if err != nil {
			return viol(ErrValue, "%v", err)
		}
		again = nv
	}
	if !sameValue(again.Any(), orig.Any()) {
		return viol(ErrPrecision, "%v is finer than %s allows", v, f.Transform.Op)
	}
	return nil
}

func sameValue(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || math.Abs(x-y) <= 1e-9*math.Max(1, math.Abs(x)))
	case Point:
		y, ok := b.(Point)
		return ok && sameValue(x.Lat, y.Lat) && sameValue(x.Lon, y.Lon)
	case time.Time:
		y, ok := b.(time.Time)
		return ok && x.Equal(y)
	}
	return a == b
}

func isGeohash(s string) bool {
	for i := 0; i < len(s); i++ {
		if !containsByte(geohashAlphabet, s[i]) {
			return false
		}
	}
	return true
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}
