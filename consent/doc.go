// Package consent holds signed consent records: what a customer agreed to
// (or declined, or withdrew), signed where it was captured, so that
// anyone with the right public key can check it and device and cloud can
// obey it.
//
// # Records
//
// A [Record] follows ISO/IEC TS 27560 and the W3C Data Privacy Vocabulary:
// a pseudonymous subject, the controller, the notice shown (id, version,
// language, SHA-256 of its text), one or more processes (purpose, data
// categories, recipients, legal basis, retention, storage, how to
// withdraw, jurisdiction), the devices covered, and the event (time,
// expiry, actor, state). It is encoded as deterministic CBOR with integer
// keys and signed as a COSE_Sign1 message (RFC 9052) by [Sign], with ES256
// or EdDSA and the key ID in the protected header. Records are never
// edited: a withdrawal, renewal or revocation is a new record that names,
// in Ends, the record it ends.
//
// # Verification
//
// A [KeySet] holds the keys trusted to sign records (the subject's app
// keys, device keys, the controller's keys) and [KeySet.Verify] checks a
// message against them. The algorithm is pinned to the key's type, the
// COSE Sig_structure is checked here, and any COSE implementation can
// verify our records (tests use go-cose's own verifier and the cose-wg
// examples). Every failure matches a sentinel: [ErrMalformed],
// [ErrWrongTag], [ErrUnknownKey], [ErrAlgorithm], [ErrBadSignature];
// [Record.ValidAt] adds [ErrExpired] and [ErrNotYetValid], and
// [Notice.CheckText] [ErrNoticeHash].
package consent
