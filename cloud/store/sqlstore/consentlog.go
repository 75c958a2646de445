package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"slices"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
)

// consentLog is the consent log's store in the store's database.
type consentLog struct{ s *Store }

var _ consent.LogStore = consentLog{}

// ConsentLog returns the consent log's store, in the tables
// consent_entries and consent_hashes. Append is one transaction: it
// counts the entries, then inserts the entries and the hashes with
// inserts that skip a taken index or leaf hash; when the count is not
// start or a row is skipped, it rolls back and returns an error matching
// consent.ErrLogConflict. Two nodes that append at one index at once
// both insert it; the database makes the second wait for the first, and
// skip the row once the first commits. A read of an entry or hash that is
// not stored is store.ErrNotFound.
func (s *Store) ConsentLog() consent.LogStore { return consentLog{s} }

const (
	selectLogEntryCount = `SELECT COALESCE(MAX(idx) + 1, 0) FROM consent_entries`
	selectLogHashCount  = `SELECT COALESCE(MAX(idx) + 1, 0) FROM consent_hashes`
	selectLogEntry      = `SELECT data FROM consent_entries WHERE idx = $1`
	selectLogLeaf       = `SELECT idx FROM consent_entries WHERE leaf = $1`
	selectLogHashes     = `SELECT idx, hash FROM consent_hashes WHERE idx IN `
)

// Size implements consent.LogStore.
func (l consentLog) Size(ctx context.Context) (int64, error) {
	var n int64
	err := l.s.db.QueryRowContext(ctx, selectLogEntryCount).Scan(&n)
	return n, err
}

// Append implements consent.LogStore.
func (l consentLog) Append(ctx context.Context, start int64, entries []consent.LogEntry, hashes []consent.Hash) error {
	return l.s.inTx(ctx, func(tx *sql.Tx) error {
		var size int64
		if err := tx.QueryRowContext(ctx, selectLogEntryCount).Scan(&size); err != nil {
			return err
		}
		if size != start {
			return fail(consent.ErrLogConflict, "append at %d to a log of %d entries", start, size)
		}
		rows := make([][]any, len(entries))
		for i, e := range entries {
			data := e.Data
			if data == nil {
				data = []byte{}
			}
			rows[i] = []any{start + int64(i), e.Leaf[:], data}
		}
		n, err := insertNew(ctx, tx, "consent_entries (idx, leaf, data)", rows)
		if err != nil {
			return err
		}
		if n != int64(len(rows)) {
			return fail(consent.ErrLogConflict, "an entry of the append at %d is stored already, or another append got there first", start)
		}
		var base int64
		if err := tx.QueryRowContext(ctx, selectLogHashCount).Scan(&base); err != nil {
			return err
		}
		rows = make([][]any, len(hashes))
		for i, h := range hashes {
			rows[i] = []any{base + int64(i), h[:]}
		}
		n, err = insertNew(ctx, tx, "consent_hashes (idx, hash)", rows)
		if err != nil {
			return err
		}
		if n != int64(len(rows)) {
			return fail(consent.ErrLogConflict, "another append stored hashes at %d", base)
		}
		return nil
	})
}

// ReadHashes implements consent.LogStore.
func (l consentLog) ReadHashes(ctx context.Context, indexes []int64) ([]consent.Hash, error) {
	type row struct {
		idx  int64
		hash consent.Hash
	}
	scan := func(sc scanner) (row, error) {
		var r row
		var b []byte
		if err := sc.Scan(&r.idx, &b); err != nil {
			return r, err
		}
		return r, fixed(r.hash[:], b, "consent log hash")
	}
	found := make(map[int64]consent.Hash, len(indexes))
	for chunk := range slices.Chunk(indexes, maxBatch) {
		args := make([]any, len(chunk))
		for i, x := range chunk {
			args[i] = x
		}
		rows, err := collect(ctx, l.s.db, scan, selectLogHashes+placeholders(1, len(args)), args...)
		if err != nil {
			return nil, err
		}
		for _, r := range rows {
			found[r.idx] = r.hash
		}
	}
	out := make([]consent.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := found[x]
		if !ok {
			return nil, fail(store.ErrNotFound, "no consent log hash %d", x)
		}
		out[i] = h
	}
	return out, nil
}

// Entry implements consent.LogStore.
func (l consentLog) Entry(ctx context.Context, n int64) ([]byte, error) {
	var data []byte
	if err := l.s.db.QueryRowContext(ctx, selectLogEntry, n).Scan(&data); err != nil {
		return nil, noRows(err, "no consent log entry %d", n)
	}
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

// Find implements consent.LogStore.
func (l consentLog) Find(ctx context.Context, leaf consent.Hash) (int64, bool, error) {
	var n int64
	err := l.s.db.QueryRowContext(ctx, selectLogLeaf, leaf[:]).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	return n, err == nil, err
}
