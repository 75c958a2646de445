package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sensible-iot/sensible/internal/codec"
)

// A Manifest declares what data a product may send: its streams, their
// fields, where each may go, in what form, for what purpose and for how
// long. Anything it does not declare never leaves the device.
type Manifest struct {
	// Product names the product, e.g. "acme-aircon-x1".
	Product string `json:"product" cbor:"1,keyasint"`
	// Version is the manifest's version, e.g. "2026.11.1".
	Version string `json:"version" cbor:"2,keyasint"`
	// Streams are the declared streams.
	Streams []Stream `json:"streams" cbor:"3,keyasint"`
}

// A Stream is one kind of reading the product records.
type Stream struct {
	// Name names the stream, e.g. "power".
	Name string `json:"name" cbor:"1,keyasint"`
	// Description says in plain words what the stream is, for the
	// customer-facing disclosure.
	Description string `json:"description" cbor:"2,keyasint"`
	// Purposes are the purposes the stream serves.
	Purposes []string `json:"purposes" cbor:"3,keyasint"`
	// Fields are the stream's fields.
	Fields []Field `json:"fields" cbor:"4,keyasint"`
	// Destinations are where the stream may go; none means the device
	// only.
	Destinations []Destination `json:"destinations,omitempty" cbor:"5,keyasint,omitempty"`
	// Consent is the consent purpose that must cover the stream before it
	// leaves the device; empty when the legal basis is Contract.
	Consent string `json:"consent,omitempty" cbor:"6,keyasint,omitempty"`
	// Contract marks data needed to provide the service the customer
	// bought (GDPR Art. 6(1)(b)) rather than consented to.
	Contract bool `json:"contract,omitempty" cbor:"7,keyasint,omitempty"`
	// CloudRetention is how long the cloud keeps the data.
	CloudRetention Duration `json:"cloud_retention,omitempty" cbor:"8,keyasint,omitempty"`
	// DeviceRetention is how long the device may keep it; zero means it
	// is used once and discarded.
	DeviceRetention Duration `json:"device_retention,omitempty" cbor:"9,keyasint,omitempty"`
	// Aggregate, if set, turns readings into one value per window before
	// they leave.
	Aggregate *Aggregate `json:"aggregate,omitempty" cbor:"10,keyasint,omitempty"`
}

// A Field is one value of a reading.
type Field struct {
	// Name names the field within its stream.
	Name string `json:"name" cbor:"1,keyasint"`
	// Type is one of number, integer, string, bool, timestamp, location.
	Type Type `json:"type" cbor:"2,keyasint"`
	// Category is a dotted data category, e.g. "device.sensor.power".
	Category string `json:"category" cbor:"3,keyasint"`
	// Transform is what the field gets before it leaves the device.
	Transform Transform `json:"transform" cbor:"4,keyasint"`
}

// A Type is a field's value type.
type Type string

// Field types.
const (
	Number    Type = "number"
	Integer   Type = "integer"
	String    Type = "string"
	Bool      Type = "bool"
	Timestamp Type = "timestamp"
	Location  Type = "location"
)

// A Transform says what happens to a field before it leaves. Op names it;
// the other fields are its parameters.
type Transform struct {
	// Op is drop, keep, round, clamp, bucketize, coarsen_time,
	// coarsen_location or pseudonymize.
	Op string `json:"op" cbor:"1,keyasint"`
	// Step is round's step (e.g. 0.5), or coarsen_time's bucket.
	Step float64 `json:"step,omitempty" cbor:"2,keyasint,omitempty"`
	// Min is the low end of clamp's range.
	Min *float64 `json:"min,omitempty" cbor:"3,keyasint,omitempty"`
	// Max is the high end of clamp's range.
	Max *float64 `json:"max,omitempty" cbor:"4,keyasint,omitempty"`
	// Bounds are bucketize's ascending boundaries.
	Bounds []float64 `json:"bounds,omitempty" cbor:"5,keyasint,omitempty"`
	// Bucket is coarsen_time's bucket.
	Bucket Duration `json:"bucket,omitempty" cbor:"6,keyasint,omitempty"`
	// Decimals is coarsen_location's precision in decimal places of
	// degrees (or set Geohash instead).
	Decimals int `json:"decimals,omitempty" cbor:"7,keyasint,omitempty"`
	// Geohash is coarsen_location's precision in geohash characters,
	// emitted as the geohash string.
	Geohash int `json:"geohash,omitempty" cbor:"8,keyasint,omitempty"`
	// KeyID names pseudonymize's key generation, so keys can rotate.
	KeyID string `json:"key_id,omitempty" cbor:"9,keyasint,omitempty"`
	// Then applies another transform after this one.
	Then *Transform `json:"then,omitempty" cbor:"10,keyasint,omitempty"`
}

