package protocol

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/internal/codec"
)

// A Token is the body of POST /v1/auth: a device token (a compact JWT
// made by identity.SignToken) as a CBOR text string. A device posts one
// per session, on a transport that did not authenticate it; the answer is
// 2.04 with no body.
type Token string

// A Hash is a SHA-256 hash: a manifest's (policy.Manifest.Hash). It
// travels as a byte string of exactly 32 bytes; a [32]byte converts to it
// and back without a conversion.
type Hash [32]byte

// IsZero reports whether h is all zeros, which stands for no hash.
func (h Hash) IsZero() bool { return h == Hash{} }

// String returns h in lower-case hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MarshalCBOR writes h as a byte string.
func (h Hash) MarshalCBOR() ([]byte, error) { return codec.Marshal(h[:]) }

// UnmarshalCBOR reads a byte string of exactly 32 bytes.
func (h *Hash) UnmarshalCBOR(data []byte) error { return unmarshalFixed(data, h[:], "hash") }

// A CommandID names one command: 16 random bytes chosen by the cloud,
// unique per device.
type CommandID [16]byte

// String returns id in lower-case hex.
func (id CommandID) String() string { return hex.EncodeToString(id[:]) }

// MarshalCBOR writes id as a byte string.
func (id CommandID) MarshalCBOR() ([]byte, error) { return codec.Marshal(id[:]) }

// UnmarshalCBOR reads a byte string of exactly 16 bytes.
func (id *CommandID) UnmarshalCBOR(data []byte) error {
	return unmarshalFixed(data, id[:], "command ID")
}

// unmarshalFixed reads a byte string of exactly len(dst) bytes into dst.
func unmarshalFixed(data, dst []byte, what string) error {
	var b []byte
	if err := codec.Unmarshal(data, &b); err != nil {
		return err
	}
	if len(b) != len(dst) {
		return fmt.Errorf("protocol: a %s of %d bytes, want %d", what, len(b), len(dst))
	}
	copy(dst, b)
	return nil
}

// An EnrollRequest is the body of POST /v1/enroll: a device's first
// contact with the cloud, repeated whenever what it says changes (new
// firmware, a claim). The device ID comes from the session.
type EnrollRequest struct {
	// Model names the product model, e.g. "acme-aircon-x1": the
	// manifest's Product.
	Model string `cbor:"1,keyasint"`
	// Firmware is the firmware version the device runs.
	Firmware string `cbor:"2,keyasint"`
	// Manifest is the hash of the manifest the device runs; zero (absent)
	// when it runs none yet.
	Manifest Hash `cbor:"3,keyasint,omitzero"`
	// Claim, when set, is the one-time claim token the owner's app handed
	// the device during setup (over Bluetooth, a soft access point, a
	// QR code shown to the device's camera): 16 to 64 bytes. The cloud
	// binds the device to the account that made the token.
	Claim []byte `cbor:"4,keyasint,omitempty"`
	// Reset says that the device was reset to its factory settings: the
	// cloud releases it from its owner, and answers Unclaimed. A device
	// sets it in the first enrollment after a reset, and again only
	// until an answer comes.
	Reset bool `cbor:"5,keyasint,omitempty"`
}

// An EnrollStatus says whether a device has an owner.
type EnrollStatus uint8

// Enrollment states.
const (
	// Unclaimed means the cloud knows the device but no owner has
	// claimed it: it may send what its manifest allows under contract,
	// and nothing that needs consent.
	Unclaimed EnrollStatus = 1
	// Claimed means an owner claimed the device; Enrollment.Subject
	// names them.
	Claimed EnrollStatus = 2
)

// An Enrollment is the answer to POST /v1/enroll: 2.01 on first contact,
// 2.04 after.
type Enrollment struct {
	// Status says whether the device has an owner.
	Status EnrollStatus `cbor:"1,keyasint"`
	// Subject is the owner's pseudonymous subject, the one consent
	// records name; empty (absent) while the device is unclaimed.
	Subject string `cbor:"2,keyasint,omitempty"`
	// Manifest is the hash of the current manifest for the device's
	// model; when it differs from the one the device runs, the device
	// fetches /v1/manifest. Zero (absent) when the model has none.
	Manifest Hash `cbor:"3,keyasint,omitzero"`
	// Time is the cloud's clock in Unix seconds, for a device without a
	// real-time clock of its own.
	Time int64 `cbor:"4,keyasint"`
}

