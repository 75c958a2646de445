package sqlstore

import (
	"context"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// RecordIncident implements store.Incidents.
func (s *Store) RecordIncident(ctx context.Context, i store.Incident) (int64, error) {
	if err := checkID("device ID", i.Device.IsZero()); err != nil {
		return 0, err
	}
	if err := checkText("incident kind", i.Kind, true); err != nil {
		return 0, err
	}
	if err := checkText("incident detail", i.Detail, false); err != nil {
		return 0, err
	}
	at, err := unixNano("incident time", i.Time)
	if err != nil {
		return 0, err
	}
	var id int64
	err = s.db.QueryRowContext(ctx, `INSERT INTO incidents (device, occurred, kind, detail) VALUES ($1, $2, $3, $4) RETURNING id`,
		i.Device[:], at, i.Kind, i.Detail).Scan(&id)
	return id, err
}

// CountIncidents implements store.Incidents.
func (s *Store) CountIncidents(ctx context.Context, device identity.ID, since time.Time) (int64, error) {
	from, err := unixNano("start time", since)
	if err != nil {
		return 0, err
	}
	var n int64
	err = s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM incidents WHERE device = $1 AND occurred >= $2`, device[:], from).Scan(&n)
	return n, err
}

// ListIncidents implements store.Incidents.
func (s *Store) ListIncidents(ctx context.Context, device identity.ID, since time.Time, n int) ([]store.Incident, error) {
	from, err := unixNano("start time", since)
	if err != nil {
		return nil, err
	}
	return collect(ctx, s.db, func(r scanner) (store.Incident, error) {
		i := store.Incident{Device: device}
		var at int64
		err := r.Scan(&i.ID, &at, &i.Kind, &i.Detail)
		i.Time = timeOf(at)
		return i, err
	}, `SELECT id, occurred, kind, detail FROM incidents WHERE device = $1 AND occurred >= $2 ORDER BY occurred, id LIMIT $3`,
		device[:], from, limit(n))
}
