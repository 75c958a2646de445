package store

import (
	"context"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
)

// Limits every implementation enforces.
const (
	// MaxDocument is the most bytes of one CBOR document: a desired or
	// reported state, a command's arguments or its result. A larger one is
	// refused with a *TooLargeError.
	MaxDocument = 16 << 10
	// MaxList is the most items one List call returns; a limit of 0, or
	// one above MaxList, means MaxList.
	MaxList = 1000
	// DefaultMaxLiveTokens is ReplayConfig.MaxLiveTokens when that is
	// zero.
	DefaultMaxLiveTokens = 1024
)

// Models keeps the product models.
type Models interface {
	// AddModel adds a model. A model with the same ID is ErrConflict.
	AddModel(ctx context.Context, m Model) error
	// Model returns the model with the ID, or ErrNotFound.
	Model(ctx context.Context, id string) (Model, error)
	// ListModels returns every model, by ID.
	ListModels(ctx context.Context) ([]Model, error)
}

// Manifests keeps the signed data manifests of each model, by hash.
type Manifests interface {
	// AddManifest adds a manifest. A manifest with the same hash is
	// ErrConflict, an unknown model ErrNotFound.
	AddManifest(ctx context.Context, m Manifest) error
	// Manifest returns the manifest with the hash, or ErrNotFound.
	Manifest(ctx context.Context, hash protocol.Hash) (Manifest, error)
	// ListManifests returns a model's manifests, oldest first (by Added,
	// then hash); none for an unknown model.
	ListManifests(ctx context.Context, model string) ([]Manifest, error)
	// NewestManifest returns the model's manifest that ListManifests
	// would list last, reading no other; a model without any is
	// ErrNotFound.
	NewestManifest(ctx context.Context, model string) (Manifest, error)
}

// Devices keeps the device registry.
type Devices interface {
	// CreateDevice registers a device. A device with the same ID is
	// ErrConflict, an unknown model ErrNotFound. A zero Standing means
	// Active, a zero StandingSince means Created.
	CreateDevice(ctx context.Context, d Device) error
	// Device returns the device with the ID, or ErrNotFound.
	Device(ctx context.Context, id identity.ID) (Device, error)
	// SetStanding changes a device's standing, with the reason and the
	// time of the change. A decommissioned device stays so: changing its
	// standing is ErrConflict.
	SetStanding(ctx context.Context, id identity.ID, s Standing, reason string, at time.Time) error
	// SetOwner sets the subject that owns a device; the empty string
	// means none.
	SetOwner(ctx context.Context, id identity.ID, owner string) error
	// ListDevicesByOwner returns a page of the devices an owner holds, by
	// ID; the empty owner lists the devices that have none.
	ListDevicesByOwner(ctx context.Context, owner string, p Page) ([]Device, error)
	// ListDevicesByModel returns a page of a model's devices, by ID.
	ListDevicesByModel(ctx context.Context, model string, p Page) ([]Device, error)
}

// AppKeys keeps the public keys of the apps that sign each subject's
// consent records.
type AppKeys interface {
	// AddAppKey adds a key. A key ID is used once: one that is taken,
	// even by a removed key, is ErrConflict.
	AddAppKey(ctx context.Context, k AppKey) error
	// AppKey returns the key with the key ID. A removed key, like an
	// unknown one, is ErrNotFound.
	AppKey(ctx context.Context, kid []byte) (AppKey, error)
	// RemoveAppKey stops trusting a key from the time given. A key that
	// is unknown or already removed is ErrNotFound.
	RemoveAppKey(ctx context.Context, kid []byte, at time.Time) error
	// ListAppKeys returns a subject's keys that are not removed, oldest
	// first.
	ListAppKeys(ctx context.Context, subject string) ([]AppKey, error)
}

// Ingest stores telemetry batches, each once.
type Ingest interface {
	// StoreBatch stores a batch and its readings in one transaction.
	// A batch whose device and key are stored already is stored again
	// only in the sense that the result says so: Duplicate, with the
	// first batch's ID and count. With another Digest it is ErrConflict
	// (the key was reused for other content). An unknown device or
	// manifest is ErrNotFound, an unstorable batch or reading ErrInvalid;
	// then nothing of the batch is stored.
	StoreBatch(ctx context.Context, b Batch) (BatchResult, error)
	// StoreBatches stores several batches in one transaction, each as
	// StoreBatch would, so that many small batches share one commit. A
	// batch that fails on its own (ErrConflict, ErrNotFound, ErrInvalid)
	// stores nothing and says so in its result's Err, without stopping
	// the others. The error is for a failure of the whole transaction,
	// after which nothing is stored. The results are in the order of the
	// batches.
	StoreBatches(ctx context.Context, bs []Batch) ([]BatchResult, error)
}

// Readings answers questions about stored readings and applies retention.
type Readings interface {
	// ReadingProvenance says which batch, manifest and consent record let
	// a reading leave its device. A reading that is not stored (or was
	// deleted) is ErrNotFound.
	ReadingProvenance(ctx context.Context, id int64) (Provenance, error)
	// ListReadings returns a device's readings of one stream in a time
	// range, by time and then ID.
	ListReadings(ctx context.Context, q ReadingQuery) ([]Reading, error)
	// DeleteReadings deletes the readings of one stream, shaped by one
	// manifest, taken before a time, and returns how many it deleted. The
	// batches stay, so that a repeated batch is still known as one.
	DeleteReadings(ctx context.Context, r Retention) (int64, error)
	// ListGaps returns the runs of sequence numbers missing from a
	// device's batches: grouped by epoch, each epoch's in order.
	ListGaps(ctx context.Context, device identity.ID) ([]Gap, error)
}

