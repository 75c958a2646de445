package device_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
	"github.com/sensible-iot/sensible/protocol"
)

// withoutNote is a change to the manifest: the count stream's note no
// longer leaves the device.
func withoutNote(m *policy.Manifest) {
	for i := range m.Streams {
		s := &m.Streams[i]
		for j := range s.Fields {
			if s.Name == "count" && s.Fields[j].Name == "note" {
				s.Fields[j].Transform = policy.Transform{Op: "drop"}
			}
		}
	}
}

// adopt imports m, a device another node knows, into c with its owner.
func (c *cloudNode) adopt(m *meter) {
	c.t.Helper()
	ctx := context.Background()
	id, err := c.node.ImportDevice(ctx, cloud.ImportedDevice{Key: m.key.Public(), Model: model})
	must(c.t, err)
	if id != m.id {
		c.t.Fatalf("imported as %v, not %v", id, m.id)
	}
	must(c.t, c.node.Store().SetOwner(ctx, m.id, owner))
}

// addManifest puts a signed manifest in c's store as its newest, as a
// cloud whose store was tampered with would serve it.
func (c *cloudNode) addManifest(signed []byte, hash protocol.Hash, added time.Time) {
	c.t.Helper()
	must(c.t, c.node.Store().AddManifest(context.Background(), store.Manifest{Hash: hash, Model: model, Signed: signed, Added: added}))
}

// TestManifestUpdated: the agent fetches the manifest the cloud serves
// and, once the maker's signature checks out, switches to it at once:
// readings recorded after are shaped by it, those queued before keep the
// manifest that shaped them, and the cloud takes both. A manifest the
// maker did not sign, or for another product, is refused and the agent
// keeps the one it runs.
func TestManifestUpdated(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	cfg := k.config(t, m, t.TempDir(), c.url)
	a := newAgent(t, cfg)
	ctx := context.Background()
	note := func(n int64) policy.Reading { return policy.Reading{"ts": time.Now(), "n": n, "note": "hello"} }

	if h, err := a.FetchManifest(ctx); err != nil || h != k.hash {
		t.Fatalf("fetching the manifest the agent runs: %x, %v", h, err)
	}
	must(t, a.Record(ctx, "count", note(1)))
	v2, h2 := k.version(t, "2027.1.1", withoutNote)
	_, err := c.node.AddManifest(ctx, v2)
	must(t, err)
	if a.ManifestHash() != k.hash {
		t.Fatal("the agent switched before it fetched")
	}
	if h, err := a.FetchManifest(ctx); err != nil || h != h2 || a.ManifestHash() != h2 {
		t.Fatalf("fetching a new manifest: %x, %v; running %x, want %x", h, err, a.ManifestHash(), h2)
	}
	must(t, a.Record(ctx, "count", note(2)))
	must(t, a.Start())
	drain(t, a, 20*time.Second)
	got := c.stored(m, "count")
	if len(got) != 2 || got[0]["note"] != "hello" || got[1]["note"] != nil {
		t.Fatalf("the cloud holds %v: want the first reading with its note (the old manifest), the second without", got)
	}

	// Forgeries in the cloud's store.
	_, stranger, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	added := time.Now().Add(time.Hour)
	// signedBy returns the manifest as version v, signed by key under kid.
	signedBy := func(key ed25519.PrivateKey, kid, v string) ([]byte, protocol.Hash) {
		data, err := os.ReadFile("testdata/meter.json")
		must(t, err)
		m, err := policy.Parse(data)
		must(t, err)
		m.Version = v
		signed, err := m.Sign(key, []byte(kid))
		must(t, err)
		h, err := m.Hash()
		must(t, err)
		return signed, h
	}
	for _, tc := range []struct {
		name string
		sign func() ([]byte, protocol.Hash)
		want error
	}{
		{"signed by a stranger under the maker's key ID", func() ([]byte, protocol.Hash) {
			return signedBy(stranger, "maker-1", "2027.6.6")
		}, consent.ErrBadSignature},
		{"signed by a key the device does not know", func() ([]byte, protocol.Hash) {
			return signedBy(stranger, "maker-2", "2027.7.7")
		}, consent.ErrUnknownKey},
		{"a signature altered", func() ([]byte, protocol.Hash) {
			signed, h := k.version(t, "2027.8.8", nil)
			signed[len(signed)-1] ^= 1
			return signed, h
		}, consent.ErrBadSignature},
		{"for another product", func() ([]byte, protocol.Hash) {
			return k.version(t, "2027.9.9", func(m *policy.Manifest) { m.Product = "acme-oven-o1" })
		}, nil},
	} {
		signed, h := tc.sign()
		added = added.Add(time.Minute)
		c.addManifest(signed, h, added)
		got, err := a.FetchManifest(ctx)
		if !errors.Is(err, device.ErrManifestRefused) || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want a refusal matching %v", tc.name, err, tc.want)
		}
		if got != h2 || a.ManifestHash() != h2 {
			t.Errorf("%s: running %x, want %x still", tc.name, a.ManifestHash(), h2)
		}
	}
	must(t, a.Record(ctx, "count", note(3)))
	drain(t, a, 20*time.Second)
	if got := c.stored(m, "count"); len(got) != 3 {
		t.Fatalf("the cloud holds %d readings", len(got))
	}
}

// TestManifestUnknown: when the cloud answers a batch with 4.00 unknown
// manifest (a cloud that holds another manifest of the model), the agent
// drops the batch, fetches the manifest the cloud serves, and records
// under it from then on.
func TestManifestUnknown(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	cfg := k.config(t, m, t.TempDir(), c.url)
	cfg.ManifestInterval = -1
	a := newAgent(t, cfg)
	ctx := context.Background()
	must(t, a.Start())
	must(t, a.Record(ctx, "count", tick(1)))
	drain(t, a, 20*time.Second)

	// The cloud moves to a store that holds only a newer manifest.
	must(t, c.node.Close())
	v2, h2 := k.version(t, "2027.1.1", nil)
	c2 := startCloudWith(t, k, t.TempDir(), "coaps://127.0.0.1:"+c.port(), v2)
	c2.adopt(m)
	must(t, a.Record(ctx, "count", tick(2)))
	drain(t, a, 20*time.Second)
	if h := a.Health(); h.Drops[device.DropUnknownManifest] != 1 {
		t.Fatalf("health: %+v", h)
	}
	waitFor(t, 10*time.Second, "the switch to the cloud's manifest", func() bool { return a.ManifestHash() == h2 })
	must(t, a.Record(ctx, "count", tick(3)))
	drain(t, a, 20*time.Second)
	if got := counts(t, c2.stored(m, "count")); len(got) != 1 || got[0] != 3 {
		t.Fatalf("the new cloud holds %v", got)
	}
}
