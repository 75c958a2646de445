// Package protocol is the v1 device–cloud protocol: its resource paths,
// its messages, the idempotency keys of telemetry, and telemetry typed by
// the manifest that shaped it. Device and cloud code both import it, so
// that the two sides agree on every key of every message; docs/protocol.md
// in the repository is the same contract written for firmware in any
// language, and testdata/ holds a golden encoding of every message.
//
// # Resources
//
// A device talks to seven resources under /v1/ ([AuthPath],
// [EnrollPath], [TelemetryPath], [ManifestPath], [StatePath],
// [CommandsPath], [ConsentPath]), over any CoAP transport of package
// transport, with CBOR bodies (content-format [FormatCBOR]); telemetry
// may also be SenML-CBOR ([FormatSenMLCBOR]) and a consent record is
// posted as a COSE_Sign1 message ([FormatCOSESign1]).
//
// # Messages
//
// Every message is a Go type with CBOR integer keys ([EnrollRequest],
// [Enrollment], [ManifestResponse], [Desired], [Reported], [Commands],
// [CommandResult], [Consents], [Ack]), except [Token], a text string, and
// [Batch], whose values are typed by a manifest. Integer keys, as in the
// consent records and manifests that are signed, COSE and SenML-CBOR:
// each costs one byte on the air, has one spelling, and is a switch case
// in C. Text keys appear only where the names are not the protocol's but
// a product's: the fields of a reading, which its manifest declares, and
// [Settings]. Messages are written in RFC 8949 deterministic encoding, so
// equal values give equal bytes; they are read strictly, within limits
// ([MaxBatchBody], [MaxBody], ...).
//
// # Telemetry
//
// A [Batch] names the manifest that shaped its readings, their stream and
// an idempotency [Key] (an outbox epoch and a sequence number; the device
// ID comes from the session), and holds the readings exactly as the
// device's policy.Enforcer or policy.Aggregator produced them. On the
// wire a value carries no type of its own beyond CBOR's: [DecodeBatch]
// (and [DecodeSenML] for SenML-CBOR) looks up the manifest by its hash
// and types each value by its field's output type
// (policy.Stream.OutputType), so that timestamps come back as time.Time,
// locations as policy.Point, bucket indexes and counts as int64, and
// policy.Manifests.Check sees what the device's enforcer made. A batch
// naming a manifest the cloud does not hold is refused with
// [ErrUnknownManifest]; a field that never leaves the device, with
// [ErrRefused] and the policy violation Check would report.
//
// SenML-CBOR (RFC 8428) carries the same readings for devices and gateways
// that already speak it: the batch's header travels in Uri-Query options
// ([Batch.Query]), each record is one field of a reading, its time fills
// the stream's timestamp field, and what SenML cannot say, or says that a
// manifest cannot check (units, sums, relative times), is refused with
// [ErrSenML]. [Batch.MarshalSenML] writes it.
//
// Errors are *[BatchError] values whose Kind is one of the constant
// sentinels ([ErrMalformed], [ErrTooLarge], [ErrUnknownManifest],
// [ErrRefused], [ErrSenML], [ErrInvalid]); each Kind's documentation says
// which CoAP response the cloud answers it with.
package protocol
