package protocol

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/internal/codec"
)

// A Key is a batch's idempotency key. With the device ID, which the
// session gives, it names the batch: a batch received twice is stored
// once and acknowledged twice. It travels as a two-element array.
type Key struct {
	_ struct{} `cbor:",toarray"`
	// Epoch names the device's outbox: a random non-zero number drawn
	// when the outbox is created, and drawn again whenever the device
	// loses it (a factory reset, a corrupt flash), so that sequence
	// numbers starting again never collide with ones sent before.
	Epoch uint64
	// Seq numbers the batches of one epoch: 1 for the first, one more for
	// each batch after. A number is never reused for other content.
	Seq uint64
}

// IsZero reports whether k is the zero key, which no batch may carry.
func (k Key) IsZero() bool { return k.Epoch == 0 && k.Seq == 0 }

// valid reports whether k may name a batch: both parts are non-zero.
func (k Key) valid() bool { return k.Epoch != 0 && k.Seq != 0 }

// A Batch is a telemetry batch: readings of one stream, as the device's
// policy.Enforcer (or Aggregator) produced them, for one destination,
// naming the manifest that shaped them. It is the body of POST
// /v1/telemetry; the answer is 2.04 with an [Ack].
//
// Encode it with codec-compatible marshalling (it implements
// MarshalCBOR, so transport.Client.Post sends it as it is) or with
// [Batch.MarshalSenML]; decode it with [DecodeBatch] or [DecodeSenML],
// which type every value by the manifest the batch names.
type Batch struct {
	// Manifest is the hash of the manifest that shaped the readings.
	Manifest Hash
	// Stream is the readings' stream.
	Stream string
	// Key is the batch's idempotency key.
	Key Key
	// Partner, when set, names the partner the readings are for (a
	// destination of the stream); empty means the cloud.
	Partner string
	// Readings are the readings, field name to value, each value of the
	// Go type its manifest type has: float64 (number), int64 (integer,
	// bucket index, count), string (string, pseudonym, geohash), bool,
	// time.Time (timestamp) or policy.Point (location).
	Readings []policy.Reading
}

// Destination returns where the readings go: the cloud, or the partner.
func (b *Batch) Destination() policy.Destination {
	if b.Partner != "" {
		return policy.Destination{To: "partner", Partner: b.Partner}
	}
	return policy.Destination{To: "cloud"}
}

// Policy returns the batch as policy.Manifests.Check takes it. The
// readings are shared, not copied.
func (b *Batch) Policy() *policy.Batch {
	return &policy.Batch{Manifest: b.Manifest, Stream: b.Stream, Destination: b.Destination(), Readings: b.Readings}
}

// Digest returns the SHA-256 of the batch's deterministic CBOR encoding.
// Two batches with the same digest hold the same readings: the cloud
// keeps it with the idempotency key, and a batch that comes again with
// the same key but another digest is refused rather than taken for a
// repeat.
func (b Batch) Digest() (Hash, error) {
	data, err := b.MarshalCBOR()
	if err != nil {
		return Hash{}, err
	}
	return sha256.Sum256(data), nil
}

// An Ack is the answer to a telemetry batch: 2.04 with the batch's key.
// A device deletes a batch from its outbox when its Ack comes, and not
// before.
type Ack struct {
	// Key is the acknowledged batch's key.
	Key Key `cbor:"1,keyasint"`
	// Stored is how many readings of the batch the cloud holds.
	Stored uint64 `cbor:"2,keyasint"`
	// Duplicate says that the cloud had the batch already: this is a
	// repeat, and nothing was stored again.
	Duplicate bool `cbor:"3,keyasint,omitempty"`
}

// A ManifestSource finds a manifest by its hash: the cloud's register.
// *policy.Manifests is one.
type ManifestSource interface {
	// Lookup returns the manifest whose hash is h. The caller must not
	// modify it.
	Lookup(h [32]byte) (*policy.Manifest, bool)
}

var _ ManifestSource = (*policy.Manifests)(nil)

