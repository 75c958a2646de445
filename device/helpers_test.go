package device_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// The tests' product model and the subject who owns their devices.
const (
	model = "acme-meter-m1"
	owner = "subj-5e1f09"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// keys are the keys around a test device: the maker's, which signs the
// manifest, and the owner's app's, which signs consent.
type keys struct {
	maker, app ed25519.PrivateKey
	manifest   *policy.Manifest
	signed     []byte // the manifest, signed by the maker
	hash       protocol.Hash
	fleet      []byte
}

func newKeys(t testing.TB) *keys {
	t.Helper()
	k := &keys{fleet: []byte("the fleet secret of the meter factory")}
	var err error
	_, k.maker, err = ed25519.GenerateKey(rand.Reader)
	must(t, err)
	_, k.app, err = ed25519.GenerateKey(rand.Reader)
	must(t, err)
	data, err := os.ReadFile("testdata/meter.json")
	must(t, err)
	k.manifest, err = policy.Parse(data)
	must(t, err)
	k.signed, err = k.manifest.Sign(k.maker, []byte("maker-1"))
	must(t, err)
	k.hash, err = k.manifest.Hash()
	must(t, err)
	return k
}

// version returns the tests' manifest as version v, changed by change
// (nil: not otherwise), signed by the maker, and its hash.
func (k *keys) version(t testing.TB, v string, change func(*policy.Manifest)) ([]byte, protocol.Hash) {
	t.Helper()
	data, err := os.ReadFile("testdata/meter.json")
	must(t, err)
	m, err := policy.Parse(data)
	must(t, err)
	m.Version = v
	if change != nil {
		change(m)
	}
	signed, err := m.Sign(k.maker, []byte("maker-1"))
	must(t, err)
	h, err := m.Hash()
	must(t, err)
	return signed, h
}

func (k *keys) makers() *consent.KeySet {
	var s consent.KeySet
	if err := s.Add(consent.TrustedKey{KID: []byte("maker-1"), Key: k.maker.Public(), Role: consent.ControllerKey}); err != nil {
		panic(err)
	}
	return &s
}

func (k *keys) consentKeys() *consent.KeySet {
	s := k.makers()
	if err := s.Add(consent.TrustedKey{KID: []byte("app-1"), Key: k.app.Public(), Role: consent.SubjectKey, Subject: owner}); err != nil {
		panic(err)
	}
	return s
}

// A cloudNode is a cloud node on SQLite in a directory, listening on
// coaps:// with DTLS-PSK, with the tests' model, its manifest and the
// owner's app key.
type cloudNode struct {
	t    testing.TB
	keys *keys
	dir  string
	node *cloud.Node
	url  string
}

// startCloud starts a node in dir on listen ("coaps://127.0.0.1:0" for
// any port), registering the model and manifest unless the store has
// them.
func startCloud(t testing.TB, k *keys, dir, listen string) *cloudNode {
	t.Helper()
	return startCloudWith(t, k, dir, listen, k.signed)
}

// startCloudWith is startCloud with the signed manifest to register.
func startCloudWith(t testing.TB, k *keys, dir, listen string, manifest []byte) *cloudNode {
	t.Helper()
	ctx := context.Background()
	n, err := cloud.New(ctx, cloud.Config{
		Dir:           dir,
		FleetSecret:   k.fleet,
		Controllers:   []consent.TrustedKey{{KID: []byte("maker-1"), Key: k.maker.Public(), Role: consent.ControllerKey}},
		SweepInterval: -1,
		MaxIncidents:  -1,
	})
	must(t, err)
	c := &cloudNode{t: t, keys: k, dir: dir, node: n}
	t.Cleanup(func() { n.Close() })
	st := n.Store()
	if _, err := st.Model(ctx, model); err != nil {
		must(t, st.AddModel(ctx, store.Model{ID: model, Name: model}))
		_, err := n.AddManifest(ctx, manifest)
		must(t, err)
		pub, err := x509.MarshalPKIXPublicKey(k.app.Public())
		must(t, err)
		must(t, st.AddAppKey(ctx, store.AppKey{KID: []byte("app-1"), Subject: owner, PublicKey: pub, Added: time.Now()}))
	}
	c.url, err = n.Listen(listen)
	must(t, err)
	return c
}

// port returns the URL's port.
func (c *cloudNode) port() string {
	u, err := url.Parse(c.url)
	must(c.t, err)
	return u.Port()
}

// A meter is a test device: its key and ID, imported into the cloud
// with an owner.
type meter struct {
	key crypto.Signer
	id  identity.ID
}

func (c *cloudNode) importMeter() *meter {
	c.t.Helper()
	key, err := identity.GenerateKey(identity.P256)
	must(c.t, err)
	m := &meter{key: key}
	ctx := context.Background()
	m.id, err = c.node.ImportDevice(ctx, cloud.ImportedDevice{Key: key.Public(), Model: model})
	must(c.t, err)
	must(c.t, c.node.Store().SetOwner(ctx, m.id, owner))
	return m
}

// config returns the configuration of m's agent with its outbox in dir,
// delivering to url over DTLS-PSK, retrying fast.
func (k *keys) config(t testing.TB, m *meter, dir, url string) device.Config {
	t.Helper()
	psk, err := transport.DerivePSK(k.fleet, m.id)
	must(t, err)
	return device.Config{
		Dir:         dir,
		Manifest:    k.signed,
		Makers:      k.makers(),
		Key:         m.key,
		Owner:       owner,
		ConsentKeys: k.consentKeys(),
		URL:         url,
		Transport: transport.ClientConfig{PSK: psk,
			Retry: transport.RetryPolicy{Attempts: 2, Base: 10 * time.Millisecond, Max: 50 * time.Millisecond, Timeout: 2 * time.Second}},
		RetryBase:      20 * time.Millisecond,
		RetryMax:       250 * time.Millisecond,
		HealthInterval: -1,
		Logger:         testLogger(t),
	}
}

// testLogger logs through t at the warning level and above, where
// SENSIBLE_TEST_LOG is set.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SENSIBLE_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newAgent(t testing.TB, cfg device.Config) *device.Agent {
	t.Helper()
	a, err := device.New(context.Background(), cfg)
	must(t, err)
	t.Cleanup(func() { a.Close() })
	return a
}

