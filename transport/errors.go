package transport

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sensible-iot/sensible/internal/codec"
)

// A Code is a CoAP response code (RFC 7252 section 12.1.2), class and
// detail in one byte: 0x84 is 4.04.
type Code uint8

// Response codes used by the v1 resources.
const (
	Created          Code = 0x41 // 2.01
	Deleted          Code = 0x42 // 2.02
	Valid            Code = 0x43 // 2.03
	Changed          Code = 0x44 // 2.04
	Content          Code = 0x45 // 2.05
	BadRequest       Code = 0x80 // 4.00: malformed input
	Unauthorized     Code = 0x81 // 4.01: not authenticated
	BadOption        Code = 0x82 // 4.02
	Forbidden        Code = 0x83 // 4.03: not allowed by policy or consent
	NotFound         Code = 0x84 // 4.04
	MethodNotAllowed Code = 0x85 // 4.05
	NotAcceptable    Code = 0x86 // 4.06
	// RequestEntityIncomplete is 4.08 (RFC 7959): a block-wise upload
	// missed a block or its start.
	RequestEntityIncomplete Code = 0x88 // 4.08
	RequestEntityTooLarge   Code = 0x8d // 4.13
	UnsupportedFormat       Code = 0x8f // 4.15
	TooManyRequests         Code = 0x9d // 4.29 (RFC 8516)
	InternalServerError     Code = 0xa0 // 5.00
	ServiceUnavailable      Code = 0xa3 // 5.03: overloaded
	GatewayTimeout          Code = 0xa4 // 5.04
)

// String returns the dotted form, such as "4.04".
func (c Code) String() string { return fmt.Sprintf("%d.%02d", c>>5, c&0x1f) }

// IsSuccess reports whether c is a 2.xx code.
func (c Code) IsSuccess() bool { return c>>5 == 2 }

// An Error is a CoAP error response: its code and the short diagnostic the
// peer sent with it. A handler returns one to choose the response code; a
// client receives one for every 4.xx and 5.xx response. errors.Is(err,
// ErrForbidden) and the like compare codes only.
//
// The diagnostic travels as RFC 7252 section 5.5.2 has it: UTF-8 text
// without a content-format. (Servers before this version sent it as a
// CBOR text string with content-format 60; the client reads both.)
type Error struct {
	// Code is the response code, 4.xx or 5.xx.
	Code Code
	// Diagnostic is a short text for the developer, never for the
	// device's user; a handler must keep secrets and input out of it.
	Diagnostic string
	// RetryAfter, on a 5.03 or 4.29, is when the request may be tried
	// again: the response's Max-Age option. A handler sets it to send
	// Max-Age (rounded up to whole seconds); the client waits this long
	// before a retry. Zero means the response had no Max-Age.
	RetryAfter time.Duration

	err error // the cause, such as a *DecodeError, for errors.As
}

func (e *Error) Error() string {
	if e.Diagnostic == "" {
		return "transport: " + e.Code.String()
	}
	return "transport: " + e.Code.String() + " " + e.Diagnostic
}

// Is reports whether target is an error sentinel (such as ErrForbidden)
// or an *Error with the same code.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case codeError:
		return Code(t) == e.Code
	case *Error:
		return t.Code == e.Code
	}
	return false
}

// Unwrap returns the cause of an error the package built, such as the
// *DecodeError behind a 4.00 from Request.Decode; nil otherwise.
func (e *Error) Unwrap() error { return e.err }

// Errorf returns an *Error with code c and a formatted diagnostic.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Diagnostic: fmt.Sprintf(format, args...)}
}

// codeError is the type of the code sentinels: a constant that no caller
// can change, matched by code.
type codeError Code

func (c codeError) Error() string { return "transport: " + Code(c).String() }

// Is reports whether target is an *Error with the same code.
func (c codeError) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == Code(c)
}

// Sentinels for errors.Is, one per error code a v1 peer sends. They are
// constants: errors.Is(err, ErrForbidden) holds for every *Error with code
// 4.03, whatever its diagnostic. A handler may return one as it is to
// answer with its code and no diagnostic.
const (
	ErrBadRequest        = codeError(BadRequest)
	ErrUnauthorized      = codeError(Unauthorized)
	ErrForbidden         = codeError(Forbidden)
	ErrNotFound          = codeError(NotFound)
	ErrMethodNotAllowed  = codeError(MethodNotAllowed)
	ErrTooLarge          = codeError(RequestEntityTooLarge)
	ErrUnsupportedFormat = codeError(UnsupportedFormat)
	ErrTooManyRequests   = codeError(TooManyRequests)
	ErrInternal          = codeError(InternalServerError)
	ErrUnavailable       = codeError(ServiceUnavailable)
)

