package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
)

// EnqueueCommand implements store.Commands.
func (s *Store) EnqueueCommand(ctx context.Context, c store.Command) error {
	if err := checkID("device ID", c.Device.IsZero()); err != nil {
		return err
	}
	if err := checkText("command name", c.Name, true); err != nil {
		return err
	}
	if err := checkDocument("command arguments", c.Args, false); err != nil {
		return err
	}
	created, err := unixNano("time created", c.Created)
	if err != nil {
		return err
	}
	expires, err := optUnixNano("expiry", c.Expires)
	if err != nil {
		return err
	}
	return s.insertOnce(ctx, "command "+c.ID.String(), "device "+c.Device.String(),
		`INSERT INTO commands (device, id, name, args, created, expires, state) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
		c.Device[:], c.ID[:], c.Name, nullBytes(c.Args), created, expires, int64(store.Pending))
}

const selectCommand = `SELECT device, id, name, args, created, expires, state, delivered, finished, result FROM commands`

func scanCommand(r scanner) (c store.Command, err error) {
	var dev, id []byte
	var created, state int64
	var expires, delivered, finished sql.NullInt64
	if err := r.Scan(&dev, &id, &c.Name, &c.Args, &created, &expires, &state, &delivered, &finished, &c.Result); err != nil {
		return c, err
	}
	c.Created, c.Expires, c.Delivered, c.Finished = timeOf(created), optTimeOf(expires), optTimeOf(delivered), optTimeOf(finished)
	c.State = store.CommandState(state)
	if err := fixed(c.Device[:], dev, "device ID"); err != nil {
		return c, err
	}
	return c, fixed(c.ID[:], id, "command ID")
}

// Command implements store.Commands.
func (s *Store) Command(ctx context.Context, device identity.ID, id protocol.CommandID) (store.Command, error) {
	c, err := scanCommand(s.db.QueryRowContext(ctx, selectCommand+` WHERE device = $1 AND id = $2`, device[:], id[:]))
	return c, noRows(err, "command %s of device %s", id, device)
}

// deliverable returns the condition that a command is Pending (1) or
// Delivered (2) and has not expired at the time in the parameter named.
func deliverable(at string) string {
	return `state IN (1, 2) AND (expires IS NULL OR expires > ` + at + `)`
}

// DeliverableCommands implements store.Commands.
func (s *Store) DeliverableCommands(ctx context.Context, device identity.ID, now time.Time) ([]store.Command, error) {
	at, err := unixNano("time", now)
	if err != nil {
		return nil, err
	}
	return collect(ctx, s.db, scanCommand, selectCommand+` WHERE device = $1 AND `+deliverable("$2")+` ORDER BY created, id LIMIT $3`,
		device[:], at, store.MaxList)
}

// MarkDelivered implements store.Commands.
func (s *Store) MarkDelivered(ctx context.Context, device identity.ID, id protocol.CommandID, at time.Time) error {
	when, err := unixNano("delivery time", at)
	if err != nil {
		return err
	}
	// 2 is Delivered.
	res, err := s.db.ExecContext(ctx, `UPDATE commands SET state = 2, delivered = COALESCE(delivered, $3)
		WHERE device = $1 AND id = $2 AND `+deliverable("$3"), device[:], id[:], when)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return err
	}
	c, err := s.Command(ctx, device, id)
	if err != nil {
		return err
	}
	return fail(store.ErrConflict, "command %s is %s or expired", id, c.State)
}

// SetCommandResult implements store.Commands.
func (s *Store) SetCommandResult(ctx context.Context, device identity.ID, id protocol.CommandID, r store.CommandResult) error {
	if r.State != store.Succeeded && r.State != store.Failed {
		return fail(store.ErrInvalid, "a command cannot end %s", r.State)
	}
	if err := checkDocument("command result", r.Result, false); err != nil {
		return err
	}
	at, err := unixNano("time of the result", r.At)
	if err != nil {
		return err
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		// An update that changes nothing locks the row and returns it.
		var state int64
		var result []byte
		err := tx.QueryRowContext(ctx, `UPDATE commands SET state = state WHERE device = $1 AND id = $2 RETURNING state, result`,
			device[:], id[:]).Scan(&state, &result)
		if err != nil {
			return noRows(err, "command %s of device %s", id, device)
		}
		switch store.CommandState(state) {
		case store.Pending, store.Delivered:
		case r.State:
			if bytes.Equal(result, r.Result) {
				return nil // the same result again
			}
			fallthrough
		default:
			return fail(store.ErrConflict, "command %s is %s", id, store.CommandState(state))
		}
		_, err = tx.ExecContext(ctx, `UPDATE commands SET state = $3, result = $4, finished = $5 WHERE device = $1 AND id = $2`,
			device[:], id[:], int64(r.State), nullBytes(r.Result), at)
		return err
	})
}

// ExpireCommands implements store.Commands.
func (s *Store) ExpireCommands(ctx context.Context, now time.Time) (int64, error) {
	at, err := unixNano("time", now)
	if err != nil {
		return 0, err
	}
	// 1 and 2 are Pending and Delivered.
	res, err := s.db.ExecContext(ctx, `UPDATE commands SET state = $2, finished = $1 WHERE state IN (1, 2) AND expires <= $1`,
		at, int64(store.Expired))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
