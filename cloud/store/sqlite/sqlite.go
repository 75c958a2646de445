// Package sqlite opens the cloud's store in a SQLite database: one file
// in a directory, for a cloud that runs as one process. It uses
// modernc.org/sqlite, SQLite translated to Go, so it needs no C compiler.
//
// # Durability
//
// The database runs in WAL mode with synchronous=FULL: every commit
// syncs the log to disk before it returns. With synchronous=NORMAL a
// WAL database cannot be corrupted either, but the last commits before a
// power cut may be lost, and a telemetry batch whose commit was
// acknowledged has been deleted from its device's outbox: it would be
// gone for good. One sync per transaction is what StoreBatches' group
// commit spreads over many batches.
//
// Write transactions begin IMMEDIATE, taking the write lock at once, so
// a transaction never has to give up halfway for another writer; a
// writer waits for the lock up to Config.BusyTimeout. Readers never wait
// for writers. Foreign keys are enforced.
//
// The store's Notifier is a store.LocalNotifier: notifications reach the
// subscriptions of the same store, in memory.
//
// # Caveats
//
// One process only: SQLite's locks work between processes on one
// machine, but the cloud's nodes share their state through a database
// server (cloud/store/postgres). Keep the directory on a local disk, not
// a network file system, where WAL does not work. Two stores opened on
// one directory share what is kept, but not notifications: open one.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/sensible-iot/sensible/cloud/store/sqlstore"
)

// FileName is the name of the database file in the store's directory.
// SQLite keeps two more files beside it while it is open: FileName with
// "-wal" and "-shm" appended.
const FileName = "sensible.db"

// Config configures a store. The zero value is ready to use.
type Config struct {
	// BusyTimeout is how long a write waits for another writer to
	// finish before it fails; zero means 10 seconds.
	BusyTimeout time.Duration
}

// Open opens the store in directory dir, making the directory (mode
// 0700) and the database if they do not exist, and bringing the schema
// up to date.
func Open(ctx context.Context, dir string, cfg Config) (*sqlstore.Store, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	busy := cfg.BusyTimeout
	if busy <= 0 {
		busy = 10 * time.Second
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	dsn := (&url.URL{Scheme: "file", OmitHost: true, Path: filepath.Join(dir, FileName), RawQuery: q.Encode()}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return sqlstore.Open(ctx, db, sqlstore.Dialect{
		Name:                  "sqlite",
		Bytes:                 "BLOB",
		Serial:                "INTEGER PRIMARY KEY AUTOINCREMENT",
		IsForeignKeyViolation: isForeignKeyViolation,
	})
}

func isForeignKeyViolation(err error) bool {
	var e *sqlite.Error
	return errors.As(err, &e) && e.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
}
