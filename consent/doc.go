// Package consent holds signed consent records: what a customer agreed to
// (or declined, or withdrew), signed where it was captured, so that
// anyone with the right public key can check it and device and cloud can
// obey it.
//
// # Records
//
// A [Record] follows ISO/IEC TS 27560 and the W3C Data Privacy Vocabulary:
// a pseudonymous subject, the controller, the notice shown (id, version,
// language, SHA-256 of its text), one or more processes (purpose, data
// categories, recipients, legal basis, retention, storage, how to
// withdraw, jurisdiction), the devices covered, and the event (time,
// expiry, actor, state). It is encoded as deterministic CBOR with integer
// keys and signed as a COSE_Sign1 message (RFC 9052) by [Sign], with ES256
// or EdDSA and the key ID in the protected header. Records are never
// edited: a withdrawal, renewal or revocation is a new record that names,
// in Ends, the record it ends.
//
// # Verification
//
// [Verify] checks a message against the keys trusted to sign records (the
// subject's app keys, device keys, the controller's keys), which it finds
// through [Keys] by the key ID in the message's header: [KeySet] keeps them
// in memory, and the cloud's registry serves them from its store. The
// message is parsed with a strict, bounded decoder first (integer header
// labels, no critical headers, a key ID, an alg that agrees with the one
// the key's type pins); go-cose then checks the signature. Any COSE
// implementation can verify our records (tests use go-cose's own verifier
// and the cose-wg examples). Every failure matches a sentinel:
// [ErrMalformed], [ErrWrongTag], [ErrUnknownKey], [ErrAlgorithm],
// [ErrBadSignature]; [Record.ValidAt] adds [ErrExpired] and
// [ErrNotYetValid], and [Notice.CheckText] [ErrNoticeHash].
//
// # Decisions
//
// A [History] holds one subject's verified events, refusing those its
// signer may not record (only the subject's app or device grants and
// withdraws; only the controller revokes). [History.Decide] answers a
// [Query] (purpose, data category, recipient, device, time) with a
// [Decision] naming the deciding record and the reason: the latest
// covering choice wins, withdrawal and revocation take effect from their
// time, expiry is honoured, and a record covers only what it lists. The
// controller's [Notices] register marks notice versions that need
// consent again. [Grant] and [Withdraw] build events in the same steps.
// Events are in a [State] (StateGiven, StateWithdrawn, ...); decisions give
// a [Reason] (ReasonGranted, ReasonWithdrawn, ...). A record is identified
// by its ID: the same bytes again are a retry and change nothing, other
// bytes under a known ID are [ErrRecordConflict].
//
// # The consent log
//
// A [Log] is an append-only Merkle log of accepted events (RFC 6962 and
// RFC 9162 hashing) kept in a [LogStore]. [Log.Append] returns a
// [Receipt] that [VerifyReceipt] checks with only the log's public key;
// checkpoints are signed notes (C2SP tlog-checkpoint), [VerifyConsistency]
// proves the log only grew, and a [Monitor] refuses one that shrank. Every
// tree extends the empty tree, with an empty proof. Hashes in checkpoints,
// proofs and stores are [Hash] values.
//
// [History.Export] gives a subject's whole history, as CBOR or JSON: every
// event's exact signed bytes with its own receipt (SetReceipt accepts only
// a receipt that proves those bytes), the log's origin, public key and
// newest checkpoint, a consistency proof from each receipt's checkpoint to
// the newest, and the signers' public keys. [VerifyExport] checks all of it
// with the log's public key alone, including that every receipt came from
// one history of the log, so a log that showed the subject one history and
// an auditor another is caught.
//
// The store, not the Log, knows the log's size, so several Logs, in one
// process or on several cloud nodes, may append to one store.
// [LogStore.Append] is a compare-and-append at an expected index that
// fails with [ErrLogConflict] when another writer got there first or the
// entry is already stored; the Log then re-reads the store and retries.
// Appending a record the log holds already returns a receipt for the one
// stored, so an Append that failed (a checkpoint that could not be
// signed, a dropped connection) can be retried without losing or
// doubling the entry. Appends that arrive together are committed together:
// one store append and one signed checkpoint for the batch, each caller
// with its own receipt. The package consent/logtest holds the conformance
// suite every store runs.
//
// Stores: [FileLogStore] keeps one process's log in a locked file,
// syncing once per batch and cutting a batch torn by a crash as a whole;
// [MemLogStore] is for tests; the cloud keeps its log in its database.
//
// # Keys
//
// Checkpoints are signed through a note.Signer. [NewNoteSigner] makes one
// from any crypto.Signer whose public key is Ed25519, so the log's key can
// stay in a secure element or an HSM; [NoteSigner.VerifierKey] is the
// public key to publish. A key from note.GenerateKey works too, through
// note.NewSigner, and signs identically.
package consent
