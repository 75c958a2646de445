package sqlstore

import (
	"context"
	"database/sql"
	"sync"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// purgeEvery is how often a replay cache deletes the expired tokens
// itself.
const purgeEvery = time.Minute

// replayCache is a replay cache in the replays table.
type replayCache struct {
	s         *Store
	max       int
	now       func() time.Time
	mu        sync.Mutex
	nextPurge time.Time
}

var _ identity.ReplayCache = (*replayCache)(nil)

// ReplayCache returns a replay cache in the replays table. Seen inserts
// the token, or replaces it if its until has passed, doing nothing if it
// is there and unexpired; the number of rows changed says whether it was
// new. A new token is then counted among its device's unexpired tokens,
// and the transaction is rolled back if there are too many.
func (s *Store) ReplayCache(cfg store.ReplayConfig) identity.ReplayCache {
	c := &replayCache{s: s, max: cfg.MaxLiveTokens, now: cfg.Now}
	if c.max <= 0 {
		c.max = store.DefaultMaxLiveTokens
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

const (
	upsertReplay = `INSERT INTO replays (device, jti, expires) VALUES ($1, $2, $3)
		ON CONFLICT (device, jti) DO UPDATE SET expires = excluded.expires
		WHERE replays.expires <= $4`
	countLiveReplays = `SELECT COUNT(*) FROM replays WHERE device = $1 AND expires > $2`
	deleteReplays    = `DELETE FROM replays WHERE expires <= $1`
)

// Seen implements identity.ReplayCache. A zero device, or a zero until,
// is store.ErrInvalid; too many unexpired tokens of the device a
// *store.TokenLimitError.
func (c *replayCache) Seen(ctx context.Context, dev identity.ID, tokenID string, until time.Time) (bool, error) {
	if err := checkID("device ID", dev.IsZero()); err != nil {
		return false, err
	}
	expires, err := unixNano("token expiry", until)
	if err != nil {
		return false, err
	}
	now := c.now()
	at, err := unixNano("time", now)
	if err != nil {
		return false, err
	}
	c.purge(ctx, now)
	var seen bool
	err = c.s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, upsertReplay, dev[:], []byte(tokenID), expires, at)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if seen = n == 0; seen {
			return nil
		}
		var live int64
		if err := tx.QueryRowContext(ctx, countLiveReplays, dev[:], at).Scan(&live); err != nil {
			return err
		}
		if live > int64(c.max) {
			return &store.TokenLimitError{Device: dev, Limit: c.max}
		}
		return nil
	})
	return seen && err == nil, err
}

// purge deletes the expired tokens if it has not for purgeEvery. It is
// housekeeping: its failure is left for the next purge.
func (c *replayCache) purge(ctx context.Context, now time.Time) {
	c.mu.Lock()
	due := !now.Before(c.nextPurge)
	if due {
		c.nextPurge = now.Add(purgeEvery)
	}
	c.mu.Unlock()
	if due {
		c.s.PurgeReplays(ctx, now)
	}
}

// PurgeReplays deletes every remembered token whose until is at or
// before now, and returns how many it deleted.
func (s *Store) PurgeReplays(ctx context.Context, now time.Time) (int64, error) {
	at, err := unixNano("time", now)
	if err != nil {
		return 0, err
	}
	res, err := s.db.ExecContext(ctx, deleteReplays, at)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