// A Destination is where a stream may go.
type Destination struct {
	// To is "cloud" or "partner".
	To string `json:"to" cbor:"1,keyasint"`
	// Partner names the partner when To is "partner".
	Partner string `json:"partner,omitempty" cbor:"2,keyasint,omitempty"`
	// Consent is the consent purpose that must cover sharing with this
	// partner (required for partners).
	Consent string `json:"consent,omitempty" cbor:"3,keyasint,omitempty"`
}

// Aggregate turns a stream's readings into one value per window.
type Aggregate struct {
	// Window is the window length, e.g. "15m".
	Window Duration `json:"window" cbor:"1,keyasint"`
	// Func is count, sum, mean, min or max.
	Func string `json:"func" cbor:"2,keyasint"`
	// Field is the numeric field aggregated (not needed for count).
	Field string `json:"field,omitempty" cbor:"3,keyasint,omitempty"`
	// MinSamples suppresses a window built from fewer samples (k).
	MinSamples int `json:"min_samples,omitempty" cbor:"4,keyasint,omitempty"`
}

// A Duration is a time.Duration written as "15m", "720h" in JSON and as
// seconds in CBOR.
type Duration time.Duration

// MarshalJSON writes d like "15m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string such as "15m" or "720h".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("a duration is a string such as \"15m\" or \"720h\"")
	}
	v, err := time.ParseDuration(s)
	if err := checkDuration(v, err == nil, s); err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// checkDuration is the range check of every duration a manifest holds,
// read from JSON or CBOR or checked by Validate: ok says v is the value as
// written (it parsed, and did not overflow a time.Duration), and v must
// not be negative. Otherwise it returns a *durationError naming text, the
// value as written.
func checkDuration(v time.Duration, ok bool, text string) error {
	if !ok || v < 0 {
		return &durationError{text}
	}
	return nil
}

type durationError struct{ value string }

func (e *durationError) Error() string {
	return fmt.Sprintf("bad duration %q (write e.g. \"15m\" or \"720h\")", e.value)
}

// MarshalCBOR writes whole seconds.
func (d Duration) MarshalCBOR() ([]byte, error) {
	return codec.Marshal(int64(time.Duration(d) / time.Second))
}

// UnmarshalCBOR reads whole seconds, in the range UnmarshalJSON accepts.
func (d *Duration) UnmarshalCBOR(b []byte) error {
	var s int64
	if err := codec.Unmarshal(b, &s); err != nil {
		return err
	}
	v := time.Duration(s) * time.Second
	if err := checkDuration(v, v/time.Second == time.Duration(s), strconv.FormatInt(s, 10)+"s"); err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ErrInvalid is matched by every error Parse and Validate return.
var ErrInvalid = errors.New("policy: invalid manifest")

// A ManifestError says what is wrong with a manifest and where: the line
// of the file when it came from Parse, and the path of the element.
type ManifestError struct {
	Line    int    // 1-based line in the file; 0 if unknown
	Path    string // e.g. streams[1].fields[2].transform
	Problem string // what is wrong, in words
}

// Error names the line, the element and the problem.
func (e *ManifestError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("policy: manifest line %d: %s: %s", e.Line, e.Path, e.Problem)
	}
	return fmt.Sprintf("policy: manifest: %s: %s", e.Path, e.Problem)
}

// Is makes a ManifestError match ErrInvalid.
func (e *ManifestError) Is(target error) bool { return target == ErrInvalid }

// MaxManifestSize bounds a manifest file.
const MaxManifestSize = 1 << 20

// Parse reads a manifest written in JSON, refusing unknown keys, and
// validates it. Errors are *ManifestError values naming the line and the
// problem. JSON because it needs no dependency, has one way to write each
// value, and every editor and CI linter checks it.
func Parse(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestSize {
		return nil, &ManifestError{Path: "(file)", Problem: fmt.Sprintf("%d bytes, limit %d", len(data), MaxManifestSize)}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, jsonError(data, err)
	}
	if dec.More() {
		return nil, &ManifestError{Line: lineOf(data, int(dec.InputOffset())), Path: "(file)", Problem: "data after the manifest"}
	}
	if errs := m.validate(); len(errs) > 0 {
		e := errs[0]
		e.Line = locate(data, e.Path)
		return nil, e
	}
	return &m, nil
}

