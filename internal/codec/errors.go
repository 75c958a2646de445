package codec

import (
	"errors"
	"io"
	"strings"

	"github.com/fxamacker/cbor/v2"
)

// Sentinel errors: the Kind of every [DecodeError]. Test for them with
// errors.Is. A server answers ErrTooLarge with CoAP 4.13 and the others
// with 4.00, with the error's text as the diagnostic payload.
var (
	// ErrTooLarge means the input is longer than the decoder's MaxBody.
	// It is reported before any byte is decoded.
	ErrTooLarge = errors.New("codec: body too large")

	// ErrMalformed means the input is not one well-formed CBOR data item:
	// it is empty or truncated, has bytes after the item, uses a reserved
	// or misplaced head (additional information 28 to 30, a lone break
	// byte, a simple value below 32 written in two bytes), or holds a text
	// string that is not valid UTF-8.
	ErrMalformed = errors.New("codec: malformed CBOR")

	// ErrDuplicateKey means a map has the same key twice, or two keys that
	// decode to the same struct field or Go map key.
	ErrDuplicateKey = errors.New("codec: duplicate map key")

	// ErrIndefiniteLength means the input holds an indefinite-length
	// string, array or map. Deterministic CBOR never uses them.
	ErrIndefiniteLength = errors.New("codec: indefinite length not allowed")

	// ErrTag means the input holds a CBOR tag (major type 6). No schema
	// decoded here uses tags; this includes time (tags 0 and 1) and
	// bignums (tags 2 and 3).
	ErrTag = errors.New("codec: tag not allowed")

	// ErrTooDeep means arrays and maps nest deeper than MaxDepth.
	ErrTooDeep = errors.New("codec: nesting too deep")

	// ErrTooMany means an array declares more than MaxArray elements or a
	// map more than MaxMap pairs.
	ErrTooMany = errors.New("codec: too many elements")

	// ErrType means the input is well-formed CBOR but does not fit the Go
	// value: a wrong type, an integer out of range, a map key that names no
	// field of the target struct, a map key Go cannot hold, or a target
	// that is not a non-nil pointer.
	ErrType = errors.New("codec: does not fit the expected type")
)

// A DecodeError is the error of every failed [Decoder.Unmarshal]. Its
// message is Kind's: short, fixed, and free of input data, so it can go
// back to the peer as is. Err keeps the library's detail for logs.
//
// errors.Is(err, k) is true for its Kind; errors.Is and errors.As also see
// Err.
type DecodeError struct {
	// Kind is one of the package's sentinel errors (ErrTooLarge, ...).
	Kind error

	// Field is the map key of the struct field whose value did not fit
	// its Go type (Kind ErrType), such as "value"; the outermost one
	// when structs nest. It is a name from the schema, not from the
	// input, and is empty when no one field is to blame.
	Field string

	// Err is the CBOR library's error, nil for ErrTooLarge. Its text may
	// quote the input and name Go types: log it, do not send it.
	Err error
}

// Error returns Kind's message.
func (e *DecodeError) Error() string {
	if e.Kind == nil {
		return "codec: decode error"
	}
	return e.Kind.Error()
}

// Unwrap returns Kind and, when set, Err.
func (e *DecodeError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// kind maps an error of d.mode.Unmarshal(data, ...) to a sentinel.
func (d *Decoder) kind(data []byte, err error) error {
	var (
		dup      *cbor.DupMapKeyError
		indef    *cbor.IndefiniteLengthError
		tags     *cbor.TagsMdError
		nested   *cbor.MaxNestedLevelError
		array    *cbor.MaxArrayElementsError
		pairs    *cbor.MaxMapPairsError
		syntax   *cbor.SyntaxError
		semantic *cbor.SemanticError
		extra    *cbor.ExtraneousDataError
		typ      *cbor.UnmarshalTypeError
		unknown  *cbor.UnknownFieldError
		mapKey   *cbor.InvalidMapKeyTypeError
		target   *cbor.InvalidUnmarshalError
	)
	switch {
	case errors.As(err, &dup):
		return ErrDuplicateKey
	case errors.As(err, &indef):
		return ErrIndefiniteLength
	case errors.As(err, &tags):
		return ErrTag
	case errors.As(err, &nested):
		return ErrTooDeep
	case errors.As(err, &array), errors.As(err, &pairs):
		return ErrTooMany
	case errors.As(err, &syntax), errors.As(err, &semantic), errors.As(err, &extra),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return ErrMalformed
	case errors.As(err, &typ), errors.As(err, &unknown), errors.As(err, &mapKey), errors.As(err, &target):
		return ErrType
	}
	// An untyped error: either the well-formedness check (a length that
	// overflows int) or a type's own UnmarshalCBOR, UnmarshalBinary or
	// UnmarshalText method. Which one is told by checking well-formedness
	// again, which only happens on this rare path.
	if d.mode.Wellformed(data) != nil {
		return ErrMalformed
	}
	return ErrType
}

// field returns the map key of the struct field that a type error names:
// the library writes it as the Go type, a dot and the key.
func field(err error) string {
	var typ *cbor.UnmarshalTypeError
	if !errors.As(err, &typ) || typ.StructFieldName == "" {
		return ""
	}
	name := typ.StructFieldName
	return name[strings.LastIndexByte(name, '.')+1:]
}
