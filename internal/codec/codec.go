package codec

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Default limits, used for every zero field of [Limits] and by [Unmarshal].
const (
	// DefaultMaxBody is the largest input, in bytes, that a Decoder accepts
	// by default: 64 KiB, room for a large telemetry batch while keeping
	// what one request in flight can make the decoder allocate small.
	DefaultMaxBody = 64 << 10

	// DefaultMaxDepth is how deeply arrays and maps may nest by default:
	// room for records that hold lists of records, while bounding the
	// decoder's recursion.
	DefaultMaxDepth = 16

	// DefaultMaxArray is the most elements one array may declare by
	// default: sized for telemetry batches, the longest arrays we send.
	DefaultMaxArray = 4096

	// DefaultMaxMap is the most key/value pairs one map may declare by
	// default: records have tens of fields, not hundreds.
	DefaultMaxMap = 256
)

// Bounds of the limits, set by the CBOR library (the lower ones) and by
// what is reasonable for an int on every platform (the upper ones).
const (
	minDepth = 4
	maxDepth = 65535
	minCount = 16
	maxCount = 1<<31 - 1
)

// encMode is the one encoding mode: RFC 8949 §4.2.1 core deterministic
// encoding (preferred serialization: shortest integer and length
// arguments, shortest float that keeps the value, NaN as f97e00, infinities
// as half floats; no indefinite lengths; map keys and struct fields sorted
// bytewise by their encoding). Tags are forbidden, so Marshal never writes
// what Unmarshal rejects as ErrTag; time.Time is written as integer Unix
// seconds.
var encMode = func() cbor.EncMode {
	opts := cbor.CoreDetEncOptions()
	opts.Time = cbor.TimeUnix
	opts.TimeTag = cbor.EncTagNone
	opts.BigIntConvert = cbor.BigIntConvertShortest
	opts.TagsMd = cbor.TagsForbidden
	em, err := opts.EncMode()
	if err != nil {
		panic("codec: building the encoding mode: " + err.Error()) // a bug in the options above
	}
	return em
}()

// Marshal returns the core deterministic encoding of v (RFC 8949 §4.2.1):
// the same value always gives the same bytes, so they may be signed, hashed
// and compared.
//
// Go values map to CBOR as in github.com/fxamacker/cbor/v2, with these
// choices: map keys and struct fields are sorted bytewise by their encoded
// form; floats use the shortest of half, single or double precision that
// keeps the value; time.Time becomes integer Unix seconds (sub-second
// precision is dropped: use an integer field for finer times); nil slices
// and maps become null. Marshal fails for values CBOR without tags cannot
// hold (channels, functions, a big.Int outside -2^64 to 2^64-1, cbor.Tag):
// those are programming errors, not data errors. See the package Caveats.
func Marshal(v any) ([]byte, error) {
	b, err := encMode.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("codec: marshal: %v", err)
	}
	return b, nil
}

// Limits bounds what a [Decoder] accepts. A zero field means its default
// (DefaultMaxBody, DefaultMaxDepth, DefaultMaxArray, DefaultMaxMap), so the
// zero Limits is the set of defaults; a negative field is invalid. Size each purpose's limits to its
// schema: the limits, not the Go type, bound the memory and time one input
// may cost.
type Limits struct {
	// MaxBody is the largest input in bytes. It is checked before any
	// decoding, and it also bounds every byte and text string (a string
	// cannot be longer than the input that holds it). At least 1.
	MaxBody int

	// MaxDepth is how deeply arrays and maps may nest: a scalar has depth
	// 0, [1] has depth 1, {"a": [1]} has depth 2. At least 4, at most 65535.
	MaxDepth int

	// MaxArray is the most elements one array may declare. At least 16,
	// at most 2^31-1.
	MaxArray int

	// MaxMap is the most key/value pairs one map may declare. At least 16,
	// at most 2^31-1.
	MaxMap int
}

// withDefaults returns l with every zero field set to its default.
func (l Limits) withDefaults() Limits {
	if l.MaxBody == 0 {
		l.MaxBody = DefaultMaxBody
	}
	if l.MaxDepth == 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxArray == 0 {
		l.MaxArray = DefaultMaxArray
	}
	if l.MaxMap == 0 {
		l.MaxMap = DefaultMaxMap
	}
	return l
}

