package sqlstore

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/sensible-iot/sensible/cloud/store"
)

// readingsPerInsert is how many readings one INSERT statement carries:
// 3 parameters each, far below SQLite's and PostgreSQL's limits.
const readingsPerInsert = 500

// StoreBatch implements store.Ingest.
func (s *Store) StoreBatch(ctx context.Context, b store.Batch) (store.BatchResult, error) {
	rs, err := s.StoreBatches(ctx, []store.Batch{b})
	if err != nil {
		return store.BatchResult{}, err
	}
	r := rs[0]
	err, r.Err = r.Err, nil
	return r, err
}

// batchError carries out of a transaction the error of a batch that
// failed on its own, so that the transaction is rolled back.
type batchError struct{ err error }

func (e *batchError) Error() string { return e.err.Error() }

// ownFault reports whether err is a batch's own failure rather than the
// database's.
func ownFault(err error) bool {
	return errors.Is(err, store.ErrInvalid) || errors.Is(err, store.ErrConflict) ||
		errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrTooLarge)
}

// StoreBatches implements store.Ingest. It stores the batches in the
// order of their device, epoch and sequence number, so that concurrent
// transactions take their locks in one order and cannot deadlock; a
// batch that fails on its own is rolled back to a savepoint.
func (s *Store) StoreBatches(ctx context.Context, bs []store.Batch) ([]store.BatchResult, error) {
	results := make([]store.BatchResult, len(bs))
	checked := make([]error, len(bs))
	var order []int
	for i := range bs {
		if checked[i] = checkBatch(&bs[i]); checked[i] == nil {
			order = append(order, i)
		}
	}
	slices.SortFunc(order, func(i, j int) int {
		a, b := &bs[i], &bs[j]
		return cmp.Or(bytes.Compare(a.Device[:], b.Device[:]), cmp.Compare(a.Key.Epoch, b.Key.Epoch), cmp.Compare(a.Key.Seq, b.Key.Seq))
	})
	savepoints := len(bs) > 1
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		for _, i := range order {
			if savepoints {
				if _, err := tx.ExecContext(ctx, `SAVEPOINT batch`); err != nil {
					return err
				}
			}
			r, err := s.storeBatch(ctx, tx, &bs[i])
			switch {
			case err != nil && !ownFault(err):
				return err
			case err != nil && !savepoints:
				return &batchError{err}
			case err != nil:
				r.Err = err
				if _, err = tx.ExecContext(ctx, `ROLLBACK TO SAVEPOINT batch`); err == nil {
					_, err = tx.ExecContext(ctx, `RELEASE SAVEPOINT batch`)
				}
			case savepoints:
				_, err = tx.ExecContext(ctx, `RELEASE SAVEPOINT batch`)
			}
			if err != nil {
				return err
			}
			results[i] = r
		}
		return nil
	})
	if be, ok := err.(*batchError); ok {
		results[order[0]].Err, err = be.err, nil
	}
	if err != nil {
		return nil, err
	}
	for i, err := range checked {
		if err != nil {
			results[i].Err = err
		}
	}
	return results, nil
}

// checkBatch refuses a batch that can never be stored. Its readings are
// checked as they are stored.
func checkBatch(b *store.Batch) error {
	switch {
	case b.Device.IsZero():
		return fail(store.ErrInvalid, "batch without a device")
	case b.Manifest.IsZero():
		return fail(store.ErrInvalid, "batch without a manifest")
	case b.Key.Epoch == 0 || b.Key.Seq == 0:
		return fail(store.ErrInvalid, "batch key with a zero epoch or sequence number")
	case b.Key.Seq > math.MaxInt64:
		return fail(store.ErrInvalid, "sequence number %d is out of range", b.Key.Seq)
	case len(b.Readings) == 0:
		return fail(store.ErrInvalid, "batch without readings")
	}
	if err := checkText("stream", b.Stream, true); err != nil {
		return err
	}
	_, err := unixNano("time received", b.Received)
	return err
}

// storeBatch stores one checked batch in tx: it locks the device's
// sequence for the batch's epoch, stores the batch unless its key is
// taken, stores its readings, and records the sequence numbers it skips
// or fills.
func (s *Store) storeBatch(ctx context.Context, tx *sql.Tx, b *store.Batch) (store.BatchResult, error) {
	received, _ := unixNano("", b.Received)
	epoch, seq := int64(b.Key.Epoch), int64(b.Key.Seq)
	// An upsert that changes nothing locks the row (and makes it if it is
	// new) and returns it: one statement where a SELECT ... FOR UPDATE,
	// which SQLite lacks, would need two.
	var high int64
	err := tx.QueryRowContext(ctx, `INSERT INTO sequences (device, epoch, high) VALUES ($1, $2, 0)
		ON CONFLICT (device, epoch) DO UPDATE SET high = sequences.high RETURNING high`,
		b.Device[:], epoch).Scan(&high)
	if err != nil {
		return store.BatchResult{}, err
	}
	var id int64
	err = tx.QueryRowContext(ctx, `INSERT INTO batches (device, stream, manifest, epoch, seq, digest, readings, received)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING id`,
		b.Device[:], b.Stream, b.Manifest[:], epoch, seq, b.Digest[:], int64(len(b.Readings)), received).Scan(&id)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return s.duplicate(ctx, tx, b)
	case err != nil && s.d.IsForeignKeyViolation(err):
		return store.BatchResult{}, fail(store.ErrNotFound, "device %s or manifest %s", b.Device, b.Manifest)
	case err != nil:
		return store.BatchResult{}, err
	}
	if err := s.insertReadings(ctx, tx, id, b); err != nil {
		return store.BatchResult{}, err
	}
	if err := s.trackSequence(ctx, tx, b, high, received); err != nil {
		return store.BatchResult{}, err
	}
	return store.BatchResult{ID: id, Stored: len(b.Readings)}, nil
}

