// Package store defines what the cloud keeps and how it asks for it: the
// device registry (models, signed manifests, devices, the app keys that
// sign consent), telemetry batches and their readings, incidents, device
// state, commands and claims.
//
// # Interfaces
//
// Each interface is small and named after what it keeps: [Models],
// [Manifests], [Devices], [AppKeys], [Ingest], [Readings], [Incidents],
// [States], [Commands], [Claims], [Consent] (the consent log's
// consent.LogStore) and [Replays] (the device tokens accepted, as an
// identity.ReplayCache). A part of the cloud asks for the one it uses.
// [Store] is all of them with a [Notifier] and Close: what an
// implementation provides.
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
// [ErrTooLarge] (a [*TooLargeError]), [ErrInvalid] or [ErrClosed] with
// errors.Is; other errors are failures of the database or of ctx. The
// consent log's store refuses an append with consent.ErrLogConflict, and
// a replay cache a device's token with identity.ErrReplayCacheFull (a
// [*TokenLimitError]), as their interfaces say.
//
// # Time
//
// A store never reads the clock: every time it stores or compares with
// is an argument (Batch.Received, the now of DeliverableCommands and
// ExpireCommands, the cutoff of a Retention), but for a replay cache,
// which asks [ReplayConfig].Now because identity.ReplayCache.Seen is not
// given the time. Times are kept to the
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
//
// # Several nodes
//
// Nodes that share one database share everything kept in it. Each node
// opens a consent.Log over its store's [Consent.ConsentLog]: the log's
// size is the database's, and appends are compare-and-append, so the
// nodes' Logs append to one log. Each node gives its
// identity.TokenVerifier a [Replays.ReplayCache], so that a token
// accepted on one node is refused on the others; a device has at most
// [ReplayConfig].MaxLiveTokens unexpired tokens remembered.
//
// # Notifications
//
// A [Notifier] tells the nodes of changes: [Notifier.Notify] sends a
// small payload (what changed, not the change) on a topic, and every
// [Subscription] to the topic, on any node, receives it from
// [Subscription.Next]. Delivery never waits for a reader: a subscription
// holds up to [SubscriptionBuffer] notifications, and one that overflows,
// or whose node may have missed notifications (its connection to the
// database failed), delivers a resync ([Notification].Resync), after
// which its reader re-reads what its topics cover. Notify is not part of
// any transaction: send it after the change commits. On PostgreSQL the
// notifications travel through LISTEN and NOTIFY; on SQLite, where the
// cloud is one process, a [LocalNotifier] delivers them in memory.
package store
