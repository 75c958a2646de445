package device

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
)

// A running manifest is the one Record shapes readings with: the manifest
// as its maker signed it, its hash, which the batches of its readings
// name, and its enforcer. It is never changed: a new manifest is a new
// running, swapped in at once.
type running struct {
	manifest *policy.Manifest
	hash     protocol.Hash
	enforcer *policy.Enforcer
}

// open checks a signed manifest against the maker's keys and makes it
// ready to run.
func (a *Agent) open(ctx context.Context, signed []byte) (*running, error) {
	m, err := policy.OpenSigned(ctx, signed, a.cfg.Makers)
	if err != nil {
		return nil, err
	}
	r := &running{manifest: m}
	if r.hash, err = m.Hash(); err != nil {
		return nil, err
	}
	if r.enforcer, err = policy.NewEnforcer(m, a.id.String(), a.pseudonyms); err != nil {
		return nil, err
	}
	return r, nil
}

// use makes r the manifest Record runs, and remembers it for the
// readings it shapes.
func (a *Agent) use(r *running) {
	a.manifestMu.Lock()
	a.manifests[r.hash] = r.manifest
	a.manifestMu.Unlock()
	a.run.Store(r)
}

// manifestOf returns the manifest with hash h, which shaped a queue's
// readings; the one running if the agent does not know it (it ran before
// a restart).
func (a *Agent) manifestOf(h protocol.Hash) *policy.Manifest {
	a.manifestMu.Lock()
	m, ok := a.manifests[h]
	a.manifestMu.Unlock()
	if !ok {
		m = a.run.Load().manifest
	}
	return m
}

// FetchManifest fetches the manifest of the device's model from the
// cloud (GET /v1/manifest, docs/protocol.md 4.3) and, if it is not the one
// the agent runs, checks its maker's signature (policy.OpenSigned with
// Config.Makers) and switches to it at once: readings recorded from then
// on are shaped by it and their batches name its hash, while the readings
// already in the outbox keep the manifest that shaped them. A manifest
// that does not verify, or is for another product, is refused and logged
// (ErrManifestRefused), and the agent keeps the one it runs. It returns
// the hash of the manifest the agent runs afterwards.
//
// A started agent fetches the manifest by itself: when it starts, every
// Config.ManifestInterval, and when the cloud answers a batch with 4.00
// unknown manifest (protocol.DiagnosticUnknownManifest). The agent does
// not keep a fetched manifest across a restart: it runs Config.Manifest
// until it fetches again.
func (a *Agent) FetchManifest(ctx context.Context) (protocol.Hash, error) {
	cur := a.run.Load()
	if a.cfg.URL == "" {
		return cur.hash, errors.New("device: Config.URL is empty")
	}
	c, err := a.conn(ctx)
	if err != nil {
		return cur.hash, err
	}
	var resp protocol.ManifestResponse
	var etag []byte
	if p := a.etag.Load(); p != nil {
		etag = *p
	}
	// The cloud answers 2.03, without the manifest, while the one last
	// fetched is its current one.
	changed, etag, err := c.GetIfChanged(ctx, protocol.ManifestPath, etag, &resp)
	if err != nil {
		return cur.hash, err
	}
	if !changed {
		return cur.hash, nil
	}
	a.etag.Store(&etag)
	a.fetchMu.Lock()
	defer a.fetchMu.Unlock()
	cur = a.run.Load()
	next, err := a.open(ctx, resp.Signed)
	switch {
	case err != nil:
	case next.hash == cur.hash:
		return cur.hash, nil
	case next.manifest.Product != cur.manifest.Product:
		err = fmt.Errorf("a manifest for product %q, not %q", next.manifest.Product, cur.manifest.Product)
	}
	if err != nil {
		a.log.Error("device: the manifest from the cloud is refused; keeping the one running", "running", cur.hash, "err", err)
		return cur.hash, fmt.Errorf("%w: %w", ErrManifestRefused, err)
	}
	a.use(next)
	a.log.Info("device: switched to the manifest from the cloud", "version", next.manifest.Version, "hash", next.hash,
		"was", cur.hash)
	return next.hash, nil
}

// refetch asks the goroutine that fetches the manifest to fetch it now.
func (a *Agent) refetch() {
	select {
	case a.fetch <- struct{}{}:
	default:
	}
}

// watchManifest fetches the manifest when the agent starts, every
// Config.ManifestInterval, and when asked (refetch), until ctx ends. A
// fetch that fails is tried again after a backoff; a manifest refused is
// not fetched again before the interval.
func (a *Agent) watchManifest(ctx context.Context) {
	defer a.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.fetch:
		}
		_, err := a.FetchManifest(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := a.cfg.ManifestInterval
		if err != nil && !errors.Is(err, ErrManifestRefused) {
			failures++
			a.logFailure(ctx, failures, "device: fetching the manifest failed, trying again", "err", err)
			wait = a.backoff(failures)
		} else {
			failures = 0
		}
		t.Stop()
		if wait > 0 {
			t.Reset(wait)
		}
	}
}
