// Package device is the device side of Sensible: the agent that product
// code calls to report data. One call, [Agent.Record], gets the rest
// right: the maker's signed manifest decides what may leave the device and
// in what form, the owner's consent decides whether it may leave now, a
// durable outbox keeps it through power cuts and cloud outages, and the
// cloud gets it exactly once. Package
// [github.com/sensible-iot/sensible/device/identity] gives the device its
// key, ID and certificates.
//
// # Recording
//
// [New] opens the agent with a [Config]: the outbox's directory, the
// manifest as the maker signed it (checked with policy.OpenSigned against
// the maker's keys from the firmware), the device's key or ID and secret,
// its owner, the keys trusted to sign consent, and how to reach the cloud.
// Record then runs, for each reading:
//
//  1. The manifest (policy.Enforcer, deny by default): fields it does not
//     declare are left out, the others transformed (rounded, coarsened,
//     pseudonymized with a key derived from the device's secret). A
//     stream the manifest does not declare, or a value of the wrong type,
//     is refused ([ErrManifest]). A stream with no destinations is
//     device-only: Record takes the reading and nothing of it enters the
//     outbox ([Health].LocalOnly).
//  2. Consent: for each destination of the stream, the stream's consent
//     purpose, and for a partner the partner's purpose with the partner as
//     recipient, must be covered for every data category of the reading,
//     at the reading's time, by a record of the owner's the agent holds
//     (see Consent below); a stream whose legal basis is contract needs
//     none. The agent decides exactly as the cloud will (the cloud refuses
//     what consent does not cover, and counts it against the device), so
//     a reading no destination may take is refused ([ErrNoConsent]), and
//     a destination refused while another is allowed is counted
//     ([DropNoConsent]).
//  3. The outbox: the reading, sealed, is written once for each allowed
//     destination, and Record returns once that is synced to disk. It does
//     not touch the network.
//
// Refusals are *[RefusedError] values, which carry the policy.Violation or
// the consent.Decision.
//
// # The outbox
//
// The outbox is a bbolt file ([OutboxFile]) in Config.Dir. Readings wait in
// one queue per stream, manifest and destination, oldest first.
//
// Group commit: the calls to Record that arrive while a commit is being
// synced are written together in the next one, one transaction and one
// sync for all of them, and each returns once its own write is durable.
// [Health].Commits counts the commits.
//
// Bounds: Config.MaxReadings and Config.MaxBytes (by default
// [DefaultMaxReadings] and [DefaultMaxBytes]) bound what the outbox holds.
// When a reading does not fit, readings are dropped to make room: those of
// the lowest priority (Config.Priorities) first, the oldest first within a
// priority, but never one of a higher priority than the new reading's, and
// never one already in a formed batch. When nothing of the new reading's
// priority or lower is left to drop, the new reading is refused
// ([ErrOutboxFull]). Either way the drop is counted ([DropEvicted],
// [DropOutboxFull]) and logged: never silent.
//
// Encryption at rest: everything the outbox keeps but its version, epoch
// and next sequence number is sealed with XChaCha20-Poly1305 under a key
// derived with HKDF-SHA256 from the device's secret (Config.Secret, or
// the private key of a software Config.Key), with a random nonce per
// record; the associated data names the record's kind, the outbox's epoch,
// its bucket and key, so a record copied to another place, or from another
// outbox, does not open. Keys are counters. A dump of the flash shows no
// reading, no stream name, no consent record.
//
// Idempotency (docs/protocol.md 6.2): the outbox draws its epoch, a random
// non-zero 64-bit number, when it is created, and a new one whenever it is
// lost. Delivery forms a batch from a queue's oldest readings and writes
// it, with the next sequence number, in the same transaction that takes
// the readings out of the queue, before it is first sent: a batch keeps its
// key and its exact bytes across restarts, and a retransmission sends the
// same bytes.
//
// # Consent
//
// The agent decides with the owner's consent records (Config.Owner), each
// a COSE_Sign1 message (package consent) that it verifies against the
// keys it trusts and adds to a consent.History, which refuses what its
// signer may not record: only the owner's app or device grants and
// withdraws, only the controller revokes. The records reach it two ways:
//
//   - [Agent.AddConsent] takes one record, from wherever the product gets
//     it (a companion app over Bluetooth, say), that verifies against the
//     keys the device trusts by itself: its own key (key ID: its device
//     ID, the device key of its owner), Config.ConsentKeys, and the
//     maker's keys (Config.Makers).
//   - A started agent observes /v1/consent (docs/protocol.md 4.7) and adds
//     each list the cloud notifies ([Agent.AddConsents]): its records may
//     also be signed by the app keys the list carries, but only app keys
//     (role consent.SubjectKey) of the device's owner; the list's other
//     keys are ignored. A record with a bad signature, an unknown key, or
//     another subject's is refused and logged, never kept. A list too
//     large for a notification is fetched with a GET.
//   - [Agent.GiveConsent] records consent the owner gave on the device
//     itself, naming this device alone: the agent signs it with the
//     device's key (key ID: the device ID), keeps it, and posts it to
//     /v1/consent (content-format 18), keeping the cloud's receipt
//     ([Agent.Receipt]). Offline it waits in the outbox, and delivery
//     posts it before the next telemetry batch, which may need it
//     ([Health].ConsentUnposted).
//
// The outbox keeps every record added, with the role and subject of the
// key that signed it, so that it counts after a restart, offline too, as
// it was accepted: a record stands even once its key is no longer
// trusted, as in the cloud.
//
// A withdrawal takes effect at once. When a record arrives that
// withdraws or revokes consent (or refuses it, or records its expiry),
// the same transaction that keeps it deletes every reading waiting in
// the outbox, queued or in a batch not yet acknowledged, that needed a
// purpose the record names (for a partner, with the partner among its
// recipients) and that the owner's records no longer cover now, for
// every data category of its stream; they are counted as dropped
// ([DropWithdrawn]) and logged. A batch of them on its way to the cloud
// is stopped: its request may have left already, but nothing of it is
// sent after the record is kept, and nothing else is sent before. Record
// then refuses such readings ([ErrNoConsent]), even those whose time, as
// the manifest shaped it, is before the withdrawal.
//
// # Delivery
//
// [Agent.Start] starts a goroutine that dials Config.URL with the
// device's credentials (a DTLS pre-shared key, a token signer or a
// certificate, in Config.Transport), on one connection shared with the
// observation of /v1/consent, and posts the batches to
// /v1/telemetry one at a time, in sequence order, so that each stream's
// readings reach the cloud in the order recorded. A batch leaves the
// outbox only when the cloud acknowledges its key (2.04), or when the cloud
// refuses it for good: 4.00, 4.03, 4.13, 4.15, each dropped and counted
// by reason ([DropBadRequest], [DropForbidden], [DropTooLarge],
// [DropUnsupported]). A 4.00 saying the cloud does not hold the batch's
// manifest ([DropUnknownManifest]) is dropped too, since its readings
// were shaped by that manifest, and the agent fetches the one the cloud
// serves (see Manifest updates). Anything else (no connection, a timeout, 4.01,
// 4.29, 5.xx) is retried with the same bytes, after a wait that doubles
// from Config.RetryBase to Config.RetryMax with jitter, and at least the
// Max-Age the cloud asked for. Delivery paces itself to Config.SendRate
// requests a second, counting each 1 KiB block of a batch sent block-wise
// over UDP or DTLS as the cloud's rate limit counts it, so that a backlog
// drains steadily rather than in bursts the cloud refuses; readings
// recorded meanwhile join the next batch. [Agent.Close] stops delivery and
// closes the outbox; [Agent.Drain] waits until it is empty.
//
// # Manifest updates
//
// A started agent fetches the manifest of its model from the cloud
// (/v1/manifest, docs/protocol.md 4.3) when it starts, every
// Config.ManifestInterval, and when the cloud answers a batch with 4.00
// unknown manifest; [Agent.FetchManifest] fetches it at once. A manifest
// other than the one it runs must be signed by the maker
// (policy.OpenSigned with Config.Makers, the keys from the firmware) and
// be for the same product; then the agent switches to it at once:
// Record shapes every later reading with it, and their batches name its
// hash, while the readings already in the outbox keep the manifest that
// shaped them, which the cloud still accepts. A manifest that does not
// verify is refused ([ErrManifestRefused]) and logged at the error level,
// and the agent keeps the one it runs.
//
// # Health
//
// [Agent.Health] returns the queue's depth and size, the age of its oldest
// reading, the drops by reason, the readings delivered and when the last
// batch was, and why the last attempt failed. A started agent logs it
// through Config.Logger every Config.HealthInterval; drops are logged as
// they happen.
//
// # Bad local state
//
// A damaged outbox file (not a bbolt file, a page that fails bbolt's
// consistency check, metadata that does not decrypt with the device's
// secret) makes New fail with an *[OutboxError] matching
// [ErrOutboxCorrupt]. The recovery is [SetAside], which renames the file
// and lets the next New start a new outbox with a new epoch; with
// Config.SetAsideCorrupt New does that itself, logging it as an error. The
// readings in the damaged file are lost; a single reading or batch that
// does not decrypt is dropped when its turn comes ([DropUnreadable]), not
// the whole outbox.
//
// A full disk makes Record fail with an *[OutboxError] matching
// [ErrDiskFull]: the reading at hand is not recorded, and what was recorded
// before stays, since bbolt writes a transaction's pages elsewhere before
// it switches to them.
//
// # Caveats
//
// Streams that the manifest aggregates over time windows are refused with
// policy.ErrAggregated for now, and the agent does not yet enroll, or
// sync state and commands.
//
// A fetched manifest is not kept across a restart: the agent runs
// Config.Manifest again until its first fetch, which transfers the whole
// manifest (block-wise over UDP and DTLS); later fetches name its ETag and
// the cloud answers 2.03 without it while it is current.
//
// Consent is decided at the reading's time as the manifest shaped it, as
// the cloud decides it, and at the time it is recorded: a reading whose
// timestamp is coarsened to the hour is covered only by consent given
// before that hour began and not ended since.
//
// The order of readings recorded by concurrent calls is the order their
// writes reach the committer; readings recorded one after another by one
// goroutine reach the cloud in that order.
package device