// duplicate answers a batch whose key is taken: a duplicate if it has the
// stored batch's digest, ErrConflict if not.
func (s *Store) duplicate(ctx context.Context, tx *sql.Tx, b *store.Batch) (store.BatchResult, error) {
	var r store.BatchResult
	var digest []byte
	var stored int64
	err := tx.QueryRowContext(ctx, `SELECT id, digest, readings FROM batches WHERE device = $1 AND epoch = $2 AND seq = $3`,
		b.Device[:], int64(b.Key.Epoch), int64(b.Key.Seq)).Scan(&r.ID, &digest, &stored)
	if err != nil {
		return r, err
	}
	if !bytes.Equal(digest, b.Digest[:]) {
		return store.BatchResult{}, fail(store.ErrConflict, "idempotency key [%d, %d] of device %s reused for other content", b.Key.Epoch, b.Key.Seq, b.Device)
	}
	r.Stored, r.Duplicate = int(stored), true
	return r, nil
}

// insertReadings stores a batch's readings, readingsPerInsert to a
// statement, checking each as it goes.
func (s *Store) insertReadings(ctx context.Context, tx *sql.Tx, batch int64, b *store.Batch) error {
	var q strings.Builder
	args := make([]any, 0, 3+3*min(len(b.Readings), readingsPerInsert))
	for start := 0; start < len(b.Readings); start += readingsPerInsert {
		q.Reset()
		q.WriteString(`INSERT INTO readings (batch, device, stream, taken, fields, consent) VALUES `)
		args = append(args[:0], batch, b.Device[:], b.Stream)
		for i := start; i < min(start+readingsPerInsert, len(b.Readings)); i++ {
			r := &b.Readings[i]
			taken, err := unixNano("reading time", r.Time)
			if err != nil {
				return fmt.Errorf("reading %d: %w", i, err)
			}
			if len(r.Fields) == 0 {
				return fail(store.ErrInvalid, "reading %d has no fields", i)
			}
			if i > start {
				q.WriteString(", ")
			}
			fmt.Fprintf(&q, "($1, $2, $3, $%d, $%d, $%d)", len(args)+1, len(args)+2, len(args)+3)
			var consent any // NULL for no consent record
			if !r.Consent.IsZero() {
				consent = r.Consent[:]
			}
			args = append(args, taken, r.Fields, consent)
		}
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			return err
		}
	}
	return nil
}

// trackSequence records what a new batch tells of its epoch's sequence,
// whose highest number so far is high: a number above high+1 leaves a
// gap; one below high fills (part of) one.
func (s *Store) trackSequence(ctx context.Context, tx *sql.Tx, b *store.Batch, high, received int64) error {
	dev, epoch, seq := b.Device[:], int64(b.Key.Epoch), int64(b.Key.Seq)
	if seq > high {
		if seq > high+1 {
			if err := s.insertGap(ctx, tx, dev, epoch, high+1, seq-1, received); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `UPDATE sequences SET high = $3 WHERE device = $1 AND epoch = $2`, dev, epoch, seq)
		return err
	}
	var first, last, found int64
	err := tx.QueryRowContext(ctx, `DELETE FROM gaps WHERE device = $1 AND epoch = $2 AND first_seq <= $3 AND last_seq >= $3
		RETURNING first_seq, last_seq, found`, dev, epoch, seq).Scan(&first, &last, &found)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // a late batch that no gap was recorded for
	}
	if err != nil {
		return err
	}
	if first < seq {
		if err := s.insertGap(ctx, tx, dev, epoch, first, seq-1, found); err != nil {
			return err
		}
	}
	if seq < last {
		return s.insertGap(ctx, tx, dev, epoch, seq+1, last, found)
	}
	return nil
}

func (s *Store) insertGap(ctx context.Context, tx *sql.Tx, dev []byte, epoch, first, last, found int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO gaps (device, epoch, first_seq, last_seq, found) VALUES ($1, $2, $3, $4, $5)`,
		dev, epoch, first, last, found)
	return err
}
