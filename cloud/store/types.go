package store

import (
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
)

// A Model is a product model.
type Model struct {
	// ID names the model, e.g. "acme-aircon-x1": what its manifests name
	// as their product and its devices send when they enroll.
	ID string
	// Name is the model's name for people, e.g. "Acme Aircon X1".
	Name string
}

// A Manifest is a model's data manifest as its maker signed it.
type Manifest struct {
	// Hash is the manifest's hash (policy.Manifest.Hash), which batches
	// name.
	Hash protocol.Hash
	// Model is the model the manifest is for.
	Model string
	// Signed is the signed manifest, as devices fetch it.
	Signed []byte
	// Added is when the manifest was added.
	Added time.Time
}

// A Standing says whether a device may use the cloud.
type Standing uint8

// Standings.
const (
	// Active devices may use the cloud.
	Active Standing = 1
	// Suspended devices are refused until an operator makes them active
	// again.
	Suspended Standing = 2
	// Decommissioned devices are refused for good.
	Decommissioned Standing = 3
)

// String returns the standing's name.
func (s Standing) String() string {
	switch s {
	case Active:
		return "active"
	case Suspended:
		return "suspended"
	case Decommissioned:
		return "decommissioned"
	}
	return fmt.Sprintf("Standing(%d)", uint8(s))
}

// A Device is a registered device.
type Device struct {
	// ID is the device's ID, derived from its public key.
	ID identity.ID
	// PublicKey is the device's public key, DER SubjectPublicKeyInfo.
	PublicKey []byte
	// Chain is the device's certificate chain, DER, leaf first; empty for
	// a device without certificates (DTLS-PSK only).
	Chain [][]byte
	// Model is the device's model.
	Model string
	// Owner is the pseudonymous subject that owns the device; empty
	// while nobody does.
	Owner string
	// Standing says whether the device may use the cloud.
	Standing Standing
	// StandingReason says why the device has its standing.
	StandingReason string
	// StandingSince is when the device got its standing.
	StandingSince time.Time
	// Created is when the device was registered.
	Created time.Time
}

// A Page asks for part of a list ordered by device ID.
type Page struct {
	// After is the last ID of the page before; zero starts at the
	// beginning.
	After identity.ID
	// Limit is the most devices to return: 0 or above MaxList means
	// MaxList.
	Limit int
}

// An AppKey is the public key of an app that signs a subject's consent
// records.
type AppKey struct {
	// KID is the key ID that the records' protected headers name.
	KID []byte
	// Subject is the pseudonymous subject whose app holds the key.
	Subject string
	// PublicKey is the key, DER SubjectPublicKeyInfo.
	PublicKey []byte
	// Added is when the key was added.
	Added time.Time
	// Removed is when the key was removed; zero while it is trusted.
	// AddAppKey ignores it.
	Removed time.Time
}

// A Batch is a telemetry batch as the cloud stores it: checked against
// its manifest and its consent, with readings already encoded.
type Batch struct {
	// Device is the device that sent the batch.
	Device identity.ID
	// Stream is the readings' stream.
	Stream string
	// Manifest is the hash of the manifest that shaped the readings.
	Manifest protocol.Hash
	// Key is the batch's idempotency key; with Device, it names the
	// batch. Both parts must be non-zero, and Seq at most 2^63-1.
	Key protocol.Key
	// Digest is the SHA-256 of the batch's deterministic encoding
	// (protocol.Batch.Digest): a batch that comes again with the same key
	// and another digest is refused.
	Digest protocol.Hash
	// Received is when the cloud received the batch.
	Received time.Time
	// Readings are the readings, at least one.
	Readings []Reading
}

// A Reading is one reading of a batch.
type Reading struct {
	// ID names the stored reading; it is set by the store and ignored
	// when storing.
	ID int64
	// Batch is the ID of the reading's batch; set by the store.
	Batch int64
	// Time is when the reading was taken.
	Time time.Time
	// Fields are the reading's fields, a CBOR map, not empty.
	Fields []byte
	// Consent is the ID of the consent record that let the reading leave
	// its device; zero when its stream needs no consent.
	Consent consent.ID
}

// A BatchResult says what storing a batch did.
type BatchResult struct {
	// ID names the stored batch: the one stored now, or for a duplicate
	// the one stored before.
	ID int64
	// Stored is how many readings the batch stored, the first time.
	Stored int
	// Duplicate says that the batch was stored before and nothing was
	// stored now.
	Duplicate bool
	// Err is, in StoreBatches' results, why this batch was not stored;
	// nil for a batch stored now or before.
	Err error
}

// Provenance says what let a reading leave its device: which batch
// carried it, which manifest shaped it, which consent record covered it.
type Provenance struct {
	// Reading is the reading's ID.
	Reading int64
	// Batch is the ID of the batch that carried it.
	Batch int64
	// Device is the device that sent it.
	Device identity.ID
	// Stream is its stream.
	Stream string
	// Manifest is the hash of the manifest that shaped it.
	Manifest protocol.Hash
	// Key is its batch's idempotency key.
	Key protocol.Key
	// Consent is the consent record that covered it; zero when its stream
	// needs none.
	Consent consent.ID
	// Time is when it was taken.
	Time time.Time
	// Received is when its batch was received.
	Received time.Time
}

// A ReadingQuery asks for a device's readings of one stream.
type ReadingQuery struct {
	// Device is the device.
	Device identity.ID
	// Stream is the stream.
	Stream string
	// From is the earliest reading time, included; zero means no bound.
	From time.Time
	// To is the latest reading time, excluded; zero means no bound.
	To time.Time
	// Limit is the most readings to return: 0 or above MaxList means
	// MaxList.
	Limit int
}