// Incidents keeps what went wrong with each device: failed
// authentications, refused batches, floods.
type Incidents interface {
	// RecordIncident records an incident and returns its ID. The device
	// need not be registered.
	RecordIncident(ctx context.Context, i Incident) (int64, error)
	// CountIncidents returns how many incidents a device had at or after
	// a time.
	CountIncidents(ctx context.Context, device identity.ID, since time.Time) (int64, error)
	// ListIncidents returns up to limit of a device's incidents at or
	// after a time, oldest first.
	ListIncidents(ctx context.Context, device identity.ID, since time.Time, limit int) ([]Incident, error)
}

// States keeps each device's desired and reported state documents.
type States interface {
	// SetDesired replaces a device's desired state and returns its new
	// version: 1 for the first, one more for each after. With expected
	// not 0, the current version must be expected, or the error is a
	// *StaleError; 0 replaces whatever is there.
	SetDesired(ctx context.Context, device identity.ID, doc []byte, expected uint64) (uint64, error)
	// SetReported replaces a device's reported state and returns its new
	// version. desired names the version of the desired state the report
	// answers, which must be the current one (0 while there is none), or
	// the error is a *StaleError.
	SetReported(ctx context.Context, device identity.ID, doc []byte, desired uint64) (uint64, error)
	// State returns a device's documents; a device without them has a
	// zero State. An unknown device is ErrNotFound.
	State(ctx context.Context, device identity.ID) (State, error)
}

// Commands keeps the commands queued for devices and how they ended.
type Commands interface {
	// EnqueueCommand queues a command, Pending. A command with the same
	// device and ID is ErrConflict, an unknown device ErrNotFound.
	EnqueueCommand(ctx context.Context, c Command) error
	// Command returns one command, or ErrNotFound.
	Command(ctx context.Context, device identity.ID, id protocol.CommandID) (Command, error)
	// DeliverableCommands returns a device's commands that are Pending or
	// Delivered and have not expired at now, oldest first, at most
	// MaxList.
	DeliverableCommands(ctx context.Context, device identity.ID, now time.Time) ([]Command, error)
	// MarkDelivered records that a command reached its device: Pending
	// becomes Delivered; Delivered stays so and keeps its first delivery
	// time. A command that ended, or has expired at the time given, is
	// ErrConflict.
	MarkDelivered(ctx context.Context, device identity.ID, id protocol.CommandID, at time.Time) error
	// SetCommandResult records how a Pending or Delivered command ended:
	// Succeeded or Failed. The same result again is no error; another
	// result for an ended command, or any for an expired one, is
	// ErrConflict.
	SetCommandResult(ctx context.Context, device identity.ID, id protocol.CommandID, r CommandResult) error
	// ExpireCommands marks Expired every Pending or Delivered command
	// whose expiry is at or before now, and returns how many.
	ExpireCommands(ctx context.Context, now time.Time) (int64, error)
}

// Claims keeps each device's claim code, as a hash, and counts claim
// attempts so that the caller can limit guessing. Comparing a code with
// the hash, in constant time, is the caller's job.
type Claims interface {
	// SetClaim sets a device's claim code hash, replacing any before. An
	// unknown device is ErrNotFound.
	SetClaim(ctx context.Context, c Claim) error
	// Claim returns a device's claim, or ErrNotFound.
	Claim(ctx context.Context, device identity.ID) (Claim, error)
	// DeleteClaim deletes a device's claim; none is ErrNotFound.
	DeleteClaim(ctx context.Context, device identity.ID) error
	// RecordClaimAttempt counts one attempt against both its device and
	// its claimant, and returns each one's count in its current window
	// (this attempt included). A counter's window starts at its first
	// attempt and lasts a.Window; an attempt after it starts a new window.
	RecordClaimAttempt(ctx context.Context, a ClaimAttempt) (AttemptCounts, error)
}

// Consent keeps the consent log.
type Consent interface {
	// ConsentLog returns the store of the consent log, for
	// consent.OpenLog: entries, tree hashes and the index of every leaf
	// hash. The ConsentLogs of every node that shares the database are
	// one log. Append commits before it returns.
	ConsentLog() consent.LogStore
}

// Replays remembers the device tokens that the cloud's verifiers
// accepted, so that a token accepted by one node is refused by every
// other: each node's identity.TokenVerifier gets a ReplayCache of the
// shared store.
type Replays interface {
	// ReplayCache returns a replay cache kept in the store, configured by
	// cfg. Seen is one transaction: of any number of concurrent calls for
	// one token, on any node, exactly one reports it new. A device with
	// cfg.MaxLiveTokens unexpired tokens remembered has its new tokens
	// refused with a *TokenLimitError. At most once a minute, Seen first
	// deletes every remembered token that has expired, as PurgeReplays
	// does.
	ReplayCache(cfg ReplayConfig) identity.ReplayCache
	// PurgeReplays deletes every remembered token whose until is at or
	// before now, and returns how many it deleted.
	PurgeReplays(ctx context.Context, now time.Time) (int64, error)
}

// A Store is everything the cloud keeps. Implementations are safe for
// concurrent use, and every one passes the conformance suite in
// cloud/store/storetest. Code that uses a store should ask for the small
// interface it needs (Devices, Ingest, ...), not for Store.
type Store interface {
	Models
	Manifests
	Devices
	AppKeys
	Ingest
	Readings
	Incidents
	States
	Commands
	Claims
	ConsentRecords
	Consent
	Replays
	// Notifier returns the notifier that carries change notifications
	// between the nodes that share the store's database. The store
	// closes it when it closes.
	Notifier() Notifier
	// Close releases the store. It is safe to call more than once.
	Close() error
}