// grant returns consent the owner gave in the app at at, to purpose for
// the categories, shared with the recipients.
func grant(at time.Time, purpose string, categories []string, recipients ...string) *consent.Record {
	return consent.Grant(consent.GrantParams{
		Subject: owner, Controller: "acme", At: at, Actor: "subject:app",
		Notice:    consent.Notice{ID: "meter", Version: 1, Language: "en-GB", Hash: consent.HashText([]byte("We use your meter's readings to ..."))},
		Processes: []consent.Process{{Purpose: purpose, Categories: categories, Recipients: recipients, LegalBasis: "consent"}},
	})
}

// analytics is consent to the power stream, given two hours ago (its
// timestamps are coarsened to the hour, and consent is decided at the
// time a reading names).
func analytics() *consent.Record {
	return grant(time.Now().Add(-2*time.Hour), "analytics", []string{"device.usage", "device.sensor.power", "device.identifier"})
}

// sign signs r with the owner's app key.
func (k *keys) sign(t testing.TB, r *consent.Record) []byte {
	t.Helper()
	signed, err := consent.Sign(r, k.app, []byte("app-1"))
	must(t, err)
	return signed
}

// stored returns the readings of stream the cloud holds for m, in the
// order it stored them, each decoded.
func (c *cloudNode) stored(m *meter, stream string) []map[string]any {
	c.t.Helper()
	ctx := context.Background()
	seen := map[int64]store.Reading{}
	var from time.Time
	for {
		page, err := c.node.Store().ListReadings(ctx, store.ReadingQuery{Device: m.id, Stream: stream, From: from})
		must(c.t, err)
		added := 0
		for _, r := range page {
			if _, ok := seen[r.ID]; !ok {
				seen[r.ID] = r
				added++
			}
		}
		if len(page) < store.MaxList || added == 0 {
			break
		}
		from = page[len(page)-1].Time
	}
	ids := make([]int64, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]map[string]any, len(ids))
	for i, id := range ids {
		var m map[string]any
		must(c.t, codec.Unmarshal(seen[id].Fields, &m))
		out[i] = m
	}
	return out
}

// counts returns the "n" of each reading, in order.
func counts(t testing.TB, rs []map[string]any) []int64 {
	t.Helper()
	ns := make([]int64, len(rs))
	for i, r := range rs {
		switch n := r["n"].(type) {
		case uint64:
			ns[i] = int64(n)
		case int64:
			ns[i] = n
		default:
			t.Fatalf("reading %d: n is a %T", i, r["n"])
		}
	}
	return ns
}

// tick is a reading of the count stream.
func tick(n int64) policy.Reading {
	return policy.Reading{"ts": time.Now(), "n": n}
}

// drain waits until a's outbox is empty.
func drain(t testing.TB, a *device.Agent, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := a.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v; health %+v", err, a.Health())
	}
}

// checkGoroutines fails t if more goroutines run than before, once those
// that are ending have ended.
func checkGoroutines(t testing.TB, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// generateKey makes a device key.
func generateKey() (crypto.Signer, error) { return identity.GenerateKey(identity.P256) }

// unregisteredMeter is a meter with a key of its own that no cloud knows.
func unregisteredMeter(t *testing.T) *meter {
	t.Helper()
	k, err := generateKey()
	must(t, err)
	return &meter{key: k}
}
