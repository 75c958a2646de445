package cloud

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/sqlite"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/transport"
)

// Defaults of Config.
const (
	// DefaultTokenAudience is the aud a device token must name.
	DefaultTokenAudience = "sensible"
	// DefaultMaxIncidents is how many incidents within IncidentWindow
	// suspend a device.
	DefaultMaxIncidents = 10
	// DefaultIncidentWindow is the window incidents are counted in.
	DefaultIncidentWindow = 24 * time.Hour
	// DefaultMaxConsentRecords is Config.MaxConsentRecords' default.
	DefaultMaxConsentRecords = 10000
	// DefaultMaxFutureSkew is how far ahead of the cloud's clock a
	// reading may be (Config.MaxFutureSkew).
	DefaultMaxFutureSkew = 5 * time.Minute
	// DefaultSweepInterval is how often a node sweeps (Config.SweepInterval).
	DefaultSweepInterval = time.Minute
)

// Config configures a Node. The zero value with Dir set is a working
// node: SQLite in Dir, a self-signed server certificate made at start,
// devices authenticated by token (and by certificate or PSK once
// DeviceRoots or FleetSecret is set).
type Config struct {
	// Dir is the directory of the SQLite store, used when Store is nil.
	Dir string
	// Store is the node's store; nil opens SQLite in Dir. A store given
	// here is not closed by Node.Close.
	Store store.Store
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Certificate is the server's certificate chain and key for TLS and
	// certificate DTLS; nil makes a self-signed one for "localhost" at
	// start (for development: devices cannot check it against anything).
	Certificate *tls.Certificate
	// DeviceRoots are the manufacturer roots that device certificate
	// chains must lead to. A device whose chain verifies is admitted on
	// first contact and registered when it enrolls (zero-touch).
	DeviceRoots *x509.CertPool
	// FleetSecret derives the DTLS pre-shared key of each device imported
	// with ImportDevice (transport.DerivePSK); nil disables PSK.
	FleetSecret []byte
	// Controllers are the maker's keys (consent.ControllerKey role): they
	// sign manifests and may revoke consent.
	Controllers []consent.TrustedKey
	// TokenAudience is the aud a device token must name; empty means
	// DefaultTokenAudience.
	TokenAudience string
	// MaxIncidents suspends a device once it has this many incidents
	// within IncidentWindow; zero means DefaultMaxIncidents, negative
	// never.
	MaxIncidents int
	// IncidentWindow is the window of MaxIncidents; zero means
	// DefaultIncidentWindow.
	IncidentWindow time.Duration
	// Transport holds the transport's limits (connections, rates, sizes).
	// The node sets its PSK, Authorize, Tokens, Certificate and
	// DeviceRoots.
	Transport transport.ServerConfig

	// The operator API (operator.go, httpapi.go), served by Listen on
	// http:// and https:// URLs.

	// OperatorKeys are the public keys that sign operator tokens, by key
	// ID (the token's kid header): ECDSA P-256 (ES256) or Ed25519
	// (EdDSA). Nil means no operator can authenticate.
	OperatorKeys map[string]crypto.PublicKey
	// OperatorAudience is the aud an operator token must name; empty
	// means DefaultOperatorAudience.
	OperatorAudience string
	// OperatorIssuer is the iss an operator token must name; empty means
	// DefaultOperatorIssuer.
	OperatorIssuer string
	// PublicMetrics serves /metrics without a token. Set it only when
	// the operator listener is unreachable from the internet (a private
	// address that the scraper alone reaches): metrics tell the fleet's
	// size and activity. By default /metrics needs a token with the
	// metrics:read scope, which Prometheus sends as a bearer token.
	PublicMetrics bool
	// HTTP bounds the operator API's HTTP server.
	HTTP HTTPConfig
	// MaxFutureSkew is how far ahead of the cloud's clock a reading's
	// timestamp may be; a batch with one further ahead is refused (4.00).
	// Zero means DefaultMaxFutureSkew.
	MaxFutureSkew time.Duration
	// MaxReadingAge, when set, refuses a batch with a reading older than
	// this (4.00): a batch older than the idempotency keys the store
	// keeps could be stored twice. Zero means no limit: a device that was
	// offline for long still delivers what it kept.
	MaxReadingAge time.Duration
	// MaxConsentRecords bounds the consent records one subject may have;
	// past it AddConsent refuses new ones (ErrConsentLimit). Zero means
	// DefaultMaxConsentRecords.
	MaxConsentRecords int
	// ConsentLogSigner signs the checkpoints of the consent log kept in
	// the store (consent.NewNoteSigner makes one from an Ed25519 key,
	// which may be in an HSM). Nodes sharing a store must share it. Nil
	// with Dir set uses the key in Dir's ConsentLogKeyFile, made on first
	// start; nil without Dir makes a key for this process only, which is
	// for tests: its receipts cannot be checked after a restart.
	ConsentLogSigner note.Signer
	// SweepInterval is how often the node deletes readings past their
	// retention, expired replay-cache entries and overdue commands; zero
	// means DefaultSweepInterval, negative never (call Sweep yourself).
	SweepInterval time.Duration

	// Owners' apps (claim.go, apptoken.go, appapi.go), served with the
	// operator API.

	// AppAudience is the aud an app token must name; empty means
	// DefaultAppAudience.
	AppAudience string
	// Claims limits the attempts to claim devices.
	Claims ClaimConfig
}

