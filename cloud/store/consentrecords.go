package store

import (
	"context"
	"time"

	"github.com/sensible-iot/sensible/consent"
)

// ConsentRecords keeps the signed consent records the cloud accepted,
// exactly as they were signed, so that every node can build each
// subject's consent.History from them. The store does not parse or
// verify a record: the caller verifies it before adding it, and again
// when it reads it back.
type ConsentRecords interface {
	// AddConsentRecord keeps a record. The same ID with the same Signed
	// bytes again is no error and changes nothing (a retry); the same ID
	// with other bytes is ErrConflict.
	AddConsentRecord(ctx context.Context, r ConsentRecord) error
	// ConsentRecords returns a subject's records in the order they were
	// added, so that a record comes after the one it ends; none for a
	// subject without any.
	ConsentRecords(ctx context.Context, subject string) ([]ConsentRecord, error)
	// DeleteConsentedReadings deletes the readings stored under a
	// consent record (Reading.Consent) whose Retention has passed at
	// now, those taken before now minus the record's Retention, and
	// returns how many it deleted. Readings of records without a
	// Retention stay.
	DeleteConsentedReadings(ctx context.Context, now time.Time) (int64, error)
}

// A ConsentRecord is a consent record as the cloud accepted it.
type ConsentRecord struct {
	// ID is the record's ID (consent.Record.ID).
	ID consent.ID
	// Subject is the pseudonymous subject the record is about.
	Subject string
	// Signed is the record as its signer signed it: a COSE_Sign1
	// message, at most MaxDocument bytes.
	Signed []byte
	// Time is when the record's event happened (consent.Event.Time).
	Time time.Time
	// Retention is how long readings stored under the record may be
	// kept after they were taken: the shortest retention its processes
	// give. Zero means the record sets none; it is never negative.
	Retention time.Duration
}
