package cloud_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/options"
	coaptcp "github.com/plgd-dev/go-coap/v3/tcp"
	coaptcpclient "github.com/plgd-dev/go-coap/v3/tcp/client"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/postgres"
	"github.com/sensible-iot/sensible/cloud/store/sqlite"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/internal/pgtest"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The models of the tests: the air conditioner and the robot vacuum of
// consent/policy/testdata, and a model that has no manifest.
const (
	aircon  = "acme-aircon-x1"
	vacuum  = "acme-robovac-r2"
	nothing = "acme-prototype"
	// owner is the subject that owns the tests' devices.
	owner = "subj-7f3a2c"
)

// A clock is the node's clock, which a test moves. It starts at the
// real time, so that device tokens and certificates made now are valid.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// A manifest is a model's manifest as the maker signed it.
type manifest struct {
	m      *policy.Manifest
	hash   protocol.Hash
	signed []byte
}

// A fixture is a node listening on all four transports, on a store with
// the tests' models and manifests, and the keys and certificates around
// it: the maker's, the owner's app's, a manufacturer chain for devices
// and a server certificate for 127.0.0.1.
type fixture struct {
	t     testing.TB
	node  *cloud.Node
	st    store.Store
	clock *clock
	urls  map[string]string // by scheme; "coaps+cert" is coaps:// with certificates

	maker, app  ed25519.PrivateKey
	fleet       []byte
	factory     *identity.CA
	deviceRoots *x509.CertPool
	serverCert  *tls.Certificate
	serverRoots *x509.CertPool

	manifests map[string]*manifest // by model
	logSigner *consent.NoteSigner  // the consent log's, shared by the nodes
}

// stores opens a new, empty store of each kind.
var stores = map[string]func(t testing.TB) store.Store{
	"sqlite": func(t testing.TB) store.Store {
		s, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Config{})
		must(t, err)
		return s
	},
	"postgres": func(t testing.TB) store.Store {
		s, err := postgres.Open(context.Background(), pgtest.NewDatabase(t), postgres.Config{})
		must(t, err)
		return s
	},
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := identity.GenerateKey(identity.P256)
	must(t, err)
	return k
}

func newEd25519(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	return k
}