// A Node is one cloud node. It is safe for concurrent use.
type Node struct {
	cfg      Config
	store    store.Store
	ownStore bool
	log      *slog.Logger
	now      func() time.Time
	srv      *transport.Server
	keys     *Keys
	cert     *tls.Certificate
	metrics  *metrics
	api      *httpAPI
	cmds     commandLists // command list versions and the expiry loop
	devices  *deviceAPI   // the device resources' caches

	consentLog    *consent.Log
	consentLogKey string // its verifier key

	bgCancel context.CancelFunc
	bg       sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// New starts a node: it opens the store (SQLite in cfg.Dir when cfg.Store
// is nil) and registers the v1 resources. Listen then makes it reachable.
func New(ctx context.Context, cfg Config) (*Node, error) {
	n := &Node{cfg: cfg, store: cfg.Store, log: cfg.Logger, now: cfg.Now}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	if n.now == nil {
		n.now = time.Now
	}
	if n.cfg.TokenAudience == "" {
		n.cfg.TokenAudience = DefaultTokenAudience
	}
	if n.cfg.MaxIncidents == 0 {
		n.cfg.MaxIncidents = DefaultMaxIncidents
	}
	if n.cfg.IncidentWindow == 0 {
		n.cfg.IncidentWindow = DefaultIncidentWindow
	}
	if n.cfg.MaxConsentRecords == 0 {
		n.cfg.MaxConsentRecords = DefaultMaxConsentRecords
	}
	if n.cfg.MaxFutureSkew == 0 {
		n.cfg.MaxFutureSkew = DefaultMaxFutureSkew
	}
	if n.store == nil {
		if cfg.Dir == "" {
			return nil, errors.New("cloud: Config needs a Store or a Dir for SQLite")
		}
		st, err := sqlite.Open(ctx, cfg.Dir, sqlite.Config{})
		if err != nil {
			return nil, err
		}
		n.store, n.ownStore = st, true
	}
	if err := n.openConsentLog(ctx); err != nil {
		n.closeStore()
		return nil, err
	}
	keys, err := NewKeys(n.store, cfg.Controllers)
	if err != nil {
		n.closeStore()
		return nil, err
	}
	n.keys = keys

	// Metrics and the operator API (metrics.go, httpapi.go).
	n.metrics = newMetrics()
	if n.api, err = newHTTPAPI(n); err != nil {
		n.closeStore()
		return nil, err
	}

	tcfg := cfg.Transport
	tcfg.Authorize = n.authorize
	tcfg.DeviceRoots = cfg.DeviceRoots
	tcfg.Certificate = cfg.Certificate
	if tcfg.Certificate == nil {
		c, err := selfSignedCertificate()
		if err != nil {
			n.closeStore()
			return nil, err
		}
		tcfg.Certificate = c
		n.log.Warn("no server certificate configured: using a self-signed one for localhost")
	}
	n.cert = tcfg.Certificate
	if len(cfg.FleetSecret) > 0 {
		tcfg.PSK = n.psk
	}
	tokens, err := identity.NewTokenVerifier(identity.VerifierConfig{
		Audience: n.cfg.TokenAudience,
		Keys:     n.deviceKey,
		Now:      n.now,
		// In the store, so that a token accepted by one node is refused
		// by every other.
		Replay: n.store.ReplayCache(store.ReplayConfig{Now: n.now}),
	})
	if err != nil {
		n.closeStore()
		return nil, err
	}
	tcfg.Tokens = tokens
	n.srv = transport.NewServer(tcfg)
	for _, r := range n.resources() {
		if err := n.srv.Handle(r); err != nil {
			n.Close()
			return nil, err
		}
	}
	if err := n.startBackground(ctx); err != nil {
		n.Close()
		return nil, err
	}
	n.startExpiry()
	return n, nil
}

// Listen starts serving on address, a coap://, coaps://, coap+tcp:// or
// coaps+tcp:// URL for devices, or an http:// or https:// URL for the
// operator API and metrics (https with the node's Certificate); port 0
// picks a free one. It returns the URL it listens on.
func (n *Node) Listen(address string) (string, error) {
	if u, err := url.Parse(address); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		return n.api.listen(u)
	}
	return n.srv.Listen(address)
}