func jsonError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return &ManifestError{Line: lineOf(data, int(se.Offset)), Path: "(file)", Problem: "not valid JSON: " + se.Error()}
	case errors.As(err, &te):
		return &ManifestError{Line: lineOf(data, int(te.Offset)), Path: te.Field, Problem: fmt.Sprintf("want %s, found JSON %s", te.Type, te.Value)}
	}
	var de *durationError
	if errors.As(err, &de) {
		return &ManifestError{Line: lineOfKey(data, de.value), Path: "(duration)", Problem: de.Error()}
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		name := strings.Trim(f, `"`)
		return &ManifestError{Line: lineOfKey(data, name), Path: name, Problem: "unknown key " + f}
	}
	return &ManifestError{Path: "(file)", Problem: msg}
}

// lineOf returns the 1-based line of byte offset off.
func lineOf(data []byte, off int) int {
	off = min(max(off, 0), len(data))
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// lineOfKey returns the line of the first occurrence of "key":.
func lineOfKey(data []byte, key string) int {
	i := bytes.Index(data, []byte(`"`+key+`"`))
	if i < 0 {
		return 0
	}
	return lineOf(data, i)
}

var pathPart = regexp.MustCompile(`([a-z_]+)(?:\[(\d+)\])?`)

// locate finds the line of the element a validation path names, such as
// streams[2].fields[1].transform.op, by walking the raw JSON: to each
// array's nth object, then to each key after it. It returns the line it
// got to, or 0 if it got nowhere.
func locate(data []byte, path string) int {
	off, line, limit := 0, 0, len(data)
	for _, m := range pathPart.FindAllStringSubmatch(path, -1) {
		key := m[1]
		i := bytes.Index(data[off:limit], []byte(`"`+key+`"`))
		if i < 0 {
			return line // not within the current object: point at the object
		}
		off += i
		line = lineOf(data, off)
		if m[2] == "" {
			continue
		}
		// Step into the array's nth object.
		j := off
		for k := 0; k <= atoi(m[2]); k++ {
			next := bytes.IndexByte(data[j+1:], '{')
			if next < 0 {
				return line
			}
			j += next + 1
			if k < atoi(m[2]) {
				j = skipObject(data, j)
			}
		}
		off = j
		limit = min(skipObject(data, j)+1, len(data))
		line = lineOf(data, off)
	}
	return line
}

// skipObject returns the offset after the JSON object starting at i.
func skipObject(data []byte, i int) int {
	depth, inStr := 0, false
	for ; i < len(data); i++ {
		c := data[i]
		switch {
		case inStr:
			if c == '\\' {
				i++
			} else if c == '"' {
				inStr = false
			}
		case c == '"':
			inStr = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return i
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// Hash returns the manifest's identity: SHA-256 of its deterministic CBOR
// encoding. Each telemetry batch names it; the cloud checks the batch
// against exactly that manifest.
func (m *Manifest) Hash() ([32]byte, error) {
	b, err := codec.Marshal(m)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// OutputType returns the type of field name's values as they leave the
// device on stream s: what Enforcer.Apply and Aggregator.Flush produce
// for it and what Check accepts. That is the declared type, except that a
// bucket index is an Integer and a pseudonym or a geohash a String; on an
// aggregated stream, a count is an Integer, the other aggregates are
// Numbers and window starts are Timestamps. ok is false for a name that
// never leaves: undeclared, dropped, or, on an aggregated stream, not an
// output of the aggregate. A decoder uses it to type the values of a
// batch by the manifest the batch names.
func (s *Stream) OutputType(name string) (t Type, ok bool) {
	if a := s.Aggregate; a != nil {
		switch {
		case a.Func == "count" && name == "count":
			return Integer, true
		case a.Func != "count" && name == a.Field:
			return Number, true
		case name != "" && isTimestampField(s, name):
			return Timestamp, true
		}
		return "", false
	}
	f := fieldOfStream(s, name)
	if f == nil {
		return "", false
	}
	t = f.Type
	for tr := &f.Transform; tr != nil; tr = tr.Then {
		switch tr.Op {
		case "drop":
			return "", false
		case "bucketize":
			t = Integer
		case "pseudonymize":
			t = String
		case "coarsen_location":
			if tr.Geohash > 0 {
				t = String
			}
		}
	}
	return t, true
}

// Stream returns the declared stream called name.
func (m *Manifest) Stream(name string) (*Stream, bool) {
	i := slices.IndexFunc(m.Streams, func(s Stream) bool { return s.Name == name })
	if i < 0 {
		return nil, false
	}
	return &m.Streams[i], true
}