// A ManifestResponse is the answer to GET /v1/manifest.
type ManifestResponse struct {
	// Signed is the manifest of the device's model as its maker signed
	// it: a tagged COSE_Sign1 message (policy.Manifest.Sign) whose
	// payload is the manifest's deterministic CBOR encoding, so its hash
	// is SHA-256 of the payload. The device checks the signature against
	// the maker's key (policy.OpenSigned) before it runs the manifest.
	Signed []byte `cbor:"1,keyasint"`
}

// Settings are named values of a product's own: desired and reported
// state, command arguments and outputs. Names are non-empty text; values
// are bool, int64 (any Go integer type is accepted for encoding, within
// int64), float64 or string, nothing nested. Settings are the product's
// controls, not what it measures: readings travel only as telemetry,
// under the manifest.
type Settings map[string]any

// IsZero reports whether there are no settings: a message leaves them
// out then.
func (s Settings) IsZero() bool { return len(s) == 0 }

// MarshalCBOR writes the settings as a map from name to value, in
// deterministic order; nil writes an empty map.
func (s Settings) MarshalCBOR() ([]byte, error) {
	out := make(map[string]any, len(s))
	for k, v := range s {
		if k == "" {
			return nil, errors.New("protocol: a setting without a name")
		}
		n, err := settingValue(v)
		if err != nil {
			return nil, fmt.Errorf("protocol: setting %s: %w", quote(k), err)
		}
		out[k] = n
	}
	return codec.Marshal(out)
}

// UnmarshalCBOR reads a map of settings, refusing empty names and values
// that are not a bool, an integer within int64, a float or a text string.
// Integers come back as int64.
func (s *Settings) UnmarshalCBOR(data []byte) error {
	var m map[string]any
	if err := codec.Unmarshal(data, &m); err != nil {
		return err
	}
	for k, v := range m {
		if k == "" {
			return errors.New("protocol: a setting without a name")
		}
		n, err := settingValue(v)
		if err != nil {
			return fmt.Errorf("protocol: setting %s: %w", quote(k), err)
		}
		m[k] = n
	}
	*s = m
	return nil
}

// settingValue normalizes a setting's value: integers to int64, float32
// to float64.
func settingValue(v any) (any, error) {
	switch x := v.(type) {
	case bool, string, float64, int64:
		return x, nil
	case float32:
		return float64(x), nil
	case int:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case uint:
		return uintValue(uint64(x))
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint64:
		return uintValue(x)
	}
	return nil, fmt.Errorf("a %T is not a setting value (bool, integer, float or string)", v)
}

func uintValue(x uint64) (any, error) {
	if x > math.MaxInt64 {
		return nil, errors.New("integer out of the int64 range")
	}
	return int64(x), nil
}

// Desired is the desired state: GET /v1/state, observable. The cloud sets
// it; the device applies it and reports back with [Reported]. Every
// answer and notification carries the whole current value.
type Desired struct {
	// Version increases with every change, per device; a device ignores
	// a value older than one it has applied.
	Version uint64 `cbor:"1,keyasint"`
	// Settings are the desired settings; absent when empty or when
	// Fetch is set.
	Settings Settings `cbor:"2,keyasint,omitzero"`
	// Fetch, in a notification, says that the value was too large for
	// one (MaxNotificationBody) and was left out: GET the resource.
	Fetch bool `cbor:"3,keyasint,omitempty"`
}

// Reported is the body of POST /v1/state: the state the device is in.
// The answer is 2.04 with no body.
type Reported struct {
	// Version is the version of the desired state the device last
	// applied, 0 if none.
	Version uint64 `cbor:"1,keyasint"`
	// Settings are the settings in force on the device.
	Settings Settings `cbor:"2,keyasint,omitzero"`
	// Errors says, per setting, why a desired value was not applied.
	Errors map[string]string `cbor:"3,keyasint,omitempty"`
}