// Certificate returns the server certificate the node presents over TLS
// and certificate DTLS, its chain ending in its root: the configured one,
// or the self-signed one made at start.
func (n *Node) Certificate() *tls.Certificate { return n.cert }

// ConsentLog returns the consent log the node appends accepted consent
// records to, kept in the store.
func (n *Node) ConsentLog() *consent.Log { return n.consentLog }

// ConsentLogKey returns the consent log's public key, a note verifier key:
// what anyone needs to check a receipt or an export.
func (n *Node) ConsentLogKey() string { return n.consentLogKey }

// Store returns the node's store.
func (n *Node) Store() store.Store { return n.store }

// Keys returns the keys the node trusts to sign consent records and
// manifests: the subjects' app keys from the registry, the devices' keys,
// and the maker's controller keys.
func (n *Node) Keys() consent.Keys { return n.keys }

// Close stops serving, waits for the handlers in progress (operator API
// requests are cancelled), and closes the store if the node opened it. It
// may be called more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.stopExpiry()
		if n.bgCancel != nil {
			n.bgCancel()
			n.bg.Wait()
		}
		if n.api != nil {
			n.api.close()
		}
		if n.srv != nil {
			n.closeErr = n.srv.Close()
		}
		if err := n.closeStore(); err != nil && n.closeErr == nil {
			n.closeErr = err
		}
	})
	return n.closeErr
}

func (n *Node) closeStore() error {
	if n.ownStore {
		return n.store.Close()
	}
	return nil
}

// resources lists the v1 resources the node serves.
func (n *Node) resources() []transport.Resource {
	return append(n.deviceResources(), n.stateResources()...)
}

// authorize is the transport's Authorize hook: every way in asks the
// registry. A device the registry does not know is admitted only with a
// verified manufacturer chain, so that it can enroll.
func (n *Node) authorize(ctx context.Context, p transport.Peer) error {
	err := n.admit(ctx, p)
	n.metrics.session(p.Method, err == nil)
	return err
}

// admit decides authorize's question.
func (n *Node) admit(ctx context.Context, p transport.Peer) error {
	if p.Method == "revoked" {
		return fmt.Errorf("cloud: device %s was just refused", p.Device)
	}
	d, err := n.store.Device(ctx, p.Device)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if p.Method == "cert" {
			return nil // zero-touch: its chain verified; it enrolls next
		}
		return fmt.Errorf("cloud: device %s is not registered", p.Device)
	case err != nil:
		return err
	case d.Standing != store.Active:
		return fmt.Errorf("cloud: device %s is %s", p.Device, d.Standing)
	}
	return nil
}

// psk returns an imported device's pre-shared key.
func (n *Node) psk(ctx context.Context, id identity.ID) ([]byte, error) {
	if _, err := n.store.Device(ctx, id); err != nil {
		return nil, err
	}
	return transport.DerivePSK(n.cfg.FleetSecret, id)
}

// deviceKey returns a registered device's public key, for its tokens.
func (n *Node) deviceKey(ctx context.Context, id identity.ID) (crypto.PublicKey, error) {
	d, err := n.store.Device(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", identity.ErrUnknownDevice, id)
	}
	if err != nil {
		return nil, err
	}
	return x509.ParsePKIXPublicKey(d.PublicKey)
}
