package transport

import (
	"errors"
	"fmt"
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
type Error struct {
	Code       Code
	Diagnostic string
}

func (e *Error) Error() string {
	if e.Diagnostic == "" {
		return "transport: " + e.Code.String()
	}
	return "transport: " + e.Code.String() + " " + e.Diagnostic
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Errorf returns an *Error with code c and a formatted diagnostic.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Diagnostic: fmt.Sprintf(format, args...)}
}

// Sentinels for errors.Is, one per error code a v1 peer sends.
var (
	ErrBadRequest        = &Error{Code: BadRequest}
	ErrUnauthorized      = &Error{Code: Unauthorized}
	ErrForbidden         = &Error{Code: Forbidden}
	ErrNotFound          = &Error{Code: NotFound}
	ErrMethodNotAllowed  = &Error{Code: MethodNotAllowed}
	ErrTooLarge          = &Error{Code: RequestEntityTooLarge}
	ErrUnsupportedFormat = &Error{Code: UnsupportedFormat}
	ErrTooManyRequests   = &Error{Code: TooManyRequests}
	ErrInternal          = &Error{Code: InternalServerError}
	ErrUnavailable       = &Error{Code: ServiceUnavailable}
)

// ErrClosed is returned by calls on a closed Client or Server.
var ErrClosed = errors.New("transport: closed")