// wireBatch is a batch as it travels, before its values are typed.
type wireBatch struct {
	Manifest []byte           `cbor:"1,keyasint"`
	Stream   string           `cbor:"2,keyasint"`
	Key      Key              `cbor:"3,keyasint"`
	Partner  *string          `cbor:"4,keyasint,omitempty"`
	Readings []map[string]any `cbor:"5,keyasint"`
}

// batchDecoder decodes telemetry bodies, CBOR and SenML: a batch nests
// four deep (batch, readings, reading, timestamp or location), a SenML
// pack two.
var batchDecoder = func() *codec.Decoder {
	d, err := codec.NewDecoder(codec.Limits{MaxBody: MaxBatchBody, MaxDepth: 5, MaxArray: MaxReadings, MaxMap: MaxFields})
	if err != nil {
		panic(err) // constant limits
	}
	return d
}()

// MarshalCBOR returns the batch's deterministic CBOR encoding (see
// docs/protocol.md for its CDDL). It fails with ErrInvalid for a batch the
// decoder would refuse in any case: no stream, a zero key part, no
// readings, an empty reading or field name, or a value of a Go type no
// manifest type has.
func (b Batch) MarshalCBOR() ([]byte, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	w := wireBatch{Manifest: b.Manifest[:], Stream: b.Stream, Key: b.Key, Readings: make([]map[string]any, len(b.Readings))}
	if b.Partner != "" {
		w.Partner = &b.Partner
	}
	for i, r := range b.Readings {
		out := make(map[string]any, len(r))
		for name, v := range r {
			if name == "" {
				return nil, batchErr(ErrInvalid, i, "", "a field without a name")
			}
			wv, err := wireValue(v)
			if err != nil {
				return nil, batchErr(ErrInvalid, i, name, "%v", err)
			}
			out[name] = wv
		}
		w.Readings[i] = out
	}
	data, err := codec.Marshal(w)
	if err != nil {
		return nil, &BatchError{Kind: ErrInvalid, Reading: -1, Record: -1, Err: err}
	}
	return data, nil
}

// check is what MarshalCBOR and MarshalSenML require of any batch.
func (b *Batch) check() error {
	switch {
	case b.Stream == "":
		return batchErr(ErrInvalid, -1, "", "no stream")
	case !b.Key.valid():
		return batchErr(ErrInvalid, -1, "", "epoch and sequence number must not be zero")
	case len(b.Readings) == 0:
		return batchErr(ErrInvalid, -1, "", "no readings")
	case len(b.Readings) > MaxReadings:
		return batchErr(ErrInvalid, -1, "", "%d readings, limit %d", len(b.Readings), MaxReadings)
	}
	for i, r := range b.Readings {
		if len(r) == 0 {
			return batchErr(ErrInvalid, i, "", "an empty reading")
		}
		if len(r) > MaxFields {
			return batchErr(ErrInvalid, i, "", "%d fields, limit %d", len(r), MaxFields)
		}
	}
	return nil
}

// UnmarshalCBOR refuses: a batch's values are typed by its manifest, so
// it is decoded with DecodeBatch, never generically.
func (b *Batch) UnmarshalCBOR([]byte) error {
	return errors.New("protocol: decode a batch with DecodeBatch, against its manifest")
}

// wireValue returns v as it travels: a timestamp as integer seconds, or
// [seconds, nanoseconds] when it has a fraction; a location as {1: lat,
// 2: lon}; integers as int64; the rest as they are.
func wireValue(v any) (any, error) {
	switch x := v.(type) {
	case float64, string, bool, int64:
		return x, nil
	case float32:
		return float64(x), nil
	case int:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint64:
		if x > math.MaxInt64 {
			return nil, errors.New("integer out of the int64 range")
		}
		return int64(x), nil
	case time.Time:
		if ns := x.Nanosecond(); ns != 0 {
			return [2]int64{x.Unix(), int64(ns)}, nil
		}
		return x.Unix(), nil
	case policy.Point:
		return x, nil
	}
	return nil, fmt.Errorf("a %T has no v1 encoding", v)
}

