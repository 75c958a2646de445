package sqlstore

import (
	"context"
	"database/sql"
	"math"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// SetClaim implements store.Claims.
func (s *Store) SetClaim(ctx context.Context, c store.Claim) error {
	created, err := unixNano("time created", c.Created)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO claims (device, hash, created) VALUES ($1, $2, $3)
		ON CONFLICT (device) DO UPDATE SET hash = excluded.hash, created = excluded.created`, c.Device[:], c.Hash[:], created)
	if err != nil && s.d.IsForeignKeyViolation(err) {
		return fail(store.ErrNotFound, "device %s", c.Device)
	}
	return err
}

// Claim implements store.Claims.
func (s *Store) Claim(ctx context.Context, device identity.ID) (store.Claim, error) {
	c := store.Claim{Device: device}
	var hash []byte
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT hash, created FROM claims WHERE device = $1`, device[:]).Scan(&hash, &created)
	if err != nil {
		return c, noRows(err, "claim on device %s", device)
	}
	c.Created = timeOf(created)
	return c, fixed(c.Hash[:], hash, "claim code hash")
}

// DeleteClaim implements store.Claims.
func (s *Store) DeleteClaim(ctx context.Context, device identity.ID) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM claims WHERE device = $1`, device[:])
	if err != nil {
		return err
	}
	return mustAffect(res, store.ErrNotFound, "claim on device %s", device)
}

// Scopes of claim attempt counters.
const (
	attemptsOnDevice   = 1
	attemptsByClaimant = 2
)

// RecordClaimAttempt implements store.Claims.
func (s *Store) RecordClaimAttempt(ctx context.Context, a store.ClaimAttempt) (store.AttemptCounts, error) {
	var n store.AttemptCounts
	if err := checkID("device ID", a.Device.IsZero()); err != nil {
		return n, err
	}
	if err := checkText("claimant", a.Claimant, true); err != nil {
		return n, err
	}
	if a.Window <= 0 {
		return n, fail(store.ErrInvalid, "attempt window of %v", a.Window)
	}
	at, err := unixNano("attempt time", a.At)
	if err != nil {
		return n, err
	}
	// A counter whose window started at or before windowEnd has lapsed.
	windowEnd := int64(math.MinInt64)
	if at > math.MinInt64+int64(a.Window) {
		windowEnd = at - int64(a.Window)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		count := func(scope int64, who []byte, dst *int64) error {
			return tx.QueryRowContext(ctx, `INSERT INTO claim_attempts (scope, who, window_start, attempts) VALUES ($1, $2, $3, 1)
				ON CONFLICT (scope, who) DO UPDATE SET
				attempts = CASE WHEN claim_attempts.window_start > $4 THEN claim_attempts.attempts + 1 ELSE 1 END,
				window_start = CASE WHEN claim_attempts.window_start > $4 THEN claim_attempts.window_start ELSE $3 END
				RETURNING attempts`, scope, who, at, windowEnd).Scan(dst)
		}
		if err := count(attemptsOnDevice, a.Device[:], &n.Device); err != nil {
			return err
		}
		return count(attemptsByClaimant, []byte(a.Claimant), &n.Claimant)
	})
	return n, err
}