// newFixture starts a node on a new store of kind (or on cfg.Store), with
// cfg's settings (its Now, Controllers, FleetSecret, DeviceRoots and Certificate
// are the fixture's), and registers the models, their manifests and the
// owner's app key.
func newFixture(t testing.TB, kind string, cfg cloud.Config) *fixture {
	t.Helper()
	ctx := context.Background()
	st := cfg.Store
	if st == nil {
		st = stores[kind](t)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{t: t, st: st, clock: &clock{t: time.Now()}, maker: newEd25519(t), app: newEd25519(t),
		fleet: []byte("the fleet secret of the test factory"), manifests: map[string]*manifest{}}
	root, err := identity.NewRootCA(newKey(t), "Test Manufacturer Root", nil)
	must(t, err)
	f.factory, err = root.NewIntermediate(newKey(t), "Test Factory", nil)
	must(t, err)
	f.deviceRoots = x509.NewCertPool()
	f.deviceRoots.AddCert(root.Cert)
	cloudRoot, err := identity.NewRootCA(newKey(t), "Test Cloud Root", nil)
	must(t, err)
	srvKey := newKey(t)
	srvCert, err := cloudRoot.IssueServer(srvKey.Public(), []string{"127.0.0.1"}, nil)
	must(t, err)
	f.serverCert = &tls.Certificate{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey, Leaf: srvCert}
	f.serverRoots = x509.NewCertPool()
	f.serverRoots.AddCert(cloudRoot.Cert)
	f.logSigner, err = consent.NewNoteSigner("consent.test/log", newEd25519(t))
	must(t, err)
	f.start(cfg)

	for _, file := range []string{"aircon.json", "vacuum.json"} {
		data, err := os.ReadFile("../consent/policy/testdata/" + file)
		must(t, err)
		m, err := policy.Parse(data)
		must(t, err)
		signed, err := m.Sign(f.maker, []byte("maker-1"))
		must(t, err)
		h, err := m.Hash()
		must(t, err)
		f.manifests[m.Product] = &manifest{m: m, hash: h, signed: signed}
	}
	for _, m := range []string{aircon, vacuum, nothing} {
		must(t, st.AddModel(ctx, store.Model{ID: m, Name: m}))
	}
	for _, m := range []string{aircon, vacuum} {
		h, err := f.node.AddManifest(ctx, f.manifests[m].signed)
		must(t, err)
		if h != f.manifests[m].hash {
			t.Fatalf("AddManifest: hash %s, want %s", h, f.manifests[m].hash)
		}
	}
	pub, err := x509.MarshalPKIXPublicKey(f.app.Public())
	must(t, err)
	must(t, st.AddAppKey(ctx, store.AppKey{KID: []byte("app-1"), Subject: owner, PublicKey: pub, Added: f.clock.now()}))
	return f
}

// another starts a second node on f's store, with f's keys and clock,
// as a cloud of several nodes has them.
func (f *fixture) another(cfg cloud.Config) *fixture {
	g := *f
	g.start(cfg)
	return &g
}

// start starts f's node and makes it listen on every transport.
func (f *fixture) start(cfg cloud.Config) {
	t := f.t
	cfg.Store = f.st
	cfg.Now = f.clock.now
	cfg.Controllers = []consent.TrustedKey{{KID: []byte("maker-1"), Key: f.maker.Public(), Role: consent.ControllerKey}}
	cfg.FleetSecret = f.fleet
	cfg.DeviceRoots = f.deviceRoots
	cfg.Certificate = f.serverCert
	cfg.ConsentLogSigner = f.logSigner
	var err error
	f.node, err = cloud.New(context.Background(), cfg)
	must(t, err)
	t.Cleanup(func() { f.node.Close() })
	f.urls = map[string]string{}
	for scheme, listen := range map[string]string{
		"coaps":      "coaps://127.0.0.1:0",
		"coaps+cert": "coaps://127.0.0.1:0?auth=cert",
		"coap+tcp":   "coap+tcp://127.0.0.1:0",
		"coaps+tcp":  "coaps+tcp://127.0.0.1:0",
	} {
		f.urls[scheme], err = f.node.Listen(listen)
		must(t, err)
	}
}

// A device is a test device: its key, and for one made by the factory,
// its certificate chain.
type device struct {
	key    crypto.Signer
	id     identity.ID
	model  string
	cert   *tls.Certificate
	policy *policy.Enforcer
}

// importDevice imports a device of model, owned by owner.
func (f *fixture) importDevice(model string) *device {
	f.t.Helper()
	d := &device{key: newKey(f.t), model: model}
	var err error
	d.id, err = f.node.ImportDevice(context.Background(), cloud.ImportedDevice{Key: d.key.Public(), Model: model})
	must(f.t, err)
	must(f.t, f.st.SetOwner(context.Background(), d.id, owner))
	f.enforcer(d)
	return d
}

// factoryDevice makes a device with a certificate from the factory, which
// the node does not know yet.
func (f *fixture) factoryDevice(model string) *device {
	f.t.Helper()
	d := &device{key: newKey(f.t), model: model}
	var err error
	d.id, err = identity.IDOf(d.key)
	must(f.t, err)
	csr, err := identity.NewCSR(d.key)
	must(f.t, err)
	cert, err := f.factory.IssueDevice(csr, nil)
	must(f.t, err)
	d.cert = &tls.Certificate{Certificate: [][]byte{cert.Raw, f.factory.Cert.Raw}, PrivateKey: d.key, Leaf: cert}
	f.enforcer(d)
	return d
}

func (f *fixture) enforcer(d *device) {
	if m := f.manifests[d.model]; m != nil {
		var err error
		d.policy, err = policy.NewEnforcer(m.m, d.id.String(), []byte("the device's own pseudonym secret"))
		must(f.t, err)
	}
}

// config returns how d connects with scheme.
func (f *fixture) config(d *device, scheme string) transport.ClientConfig {
	f.t.Helper()
	cfg := transport.ClientConfig{ServerRoots: f.serverRoots, Retry: transport.RetryPolicy{Attempts: 2, Base: 10 * time.Millisecond, Timeout: 5 * time.Second}}
	switch scheme {
	case "coaps":
		psk, err := transport.DerivePSK(f.fleet, d.id)
		must(f.t, err)
		cfg.PSK, cfg.Device = psk, d.id
	case "coap+tcp":
		cfg.Signer, cfg.Audience = d.key, cloud.DefaultTokenAudience
	default:
		cfg.Certificate = d.cert
	}
	return cfg
}

// dial connects d with scheme.
func (f *fixture) dial(d *device, scheme string) *transport.Client {
	f.t.Helper()
	c, err := f.tryDial(d, scheme)
	must(f.t, err)
	return c
}

func (f *fixture) tryDial(d *device, scheme string) (*transport.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := transport.Dial(ctx, f.urls[scheme], f.config(d, scheme))
	if err == nil {
		f.t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// reading returns what d's enforcer lets leave of r on stream.
func (d *device) reading(t testing.TB, stream string, r policy.Reading) policy.Reading {
	t.Helper()
	out, err := d.policy.Apply(stream, r)
	if err != nil || out == nil {
		t.Fatalf("Apply(%s): %v, %v", stream, out, err)
	}
	return out.Fields
}

// power returns a batch of n readings of the air conditioner's power
// stream, taken a minute apart up to the clock's now.
func (f *fixture) power(d *device, seq uint64, n int) protocol.Batch {
	return f.powerAt(d, seq, n, f.clock.now())
}

// powerAt returns a batch of n readings of the power stream, taken a
// minute apart up to end.
func (f *fixture) powerAt(d *device, seq uint64, n int, end time.Time) protocol.Batch {
	f.t.Helper()
	b := protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "power", Key: protocol.Key{Epoch: 0x5eed, Seq: seq}}
	for i := range n {
		at := end.Add(time.Duration(i-n) * time.Minute)
		b.Readings = append(b.Readings, d.reading(f.t, "power", policy.Reading{"ts": at, "watts": 1000 + 10.4*float64(i), "serial": "SN-0042"}))
	}
	return b
}

// pests returns a batch of one pest sighting of the vacuum, for the cloud
// or a partner.
func (f *fixture) pests(d *device, seq uint64, species, partner string) protocol.Batch {
	f.t.Helper()
	r := d.reading(f.t, "pest-sighting", policy.Reading{"ts": f.clock.now().Add(-time.Minute), "species": species, "x": 3.2, "y": 7.9, "frame": "<jpeg>"})
	return protocol.Batch{Manifest: f.manifests[vacuum].hash, Stream: "pest-sighting", Key: protocol.Key{Epoch: 0xfade, Seq: seq}, Partner: partner,
		Readings: []policy.Reading{r}}
}

// post sends a batch and returns the ack.
func post(t testing.TB, c *transport.Client, b protocol.Batch) (protocol.Ack, error) {
	t.Helper()
	body, err := b.MarshalCBOR()
	must(t, err)
	return postRaw(c, protocol.FormatCBOR, body)
}

func postRaw(c *transport.Client, format transport.Format, body []byte) (protocol.Ack, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ack protocol.Ack
	err := c.DoRaw(ctx, transport.POST, protocol.TelemetryPath, format, body, &ack)
	return ack, err
}

// notice is the notice the owner was shown.
var notice = consent.Notice{ID: "analytics", Version: 1, Language: "en-GB", Hash: consent.HashText([]byte("We use your air conditioner's power readings to ..."))}

// grant returns a consent the owner gave in the app at the time given,
// for purpose and the categories, to the recipients, for every device.
func grant(at time.Time, purpose string, categories []string, recipients ...string) *consent.Record {
	return consent.Grant(consent.GrantParams{
		Subject: owner, Controller: "acme", Notice: notice, At: at, Actor: "subject:app",
		Processes: []consent.Process{{Purpose: purpose, Categories: categories, Recipients: recipients, LegalBasis: "consent"}},
	})
}

// powerGrant is consent to the power stream.
func powerGrant(at time.Time) *consent.Record {
	return grant(at, "analytics", []string{"device.usage", "device.sensor.power", "device.identifier"})
}

// pestGrant is consent to the pest sightings, shared with pestco.
func pestGrant(at time.Time) *consent.Record {
	return grant(at, "pest-alerts", []string{"device.sensor.camera.pest", "device.map.position"}, "pestco")
}

// give signs r with the owner's app key and adds it to the node.
func (f *fixture) give(r *consent.Record) []byte {
	f.t.Helper()
	signed, err := consent.Sign(r, f.app, []byte("app-1"))
	must(f.t, err)
	r2, err := f.node.AddConsent(context.Background(), signed)
	must(f.t, err)
	must(f.t, consent.VerifyReceipt(r2, signed, f.node.ConsentLogKey()))
	return signed
}

// addConsent is Node.AddConsent without the receipt.
func addConsent(n *cloud.Node, ctx context.Context, signed []byte) error {
	_, err := n.AddConsent(ctx, signed)
	return err
}

// codeOf returns the CoAP code of a client's error, or 0.
func codeOf(err error) transport.Code {
	var e *transport.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// diagnosticOf returns the diagnostic of a client's error.
func diagnosticOf(err error) string {
	var e *transport.Error
	if errors.As(err, &e) {
		return e.Diagnostic
	}
	return ""
}

// counts is what the store holds of a device: its readings of a stream,
// and its incidents.
func (f *fixture) readings(d *device, stream string) []store.Reading {
	f.t.Helper()
	rs, err := f.st.ListReadings(context.Background(), store.ReadingQuery{Device: d.id, Stream: stream})
	must(f.t, err)
	return rs
}

func (f *fixture) incidents(d *device) []store.Incident {
	f.t.Helper()
	is, err := f.st.ListIncidents(context.Background(), d.id, time.Unix(0, 0), 0)
	must(f.t, err)
	return is
}

// rawConn connects over coap+tcp:// or coaps+tcp:// with go-coap itself,
// for what the transport's client does not do: read a success code, send
// Uri-Query or ETag options. Over coap+tcp:// it first posts a token of d.
func (f *fixture) rawConn(ctx context.Context, d *device, scheme string) *coaptcpclient.Conn {
	f.t.Helper()
	u, err := url.Parse(f.urls[scheme])
	must(f.t, err)
	var opts []coaptcp.Option
	if scheme == "coaps+tcp" {
		cfg := &tls.Config{RootCAs: f.serverRoots}
		if d != nil {
			cfg.Certificates = []tls.Certificate{*d.cert}
		}
		opts = append(opts, options.WithTLS(cfg))
	}
	co, err := coaptcp.Dial(u.Host, opts...)
	must(f.t, err)
	f.t.Cleanup(func() { co.Close() })
	if d != nil && scheme == "coap+tcp" {
		token, err := identity.SignToken(d.key, identity.TokenParams{Audience: cloud.DefaultTokenAudience, IssuedAt: f.clock.now()})
		must(f.t, err)
		tb, err := codec.Marshal(token)
		must(f.t, err)
		resp, err := co.Post(ctx, protocol.AuthPath, message.AppCBOR, bytes.NewReader(tb))
		must(f.t, err)
		if resp.Code() != 0x44 {
			f.t.Fatalf("token refused: %v", resp.Code())
		}
	}
	return co
}

// rawConnNoAuth is rawConn without a device: nothing is posted first.
func (f *fixture) rawConnNoAuth(ctx context.Context, scheme string) *coaptcpclient.Conn {
	return f.rawConn(ctx, nil, scheme)
}

// rawPost sends one request with rawConn.
func (f *fixture) rawPost(d *device, scheme, path string, format transport.Format, query []string, body []byte) (transport.Code, []byte) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	co := f.rawConn(ctx, d, scheme)
	var qs []message.Option
	for _, q := range query {
		qs = append(qs, message.Option{ID: message.URIQuery, Value: []byte(q)})
	}
	resp, err := co.Post(ctx, path, message.MediaType(format), bytes.NewReader(body), qs...)
	must(f.t, err)
	b, _ := resp.ReadBody()
	return transport.Code(resp.Code()), b
}
