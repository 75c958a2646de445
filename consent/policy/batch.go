package policy

import (
	"errors"
	"fmt"
	"sync"
)

// ErrUnknownManifest means a batch names a manifest hash the cloud does not
// hold.
var ErrUnknownManifest = errors.New("policy: unknown manifest")

// A Batch is what a device sends: readings of one stream for one
// destination, naming the hash of the manifest that shaped them.
type Batch struct {
	Manifest    [32]byte    // the hash of the manifest that shaped the readings
	Stream      string      // their stream
	Destination Destination // where they are going
	Readings    []Reading   // the readings, as sent
}

// Manifests is the cloud's register of manifests by hash, so that each
// batch is checked against exactly the manifest it names. The zero value
// is empty; it is safe for concurrent use.
type Manifests struct {
	mu     sync.RWMutex
	byHash map[[32]byte]*Manifest
}

// Add registers m and returns its hash.
func (r *Manifests) Add(m *Manifest) ([32]byte, error) {
	if err := m.Validate(); err != nil {
		return [32]byte{}, err
	}
	m, err := m.clone()
	if err != nil {
		return [32]byte{}, err
	}
	h, err := m.Hash()
	if err != nil {
		return h, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byHash == nil {
		r.byHash = make(map[[32]byte]*Manifest)
	}
	r.byHash[h] = m
	return h, nil
}

// Lookup returns the registered manifest whose hash is h, for decoding a
// batch against exactly the manifest it names. The manifest is shared
// with the register: read it, never modify it.
func (r *Manifests) Lookup(h [32]byte) (*Manifest, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m, ok := r.byHash[h]
	return m, ok
}

// Check checks every reading of b against the manifest it names. The
// error is ErrUnknownManifest or the first *Violation, with the reading's
// index.
func (r *Manifests) Check(b *Batch) error {
	r.mu.RLock()
	m := r.byHash[b.Manifest]
	r.mu.RUnlock()
	if m == nil {
		return fmt.Errorf("%w: %x", ErrUnknownManifest, b.Manifest[:8])
	}
	for i, rd := range b.Readings {
		if err := m.Check(b.Stream, b.Destination, rd); err != nil {
			return fmt.Errorf("reading %d: %w", i, err)
		}
	}
	return nil
}
