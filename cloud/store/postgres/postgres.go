// Package postgres opens the cloud's store in a PostgreSQL database, for
// several cloud nodes that share their state. It uses pgx
// (github.com/jackc/pgx/v5) through its database/sql driver.
//
// Every node opens the same database with Open. The first to open an
// empty or older database migrates it, under a transaction-scoped
// advisory lock, while the others wait and then find it done.
// Transactions run at READ COMMITTED and lock the rows they read before
// writing; one that deadlocks or fails to serialize is run again.
//
// # Notifications
//
// The store's Notifier sends with pg_notify on one channel,
// "sensible_store", that carries every topic: a notification is its
// topic, a space, and its payload in base64, well within NOTIFY's limit
// of 8,000 bytes. The first Listen on a node starts its listener, a
// goroutine with a connection of its own (beyond Config.MaxConns) that
// LISTENs on the channel and delivers what arrives to the node's
// subscriptions; Listen returns once it listens. Every 30 seconds
// without a notification the listener checks its connection. When the
// connection fails, the listener connects again, waiting from 50
// milliseconds up to 10 seconds, doubling with each failure in a row,
// and once it listens again it has every subscription resync, since
// notifications sent in between are lost. Its failures go to
// Config.Logger. Closing the store stops the listener and waits for it.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sensible-iot/sensible/cloud/store/sqlstore"
)

// schemaLock is the advisory lock key under which the schema is migrated:
// "sensible" in ASCII.
const schemaLock = 0x73656e7369626c65

// DefaultMaxIdleConns is Config.MaxIdleConns' default.
const DefaultMaxIdleConns = 16

// Config configures a store. The zero value is ready to use.
type Config struct {
	// MaxConns bounds the node's open connections; zero means no bound
	// but the server's. The notifier's listener, once started, has one
	// connection more.
	MaxConns int
	// MaxIdleConns is how many open connections the node keeps for the
	// next requests; zero means DefaultMaxIdleConns. database/sql keeps
	// two by default, so under load most requests would open a new
	// connection, the most expensive thing PostgreSQL does.
	MaxIdleConns int
	// Logger receives the failures of the notifier's listener, which
	// happen apart from any call; nil discards them.
	Logger *slog.Logger
}

// Open opens the store in the database that url names, a PostgreSQL
// connection URL or key=value string as libpq takes it (e.g.
// "postgres://cloud@db.internal/sensible?sslmode=verify-full"), and
// brings the schema up to date.
func Open(ctx context.Context, url string, cfg Config) (*sqlstore.Store, error) {
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	db := stdlib.OpenDB(*cc)
	db.SetMaxOpenConns(cfg.MaxConns)
	idle := cfg.MaxIdleConns
	if idle == 0 {
		idle = DefaultMaxIdleConns
	}
	if cfg.MaxConns > 0 && idle > cfg.MaxConns {
		idle = cfg.MaxConns
	}
	db.SetMaxIdleConns(idle)
	return sqlstore.Open(ctx, db, sqlstore.Dialect{
		Notifier:              newNotifier(db, cc.Copy(), cfg.Logger),
		Name:                  "postgres",
		Bytes:                 "BYTEA",
		Serial:                "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
		LockSchema:            fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", schemaLock),
		IsForeignKeyViolation: hasCode("23503"),
		IsRetryable:           hasCode("40001", "40P01"),
	})
}

// hasCode returns a function that reports whether an error is a
// PostgreSQL error with one of the SQLSTATE codes.
func hasCode(codes ...string) func(error) bool {
	return func(err error) bool {
		var e *pgconn.PgError
		return errors.As(err, &e) && slices.Contains(codes, e.Code)
	}
}
