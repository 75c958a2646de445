package sqlstore

import (
	"context"
	"math"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// ReadingProvenance implements store.Readings.
func (s *Store) ReadingProvenance(ctx context.Context, id int64) (store.Provenance, error) {
	var p store.Provenance
	var dev, manifest, consent []byte
	var epoch, seq, taken, received int64
	err := s.db.QueryRowContext(ctx, `SELECT r.id, r.batch, b.device, b.stream, b.manifest, b.epoch, b.seq, r.consent, r.taken, b.received
		FROM readings r JOIN batches b ON b.id = r.batch WHERE r.id = $1`, id).
		Scan(&p.Reading, &p.Batch, &dev, &p.Stream, &manifest, &epoch, &seq, &consent, &taken, &received)
	if err != nil {
		return p, noRows(err, "reading %d", id)
	}
	p.Key.Epoch, p.Key.Seq = uint64(epoch), uint64(seq)
	p.Time, p.Received = timeOf(taken), timeOf(received)
	if err := fixed(p.Device[:], dev, "device ID"); err != nil {
		return p, err
	}
	if err := fixed(p.Manifest[:], manifest, "manifest hash"); err != nil {
		return p, err
	}
	return p, optFixed(p.Consent[:], consent, "consent record ID")
}

// ListReadings implements store.Readings.
func (s *Store) ListReadings(ctx context.Context, q store.ReadingQuery) ([]store.Reading, error) {
	from, to := int64(math.MinInt64), int64(math.MaxInt64)
	var err error
	if !q.From.IsZero() {
		if from, err = unixNano("start of the range", q.From); err != nil {
			return nil, err
		}
	}
	if !q.To.IsZero() {
		if to, err = unixNano("end of the range", q.To); err != nil {
			return nil, err
		}
	}
	return collect(ctx, s.db, scanReading, `SELECT id, batch, taken, fields, consent FROM readings
		WHERE device = $1 AND stream = $2 AND taken >= $3 AND taken < $4 ORDER BY taken, id LIMIT $5`,
		q.Device[:], q.Stream, from, to, limit(q.Limit))
}

func scanReading(r scanner) (rd store.Reading, err error) {
	var taken int64
	var consent []byte
	if err := r.Scan(&rd.ID, &rd.Batch, &taken, &rd.Fields, &consent); err != nil {
		return rd, err
	}
	rd.Time = timeOf(taken)
	return rd, optFixed(rd.Consent[:], consent, "consent record ID")
}

// DeleteReadings implements store.Readings.
func (s *Store) DeleteReadings(ctx context.Context, r store.Retention) (int64, error) {
	before, err := unixNano("cutoff", r.Before)
	if err != nil {
		return 0, err
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM readings WHERE stream = $1 AND taken < $2
		AND batch IN (SELECT id FROM batches WHERE manifest = $3 AND stream = $1)`, r.Stream, before, r.Manifest[:])
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ListGaps implements store.Readings.
func (s *Store) ListGaps(ctx context.Context, device identity.ID) ([]store.Gap, error) {
	return collect(ctx, s.db, func(r scanner) (store.Gap, error) {
		g := store.Gap{Device: device}
		var epoch, first, last, found int64
		err := r.Scan(&epoch, &first, &last, &found)
		g.Epoch, g.First, g.Last, g.Found = uint64(epoch), uint64(first), uint64(last), timeOf(found)
		return g, err
	}, `SELECT epoch, first_seq, last_seq, found FROM gaps WHERE device = $1 ORDER BY epoch, first_seq`, device[:])
}
