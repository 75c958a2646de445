// Package sensible is the overview of Sensible, a Go SDK for smart
// connected products: appliances, robot vacuums, air purifiers, meters and
// factory sensors, and the cloud services and partners they talk to.
//
// Sensible gives a product team four things every connected product needs:
// a device identity rooted in manufacturing; a CoAP/CBOR transport between
// device and cloud over DTLS or TLS; signed consent records a customer can
// give and withdraw and anyone can audit; and data-minimization policies
// that decide, on the device, what data may leave it, in what form, for
// what purpose and to whom, and that the cloud checks again on arrival.
// This package holds no code; the packages below do the work.
//
// # Packages
//
//   - [github.com/sensible-iot/sensible/device/identity]: device keys
//     (ECDSA P-256 or Ed25519, always behind [crypto.Signer] so a key can
//     live in a secure element), self-certifying device IDs, the
//     manufacturer's certificate chain (root → intermediate → device), and
//     short-lived device-signed tokens with replay protection.
//   - [github.com/sensible-iot/sensible/transport]: CoAP over UDP, DTLS,
//     TCP and TLS behind one server and one client, with devices
//     authenticated by PSK, certificate chain or token.
//   - [github.com/sensible-iot/sensible/consent]: signed consent records,
//     decisions over a subject's events, and the tamper-evident consent
//     log with receipts and proofs.
//   - [github.com/sensible-iot/sensible/consent/policy]: the data manifest,
//     the transforms it applies on the device, the same check in the cloud,
//     and the customer-facing disclosure.
//   - internal/codec (not importable): the one CBOR codec, with RFC 8949
//     deterministic encoding for everything signed or hashed and strict,
//     bounded decoding for everything from the network or a file.
//
// The device agent (package device) and the cloud services (package cloud)
// follow the same layout as they land; until then the path below is the
// design they implement.
//
// # One reading, from device to cloud to partner
//
// Product code on the device records a reading on a named stream. The
// product's data manifest, signed by its maker, says for that stream which
// fields may leave the device and in what form (dropped, rounded,
// coarsened, pseudonymized, aggregated, or kept on the device only);
// anything undeclared never leaves. The customer's signed consent records
// say whether the purpose, and any partner recipient, is covered now. What
// passes both goes into a crash-safe outbox, and from there in batches as
// CBOR over CoAP to the cloud, which knows the device by its certificate
// chain ([github.com/sensible-iot/sensible/device/identity.VerifyChain]) or by a token the device signed
// ([github.com/sensible-iot/sensible/device/identity.TokenVerifier]). The cloud decodes strictly, checks the batch
// again against the same manifest and consent, and stores it; a partner
// receives only what a valid consent names it for, and every disclosure is
// logged.
//
// # Conventions
//
// Calls that do I/O take a context first. Long-lived objects take a
// config struct whose zero fields mean documented defaults. Errors match
// documented sentinels with [errors.Is]; nothing panics on input. The
// library logs nothing unless given a *slog.Logger.
package sensible
