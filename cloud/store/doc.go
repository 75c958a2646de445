// Package store defines what the cloud keeps and how it asks for it: the
// device registry (models, signed manifests, devices, the app keys that
// sign consent), telemetry batches and their readings, incidents, device
// state, commands and claims.
//
// # Interfaces
//
// Each interface is small and named after what it keeps: [Models],
// [Manifests], [Devices], [AppKeys], [Ingest], [Readings], [Incidents],
// [States], [Commands], [Claims]. A part of the cloud asks for the one it
// uses. [Store] is all of them with Close: what an implementation
// provides.
//
// Two implementations share one SQL implementation
// (cloud/store/sqlstore): cloud/store/sqlite, one file, for a cloud that
// runs as one process (the default), and cloud/store/postgres, for
// several cloud nodes sharing one PostgreSQL database. Both pass the
// conformance suite in cloud/store/storetest.
//
// # Errors
//
// Every error an implementation returns for a request it refuses matches
// one of [ErrNotFound], [ErrConflict], [ErrStale] (a [*StaleError]),
// [ErrTooLarge] (a [*TooLargeError]) or [ErrInvalid] with errors.Is;
// other errors are failures of the database or of ctx.
//
// # Time
//
// A store never reads the clock: every time it stores or compares with
// is an argument (Batch.Received, the now of DeliverableCommands and
// ExpireCommands, the cutoff of a Retention). Times are kept to the
// nanosecond, as Unix time, and come back in UTC; a time outside the
// years 1678 to 2262, or a zero time where one is required, is
// ErrInvalid.
//
// # Text
//
// Text (names, subjects, reasons, streams) is kept exactly as given, but
// must be valid UTF-8 without NUL bytes, which PostgreSQL cannot keep in
// text: anything else is ErrInvalid in every implementation. Byte fields
// (keys, documents, readings, key IDs) take any bytes.
//
// # Idempotent ingest
//
// A telemetry batch is named by its device and its idempotency key
// (protocol.Key: the outbox epoch and a sequence number). [Ingest]
// stores a batch once: the same batch again reports Duplicate with the
// first batch's ID and count, and the same key with another digest is
// ErrConflict. A batch is stored whole or not at all. Sequence numbers a
// batch skips are kept as gaps ([Gap]) until later batches fill them. A
// device numbers the batches of its whole outbox, all streams together,
// so gaps are kept per device and epoch.
//
// # Claim codes
//
// A [Claim] keeps only [ClaimCodeHash] of a device's claim code, a plain
// SHA-256 with a domain prefix: the code is random and long, so a keyed
// or slow hash would buy nothing. The store counts attempts per device and
// per claimant in fixed windows; comparing codes, in constant time, and
// deciding how many attempts are too many is the caller's.
package store
