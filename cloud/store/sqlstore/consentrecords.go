package sqlstore

import (
	"bytes"
	"context"
	"errors"
	"math"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
)

// AddConsentRecord implements store.ConsentRecords.
func (s *Store) AddConsentRecord(ctx context.Context, r store.ConsentRecord) error {
	if err := checkID("consent record ID", r.ID.IsZero()); err != nil {
		return err
	}
	if err := checkText("subject", r.Subject, true); err != nil {
		return err
	}
	if err := checkDocument("consent record", r.Signed, true); err != nil {
		return err
	}
	if r.Retention < 0 {
		return fail(store.ErrInvalid, "negative retention %v", r.Retention)
	}
	occurred, err := unixNano("consent record time", r.Time)
	if err != nil {
		return err
	}
	err = s.insertOnce(ctx, "consent record", "", `INSERT INTO consent_records (id, subject, signed, occurred, retention)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING`,
		r.ID[:], r.Subject, r.Signed, occurred, int64(r.Retention))
	if !errors.Is(err, store.ErrConflict) {
		return err
	}
	var signed []byte
	if err := s.db.QueryRowContext(ctx, `SELECT signed FROM consent_records WHERE id = $1`, r.ID[:]).Scan(&signed); err != nil {
		return err
	}
	if !bytes.Equal(signed, r.Signed) {
		return fail(store.ErrConflict, "consent record %s is stored with other bytes", r.ID)
	}
	return nil
}

// ConsentRecords implements store.ConsentRecords.
func (s *Store) ConsentRecords(ctx context.Context, subject string) ([]store.ConsentRecord, error) {
	if err := checkText("subject", subject, true); err != nil {
		return nil, err
	}
	return collect(ctx, s.db, func(sc scanner) (store.ConsentRecord, error) {
		r := store.ConsentRecord{Subject: subject}
		var id []byte
		var occurred, retention int64
		if err := sc.Scan(&id, &r.Signed, &occurred, &retention); err != nil {
			return r, err
		}
		r.Time, r.Retention = timeOf(occurred), time.Duration(retention)
		return r, fixed(r.ID[:], id, "consent record ID")
	}, `SELECT id, signed, occurred, retention FROM consent_records WHERE subject = $1 ORDER BY seq`, subject)
}

// DeleteConsentedReadings implements store.ConsentRecords. A retention
// so long that now minus it is before the earliest time kept leaves
// every reading of its record; the CASE keeps the subtraction from
// overflowing in PostgreSQL, which evaluates only the branch it takes.
func (s *Store) DeleteConsentedReadings(ctx context.Context, now time.Time) (int64, error) {
	at, err := unixNano("time", now)
	if err != nil {
		return 0, err
	}
	longest := int64(math.MaxInt64) // the longest retention at can go back by
	if at < 0 {
		longest = at - math.MinInt64
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM readings WHERE id IN (
		SELECT r.id FROM readings r JOIN consent_records c ON c.id = r.consent
		WHERE c.retention > 0
		AND r.taken < CASE WHEN c.retention <= $2 THEN $1 - c.retention ELSE $3 END)`,
		at, longest, int64(math.MinInt64))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
