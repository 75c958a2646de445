package sqlstore

import (
	"context"
	"database/sql"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
)

// AddModel implements store.Models.
func (s *Store) AddModel(ctx context.Context, m store.Model) error {
	if err := checkText("model ID", m.ID, true); err != nil {
		return err
	}
	if err := checkText("model name", m.Name, false); err != nil {
		return err
	}
	return s.insertOnce(ctx, "model "+m.ID, "",
		`INSERT INTO models (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING`, m.ID, m.Name)
}

const selectModel = `SELECT id, name FROM models`

func scanModel(r scanner) (m store.Model, err error) {
	err = r.Scan(&m.ID, &m.Name)
	return m, err
}

// Model implements store.Models.
func (s *Store) Model(ctx context.Context, id string) (store.Model, error) {
	m, err := scanModel(s.db.QueryRowContext(ctx, selectModel+` WHERE id = $1`, id))
	return m, noRows(err, "model %q", id)
}

// ListModels implements store.Models.
func (s *Store) ListModels(ctx context.Context) ([]store.Model, error) {
	return collect(ctx, s.db, scanModel, selectModel+` ORDER BY id`)
}

// AddManifest implements store.Manifests.
func (s *Store) AddManifest(ctx context.Context, m store.Manifest) error {
	if err := checkID("manifest hash", m.Hash.IsZero()); err != nil {
		return err
	}
	if err := checkText("model", m.Model, true); err != nil {
		return err
	}
	if len(m.Signed) == 0 {
		return fail(store.ErrInvalid, "no signed manifest")
	}
	added, err := unixNano("time added", m.Added)
	if err != nil {
		return err
	}
	return s.insertOnce(ctx, "manifest "+m.Hash.String(), "model "+m.Model,
		`INSERT INTO manifests (hash, model, signed, added) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
		m.Hash[:], m.Model, m.Signed, added)
}

const selectManifest = `SELECT hash, model, signed, added FROM manifests`

func scanManifest(r scanner) (m store.Manifest, err error) {
	var hash []byte
	var added int64
	if err := r.Scan(&hash, &m.Model, &m.Signed, &added); err != nil {
		return m, err
	}
	m.Added = timeOf(added)
	return m, fixed(m.Hash[:], hash, "manifest hash")
}

// Manifest implements store.Manifests.
func (s *Store) Manifest(ctx context.Context, hash protocol.Hash) (store.Manifest, error) {
	m, err := scanManifest(s.db.QueryRowContext(ctx, selectManifest+` WHERE hash = $1`, hash[:]))
	return m, noRows(err, "manifest %s", hash)
}

// ListManifests implements store.Manifests.
func (s *Store) ListManifests(ctx context.Context, model string) ([]store.Manifest, error) {
	return collect(ctx, s.db, scanManifest, selectManifest+` WHERE model = $1 ORDER BY added, hash`, model)
}

// NewestManifest implements store.Manifests.
func (s *Store) NewestManifest(ctx context.Context, model string) (store.Manifest, error) {
	m, err := scanManifest(s.db.QueryRowContext(ctx, selectManifest+` WHERE model = $1 ORDER BY added DESC, hash DESC LIMIT 1`, model))
	return m, noRows(err, "manifest of model %q", model)
}

// CreateDevice implements store.Devices.
func (s *Store) CreateDevice(ctx context.Context, d store.Device) error {
	if err := checkID("device ID", d.ID.IsZero()); err != nil {
		return err
	}
	if len(d.PublicKey) == 0 {
		return fail(store.ErrInvalid, "device without a public key")
	}
	for _, c := range []struct {
		what, s  string
		required bool
	}{{"model", d.Model, true}, {"owner", d.Owner, false}, {"standing reason", d.StandingReason, false}} {
		if err := checkText(c.what, c.s, c.required); err != nil {
			return err
		}
	}
	if d.Standing == 0 {
		d.Standing = store.Active
	}
	if err := checkStanding(d.Standing); err != nil {
		return err
	}
	created, err := unixNano("time created", d.Created)
	if err != nil {
		return err
	}
	since := created
	if !d.StandingSince.IsZero() {
		if since, err = unixNano("standing time", d.StandingSince); err != nil {
			return err
		}
	}
	var chain []byte
	if len(d.Chain) > 0 {
		if chain, err = codec.Marshal(d.Chain); err != nil {
			return err
		}
		if len(chain) > codec.DefaultMaxBody {
			return &store.TooLargeError{What: "certificate chain", Size: len(chain), Limit: codec.DefaultMaxBody}
		}
	}
	return s.insertOnce(ctx, "device "+d.ID.String(), "model "+d.Model,
		`INSERT INTO devices (id, public_key, chain, model, owner, standing, reason, standing_at, created)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
		d.ID[:], d.PublicKey, nullBytes(chain), d.Model, d.Owner, int64(d.Standing), d.StandingReason, since, created)
}

func checkStanding(s store.Standing) error {
	if s < store.Active || s > store.Decommissioned {
		return fail(store.ErrInvalid, "unknown standing %d", s)
	}
	return nil
}

const selectDevice = `SELECT id, public_key, chain, model, owner, standing, reason, standing_at, created FROM devices`

