package consent

import "errors"

// Errors from verifying and evaluating consent records. Each error this
// package returns for a bad record matches one of them with errors.Is.
var (
	// ErrMalformed means the bytes are not a well-formed COSE_Sign1 message
	// holding a well-formed record (truncated, not CBOR, duplicate map
	// keys, a missing field, an unknown state).
	ErrMalformed = errors.New("consent: malformed record")
	// ErrWrongTag means the message carries a CBOR tag other than
	// COSE_Sign1's (18).
	ErrWrongTag = errors.New("consent: not a COSE_Sign1 message (wrong tag)")
	// ErrUnknownKey means the key ID names no trusted key.
	ErrUnknownKey = errors.New("consent: unknown signing key")
	// ErrAlgorithm means the message names an algorithm other than the one
	// its key's type pins (ES256 for P-256, EdDSA for Ed25519).
	ErrAlgorithm = errors.New("consent: wrong signature algorithm")
	// ErrBadSignature means the signature does not verify: the record, its
	// protected header or the signature was changed, or another key signed.
	ErrBadSignature = errors.New("consent: bad signature")
	// ErrExpired means the record's validity ended before the time asked.
	ErrExpired = errors.New("consent: record expired")
	// ErrNotYetValid means the record's event time is after the time asked.
	ErrNotYetValid = errors.New("consent: record not yet valid")
	// ErrNoticeSuperseded means the record answers a notice version that a
	// newer version has replaced for the purposes asked about.
	ErrNoticeSuperseded = errors.New("consent: notice superseded")
	// ErrNoticeHash means a notice's text does not hash to the value the
	// record names.
	ErrNoticeHash = errors.New("consent: notice text does not match its hash")
	// ErrNotAllowed means the signer may not record this event: only the
	// subject (or the controller, revoking) may end a consent.
	ErrNotAllowed = errors.New("consent: signer may not record this event")
	// ErrUnknownRecord means an event ends a record that is not known.
	ErrUnknownRecord = errors.New("consent: ends an unknown record")
	// ErrRecordConflict means a record ID is already taken by other bytes:
	// an app that retried by signing the record again, or a forgery. A
	// retry must send the bytes it sent the first time.
	ErrRecordConflict = errors.New("consent: record ID already used by another record")
)
