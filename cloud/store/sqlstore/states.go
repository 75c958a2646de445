package sqlstore

import (
	"context"
	"database/sql"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// lockState locks a device's state row in tx, making it if it is new,
// and returns its versions: the desired state's and the reported
// state's. An upsert that changes nothing locks the row and returns it
// in one statement. A device that does not exist is ErrNotFound.
func (s *Store) lockState(ctx context.Context, tx *sql.Tx, device identity.ID) (desired, reported int64, err error) {
	err = tx.QueryRowContext(ctx, `INSERT INTO states (device, desired_version, reported_version, seen) VALUES ($1, 0, 0, 0)
		ON CONFLICT (device) DO UPDATE SET desired_version = states.desired_version
		RETURNING desired_version, reported_version`, device[:]).Scan(&desired, &reported)
	if err != nil && s.d.IsForeignKeyViolation(err) {
		err = fail(store.ErrNotFound, "device %s", device)
	}
	return desired, reported, err
}

// setState replaces one of a device's documents: in a transaction, with
// the device's state row locked, write gets the current versions and
// returns the new document's.
func (s *Store) setState(ctx context.Context, device identity.ID, what string, doc []byte, write func(tx *sql.Tx, desired, reported int64) (int64, error)) (uint64, error) {
	if err := checkDocument(what, doc, true); err != nil {
		return 0, err
	}
	var version int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		desired, reported, err := s.lockState(ctx, tx, device)
		if err == nil {
			version, err = write(tx, desired, reported)
		}
		return err
	})
	return uint64(version), err
}

// SetDesired implements store.States.
func (s *Store) SetDesired(ctx context.Context, device identity.ID, doc []byte, expected uint64) (uint64, error) {
	return s.setState(ctx, device, "desired state", doc, func(tx *sql.Tx, current, _ int64) (int64, error) {
		if expected != 0 && uint64(current) != expected {
			return 0, &store.StaleError{What: "desired state", Named: expected, Current: uint64(current)}
		}
		_, err := tx.ExecContext(ctx, `UPDATE states SET desired = $2, desired_version = $3 WHERE device = $1`, device[:], doc, current+1)
		return current + 1, err
	})
}

// SetReported implements store.States.
func (s *Store) SetReported(ctx context.Context, device identity.ID, doc []byte, desired uint64) (uint64, error) {
	return s.setState(ctx, device, "reported state", doc, func(tx *sql.Tx, current, reported int64) (int64, error) {
		if uint64(current) != desired {
			return 0, &store.StaleError{What: "desired state", Named: desired, Current: uint64(current)}
		}
		_, err := tx.ExecContext(ctx, `UPDATE states SET reported = $2, reported_version = $3, seen = $4 WHERE device = $1`,
			device[:], doc, reported+1, current)
		return reported + 1, err
	})
}

// State implements store.States.
func (s *Store) State(ctx context.Context, device identity.ID) (store.State, error) {
	var st store.State
	var desired, reported, seen sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT s.desired, s.desired_version, s.reported, s.reported_version, s.seen
		FROM devices d LEFT JOIN states s ON s.device = d.id WHERE d.id = $1`, device[:]).
		Scan(&st.Desired.Body, &desired, &st.Reported.Body, &reported, &seen)
	st.Desired.Version, st.Reported.Version, st.Seen = uint64(desired.Int64), uint64(reported.Int64), uint64(seen.Int64)
	return st, noRows(err, "device %s", device)
}