func scanDevice(r scanner) (d store.Device, err error) {
	var id, chain []byte
	var standing, since, created int64
	if err := r.Scan(&id, &d.PublicKey, &chain, &d.Model, &d.Owner, &standing, &d.StandingReason, &since, &created); err != nil {
		return d, err
	}
	if chain != nil {
		if err := codec.Unmarshal(chain, &d.Chain); err != nil {
			return d, err
		}
	}
	d.Standing = store.Standing(standing)
	d.StandingSince, d.Created = timeOf(since), timeOf(created)
	return d, fixed(d.ID[:], id, "device ID")
}

// Device implements store.Devices.
func (s *Store) Device(ctx context.Context, id identity.ID) (store.Device, error) {
	d, err := scanDevice(s.db.QueryRowContext(ctx, selectDevice+` WHERE id = $1`, id[:]))
	return d, noRows(err, "device %s", id)
}

// SetStanding implements store.Devices.
func (s *Store) SetStanding(ctx context.Context, id identity.ID, standing store.Standing, reason string, at time.Time) error {
	if err := checkStanding(standing); err != nil {
		return err
	}
	if err := checkText("standing reason", reason, false); err != nil {
		return err
	}
	since, err := unixNano("standing time", at)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `UPDATE devices SET standing = $2, reason = $3, standing_at = $4 WHERE id = $1 AND standing <> $5`,
		id[:], int64(standing), reason, since, int64(store.Decommissioned))
	if err != nil {
		return err
	}
	if err := mustAffect(res, store.ErrConflict, "device %s is decommissioned", id); err != nil {
		return s.deviceMissing(ctx, id, err)
	}
	return nil
}

// deviceMissing returns ErrNotFound if the device does not exist, and
// otherwise err.
func (s *Store) deviceMissing(ctx context.Context, id identity.ID, err error) error {
	var one int
	if e := s.db.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE id = $1`, id[:]).Scan(&one); e != nil {
		return noRows(e, "device %s", id)
	}
	return err
}

// SetOwner implements store.Devices.
func (s *Store) SetOwner(ctx context.Context, id identity.ID, owner string) error {
	if err := checkText("owner", owner, false); err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `UPDATE devices SET owner = $2 WHERE id = $1`, id[:], owner)
	if err != nil {
		return err
	}
	return mustAffect(res, store.ErrNotFound, "device %s", id)
}

// ListDevicesByOwner implements store.Devices.
func (s *Store) ListDevicesByOwner(ctx context.Context, owner string, p store.Page) ([]store.Device, error) {
	return s.listDevices(ctx, "owner", owner, p)
}

// ListDevicesByModel implements store.Devices.
func (s *Store) ListDevicesByModel(ctx context.Context, model string, p store.Page) ([]store.Device, error) {
	return s.listDevices(ctx, "model", model, p)
}

// listDevices lists a page of the devices whose column (a constant) holds
// value.
func (s *Store) listDevices(ctx context.Context, column, value string, p store.Page) ([]store.Device, error) {
	return collect(ctx, s.db, scanDevice, selectDevice+` WHERE `+column+` = $1 AND id > $2 ORDER BY id LIMIT $3`,
		value, p.After[:], limit(p.Limit))
}

// AddAppKey implements store.AppKeys.
func (s *Store) AddAppKey(ctx context.Context, k store.AppKey) error {
	if len(k.KID) == 0 || len(k.PublicKey) == 0 {
		return fail(store.ErrInvalid, "app key without a key ID or a key")
	}
	if err := checkText("subject", k.Subject, true); err != nil {
		return err
	}
	added, err := unixNano("time added", k.Added)
	if err != nil {
		return err
	}
	return s.insertOnce(ctx, "app key", "",
		`INSERT INTO app_keys (kid, subject, public_key, added) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
		k.KID, k.Subject, k.PublicKey, added)
}

const selectAppKey = `SELECT kid, subject, public_key, added, removed FROM app_keys`

func scanAppKey(r scanner) (k store.AppKey, err error) {
	var added int64
	var removed sql.NullInt64
	err = r.Scan(&k.KID, &k.Subject, &k.PublicKey, &added, &removed)
	k.Added, k.Removed = timeOf(added), optTimeOf(removed)
	return k, err
}

// AppKey implements store.AppKeys.
func (s *Store) AppKey(ctx context.Context, kid []byte) (store.AppKey, error) {
	k, err := scanAppKey(s.db.QueryRowContext(ctx, selectAppKey+` WHERE kid = $1 AND removed IS NULL`, kid))
	return k, noRows(err, "app key %x", kid)
}

// RemoveAppKey implements store.AppKeys.
func (s *Store) RemoveAppKey(ctx context.Context, kid []byte, at time.Time) error {
	removed, err := unixNano("time removed", at)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `UPDATE app_keys SET removed = $2 WHERE kid = $1 AND removed IS NULL`, kid, removed)
	if err != nil {
		return err
	}
	return mustAffect(res, store.ErrNotFound, "app key %x", kid)
}

// ListAppKeys implements store.AppKeys.
func (s *Store) ListAppKeys(ctx context.Context, subject string) ([]store.AppKey, error) {
	return collect(ctx, s.db, scanAppKey, selectAppKey+` WHERE subject = $1 AND removed IS NULL ORDER BY added, kid`, subject)
}