// DecodeBatch decodes a telemetry batch sent as CBOR (content-format 60)
// against the manifest it names, found in ms, and types every value by
// that manifest: the readings come back as the device's Enforcer made
// them, ready for policy.Manifests.Check, which the caller must still
// run (for destinations and precision). Decoding is strict and bounded
// (MaxBatchBody, MaxReadings, MaxFields).
//
// Every error is a *[BatchError]: ErrTooLarge, ErrMalformed,
// ErrUnknownManifest (the manifest is not in ms), or ErrRefused for a
// stream the manifest does not declare, a field that never leaves the
// device (undeclared, dropped) and a value that is not of its field's
// output type; the *policy.Violation it wraps is the one Check would
// report.
func DecodeBatch(data []byte, ms ManifestSource) (*Batch, error) {
	var w wireBatch
	if err := batchDecoder.Unmarshal(data, &w); err != nil {
		return nil, decodeErr(err)
	}
	b := &Batch{Stream: w.Stream, Key: w.Key}
	switch {
	case len(w.Manifest) != len(b.Manifest):
		return nil, batchErr(ErrMalformed, -1, "", "a manifest hash of %d bytes, want 32", len(w.Manifest))
	case w.Stream == "":
		return nil, batchErr(ErrMalformed, -1, "", "no stream")
	case !w.Key.valid():
		return nil, batchErr(ErrMalformed, -1, "", "epoch and sequence number must not be zero")
	case w.Partner != nil && *w.Partner == "":
		return nil, batchErr(ErrMalformed, -1, "", "an empty partner")
	case len(w.Readings) == 0:
		return nil, batchErr(ErrMalformed, -1, "", "no readings")
	}
	copy(b.Manifest[:], w.Manifest)
	if w.Partner != nil {
		b.Partner = *w.Partner
	}
	m, s, err := b.lookup(ms)
	if err != nil {
		return nil, err
	}
	b.Readings = make([]policy.Reading, len(w.Readings))
	for i, raw := range w.Readings {
		if len(raw) == 0 {
			return nil, batchErr(ErrMalformed, i, "", "an empty reading")
		}
		r := make(policy.Reading, len(raw))
		for name, rv := range raw {
			v, err := typed(m, s, b.Destination(), name, rv)
			if err != nil {
				// Report the first fault in name order, whatever the
				// order of the map.
				for _, name := range slices.Sorted(maps.Keys(raw)) {
					if _, err = typed(m, s, b.Destination(), name, raw[name]); err != nil {
						break
					}
				}
				err.Reading = i
				return nil, err
			}
			r[name] = v
		}
		b.Readings[i] = r
	}
	return b, nil
}

// lookup finds the batch's manifest and stream.
func (b *Batch) lookup(ms ManifestSource) (*policy.Manifest, *policy.Stream, error) {
	m, ok := ms.Lookup(b.Manifest)
	if !ok || m == nil {
		return nil, nil, &BatchError{Kind: ErrUnknownManifest, Reading: -1, Record: -1,
			Detail: fmt.Sprintf("%x...", b.Manifest[:8]), Err: policy.ErrUnknownManifest}
	}
	s, ok := m.Stream(b.Stream)
	if !ok {
		return nil, nil, &BatchError{Kind: ErrRefused, Reading: -1, Record: -1, Detail: "stream " + quote(b.Stream),
			Err: &policy.Violation{Stream: b.Stream, Err: policy.ErrUndeclaredStream}}
	}
	return m, s, nil
}

// decodeErr maps a codec error to a BatchError.
func decodeErr(err error) *BatchError {
	kind := ErrMalformed
	if errors.Is(err, codec.ErrTooLarge) {
		kind = ErrTooLarge
	}
	detail := ""
	var de *codec.DecodeError
	if errors.As(err, &de) && de.Kind != nil {
		detail = de.Kind.Error() // short and free of input data
	}
	return &BatchError{Kind: kind, Reading: -1, Record: -1, Detail: detail, Err: err}
}