// check reports the first limit outside its bounds. l has its defaults.
func (l Limits) check() error {
	switch {
	case l.MaxBody < 1:
		return fmt.Errorf("codec: invalid limits: MaxBody %d, want at least 1", l.MaxBody)
	case l.MaxDepth < minDepth || l.MaxDepth > maxDepth:
		return fmt.Errorf("codec: invalid limits: MaxDepth %d, want %d to %d", l.MaxDepth, minDepth, maxDepth)
	case l.MaxArray < minCount || l.MaxArray > maxCount:
		return fmt.Errorf("codec: invalid limits: MaxArray %d, want %d to %d", l.MaxArray, minCount, maxCount)
	case l.MaxMap < minCount || l.MaxMap > maxCount:
		return fmt.Errorf("codec: invalid limits: MaxMap %d, want %d to %d", l.MaxMap, minCount, maxCount)
	}
	return nil
}

// A Decoder decodes untrusted CBOR strictly, within its [Limits]. It is
// immutable and safe for concurrent use: build one per purpose (a resource,
// a file format) with [NewDecoder] and share it. The zero Decoder, and a
// nil *Decoder, decode with the default limits.
type Decoder struct {
	mode   cbor.DecMode
	limits Limits
}

// defaultDecoder is the strict decoder with the default limits, used by
// Unmarshal and by the zero Decoder.
var defaultDecoder = func() *Decoder {
	d, err := NewDecoder(Limits{})
	if err != nil {
		panic(err) // a bug in the default limits
	}
	return d
}()

// NewDecoder returns a strict Decoder with the limits l, where zero fields
// take their defaults. It fails only if a limit is out of its documented
// range.
func NewDecoder(l Limits) (*Decoder, error) {
	return newDecoder(l, cbor.ExtraDecErrorUnknownField)
}

// NewTolerantDecoder returns a Decoder with the limits l that is strict in
// every way but one: a map key that names no field of the target struct
// is skipped instead of refused (it is still checked for well-formedness,
// duplicates and the limits). It is for what a newer peer may extend,
// such as responses and notifications from a cloud that added a field;
// requests, and everything that is signed or hashed, use [NewDecoder].
func NewTolerantDecoder(l Limits) (*Decoder, error) {
	return newDecoder(l, cbor.ExtraDecErrorNone)
}

func newDecoder(l Limits, extra cbor.ExtraDecErrorCond) (*Decoder, error) {
	l = l.withDefaults()
	if err := l.check(); err != nil {
		return nil, err
	}
	mode, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   l.MaxDepth,
		MaxArrayElements:  l.MaxArray,
		MaxMapPairs:       l.MaxMap,
		ExtraReturnErrors: extra,
		FieldNameMatching: cbor.FieldNameMatchingCaseSensitive,
		UTF8:              cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		return nil, fmt.Errorf("codec: building the decoding mode: %w", err)
	}
	return &Decoder{mode: mode, limits: l}, nil
}

// Limits returns the limits d enforces, with defaults filled in.
func (d *Decoder) Limits() Limits {
	if d == nil || d.mode == nil {
		return defaultDecoder.limits
	}
	return d.limits
}

// Unmarshal decodes data, which must hold exactly one CBOR data item, into
// the value v points to. Decoding is strict (see the package
// documentation): an input over MaxBody is refused before it is read;
// duplicate map keys, indefinite lengths, tags, nesting or sizes over the
// limits, trailing bytes and map keys that match no field of the target
// struct are errors.
//
// Every error is a *[DecodeError] whose Kind is one of the package's
// sentinel errors, so callers test it with errors.Is, and whose Field names
// the struct field whose value did not fit, when there is one. A v that is not a
// non-nil pointer gives ErrType. On error, v may have been partly written:
// discard it.
func (d *Decoder) Unmarshal(data []byte, v any) error {
	if d == nil || d.mode == nil {
		d = defaultDecoder
	}
	if len(data) > d.limits.MaxBody {
		return &DecodeError{Kind: ErrTooLarge}
	}
	if err := d.mode.Unmarshal(data, v); err != nil {
		return &DecodeError{Kind: d.kind(data, err), Field: field(err), Err: err}
	}
	return nil
}

// Unmarshal decodes data into the value v points to with the default
// strict decoder (the default [Limits]). See [Decoder.Unmarshal].
func Unmarshal(data []byte, v any) error {
	return defaultDecoder.Unmarshal(data, v)
}
