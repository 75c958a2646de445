// Package sqlstore is the one implementation of store.Store, over
// database/sql. Open it through cloud/store/sqlite or
// cloud/store/postgres, which fill in a [Dialect] for their database;
// every query is written once, here, in SQL that both databases run
// ($1 placeholders, INSERT ... ON CONFLICT, RETURNING).
//
// # Schema
//
// The schema's versions are migrations embedded in the binary
// (migrations/NNNN_name.sql). [Open] applies those the database lacks, in
// one transaction, and records each in the schema_version table; it
// refuses a database whose schema is newer than the program's. Nodes that
// open one PostgreSQL database at once take an advisory lock first
// (Dialect.LockSchema), so one migrates and the others find it done.
//
// The consent log is two tables: consent_entries (index, unique leaf
// hash, data) and consent_hashes (index, hash). The replay cache is one,
// replays, keyed by device and token ID, with the time each token may be
// forgotten.
//
// Times are int64 Unix nanoseconds, so that both databases keep them
// exactly; IDs, hashes and documents are byte strings; NULL stands for
// "none" (no expiry, no consent record, not delivered).
//
// # Transactions
//
// Operations that read before they write lock what they read: an upsert
// or update that changes nothing locks a row and returns it in one
// statement, in both databases. StoreBatches stores its batches in the
// order of device, epoch and sequence number, so that transactions lock
// in one order, and rolls a failing batch back to a savepoint, leaving
// the others. A transaction that fails with an error the dialect calls
// retryable (a deadlock, a serialization failure) is run again, up to
// five times.
//
// Inserts that must not overwrite do nothing on a conflict, and the
// number of rows they changed says what happened: the consent log's
// Append and the replay cache's Seen learn that way, in both databases,
// that another writer got there first, without relying on how each
// database reports a violated key. In PostgreSQL such an insert waits
// for a concurrent transaction that holds the key, so of two nodes that
// race, one inserts and the other finds the row.
//
// # Notifications
//
// The store's Notifier is the dialect's (PostgreSQL's LISTEN and NOTIFY),
// or else a store.LocalNotifier of the store's own. Close closes it
// before the database.
package sqlstore
