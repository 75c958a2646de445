package device

import (
	"fmt"
	"strings"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
)

// A failure is one of the package's sentinel errors. They are constants,
// so no caller can change them.
type failure string

func (f failure) Error() string { return string(f) }

// Sentinels for errors.Is. Every error the package returns for one of
// these causes matches it.
const (
	// ErrManifest means the manifest refused a reading: the stream is
	// not declared, or a value is not of its field's type. The error is
	// a *RefusedError whose Violation says which stream and field.
	ErrManifest = failure("device: refused by the manifest")

	// ErrNoConsent means no consent record of the device's owner covers
	// the reading for any destination of its stream: none was given, it
	// was withdrawn, revoked or has expired, or the device has no owner.
	// The error is a *RefusedError whose Decision says why.
	ErrNoConsent = failure("device: no consent covers the reading")

	// ErrOutboxFull means a reading was refused because the outbox is
	// at its bounds (Config.MaxReadings, Config.MaxBytes) and holds
	// nothing of a priority lower than or equal to the reading's stream
	// that could make room, or the reading alone is larger than the
	// outbox may hold. The refusal is counted (DropOutboxFull).
	ErrOutboxFull = failure("device: outbox full")

	// ErrReadingTooLarge means a reading, as the manifest shaped it, is
	// too large to travel in one telemetry batch (protocol.MaxBatchBody).
	ErrReadingTooLarge = failure("device: reading too large for a batch")

	// ErrOutboxCorrupt means the outbox file cannot be trusted: it is
	// not an outbox, a page is damaged, or it does not decrypt with the
	// device's secret (the secret changed, or the file was tampered
	// with). The error is an *OutboxError. See SetAside for the
	// recovery.
	ErrOutboxCorrupt = failure("device: outbox corrupt")

	// ErrOutboxLocked means another agent, in this process or another,
	// has the outbox open.
	ErrOutboxLocked = failure("device: outbox in use by another agent")

	// ErrDiskFull means the outbox could not write because the
	// filesystem is full (or the user's quota spent). Nothing already
	// recorded is lost; the reading at hand was not recorded. The error
	// is an *OutboxError.
	ErrDiskFull = failure("device: disk full")

	// ErrNoSecret means Config gives no secret to derive the outbox's
	// key from: Config.Secret is empty and Config.Key is not a software
	// key (a key in a secure element cannot give one).
	ErrNoSecret = failure("device: no secret for the outbox key")

	// ErrConsentRefused means the cloud refused, for good, a consent
	// record captured on the device (GiveConsent): 4.00 (not a record,
	// or its ID reused), 4.03 (a signature, key or signer it does not
	// accept), 4.13 or 4.15. The error wraps the *transport.Error too.
	// The record still counts on the device, and is not posted again.
	ErrConsentRefused = failure("device: the cloud refused the consent record")

	// ErrManifestRefused means the manifest the cloud served was refused:
	// its maker's signature does not verify against Config.Makers, or it is
	// not for the device's product. The error wraps the cause
	// (consent.ErrBadSignature, consent.ErrUnknownKey, policy.ErrNotMaker,
	// policy.ErrInvalid, ...). The agent keeps the manifest it runs.
	ErrManifestRefused = failure("device: manifest from the cloud refused")

	// ErrClosed is returned by calls on a closed Agent.
	ErrClosed = failure("device: agent closed")
)

// A RefusedError says why Record refused a reading: the manifest
// (ErrManifest) or consent (ErrNoConsent). errors.Is matches its Reason;
// errors.As finds the *policy.Violation of a manifest refusal.
type RefusedError struct {
	// Reason is ErrManifest or ErrNoConsent.
	Reason error
	// Stream is the reading's stream.
	Stream string
	// Violation, for ErrManifest, is what the manifest refused.
	Violation *policy.Violation
	// Destination, for ErrNoConsent, is the destination whose consent
	// decided (the last one tried, when the stream has several).
	Destination policy.Destination
	// Query, for ErrNoConsent, is the question that was refused:
	// purpose, data category, recipient, device and time.
	Query consent.Query
	// Decision, for ErrNoConsent, is the answer: the record that decided,
	// if any, and why.
	Decision consent.Decision
}

// Error says what refused the reading, and why.
func (e *RefusedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: stream %q", e.Reason, e.Stream)
	if e.Violation != nil {
		fmt.Fprintf(&b, ": %v", e.Violation)
	}
	if e.Reason == ErrNoConsent {
		fmt.Fprintf(&b, ": purpose %q, data category %q", e.Query.Purpose, e.Query.Category)
		if e.Query.Recipient != "" {
			fmt.Fprintf(&b, ", recipient %q", e.Query.Recipient)
		}
		fmt.Fprintf(&b, ": %v", e.Decision.Reason)
		if !e.Decision.Record.IsZero() {
			fmt.Fprintf(&b, " (record %v)", e.Decision.Record)
		}
	}
	return b.String()
}

// Unwrap returns the Reason and, for a manifest refusal, the Violation.
func (e *RefusedError) Unwrap() []error {
	if e.Violation != nil {
		return []error{e.Reason, e.Violation}
	}
	return []error{e.Reason}
}

// An OutboxError is a failure of the outbox file: corrupt
// (ErrOutboxCorrupt), full (ErrDiskFull), or another I/O error (Kind
// nil). errors.Is matches Kind and errors.As sees Err.
type OutboxError struct {
	// Path is the outbox file.
	Path string
	// Kind is ErrOutboxCorrupt, ErrDiskFull, ErrOutboxLocked, or nil.
	Kind error
	// Detail says what exactly went wrong, in words.
	Detail string
	// Err is the cause, if any: bbolt's or the file system's error.
	Err error
}

// Error names the file, the kind and the cause.
func (e *OutboxError) Error() string {
	s := "device: outbox " + e.Path
	if e.Kind != nil {
		s = e.Kind.Error() + ": " + e.Path
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns Kind and Err, those that are set.
func (e *OutboxError) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}