// A Command is one thing the cloud asks a device to do.
type Command struct {
	// ID names the command; its result names it back.
	ID CommandID `cbor:"1,keyasint"`
	// Name says what to do, in the product's own terms, e.g. "start-cleaning".
	Name string `cbor:"2,keyasint"`
	// Args are the command's arguments.
	Args Settings `cbor:"3,keyasint,omitzero"`
	// Expires is when the command lapses, in Unix seconds; 0 (absent)
	// means never. A device does not run a lapsed command: it reports
	// Expired.
	Expires int64 `cbor:"4,keyasint,omitempty"`
}

// Commands are the commands pending for a device: GET /v1/commands,
// observable, oldest first. A command leaves the list once the cloud has
// its result.
type Commands struct {
	// Version increases whenever the list changes, per device.
	Version uint64 `cbor:"1,keyasint"`
	// Commands are the pending commands; absent when none or when Fetch
	// is set.
	Commands []Command `cbor:"2,keyasint,omitempty"`
	// Fetch, in a notification, says that the list was too large for one
	// and was left out: GET the resource.
	Fetch bool `cbor:"3,keyasint,omitempty"`
}

// A ResultStatus says how a command ended.
type ResultStatus uint8

// Command outcomes.
const (
	// Done means the device did what the command asked.
	Done ResultStatus = 1
	// Failed means the device tried and failed.
	Failed ResultStatus = 2
	// Rejected means the device refused: the command is unknown, its
	// arguments are wrong, or it is unsafe now.
	Rejected ResultStatus = 3
	// Expired means the command lapsed before the device could run it.
	Expired ResultStatus = 4
)

// A CommandResult is the body of POST /v1/commands: how one command ended.
// The answer is 2.04 with no body, also for a result the cloud already
// has (it is stored once).
type CommandResult struct {
	// ID is the command's.
	ID CommandID `cbor:"1,keyasint"`
	// Status is how it ended.
	Status ResultStatus `cbor:"2,keyasint"`
	// Detail says why it failed or was rejected, in words.
	Detail string `cbor:"3,keyasint,omitempty"`
	// Output holds what the command returns, if anything.
	Output Settings `cbor:"4,keyasint,omitzero"`
}

// Consents are the consent records that concern a device: GET
// /v1/consent, observable. They are the owner's records that cover the
// device (a record that names no device covers them all): for each
// purpose the latest, preceded by the record it ends, if it ends one, so
// that the device adds them in order to a consent.History and decides as
// the cloud does.
type Consents struct {
	// Version increases whenever the list changes, per device.
	Version uint64 `cbor:"1,keyasint"`
	// Records are the records, each a tagged COSE_Sign1 message
	// (consent.Sign) carried as a byte string, in the order the
	// consent log accepted them. Absent when none or when Fetch is set.
	Records [][]byte `cbor:"2,keyasint,omitempty"`
	// Fetch, in a notification, says that the list was too large for one
	// and was left out: GET the resource.
	Fetch bool `cbor:"3,keyasint,omitempty"`
	// Keys are the public keys of the owner's apps that signed Records,
	// vouched for by the cloud over the device's authenticated session,
	// so that the device can verify the records. Absent when Fetch is
	// set.
	Keys []SignerKey `cbor:"4,keyasint,omitempty"`
}

// A SignerKey is a public key that signs consent records.
type SignerKey struct {
	// KID is the key ID that the records' protected header names.
	KID []byte `cbor:"1,keyasint"`
	// Role is whose key it is: 1 an app of the subject's, 2 a device, 3
	// the controller (consent.Role).
	Role consent.Role `cbor:"2,keyasint"`
	// Subject is the subject whose app or device holds the key; empty
	// (absent) for the controller's.
	Subject string `cbor:"3,keyasint,omitempty"`
	// Key is the public key as a DER SubjectPublicKeyInfo (RFC 5280):
	// Ed25519 (RFC 8410) or ECDSA P-256 (RFC 5480).
	Key []byte `cbor:"4,keyasint"`
}

// TrustedKey returns k as consent.KeySet takes it. A device adds to its
// key set only the keys of its owner's apps (role 1, its owner's
// subject): controller keys come with its firmware.
func (k SignerKey) TrustedKey() (consent.TrustedKey, error) {
	pub, err := x509.ParsePKIXPublicKey(k.Key)
	if err != nil {
		return consent.TrustedKey{}, fmt.Errorf("protocol: signer key %x: %w", k.KID, err)
	}
	return consent.TrustedKey{KID: k.KID, Key: pub, Role: k.Role, Subject: k.Subject}, nil
}
