package transport

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// A Method is a CoAP request method.
type Method uint8

// The request methods of RFC 7252.
const (
	GET    Method = 1
	POST   Method = 2
	PUT    Method = 3
	DELETE Method = 4
)

func (m Method) String() string {
	switch m {
	case GET:
		return "GET"
	case POST:
		return "POST"
	case PUT:
		return "PUT"
	case DELETE:
		return "DELETE"
	}
	return fmt.Sprintf("Method(%d)", uint8(m))
}

// A Format is a CoAP content-format number (RFC 7252 section 12.3).
type Format uint16

// Content formats the v1 resources use.
const (
	// LinkFormat is application/link-format (RFC 6690), for /.well-known/core.
	LinkFormat Format = 40
	// CBOR is application/cbor, the payload of every v1 resource.
	CBOR Format = 60
	// SenMLCBOR is application/senml+cbor (RFC 8428), accepted by telemetry.
	SenMLCBOR Format = 112
)

// A Request is what a handler receives.
type Request struct {
	Method Method
	Path   string
	// Query holds the URI-Query options, each "name=value" or "name".
	Query []string
	// Format is the request body's content-format; meaningful only when
	// Body is not empty.
	Format Format
	// Body is the raw request body, already checked against the
	// resource's size limit and accepted formats.
	Body []byte
	// Device is the authenticated device, or the zero ID on a public
	// resource reached without authentication. It is also in the context
	// ([DeviceFrom]).
	Device identity.ID

	dec *codec.Decoder
}

// Decode decodes the CBOR body strictly, with the resource's limits, into
// the value v points to. A malformed body gives an *Error with code 4.00
// (4.13 if over the limit) whose diagnostic says why and names the field
// at fault, fit to return from the handler as it is; it wraps a
// *DecodeError (errors.Is(err, ErrDecode)).
func (r *Request) Decode(v any) error {
	if err := r.dec.Unmarshal(r.Body, v); err != nil {
		return decodeError(err)
	}
	return nil
}

func decodeError(err error) *Error {
	de := newDecodeError(err)
	code := BadRequest
	if de.TooLarge {
		code = RequestEntityTooLarge
	}
	return &Error{Code: code, Diagnostic: de.diagnostic(), err: de}
}

// A Handler serves one resource. It returns the value to send back as CBOR
// (nil for no body), or an error: an *Error chooses the response code and
// diagnostic (and Max-Age, with RetryAfter); a code sentinel such as
// ErrForbidden chooses the code alone; any other error answers 5.00 and is
// logged, not sent. A handler may return a *Response to choose a success
// code.
type Handler func(ctx context.Context, r *Request) (any, error)

// A Response lets a handler choose a success code other than the method's
// default (2.05 for GET, 2.04 for POST and PUT, 2.02 for DELETE).
type Response struct {
	Code Code
	Body any // encoded as CBOR; nil for no body
	// ETag, when set (1 to 8 bytes), goes with the answer as its ETag
	// option (RFC 7252 section 5.10.6). A GET naming it in one of its own
	// ETag options is answered 2.03 Valid without the
	// body: the client's copy is current.
	ETag []byte
}

// Typed adapts a function of Go values to a Handler: the request body is
// decoded strictly into In (a request without a body leaves In zero), and
// the returned Out is encoded as CBOR.
func Typed[In, Out any](fn func(ctx context.Context, in In) (Out, error)) Handler {
	return func(ctx context.Context, r *Request) (any, error) {
		var in In
		if len(r.Body) > 0 {
			if err := r.Decode(&in); err != nil {
				return nil, err
			}
		}
		return fn(ctx, in)
	}
}

// A Resource describes one path a Server serves.
type Resource struct {
	// Path is the absolute path, such as "/v1/telemetry".
	Path string
	// Methods the resource answers; others get 4.05. Empty means GET only.
	Methods []Method
	// Handler serves the resource.
	Handler Handler
	// Public resources may be used without authentication; all others
	// answer 4.01 to an unauthenticated peer without calling Handler.
	Public bool
	// Formats are the request content-formats accepted; others get 4.15.
	// Empty means CBOR only.
	Formats []Format
	// MaxBody caps the request body in bytes (4.13 above it); zero means
	// codec.DefaultMaxBody.
	MaxBody int
	// Attributes are RFC 6690 link attributes for /.well-known/core, such
	// as `rt="sensible.telemetry"`.
	Attributes []string
	// Observable resources accept Observe registrations (RFC 7641) on
	// GET: the handler's answer is the first notification, and
	// Server.Notify sends the next ones. Keep observed values small:
	// notifications are not sent block-wise.
	Observable bool
	// ConfirmNotifications makes every notification of the resource
	// confirmable over UDP and DTLS (RFC 7641 section 4.5), for values a
	// device must not miss (a command), where most are non-confirmable
	// otherwise. One is in flight at a time per observer: a notification
	// sent while the last is unacknowledged goes non-confirmable, and the
	// next carries the whole value again.
	ConfirmNotifications bool
}

type route struct {
	Resource
	dec *codec.Decoder
}

func newRoute(r Resource) (*route, error) {
	if !strings.HasPrefix(r.Path, "/") || strings.ContainsAny(r.Path, "?#") || r.Path == wellKnownCore {
		return nil, fmt.Errorf("transport: invalid resource path %q", r.Path)
	}
	if r.Handler == nil {
		return nil, fmt.Errorf("transport: resource %s has no handler", r.Path)
	}
	if len(r.Methods) == 0 {
		r.Methods = []Method{GET}
	}
	if len(r.Formats) == 0 {
		r.Formats = []Format{CBOR}
	}
	dec, err := codec.NewDecoder(codec.Limits{MaxBody: r.MaxBody})
	if err != nil {
		return nil, err
	}
	r.MaxBody = dec.Limits().MaxBody
	return &route{Resource: r, dec: dec}, nil
}

func (rt *route) allows(m Method) bool { return slices.Contains(rt.Methods, m) }

func (rt *route) accepts(f Format) bool { return slices.Contains(rt.Formats, f) }

const wellKnownCore = "/.well-known/core"

// linkFormat renders resources in RFC 6690 link format, sorted by path.
func linkFormat(routes []*route) string {
	var b strings.Builder
	for i, rt := range routes {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("<")
		b.WriteString((&url.URL{Path: rt.Path}).EscapedPath())
		b.WriteString(">")
		for _, a := range rt.Attributes {
			b.WriteByte(';')
			b.WriteString(a)
		}
		if rt.Observable {
			b.WriteString(";obs")
		}
		switch len(rt.Formats) {
		case 0:
		case 1:
			fmt.Fprintf(&b, ";ct=%d", uint16(rt.Formats[0]))
		default:
			// Several values are a quoted, space-separated list (RFC 7252
			// section 7.2.1).
			b.WriteString(`;ct="`)
			for j, f := range rt.Formats {
				if j > 0 {
					b.WriteByte(' ')
				}
				fmt.Fprint(&b, uint16(f))
			}
			b.WriteByte('"')
		}
	}
	return b.String()
}

type deviceKey struct{}

// DeviceFrom returns the authenticated device of a request's context.
func DeviceFrom(ctx context.Context) (identity.ID, bool) {
	id, ok := ctx.Value(deviceKey{}).(identity.ID)
	return id, ok && !id.IsZero()
}
