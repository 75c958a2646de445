package protocol

import (
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
)

// The v1 resources. Every path a device uses is one of these; they are
// listed at /.well-known/core (RFC 6690).
const (
	// AuthPath takes a device token (POST, [Token]) once per session on a
	// transport that did not authenticate the device. It is the same
	// path as transport.AuthPath.
	AuthPath = "/v1/auth"
	// EnrollPath takes a device's first contact and its claim (POST,
	// [EnrollRequest], answered with an [Enrollment]).
	EnrollPath = "/v1/enroll"
	// TelemetryPath takes telemetry batches (POST, a [Batch] as CBOR or as
	// SenML-CBOR, answered with an [Ack]).
	TelemetryPath = "/v1/telemetry"
	// ManifestPath gives the signed manifest of the device's model (GET,
	// answered with a [ManifestResponse]).
	ManifestPath = "/v1/manifest"
	// StatePath gives the desired state (GET, observable, [Desired]) and
	// takes the reported state (POST, [Reported]).
	StatePath = "/v1/state"
	// CommandsPath gives the pending commands (GET, observable,
	// [Commands]) and takes their results (POST, [CommandResult]).
	CommandsPath = "/v1/commands"
	// ConsentPath gives the consent records that concern the device (GET,
	// observable, [Consents]) and takes a record captured on the device
	// (POST, a COSE_Sign1 message with content-format [FormatCOSESign1],
	// answered with a consent.Receipt).
	ConsentPath = "/v1/consent"
)

// CoAP content-format numbers (RFC 7252 section 12.3) of the v1 bodies.
// They are untyped so that they fit transport.Format and any other
// integer type.
const (
	// FormatCOSESign1 is application/cose; cose-type="cose-sign1" (RFC
	// 9052): a consent record posted to ConsentPath.
	FormatCOSESign1 = 18
	// FormatLinkFormat is application/link-format (RFC 6690):
	// /.well-known/core.
	FormatLinkFormat = 40
	// FormatCBOR is application/cbor: every other v1 body.
	FormatCBOR = 60
	// FormatSenMLCBOR is application/senml+cbor (RFC 8428): telemetry
	// from devices and gateways that speak SenML.
	FormatSenMLCBOR = 112
)

// Body limits of the v1 resources, in bytes. A larger body is answered
// with 4.13.
const (
	// MaxBatchBody bounds a telemetry batch, CBOR or SenML.
	MaxBatchBody = 64 << 10
	// MaxReadings bounds the readings of one batch, and the records of
	// one SenML pack.
	MaxReadings = 4096
	// MaxFields bounds the fields of one reading.
	MaxFields = 256
	// MaxRecordBody bounds a consent record posted to ConsentPath.
	MaxRecordBody = consent.MaxRecordSize
	// MaxTokenBody bounds the body of AuthPath: a token of up to
	// identity.DefaultMaxTokenSize bytes and its CBOR head.
	MaxTokenBody = identity.DefaultMaxTokenSize + 16
	// MaxBody bounds every other request body: enrollment, reported
	// state, command results.
	MaxBody = 4 << 10
	// MaxNotificationBody bounds an Observe notification: it must fit in
	// one datagram, since notifications are not sent block-wise. A value
	// that does not fit is notified with Fetch set, and the device reads
	// it with a GET.
	MaxNotificationBody = 1024
)
