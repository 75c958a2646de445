package consent

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

// SchemaVersion is the version of the record format this package writes.
const SchemaVersion = 1

// A State is what a consent event records (ISO/IEC TS 27560).
type State uint8

// Event states. StateGiven and StateRenewed grant; the others end or refuse.
const (
	StateGiven     State = 1
	StateRenewed   State = 2
	StateWithdrawn State = 3 // ended by the subject
	StateRefused   State = 4 // asked and declined
	StateRevoked   State = 5 // ended by the controller
	StateExpired   State = 6 // ended by its validity running out, recorded
)

var stateNames = [...]string{"", "given", "renewed", "withdrawn", "refused", "revoked", "expired"}

// String returns the state's name, e.g. "withdrawn".
func (s State) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// grants reports whether the state lets processing go on.
func (s State) grants() bool { return s == StateGiven || s == StateRenewed }

// ends reports whether an event in this state ends an earlier record.
func (s State) ends() bool {
	return s == StateWithdrawn || s == StateRevoked || s == StateExpired || s == StateRenewed
}

// An ID identifies a record: 16 random bytes.
type ID [16]byte

// NewID returns a random record ID.
func NewID() ID {
	var id ID
	rand.Read(id[:])
	return id
}

// String returns the ID in hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText writes the ID in hex (for JSON; CBOR keeps the bytes).
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText reads an ID written by MarshalText.
func (id *ID) UnmarshalText(b []byte) error { return unhex(id[:], b) }

// A Digest is a SHA-256 hash, written in hex in JSON.
type Digest [32]byte

// MarshalText writes the digest in hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(d[:])), nil }

// UnmarshalText reads a digest written by MarshalText.
func (d *Digest) UnmarshalText(b []byte) error { return unhex(d[:], b) }

func unhex(dst, src []byte) error {
	if hex.DecodedLen(len(src)) != len(dst) {
		return fmt.Errorf("%w: hex of %d bytes, want %d", ErrMalformed, hex.DecodedLen(len(src)), len(dst))
	}
	_, err := hex.Decode(dst, src)
	return err
}

// A Notice identifies the text the subject was shown.
type Notice struct {
	ID       string `cbor:"1,keyasint"` // the notice's name, e.g. "energy"
	Version  uint32 `cbor:"2,keyasint"` // its version; a new text is a new version
	Language string `cbor:"3,keyasint"` // BCP 47, e.g. "en-GB"
	Hash     Digest `cbor:"4,keyasint"` // SHA-256 of the notice text
}

// HashText returns the notice hash of text.
func HashText(text []byte) Digest { return sha256.Sum256(text) }

// CheckText returns ErrNoticeHash unless text is the notice's text.
func (n Notice) CheckText(text []byte) error {
	if HashText(text) != n.Hash {
		return fmt.Errorf("%w: notice %s v%d", ErrNoticeHash, n.ID, n.Version)
	}
	return nil
}

// A Process is one purpose of processing the subject agreed to (or
// declined), with the data it covers and where the data may go.
type Process struct {
	// Purpose names the purpose, e.g. "analytics" or "pest-alerts"
	// (W3C DPV purposes or the controller's own).
	Purpose string `cbor:"1,keyasint"`
	// Categories are the data categories, dotted names such as
	// "user.sensor.camera" (in the style of fideslang).
	Categories []string `cbor:"2,keyasint"`
	// Recipients are the partner IDs the data may be shared with; empty
	// means the controller only.
	Recipients []string `cbor:"3,keyasint,omitempty"`
	// LegalBasis is e.g. "consent" (GDPR Art. 6(1)(a)).
	LegalBasis string `cbor:"4,keyasint"`
	// Retention is how long the data may be kept, in seconds; 0 means
	// only as long as the purpose needs.
	Retention uint64 `cbor:"5,keyasint,omitempty"`
	// Storage says where the data is kept, e.g. "eu-west" or "device".
	Storage string `cbor:"6,keyasint,omitempty"`
	// Withdrawal says how to withdraw, e.g. "app:settings/privacy".
	Withdrawal string `cbor:"7,keyasint,omitempty"`
	// Jurisdiction is e.g. "EU" or "US-CA".
	Jurisdiction string `cbor:"8,keyasint,omitempty"`
}

// An Event is what happened, when, by whom, and for how long it holds.
type Event struct {
	// Time is when the event happened, in Unix seconds.
	Time int64 `cbor:"1,keyasint"`
	// Expires is when a granted consent lapses, in Unix seconds; 0 means
	// it holds until withdrawn.
	Expires int64 `cbor:"2,keyasint,omitempty"`
	// Actor says who captured the event, e.g. "subject:app" or "device".
	Actor string `cbor:"3,keyasint"`
	// State is what the event records.
	State State `cbor:"4,keyasint"`
}

