package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sensible-iot/sensible/cloud/store"
)

// A Dialect holds the few things in which the databases differ. The
// constructors in cloud/store/sqlite and cloud/store/postgres fill it in;
// everything else, every query included, is the same for both.
type Dialect struct {
	// Name names the database in errors, e.g. "sqlite".
	Name string
	// Bytes is the column type of byte strings: BLOB, BYTEA.
	Bytes string
	// Serial defines an auto-numbered int64 primary key column whose
	// numbers are never reused, even after rows are deleted.
	Serial string
	// LockSchema, when not empty, is run first in the transaction that
	// migrates the schema, so that nodes opening one database at once
	// migrate it one after the other.
	LockSchema string
	// IsForeignKeyViolation reports whether err says that a row names
	// one that does not exist.
	IsForeignKeyViolation func(err error) bool
	// IsRetryable reports whether a transaction that failed with err may
	// succeed when run again: a deadlock, a serialization failure. Nil
	// means never.
	IsRetryable func(err error) bool
	// Notifier carries change notifications between the nodes that share
	// the database; the store closes it when it closes. Nil means the
	// nodes are one process, and the store's notifier is a
	// store.LocalNotifier of its own.
	Notifier interface {
		store.Notifier
		io.Closer
	}
}

// A Store is a store.Store over a SQL database. Its methods are safe for
// concurrent use.
type Store struct {
	db       *sql.DB
	d        Dialect
	notifier interface {
		store.Notifier
		io.Closer
	}
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// maxTries bounds how often a transaction is run when it fails with an
// error the dialect calls retryable.
const maxTries = 5

// Open returns a store over db, first bringing db's schema up to date
// (see the package documentation). The store owns db and d.Notifier:
// Close closes them, and so does Open when it fails.
func Open(ctx context.Context, db *sql.DB, d Dialect) (*Store, error) {
	s := &Store{db: db, d: d, notifier: d.Notifier}
	if s.notifier == nil {
		s.notifier = new(store.LocalNotifier)
	}
	if d.Bytes == "" || d.Serial == "" || d.IsForeignKeyViolation == nil {
		s.Close()
		return nil, errors.New("sqlstore: incomplete dialect")
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the notifier, ending its subscriptions, and then the
// database. It is safe to call more than once; later calls return what
// the first returned.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = errors.Join(s.notifier.Close(), s.db.Close()) })
	return s.closeErr
}

// Notifier returns the store's notifier: the dialect's, or a
// store.LocalNotifier when the dialect has none.
func (s *Store) Notifier() store.Notifier { return s.notifier }

// DB returns the database, for tools and tests that look at it directly.
// Writing through it bypasses every check the store makes.
func (s *Store) DB() *sql.DB { return s.db }

// inTx runs fn in a transaction and commits it, running it again (up to
// maxTries in all) when it fails with an error the dialect calls
// retryable. fn must not keep state across runs.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	for try := 1; ; try++ {
		err := s.txOnce(ctx, fn)
		if err == nil || try == maxTries || s.d.IsRetryable == nil || !s.d.IsRetryable(err) || ctx.Err() != nil {
			return err
		}
	}
}

func (s *Store) txOnce(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// insertOnce runs an INSERT ... ON CONFLICT DO NOTHING and maps what it
// did to the store's errors: no row inserted is ErrConflict, a missing
// referenced row ErrNotFound (missing names it).
func (s *Store) insertOnce(ctx context.Context, what, missing, query string, args ...any) error {
	res, err := s.db.ExecContext(ctx, query, args...)
	if err != nil {
		if s.d.IsForeignKeyViolation(err) {
			return fail(store.ErrNotFound, "%s", missing)
		}
		return err
	}
	return mustAffect(res, store.ErrConflict, "%s exists already", what)
}

// mustAffect returns nil if res changed a row, and otherwise an error
// matching sentinel.
func mustAffect(res sql.Result, sentinel error, format string, args ...any) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fail(sentinel, format, args...)
	}
	return nil
}

// fail returns an error matching sentinel, saying more.
func fail(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}

// noRows maps sql.ErrNoRows to ErrNotFound, naming what was missing.
func noRows(err error, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fail(store.ErrNotFound, format, args...)
	}
	return err
}

