package device

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// Defaults for Config's zero fields.
const (
	// DefaultMaxReadings bounds the readings the outbox holds.
	DefaultMaxReadings = 100_000
	// DefaultMaxBytes bounds the bytes the outbox's readings take,
	// sealed: 16 MiB.
	DefaultMaxBytes = 16 << 20
	// DefaultRetryBase is the first wait before delivery tries again.
	DefaultRetryBase = time.Second
	// DefaultRetryMax caps the wait between delivery attempts.
	DefaultRetryMax = 5 * time.Minute
	// DefaultHealthInterval is how often a started agent logs its
	// Health.
	DefaultHealthInterval = time.Minute
	// DefaultSendRate is how many requests a second delivery allows
	// itself: below the reference cloud's limit of 50 a device
	// (docs/protocol.md 9), leaving room for the device's other
	// requests.
	DefaultSendRate = 40
	// DefaultManifestInterval is how often a started agent fetches the
	// manifest from the cloud.
	DefaultManifestInterval = 6 * time.Hour
)

// Config configures an Agent. Dir, Manifest and Makers are required,
// and so is a device ID (Device or Key) and a secret (Secret, or a
// software Key); every other zero field has a default.
type Config struct {
	// Dir is the directory of the outbox, the file OutboxFile; it is
	// made (mode 0700) if missing. It must be on storage that keeps
	// what was synced through a power cut.
	Dir string

	// Manifest is the product's data manifest as its maker signed it
	// (policy.Manifest.Sign): what may leave the device, in what form,
	// for which purposes. Nothing it does not declare is recorded. The
	// agent runs it until it fetches a newer one from the cloud
	// (FetchManifest).
	Manifest []byte
	// Makers holds the maker's keys, with the controller role, that
	// sign manifests (from the firmware); the agent runs Manifest, or a
	// manifest from the cloud, only if one of them signed it. They are
	// trusted to revoke consent too.
	Makers consent.Keys

	// Device is the device's ID; zero means the ID of Key's public key.
	Device identity.ID
	// Key is the device's key. When Device is zero it names the device;
	// when Secret is nil and Key is a software key (*ecdsa.PrivateKey or
	// ed25519.PrivateKey), the device's secret is its private scalar or
	// seed. A key in hardware gives no secret: set Secret.
	Key crypto.Signer
	// Secret is the device's secret material, at least MinSecret bytes
	// (32 random bytes written at the factory, say, kept where the
	// firmware keeps its keys). The key that seals the outbox and the
	// key of the manifest's pseudonyms are derived from it with HKDF
	// (RFC 5869), each for its own use. Nil means derived from Key. A
	// device whose secret changes cannot read its outbox any more
	// (ErrOutboxCorrupt).
	Secret []byte

	// Owner is the pseudonymous subject who owns the device, as its
	// consent records name them; empty while the device has no owner,
	// when only streams whose legal basis is contract may be recorded.
	Owner string
	// ConsentKeys are keys trusted to sign the owner's consent records,
	// besides the device's own key (Key, under the device ID as key ID)
	// and the maker's keys (Makers), which are trusted anyway: the owner's
	// app keys, say, for AddConsent. May be nil: the cloud's consent list
	// carries the app keys that signed its records (AddConsents).
	ConsentKeys consent.Keys

	// URL is the cloud, a coap://, coaps://, coap+tcp:// or coaps+tcp://
	// URL; Start needs it.
	URL string
	// Transport holds the device's credentials for the cloud (a DTLS
	// pre-shared key, a token signer, or a certificate) and the
	// transport's settings. Its Device defaults to the agent's device ID
	// when PSK is set.
	Transport transport.ClientConfig

	// MaxReadings bounds the readings the outbox holds, formed batches
	// included; zero means DefaultMaxReadings.
	MaxReadings int
	// MaxBytes bounds the bytes those readings take, sealed; zero means
	// DefaultMaxBytes. The file itself is larger: bbolt's pages and
	// their free space.
	MaxBytes int64
	// Priorities gives streams a priority; a stream not in the map has
	// priority 0. When the outbox is full, a new reading makes room by
	// dropping queued readings of the lowest priority, the oldest first,
	// but never of a higher priority than its own; when nothing of its
	// priority or lower is queued, the new reading is refused
	// (ErrOutboxFull). The map is copied.
	Priorities map[string]int

	// RetryBase is the first wait before delivery tries again after a
	// failure; zero means DefaultRetryBase. Waits double with each
	// failure, up to RetryMax, each shortened by a random part of up to
	// half (jitter); a 4.29 or 5.03 waits at least its Max-Age.
	RetryBase time.Duration
	// RetryMax caps the wait; zero means DefaultRetryMax.
	RetryMax time.Duration
	// SendRate is how many requests a second delivery allows itself on
	// average, counting as the cloud's rate limit does: over coap:// and
	// coaps:// a batch travels block-wise, and each 1 KiB block is a
	// request. After each post delivery waits its share (a batch of 64
	// KiB at 40 a second: 1.6 s), and readings recorded meanwhile join
	// the next batch. Zero means DefaultSendRate, negative no limit.
	SendRate float64

	// ManifestInterval is how often a started agent fetches the manifest
	// from the cloud (FetchManifest), besides when it starts and when the
	// cloud says it does not hold the manifest a batch names; zero means
	// DefaultManifestInterval, negative only then.
	ManifestInterval time.Duration

	// HealthInterval is how often a started agent logs its Health; zero
	// means DefaultHealthInterval, negative never.
	HealthInterval time.Duration
	// SetAsideCorrupt makes New set a corrupt outbox aside (SetAside)
	// and start a new one, with a new epoch, rather than fail with
	// ErrOutboxCorrupt. The readings in it are lost, and New logs so at
	// the error level.
	SetAsideCorrupt bool
	// Logger receives the agent's logs: drops (warning), health (info),
	// delivery failures (debug); nil discards them.
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// An Agent records a device's readings and delivers them to the cloud:
// the manifest decides what may leave and in what form, the owner's
// consent whether it may leave now, the outbox keeps it through power
// cuts and outages, and the cloud gets it exactly once. It is safe for
// concurrent use.
type Agent struct {
	cfg        Config
	id         identity.ID
	log        *slog.Logger
	now        func() time.Time
	run        atomic.Pointer[running] // the manifest Record runs
	pseudonyms []byte                  // the key of the manifest's pseudonyms
	manifestMu sync.Mutex
	manifests  map[protocol.Hash]*policy.Manifest // those that shaped readings, by hash
	fetchMu    sync.Mutex                         // held to switch manifests
	etag       atomic.Pointer[[]byte]             // the ETag of the last manifest fetched
	fetch      chan struct{}                      // asks for the manifest to be fetched
	history    *consent.History                   // nil without an owner
	trusted    keyChain                           // the keys trusted to sign consent, by the device itself
	box        *outbox

	consentMu   sync.RWMutex                // held to change consent; read from a decision until its readings are queued
	kept        map[consent.ID]*keptConsent // the records the outbox keeps
	consentNext uint64

	mu        sync.Mutex
	started   bool
	closed    bool
	closing   chan struct{}
	cancel    context.CancelFunc
	lastErr   string
	localOnly uint64
	noConsent uint64
	// when the last consent list came from the cloud
	consentList time.Time

	sendMu   sync.Mutex
	sending  uint64                  // the batch on its way, 0 if none
	stopSend context.CancelCauseFunc // cancels its sending

	wg      sync.WaitGroup
	wake    chan struct{}
	dialing chan struct{}     // held while dialing the cloud
	client  *transport.Client // shared by delivery and the observations, once dialed
}

// New opens the agent's outbox in cfg.Dir, creating it with a new epoch
// if there is none, checks the signed manifest against cfg.Makers, and
// reloads the consent records the outbox keeps. It does not touch the
// network: Start begins delivery.
//
// A damaged outbox, or one that does not decrypt with the device's
// secret, fails with an error matching ErrOutboxCorrupt (unless
// cfg.SetAsideCorrupt); another agent holding it, ErrOutboxLocked; a
// manifest that does not verify, consent's and policy's errors
// (consent.ErrBadSignature, policy.ErrNotMaker, ...).
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Dir == "" {
		return nil, errors.New("device: Config.Dir is empty")
	}
	if cfg.Makers == nil || len(cfg.Manifest) == 0 {
		return nil, errors.New("device: Config.Manifest and Config.Makers are required")
	}
	a := &Agent{cfg: cfg, id: cfg.Device, log: cfg.Logger, now: cfg.Now, closing: make(chan struct{}),
		wake: make(chan struct{}, 1), dialing: make(chan struct{}, 1), fetch: make(chan struct{}, 1),
		manifests: map[protocol.Hash]*policy.Manifest{}}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	a.cfg.Priorities = maps.Clone(cfg.Priorities)
	a.cfg.MaxReadings = cmp(cfg.MaxReadings, DefaultMaxReadings)
	a.cfg.MaxBytes = cmp(cfg.MaxBytes, DefaultMaxBytes)
	a.cfg.RetryBase = cmp(cfg.RetryBase, DefaultRetryBase)
	a.cfg.RetryMax = max(cmp(cfg.RetryMax, DefaultRetryMax), a.cfg.RetryBase)
	a.cfg.HealthInterval = cmp(cfg.HealthInterval, DefaultHealthInterval)
	a.cfg.SendRate = cmp(cfg.SendRate, DefaultSendRate)
	a.cfg.ManifestInterval = cmp(cfg.ManifestInterval, DefaultManifestInterval)
	if a.id.IsZero() {
		if cfg.Key == nil {
			return nil, errors.New("device: Config.Device or Config.Key is required")
		}
		var err error
		if a.id, err = identity.IDOf(cfg.Key); err != nil {
			return nil, err
		}
	}
	if a.cfg.Transport.PSK != nil && a.cfg.Transport.Device.IsZero() {
		a.cfg.Transport.Device = a.id
	}
	secret, err := secretOf(&a.cfg)
	if err != nil {
		return nil, err
	}
	boxKey, err := deriveKey(secret, infoOutbox)
	if err != nil {
		return nil, err
	}
	pseudonyms, err := deriveKey(secret, infoPseudonyms)
	if err != nil {
		return nil, err
	}
	if a.trusted, err = trustedKeys(&a.cfg, a.id.String()); err != nil {
		return nil, err
	}
	a.pseudonyms = pseudonyms
	r, err := a.open(ctx, cfg.Manifest)
	if err != nil {
		return nil, err
	}
	a.use(r)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(cfg.Dir, OutboxFile)
	priority := func(stream string) int { return a.cfg.Priorities[stream] }
	a.box, err = openOutbox(path, cfg.Dir, boxKey, a.cfg.MaxReadings, a.cfg.MaxBytes, priority, a.log)
	if errors.Is(err, ErrOutboxCorrupt) && cfg.SetAsideCorrupt {
		aside, serr := SetAside(cfg.Dir)
		if serr != nil {
			return nil, errors.Join(err, serr)
		}
		a.log.Error("device: outbox corrupt: set aside, starting a new one with a new epoch; its readings are lost",
			"err", err, "set_aside", aside)
		a.box, err = openOutbox(path, cfg.Dir, boxKey, a.cfg.MaxReadings, a.cfg.MaxBytes, priority, a.log)
	}
	if err != nil {
		return nil, err
	}
	a.loadConsent(ctx)
	return a, nil
}