// A Record is one signed consent event. Records are never edited: a
// withdrawal, renewal or revocation is a new record that names the one it
// ends.
type Record struct {
	Schema     uint32        `cbor:"1,keyasint"`           // SchemaVersion
	ID         ID            `cbor:"2,keyasint"`           // unique per event
	Subject    string        `cbor:"3,keyasint"`           // pseudonymous; never an email address or a name
	Controller string        `cbor:"4,keyasint"`           // the company processing the data
	Notice     Notice        `cbor:"5,keyasint"`           // the notice the subject was shown
	Processes  []Process     `cbor:"6,keyasint"`           // what the event is about
	Devices    []identity.ID `cbor:"7,keyasint,omitempty"` // devices covered; empty means all of the subject's
	Event      Event         `cbor:"8,keyasint"`           // what happened, when, by whom
	Ends       *ID           `cbor:"9,keyasint,omitempty"` // the record this one ends, if any
}

// check validates the fields of a decoded or to-be-signed record.
func (r *Record) check() error {
	switch {
	case r.Schema != SchemaVersion:
		return fmt.Errorf("%w: schema %d", ErrMalformed, r.Schema)
	case r.ID.IsZero():
		return fmt.Errorf("%w: no record ID", ErrMalformed)
	case r.Subject == "" || r.Controller == "":
		return fmt.Errorf("%w: subject and controller are required", ErrMalformed)
	case r.Notice.ID == "":
		return fmt.Errorf("%w: no notice", ErrMalformed)
	case len(r.Processes) == 0:
		return fmt.Errorf("%w: no process", ErrMalformed)
	case r.Event.State == 0 || int(r.Event.State) >= len(stateNames):
		return fmt.Errorf("%w: unknown state %d", ErrMalformed, r.Event.State)
	case r.Event.Time <= 0:
		return fmt.Errorf("%w: no event time", ErrMalformed)
	case r.Event.Expires != 0 && r.Event.Expires <= r.Event.Time:
		return fmt.Errorf("%w: expires before its event", ErrMalformed)
	case r.Event.State.ends() != (r.Ends != nil && !r.Ends.IsZero()):
		return fmt.Errorf("%w: a %s event must name the record it ends, and only then", ErrMalformed, r.Event.State)
	}
	for _, p := range r.Processes {
		if p.Purpose == "" || len(p.Categories) == 0 || p.LegalBasis == "" {
			return fmt.Errorf("%w: a process needs a purpose, categories and a legal basis", ErrMalformed)
		}
	}
	return nil
}

// ValidAt returns nil if the record's event has happened by t and its
// validity has not run out, else ErrNotYetValid or ErrExpired.
func (r *Record) ValidAt(t time.Time) error {
	if t.Unix() < r.Event.Time {
		return fmt.Errorf("%w: event at %s", ErrNotYetValid, time.Unix(r.Event.Time, 0).UTC().Format(time.RFC3339))
	}
	if r.Event.Expires != 0 && t.Unix() >= r.Event.Expires {
		return fmt.Errorf("%w: at %s", ErrExpired, time.Unix(r.Event.Expires, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// GrantParams says what a subject agreed to, for Grant.
type GrantParams struct {
	Subject    string        // pseudonymous subject
	Controller string        // the company processing the data
	Notice     Notice        // the notice the subject was shown
	Processes  []Process     // what the subject agreed to
	Devices    []identity.ID // the devices covered; empty means all of the subject's
	At         time.Time     // when the subject agreed
	Expires    time.Time     // when the consent lapses; zero: it holds until withdrawn
	Actor      string        // who captured it, e.g. "subject:app" or "device"
}

// Grant returns a new record of the consent p describes, with a fresh ID.
// Sign it and add it to the subject's History; [Withdraw] undoes it in
// the same steps.
func Grant(p GrantParams) *Record {
	r := &Record{
		Schema: SchemaVersion, ID: NewID(), Subject: p.Subject, Controller: p.Controller,
		Notice: p.Notice, Processes: slices.Clone(p.Processes), Devices: slices.Clone(p.Devices),
		Event: Event{Time: p.At.Unix(), Actor: p.Actor, State: StateGiven},
	}
	if !p.Expires.IsZero() {
		r.Event.Expires = p.Expires.Unix()
	}
	return r
}

// Withdraw returns a new record that withdraws of at t, by actor. It must
// be signed by the subject's app or device key.
func Withdraw(of *Record, at time.Time, actor string) *Record {
	return ending(of, at, actor, StateWithdrawn)
}

// Revoke returns a new record by which the controller revokes of at t.
func Revoke(of *Record, at time.Time, actor string) *Record {
	return ending(of, at, actor, StateRevoked)
}

func ending(of *Record, at time.Time, actor string, s State) *Record {
	id := of.ID
	return &Record{
		Schema: SchemaVersion, ID: NewID(), Subject: of.Subject, Controller: of.Controller,
		Notice: of.Notice, Processes: slices.Clone(of.Processes), Devices: slices.Clone(of.Devices),
		Event: Event{Time: at.Unix(), Actor: actor, State: s},
		Ends:  &id,
	}
}