// checkText refuses text that cannot be stored the same way everywhere:
// invalid UTF-8, NUL bytes, and (when required) the empty string.
func checkText(what, s string, required bool) error {
	switch {
	case required && s == "":
		return fail(store.ErrInvalid, "no %s", what)
	case !utf8.ValidString(s):
		return fail(store.ErrInvalid, "%s is not valid UTF-8", what)
	case strings.IndexByte(s, 0) >= 0:
		return fail(store.ErrInvalid, "%s holds a NUL byte", what)
	}
	return nil
}

// checkDocument refuses a document over MaxDocument; required refuses an
// empty one.
func checkDocument(what string, doc []byte, required bool) error {
	if required && len(doc) == 0 {
		return fail(store.ErrInvalid, "no %s", what)
	}
	if len(doc) > store.MaxDocument {
		return &store.TooLargeError{What: what, Size: len(doc), Limit: store.MaxDocument}
	}
	return nil
}

// checkID refuses a zero ID.
func checkID(what string, zero bool) error {
	if zero {
		return fail(store.ErrInvalid, "zero %s", what)
	}
	return nil
}

// The range of times kept, as int64 Unix nanoseconds.
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// unixNano returns t as it is kept, refusing a zero time and one out of
// range.
func unixNano(what string, t time.Time) (int64, error) {
	if t.IsZero() {
		return 0, fail(store.ErrInvalid, "no %s", what)
	}
	if t.Before(minTime) || t.After(maxTime) {
		return 0, fail(store.ErrInvalid, "%s %v is out of range", what, t)
	}
	return t.UnixNano(), nil
}

// optUnixNano is unixNano for an optional time: zero is NULL.
func optUnixNano(what string, t time.Time) (sql.NullInt64, error) {
	if t.IsZero() {
		return sql.NullInt64{}, nil
	}
	n, err := unixNano(what, t)
	return sql.NullInt64{Int64: n, Valid: true}, err
}

// timeOf returns a kept time.
func timeOf(n int64) time.Time { return time.Unix(0, n).UTC() }

// optTimeOf returns a kept optional time: NULL is zero.
func optTimeOf(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return timeOf(n.Int64)
}

// nullBytes returns b as a parameter: NULL when empty.
func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// fixed copies a kept byte string into an array of its size, refusing
// one of another size.
func fixed(dst, src []byte, what string) error {
	if len(src) != len(dst) {
		return fmt.Errorf("sqlstore: stored %s has %d bytes, want %d", what, len(src), len(dst))
	}
	copy(dst, src)
	return nil
}

// optFixed is fixed for a column that may be NULL, which leaves dst zero.
func optFixed(dst, src []byte, what string) error {
	if src == nil {
		clear(dst)
		return nil
	}
	return fixed(dst, src, what)
}

// limit returns the number of rows a List call asks for.
func limit(n int) int {
	if n <= 0 || n > store.MaxList {
		return store.MaxList
	}
	return n
}

// scanner is what *sql.Row and *sql.Rows have in common.
type scanner interface {
	Scan(dest ...any) error
}

// collect runs a query and scans each row with scan.
func collect[T any](ctx context.Context, db *sql.DB, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// maxBatch bounds the rows one statement inserts, or looks up by key,
// keeping its parameters far below either database's limit.
const maxBatch = 256

// insertNew inserts rows into a table (into names it and its columns,
// e.g. "t (a, b)") with INSERTs of up to maxBatch rows that skip a row
// whose key is taken, and returns how many rows it inserted.
func insertNew(ctx context.Context, tx *sql.Tx, into string, rows [][]any) (int64, error) {
	var total int64
	for chunk := range slices.Chunk(rows, maxBatch) {
		var q strings.Builder
		q.WriteString("INSERT INTO " + into + " VALUES ")
		var args []any
		for i, r := range chunk {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString(placeholders(len(args)+1, len(r)))
			args = append(args, r...)
		}
		q.WriteString(" ON CONFLICT DO NOTHING")
		res, err := tx.ExecContext(ctx, q.String(), args...)
		if err != nil {
			return total, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// placeholders returns a parenthesized list of n parameters numbered
// from first: "($1, $2, $3)".
func placeholders(first, n int) string {
	b := []byte{'('}
	for i := range n {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(first+i), 10)
	}
	return string(append(b, ')'))
}