// sentinel is the type of the package's other sentinel errors: constants,
// so that no caller can change them.
type sentinel string

func (s sentinel) Error() string { return string(s) }

const (
	// ErrClosed is returned by calls on a closed Client or Server.
	ErrClosed = sentinel("transport: closed")

	// ErrBadURL means a URL given to Dial or Server.Listen cannot be
	// used: it does not parse, its scheme is not one of coap, coaps,
	// coap+tcp and coaps+tcp, or its query asks for what does not exist.
	ErrBadURL = sentinel("transport: bad URL")

	// ErrAddressInUse means Server.Listen found its address and port
	// taken, by another process or another listener of this one.
	ErrAddressInUse = sentinel("transport: address already in use")

	// ErrUnreachable means a request failed for want of a working
	// connection, once its retries were spent: the server could not be
	// reached or its handshake failed, the connection closed before the
	// response, or no response came within RetryPolicy.Timeout. The
	// request may or may not have reached the server; trying again later
	// may help.
	ErrUnreachable = sentinel("transport: server unreachable")

	// ErrDecode matches every error from decoding a CBOR body: a
	// response or a notification on the client, a request in a handler.
	// The error is a *DecodeError, which says more.
	ErrDecode = sentinel("transport: cannot decode the CBOR body")

	// ErrUnexpectedFormat means a 2.xx response or a notification has a
	// body in another content-format than CBOR, where CBOR was asked for
	// (Client.Do and the like, Notification.Decode). Use Client.GetRaw
	// for other formats.
	ErrUnexpectedFormat = sentinel("transport: unexpected content-format")

	// ErrReset means the server answered a request with a CoAP Reset
	// (RST): it received the request and refused to process it. The
	// request is not retried.
	ErrReset = sentinel("transport: request reset by the server")

	// ErrNotObservable means the server answered an Observe registration
	// without registering it (RFC 7641 section 4.1): the resource is not
	// observable, or the server has no room for another observation.
	ErrNotObservable = sentinel("transport: not registered for notifications")

	// ErrMissedNotifications comes in Notification.Err when notifications
	// may have been missed: the client lost the server (the connection
	// closed, a keepalive went unanswered) and is registering again, or
	// the handler fell behind and older notifications were dropped. The
	// observation goes on; the next notification carries the current
	// value.
	ErrMissedNotifications = sentinel("transport: notifications may have been missed")
)

// A DecodeError is a CBOR body that did not decode: malformed, over a
// limit, or not of the shape of the Go value. errors.Is(err, ErrDecode)
// holds for every one. On the server, Request.Decode returns it inside a
// 4.00 or 4.13 *Error, whose diagnostic is its text.
type DecodeError struct {
	// Field is the map key of the struct field whose value did not fit
	// its Go type, such as "value"; the outermost one when structs nest.
	// It is empty when no one field is to blame (malformed CBOR, a body
	// over the limit, a top-level value of the wrong type).
	Field string
	// Reason says what was wrong, in a short fixed text free of input
	// data, such as "codec: does not fit the expected type".
	Reason string
	// TooLarge reports whether the body was over the decoder's size
	// limit.
	TooLarge bool

	err error // codec's error, with the CBOR library's detail
}

func (e *DecodeError) Error() string {
	s := "transport: cannot decode the CBOR body: " + strings.TrimPrefix(e.Reason, "codec: ")
	if e.Field != "" {
		s += " (field " + strconv.Quote(e.Field) + ")"
	}
	return s
}

// Is reports whether target is ErrDecode.
func (e *DecodeError) Is(target error) bool { return target == ErrDecode }

// Unwrap returns the decoder's own error, for logs.
func (e *DecodeError) Unwrap() error { return e.err }

// diagnostic is the text a server sends back for e: the codec's fixed
// message and the field, free of input data.
func (e *DecodeError) diagnostic() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Reason + ": field " + strconv.Quote(e.Field)
}

// newDecodeError makes a *DecodeError of an error from a codec.Decoder.
func newDecodeError(err error) *DecodeError {
	var de *codec.DecodeError
	if !errors.As(err, &de) {
		return &DecodeError{Reason: "malformed body", err: err}
	}
	return &DecodeError{Field: de.Field, Reason: de.Error(), TooLarge: errors.Is(de, codec.ErrTooLarge), err: err}
}
