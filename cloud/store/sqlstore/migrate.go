package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// migrationFiles holds the schema's versions: migrations/NNNN_name.sql
// brings the schema from version NNNN-1 to NNNN.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// A migration is one step of the schema.
type migration struct {
	version int64
	name    string
	sql     string
}

// migrations returns the steps in order, checking that they are numbered
// 1, 2, 3 and so on.
func migrations() ([]migration, error) {
	entries, err := migrationFiles.ReadDir("migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || v != int64(len(ms)+1) {
			return nil, fmt.Errorf("sqlstore: migration %s is out of sequence", e.Name())
		}
		data, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(data)})
	}
	return ms, nil
}

// SchemaVersion returns the version of the schema this package writes:
// the number of its migrations.
func SchemaVersion() int64 {
	ms, err := migrations()
	if err != nil {
		return 0
	}
	return int64(len(ms))
}

// expand fills the dialect's types into a migration.
func (d *Dialect) expand(sql string) (string, error) {
	out := strings.NewReplacer("{{bytes}}", d.Bytes, "{{serial}}", d.Serial).Replace(sql)
	if strings.Contains(out, "{{") {
		return "", fmt.Errorf("sqlstore: a migration names a type the dialect does not fill in")
	}
	return out, nil
}

// migrate brings the schema up to date in one transaction: it applies
// every migration newer than the newest recorded in schema_version, and
// records each. It refuses a database whose schema is newer than this
// package's.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if s.d.LockSchema != "" {
			if _, err := tx.ExecContext(ctx, s.d.LockSchema); err != nil {
				return fmt.Errorf("sqlstore: locking the schema: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
			version BIGINT PRIMARY KEY,
			applied BIGINT NOT NULL
		)`); err != nil {
			return err
		}
		var current int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&current); err != nil {
			return err
		}
		if current > int64(len(ms)) {
			return fmt.Errorf("sqlstore: the %s database has schema version %d, newer than this program's %d", s.d.Name, current, len(ms))
		}
		for _, m := range ms[current:] {
			stmts, err := s.d.expand(m.sql)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, stmts); err != nil {
				return fmt.Errorf("sqlstore: migration %s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version, applied) VALUES ($1, $2)`, m.version, time.Now().UnixNano()); err != nil {
				return err
			}
		}
		return nil
	})
}