// typed types the wire value v of field name by the manifest: the value
// the Enforcer produced. A field with no output type is refused with the
// violation Check reports for it.
func typed(m *policy.Manifest, s *policy.Stream, dest policy.Destination, name string, v any) (any, *BatchError) {
	t, ok := s.OutputType(name)
	if !ok {
		err := m.Check(s.Name, dest, policy.Reading{name: v})
		if err == nil { // cannot happen: Check accepts only output fields
			err = &policy.Violation{Stream: s.Name, Field: name, Err: policy.ErrUndeclaredField}
		}
		return nil, &BatchError{Kind: ErrRefused, Reading: -1, Record: -1, Field: name, Err: err}
	}
	out, detail := typeValue(v, t)
	if detail != "" {
		return nil, &BatchError{Kind: ErrRefused, Reading: -1, Record: -1, Field: name, Detail: detail,
			Err: &policy.Violation{Stream: s.Name, Field: name, Err: policy.ErrValue, Detail: detail}}
	}
	return out, nil
}

// typeValue converts a generically decoded CBOR value to the Go value of
// manifest type t, or says in detail why it is not one.
func typeValue(v any, t policy.Type) (any, string) {
	switch t {
	case policy.Number:
		if x, ok := number(v); ok && finite(x) {
			return x, ""
		}
		return nil, "want a finite number"
	case policy.Integer:
		if x, ok := integer(v); ok {
			return x, ""
		}
		return nil, "want an integer"
	case policy.String:
		if x, ok := v.(string); ok {
			return x, ""
		}
		return nil, "want a text string"
	case policy.Bool:
		if x, ok := v.(bool); ok {
			return x, ""
		}
		return nil, "want true or false"
	case policy.Timestamp:
		if x, ok := timestamp(v); ok {
			return x, ""
		}
		return nil, "want a timestamp: integer seconds, or [seconds, nanoseconds 1 to 999999999]"
	case policy.Location:
		if x, ok := location(v); ok && finite(x.Lat) && finite(x.Lon) {
			return x, ""
		}
		return nil, "want a location: {1: latitude, 2: longitude}"
	}
	return nil, fmt.Sprintf("unknown type %q", t)
}

// number accepts a float, or an integer a float64 holds exactly.
func number(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case uint64:
		f := float64(x)
		return f, f < 1<<64 && uint64(f) == x
	case int64:
		f := float64(x)
		return f, f >= -1<<63 && f < 1<<63 && int64(f) == x
	}
	return 0, false
}

// finite reports whether x is neither NaN nor infinite: what the enforcer
// lets leave, and what the check accepts.
func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// integer accepts a CBOR integer within int64; never a float.
func integer(v any) (int64, bool) {
	switch x := v.(type) {
	case uint64:
		return int64(x), x <= math.MaxInt64
	case int64:
		return x, true
	}
	return 0, false
}

// timestamp accepts integer Unix seconds, or [seconds, nanoseconds] with
// nanoseconds from 1 to 999999999 (whole seconds have the one form).
// Times come back in UTC.
func timestamp(v any) (time.Time, bool) {
	if s, ok := integer(v); ok {
		return time.Unix(s, 0).UTC(), true
	}
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return time.Time{}, false
	}
	s, ok1 := integer(a[0])
	ns, ok2 := a[1].(uint64)
	if !ok1 || !ok2 || ns == 0 || ns >= 1e9 {
		return time.Time{}, false
	}
	return time.Unix(s, int64(ns)).UTC(), true
}

// location accepts {1: latitude, 2: longitude}, both numbers.
func location(v any) (policy.Point, bool) {
	m, ok := v.(map[any]any)
	if !ok || len(m) != 2 {
		return policy.Point{}, false
	}
	lat, ok1 := number(m[uint64(1)])
	lon, ok2 := number(m[uint64(2)])
	return policy.Point{Lat: lat, Lon: lon}, ok1 && ok2
}
