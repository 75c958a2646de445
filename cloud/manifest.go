package cloud

import (
	"context"
	"errors"
	"fmt"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// manifestCacheSize bounds the manifests a node keeps parsed.
const manifestCacheSize = 256

// AddManifest checks a manifest its maker signed (a COSE_Sign1 message
// from policy.Manifest.Sign) against Config.Controllers, and adds it for
// the model it names as its product, which must be registered
// (store.ErrNotFound otherwise). The newest manifest of a model is the
// one its devices fetch from /v1/manifest; batches shaped by older ones
// are still accepted. It returns the manifest's hash; a manifest added
// before is store.ErrConflict.
func (n *Node) AddManifest(ctx context.Context, signed []byte) (protocol.Hash, error) {
	m, err := policy.OpenSigned(ctx, signed, n.keys)
	if err != nil {
		return protocol.Hash{}, err
	}
	h, err := m.Hash()
	if err != nil {
		return protocol.Hash{}, err
	}
	err = n.store.AddManifest(ctx, store.Manifest{Hash: h, Model: m.Product, Signed: signed, Added: n.now()})
	if err != nil {
		return protocol.Hash{}, fmt.Errorf("cloud: adding manifest %s of %q: %w", protocol.Hash(h), m.Product, err)
	}
	return h, nil
}

// openManifest checks a stored manifest against the maker's keys and
// that it is what the store says it is: the manifest with its hash, of
// its model.
func openManifest(ctx context.Context, keys consent.Keys, sm store.Manifest) (*policy.Manifest, error) {
	m, err := policy.OpenSigned(ctx, sm.Signed, keys)
	if err != nil {
		return nil, fmt.Errorf("cloud: stored manifest %s: %w", sm.Hash, err)
	}
	h, err := m.Hash()
	if err != nil {
		return nil, err
	}
	if h != sm.Hash || m.Product != sm.Model {
		return nil, fmt.Errorf("cloud: stored manifest %s is the manifest %x of %q, not one of %q", sm.Hash, h[:8], m.Product, sm.Model)
	}
	return m, nil
}

// A manifestEntry is a manifest as the node checks batches with it.
type manifestEntry struct {
	hash protocol.Hash
	m    *policy.Manifest
	// reg holds m alone, for policy.Manifests.Check.
	reg *policy.Manifests
}

// manifestCache finds manifests in the store by hash and keeps the most
// recently used ones parsed. A manifest never changes under its hash, so
// nothing held goes stale.
type manifestCache struct {
	st      store.Manifests
	keys    consent.Keys
	entries *bounded[protocol.Hash, *manifestEntry]
}

func newManifestCache(st store.Manifests, keys consent.Keys) *manifestCache {
	return &manifestCache{st: st, keys: keys, entries: newBounded[protocol.Hash, *manifestEntry](manifestCacheSize)}
}

// get returns the manifest with hash h; an unknown hash is
// store.ErrNotFound.
func (c *manifestCache) get(ctx context.Context, h protocol.Hash) (*manifestEntry, error) {
	if e, ok := c.entries.get(h); ok {
		return e, nil
	}
	sm, err := c.st.Manifest(ctx, h)
	if err != nil {
		return nil, err
	}
	m, err := openManifest(ctx, c.keys, sm)
	if err != nil {
		return nil, err
	}
	e := &manifestEntry{hash: h, m: m, reg: &policy.Manifests{}}
	if _, err := e.reg.Add(m); err != nil {
		return nil, err
	}
	return c.entries.add(h, e), nil
}

// source returns the cache as a protocol.ManifestSource for one batch,
// which has no context and no error of its own: the manifest found, or
// the store's failure (not an unknown hash), is left in *found and *err.
func (c *manifestCache) source(ctx context.Context, found **manifestEntry, err *error) protocol.ManifestSource {
	return lookupFunc(func(h [32]byte) (*policy.Manifest, bool) {
		e, lerr := c.get(ctx, h)
		if lerr != nil {
			if !errors.Is(lerr, store.ErrNotFound) {
				*err = lerr
			}
			return nil, false
		}
		*found = e
		return e.m, true
	})
}

// lookupFunc is a function as a protocol.ManifestSource.
type lookupFunc func(h [32]byte) (*policy.Manifest, bool)

// Lookup implements protocol.ManifestSource.
func (f lookupFunc) Lookup(h [32]byte) (*policy.Manifest, bool) { return f(h) }

// getManifest serves GET /v1/manifest: the newest manifest of the
// device's model, as its maker signed it, with an ETag.
func (d *deviceAPI) getManifest(ctx context.Context, r *transport.Request) (any, error) {
	dev, err := d.activeDevice(ctx, r.Device)
	if errors.Is(err, store.ErrNotFound) {
		return nil, transport.Errorf(transport.NotFound, "device not enrolled: POST %s first", protocol.EnrollPath)
	}
	if err != nil {
		return nil, err
	}
	sm, err := d.newestManifest(ctx, dev.Model)
	if errors.Is(err, store.ErrNotFound) {
		return nil, transport.Errorf(transport.NotFound, "no manifest for model %q yet", dev.Model)
	}
	if err != nil {
		return nil, err
	}
	// The ETag is the first 8 bytes of the manifest's hash: a device that
	// names it gets 2.03 Valid instead of the manifest again.
	return &transport.Response{Body: protocol.ManifestResponse{Signed: sm.Signed}, ETag: sm.Hash[:8]}, nil
}

// newestManifest returns the manifest of model added last, or
// store.ErrNotFound if it has none.
func (d *deviceAPI) newestManifest(ctx context.Context, model string) (store.Manifest, error) {
	// One row, not the model's every manifest: any device may ask.
	return d.n.store.NewestManifest(ctx, model)
}