// cmp returns v, or def when v is zero.
func cmp[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// SetAside renames the outbox file in dir, one that New found corrupt,
// to outbox.db.corrupt-<UTC time>, and returns its new path; it is kept
// for a post-mortem, never read again. The next New starts a new outbox
// with a new epoch, so that the sequence numbers it gives out again
// never collide with ones sent before (docs/protocol.md 6.2). The readings
// the old outbox held are lost. No agent may have the outbox open.
func SetAside(dir string) (string, error) {
	from := filepath.Join(dir, OutboxFile)
	to := from + ".corrupt-" + time.Now().UTC().Format("20060102T150405.000000000Z")
	if err := os.Rename(from, to); err != nil {
		return "", err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable where the system allows
		d.Close()
	}
	return to, nil
}

// ID returns the device's ID.
func (a *Agent) ID() identity.ID { return a.id }

// ManifestHash returns the hash of the manifest the agent runs, which
// the batches of the readings it records from now on name.
func (a *Agent) ManifestHash() protocol.Hash { return a.run.Load().hash }

// Record records a reading of stream, and returns once it is durable in
// the outbox, without touching the network. First the manifest shapes it
// (policy.Enforcer: fields it does not declare are left out, the others
// transformed); a stream that never leaves the device (no destinations),
// or a reading of which nothing may leave, is taken and nothing is
// queued (Health.LocalOnly). Then consent: for each destination of the
// stream, the stream's consent purpose, and for a partner the partner's,
// must be covered, for every data category of the reading, by a record
// of the owner (AddConsent, AddConsents) at the time of the reading (its
// first timestamp field as shaped, else now), as the cloud will decide,
// and now, so that a withdrawal takes effect at once; a stream whose
// legal basis is contract needs none. The reading is queued
// once for each destination consent allows; destinations it refuses are
// counted (DropNoConsent).
//
// Errors: a *RefusedError matching ErrManifest (with the
// *policy.Violation) or ErrNoConsent (with the consent.Decision);
// policy.ErrAggregated for a stream the manifest aggregates over windows,
// which this agent does not record yet; ErrOutboxFull; ErrReadingTooLarge;
// an *OutboxError matching ErrDiskFull when the disk is full; ErrClosed.
// If ctx ends first, Record returns its error, and the reading may or may
// not be recorded.
func (a *Agent) Record(ctx context.Context, stream string, reading policy.Reading) error {
	r := a.run.Load()
	out, err := r.enforcer.Apply(stream, reading)
	if err != nil {
		var v *policy.Violation
		if errors.As(err, &v) {
			return &RefusedError{Reason: ErrManifest, Stream: stream, Violation: v}
		}
		return err
	}
	if out == nil {
		a.mu.Lock()
		a.localOnly++
		a.mu.Unlock()
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s, _ := r.manifest.Stream(stream)
	now := a.now()
	// Consent may not change between the decision and the queueing: a
	// withdrawal deletes what is queued, and then nothing it ended may
	// join the queue.
	a.consentMu.RLock()
	p, err := a.queue(r.hash, s, out, now)
	a.consentMu.RUnlock()
	if err != nil {
		return err
	}
	if err := a.box.await(ctx, p.op); err != nil {
		return err
	}
	a.kick()
	if !slices.ContainsFunc(p.items, func(it *item) bool { return !it.refused }) {
		return fmt.Errorf("%w: stream %q (priority %d)", ErrOutboxFull, stream, a.cfg.Priorities[stream])
	}
	return nil
}

// A queueing is a reading on its way into the outbox: one item for each
// destination, and the op that puts them there.
type queueing struct {
	items []*item
	op    *op
}

// queue decides consent for a reading shaped as out and hands it to the
// committer, once for each destination consent allows.
func (a *Agent) queue(manifest protocol.Hash, s *policy.Stream, out *policy.Output, now time.Time) (*queueing, error) {
	stream := s.Name
	dests, refusal := a.allowed(s, out, now)
	if len(dests) == 0 {
		return nil, refusal
	}
	if refusal != nil {
		a.mu.Lock()
		a.noConsent += uint64(len(out.Destinations) - len(dests))
		a.mu.Unlock()
		a.log.Warn("device: readings dropped", "reason", string(DropNoConsent), "stream", stream, "readings", 1, "why", refusal.Error())
	}
	plain, err := appendEntry(nil, now, out.Fields)
	if err != nil {
		return nil, err
	}
	if len(plain) > maxReadingSize {
		return nil, fmt.Errorf("%w: stream %q: %d bytes", ErrReadingTooLarge, stream, len(plain))
	}
	items := make([]*item, len(dests))
	for i, d := range dests {
		it := &item{key: queueKey{Manifest: manifest, Stream: stream, Partner: d.Partner}, priority: a.cfg.Priorities[stream], at: now}
		it.queue = a.box.queue(it.key)
		it.id = a.box.nextID.Add(1) - 1
		it.val = a.box.seal.seal(nil, a.box.seal.ad(adReading, it.queue, it.id), plain)
		items[i] = it
	}
	p, err := a.box.enqueue(a.box.putReadings(items), true)
	if err != nil {
		return nil, err
	}
	return &queueing{items: items, op: p}, nil
}

// maxReadingSize bounds an encoded reading: one that large still fits a
// batch with its header.
const maxReadingSize = protocol.MaxBatchBody - 1024

// kick wakes the delivery goroutine.
func (a *Agent) kick() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// allowed returns the destinations of out that consent allows, and the
// refusal of the last one refused, if any. Consent must cover the reading
// at its time, as the cloud decides, and, once consent has ended, now as
// well: a withdrawal takes effect at once, even for a reading whose time
// (coarsened to the hour, say) is before it.
func (a *Agent) allowed(s *policy.Stream, out *policy.Output, now time.Time) ([]policy.Destination, *RefusedError) {
	at, timed := now, false
	var cats []string
	for _, f := range s.Fields {
		v, ok := out.Fields[f.Name]
		if !ok {
			continue
		}
		if t, isTime := v.(time.Time); isTime && !timed {
			at, timed = t, true
		}
		if !slices.Contains(cats, f.Category) {
			cats = append(cats, f.Category)
		}
	}
	times := []time.Time{at}
	if now.After(at) {
		times = append(times, now)
	}
	var dests []policy.Destination
	var refusal *RefusedError
	for _, d := range out.Destinations {
		if r := a.decide(s.Name, d, needs(s, d), cats, times); r != nil {
			refusal = r
			continue
		}
		dests = append(dests, d)
	}
	return dests, refusal
}

// A need is a purpose that consent must cover, and the recipient it must
// name (empty: the controller itself).
type need struct{ purpose, recipient string }

// needs returns what consent must cover for a stream's readings to go to
// d: the stream's consent purpose, unless its legal basis is contract,
// and for a partner the partner's purpose with the partner as recipient.
func needs(s *policy.Stream, d policy.Destination) []need {
	var ns []need
	if !s.Contract && s.Consent != "" {
		ns = append(ns, need{s.Consent, ""})
	}
	if d.To == "partner" && d.Consent != "" {
		ns = append(ns, need{d.Consent, d.Partner})
	}
	return ns
}

// decide asks the owner's consent history every need for every category
// at every time, returning the first refusal.
func (a *Agent) decide(stream string, d policy.Destination, ns []need, cats []string, times []time.Time) *RefusedError {
	q := consent.Query{Device: a.id, At: times[0]}
	for _, n := range ns {
		q.Purpose, q.Recipient = n.purpose, n.recipient
		if a.history == nil {
			return &RefusedError{Reason: ErrNoConsent, Stream: stream, Destination: d, Query: q,
				Decision: consent.Decision{Reason: consent.ReasonNoConsent}}
		}
		for _, c := range cats {
			q.Category = c
			for _, t := range times {
				q.At = t
				if dec := a.history.Decide(q); !dec.Allowed {
					return &RefusedError{Reason: ErrNoConsent, Stream: stream, Destination: d, Query: q, Decision: dec}
				}
			}
		}
	}
	return nil
}

// Start starts delivery: a goroutine that forms batches of the queued
// readings and posts them to Config.URL, after the consent captured on
// the device (GiveConsent); one that fetches the manifest now, every
// Config.ManifestInterval, and when the cloud asks for it
// (FetchManifest); one that observes /v1/consent and adds the owner's
// records the cloud lists (AddConsents), when the device has an owner;
// and one that logs Health every Config.HealthInterval. Close stops them. Start needs Config.URL; it
// does not wait for the cloud, which the agent dials, and dials again,
// by itself.
func (a *Agent) Start() error {
	if a.cfg.URL == "" {
		return errors.New("device: Config.URL is empty")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.closed:
		return ErrClosed
	case a.started:
		return errors.New("device: agent already started")
	}
	a.started = true
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Add(3)
	go a.deliver(ctx)
	go a.reportHealth(ctx)
	go a.watchManifest(ctx)
	if a.history != nil {
		a.wg.Add(1)
		go a.observeConsent(ctx)
	}
	return nil
}

// Drain waits until the outbox is empty: every reading delivered, or
// dropped (see Health.Drops). It returns ctx's error if ctx ends first,
// and ErrClosed if the agent closes. Only a started agent empties its
// outbox.
func (a *Agent) Drain(ctx context.Context) error {
	for {
		st, changed := a.box.snapshot()
		if st.readings == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-a.closing:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close stops delivery, waiting for a batch in flight, lets the writes
// in progress finish, and closes the outbox. Readings not yet delivered
// stay in the outbox for the next agent. Close is idempotent.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.closing)
	cancel := a.cancel
	a.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	a.wg.Wait()
	var errs []error
	a.dialing <- struct{}{} // no dial is in progress, and none starts
	if a.client != nil {
		errs = append(errs, a.client.Close())
	}
	errs = append(errs, a.box.close())
	return errors.Join(errs...)
}

// conn returns the client connected to the cloud, dialing it if there is
// none yet: one client, and one DTLS session or TCP connection, serves
// delivery and the observations, and reconnects by itself once dialed.
func (a *Agent) conn(ctx context.Context) (*transport.Client, error) {
	select {
	case a.dialing <- struct{}{}:
	case <-a.closing:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-a.dialing }()
	select {
	case <-a.closing:
		return nil, ErrClosed
	default:
	}
	if a.client != nil {
		return a.client, nil
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	c, err := transport.Dial(dctx, a.cfg.URL, a.cfg.Transport)
	if err != nil {
		return nil, err
	}
	a.client = c
	return c, nil
}

// logFailure logs the nth failure in a row of a task that tries again:
// the first at the info level, the others at debug.
func (a *Agent) logFailure(ctx context.Context, n int, msg string, args ...any) {
	level := slog.LevelDebug
	if n == 1 {
		level = slog.LevelInfo
	}
	a.log.Log(ctx, level, msg, append([]any{"failures", n}, args...)...)
}