// A Retention asks to delete the readings of one stream, as one manifest
// shaped them, taken before a time: a manifest says per stream how long
// its readings are kept.
type Retention struct {
	// Manifest is the manifest's hash.
	Manifest protocol.Hash
	// Stream is the stream.
	Stream string
	// Before is the cutoff: readings taken before it are deleted.
	Before time.Time
}

// A Gap is a run of sequence numbers missing from a device's batches in
// one epoch: numbers skipped by a batch that came with a higher one, and
// not filled by a batch since. A device skips a number only for a batch
// that was refused for good, so a gap shows batches refused or lost.
type Gap struct {
	// Device is the device.
	Device identity.ID
	// Epoch is the epoch of the device's outbox.
	Epoch uint64
	// First is the first missing sequence number.
	First uint64
	// Last is the last missing sequence number.
	Last uint64
	// Found is when the gap was found: the time its batch was received.
	Found time.Time
}

// An Incident is something that went wrong with a device.
type Incident struct {
	// ID names the incident; set by the store.
	ID int64
	// Device is the device.
	Device identity.ID
	// Time is when it happened.
	Time time.Time
	// Kind says what happened, in a word or a short phrase, e.g.
	// "bad-token".
	Kind string
	// Detail says more, for people.
	Detail string
}

// A State holds a device's state documents.
type State struct {
	// Desired is the desired state, set by the cloud.
	Desired Document
	// Reported is the reported state, sent by the device.
	Reported Document
	// Seen is the version of the desired state that Reported answers.
	Seen uint64
}

// A Document is a versioned CBOR document.
type Document struct {
	// Body is the document, CBOR; nil before the first version.
	Body []byte
	// Version is 1 for the first version, one more for each after; 0
	// before the first.
	Version uint64
}

// A CommandState says where a command is in its life: Pending, then
// Delivered, then Succeeded, Failed or Expired. A command may expire, or
// end, without being marked Delivered.
type CommandState uint8

// Command states.
const (
	// Pending commands wait for their device.
	Pending CommandState = 1
	// Delivered commands reached their device, which has not said how
	// they ended.
	Delivered CommandState = 2
	// Succeeded commands were done.
	Succeeded CommandState = 3
	// Failed commands were tried and failed, or were refused.
	Failed CommandState = 4
	// Expired commands lapsed before their device ran them.
	Expired CommandState = 5
)

// String returns the state's name.
func (s CommandState) String() string {
	switch s {
	case Pending:
		return "pending"
	case Delivered:
		return "delivered"
	case Succeeded:
		return "succeeded"
	case Failed:
		return "failed"
	case Expired:
		return "expired"
	}
	return fmt.Sprintf("CommandState(%d)", uint8(s))
}

// A Command is something the cloud asks a device to do.
type Command struct {
	// ID names the command, per device.
	ID protocol.CommandID
	// Device is the device.
	Device identity.ID
	// Name says what to do, e.g. "start-cleaning".
	Name string
	// Args are the arguments, CBOR; nil for none. At most MaxDocument.
	Args []byte
	// Created is when the command was queued.
	Created time.Time
	// Expires is when the command lapses; zero means never.
	Expires time.Time
	// State is where the command is; the store sets it.
	State CommandState
	// Delivered is when the command first reached its device; zero
	// before that.
	Delivered time.Time
	// Finished is when the command ended; zero before that.
	Finished time.Time
	// Result is what the device said about how it ended, CBOR; nil for
	// nothing.
	Result []byte
}

// A CommandResult says how a command ended.
type CommandResult struct {
	// State is Succeeded or Failed.
	State CommandState
	// Result is what the device said, CBOR; nil for nothing. At most
	// MaxDocument.
	Result []byte
	// At is when the result came.
	At time.Time
}

// A Claim is a device's claim code, kept as a hash: whoever shows the
// code may claim the device.
type Claim struct {
	// Device is the device.
	Device identity.ID
	// Hash is ClaimCodeHash of the code.
	Hash [32]byte
	// Created is when the claim was set.
	Created time.Time
}

// ClaimCodeHash returns the hash of a claim code that a Claim keeps: the
// SHA-256 of a domain-separating prefix and the code. A claim code must
// be random and at least 16 bytes long, and then a plain hash is enough: nobody can search 2^128 codes for one that
// matches a leaked hash, and a keyed or slow hash would add a secret to
// keep or a cost to every attempt without making that harder. Compare a
// presented code's hash with the stored one with
// crypto/subtle.ConstantTimeCompare.
func ClaimCodeHash(code []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte("sensible claim code v1\x00"))
	h.Write(code)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// A ClaimAttempt is one try at claiming a device.
type ClaimAttempt struct {
	// Device is the device someone tried to claim; it need not exist.
	Device identity.ID
	// Claimant is the subject that tried.
	Claimant string
	// At is when.
	At time.Time
	// Window is how long a counter's window lasts, more than zero.
	Window time.Duration
}

// AttemptCounts are the claim attempts in the current windows.
type AttemptCounts struct {
	// Device counts the attempts on the device.
	Device int64
	// Claimant counts the claimant's attempts, on any device.
	Claimant int64
}

// ReplayConfig configures a replay cache (Replays.ReplayCache). The zero
// value is ready to use.
type ReplayConfig struct {
	// MaxLiveTokens caps how many unexpired tokens of one device the
	// cache remembers; zero means DefaultMaxLiveTokens. Past it the
	// device's new tokens are refused with a *TokenLimitError, so that
	// one device cannot grow the cache without bound, while other
	// devices are not affected. Nodes that accept one device's tokens at
	// the same moment may together remember a few more.
	MaxLiveTokens int
	// Now returns the current time, against which remembered tokens
	// expire; nil means time.Now. It is the one clock a store reads:
	// identity.ReplayCache.Seen is not given the time.
	Now func() time.Time
}
