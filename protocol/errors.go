package protocol

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sensible-iot/sensible/consent/policy"
)

// A Kind classifies what is wrong with a message. The kinds are constants,
// so no caller can change them; test for them with errors.Is.
type Kind string

// Error returns the kind's text.
func (k Kind) Error() string { return string(k) }

// The kinds of [BatchError], and the CoAP response each one calls for.
const (
	// ErrMalformed means the body is not a well-formed message of its
	// resource: not CBOR, not the shape the CDDL gives, a missing or
	// unknown key, a hash of the wrong length, a zero idempotency key, no
	// readings, bad Uri-Query options. The cloud answers 4.00.
	ErrMalformed Kind = "protocol: malformed message"

	// ErrTooLarge means the body is longer than the resource accepts. The
	// cloud answers 4.13.
	ErrTooLarge Kind = "protocol: message too large"

	// ErrUnknownManifest means the batch names a manifest hash the cloud
	// does not hold, so it cannot type or check the readings. The cloud
	// answers 4.00 with the diagnostic [DiagnosticUnknownManifest]; the
	// device fetches /v1/manifest. The error also matches
	// policy.ErrUnknownManifest.
	ErrUnknownManifest Kind = "protocol: unknown manifest"

	// ErrRefused means the manifest the batch names refuses a reading: an
	// undeclared stream or field, a dropped field, or a value of the
	// wrong type. The error's Err is the *policy.Violation, exactly as
	// policy.Manifests.Check would report it. The cloud answers 4.03.
	ErrRefused Kind = "protocol: refused by the manifest"

	// ErrSenML means a SenML pack uses what this protocol does not map (a
	// unit, a sum, a relative time, a data value, an unknown label), or a
	// batch holds what SenML cannot express (a time finer than a double
	// holds, a second timestamp field, readings SenML cannot tell apart).
	// The cloud answers 4.00.
	ErrSenML Kind = "protocol: not expressible in SenML"

	// ErrInvalid means a batch cannot be encoded: it breaks a rule the
	// decoder would refuse (no stream, a zero key, no readings, an empty
	// reading) or holds a Go value that has no v1 encoding. It is a
	// programming error on the sending side; nothing is sent.
	ErrInvalid Kind = "protocol: invalid batch"
)

// DiagnosticUnknownManifest is the diagnostic payload of the 4.00 the
// cloud answers to a batch that names a manifest it does not hold. It is
// the one diagnostic a device acts on: on reading exactly this payload it
// fetches /v1/manifest.
const DiagnosticUnknownManifest = "unknown manifest: GET /v1/manifest"

// DiagnosticKeyReused is the diagnostic payload of the 4.00 the cloud
// answers to a batch whose idempotency key it has stored already with
// other content (another [Batch.Digest]): a bug on the device, which
// drops the batch rather than retry it.
const DiagnosticKeyReused = "idempotency key reused for other content"

// A BatchError says what is wrong with a telemetry batch, and where. Its
// text is short and fit for a CoAP diagnostic payload: it quotes at most
// one field or stream name, cut to 64 bytes, and never a value.
//
// errors.Is(err, k) is true for its Kind; errors.Is and errors.As also see
// Err (a *policy.Violation, say).
type BatchError struct {
	// Kind is one of ErrMalformed, ErrTooLarge, ErrUnknownManifest,
	// ErrRefused, ErrSenML and ErrInvalid.
	Kind Kind
	// Reading is the index of the reading at fault, or -1.
	Reading int
	// Record is the index of the SenML record at fault, or -1.
	Record int
	// Field is the field at fault, if one is.
	Field string
	// Detail says what exactly is wrong, in words.
	Detail string
	// Err is the cause, if any: the *policy.Violation of ErrRefused,
	// policy.ErrUnknownManifest, or the CBOR decoder's error (whose text
	// is not sent to the peer).
	Err error
}

// Error returns the kind, the place and the detail.
func (e *BatchError) Error() string {
	var b strings.Builder
	b.WriteString(string(e.Kind))
	if e.Reading >= 0 {
		b.WriteString(": reading ")
		b.WriteString(strconv.Itoa(e.Reading))
	}
	if e.Record >= 0 {
		b.WriteString(": record ")
		b.WriteString(strconv.Itoa(e.Record))
	}
	if e.Field != "" {
		b.WriteString(": field ")
		b.WriteString(quote(e.Field))
	}
	var v *policy.Violation
	switch {
	case e.Detail != "":
		b.WriteString(": ")
		b.WriteString(e.Detail)
	case errors.As(e.Err, &v) && v.Err != nil:
		b.WriteString(": ")
		b.WriteString(v.Err.Error()) // the kind of violation, not its values
	}
	return b.String()
}

// Unwrap returns Kind and, when set, Err.
func (e *BatchError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// maxQuoted bounds a name quoted in an error's text.
const maxQuoted = 64

// quote quotes a name from the input, cut to maxQuoted bytes.
func quote(s string) string {
	if len(s) > maxQuoted {
		s = s[:maxQuoted] + "..."
	}
	return strconv.Quote(s)
}

func batchErr(kind Kind, reading int, field, format string, args ...any) *BatchError {
	return &BatchError{Kind: kind, Reading: reading, Record: -1, Field: field, Detail: fmt.Sprintf(format, args...)}
}
