package consent

import (
	"fmt"
	"sync"
)

// Notices is the controller's register of the notices it has published.
// A new version either keeps earlier consent (a wording fix) or requires
// the subject to consent again (new terms); records answering a version
// that a later re-consent version replaced are superseded. The zero value
// is an empty register; it is safe for concurrent use.
type Notices struct {
	mu       sync.RWMutex
	versions map[string]map[uint32]Digest // notice ID → version → text hash
	minimum  map[string]uint32            // notice ID → oldest version still honoured
}

// Publish registers notice n. With reconsent set, records answering any
// earlier version of the same notice are superseded from now on.
func (ns *Notices) Publish(n Notice, reconsent bool) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.versions == nil {
		ns.versions = make(map[string]map[uint32]Digest)
		ns.minimum = make(map[string]uint32)
	}
	if ns.versions[n.ID] == nil {
		ns.versions[n.ID] = make(map[uint32]Digest)
	}
	ns.versions[n.ID][n.Version] = n.Hash
	if reconsent && n.Version > ns.minimum[n.ID] {
		ns.minimum[n.ID] = n.Version
	}
}

// Check returns ErrNoticeHash if r names a published notice version with
// another text hash, ErrNoticeSuperseded if a later version that requires
// re-consent replaced it, and nil otherwise (including for notices the
// register does not know).
func (ns *Notices) Check(r *Record) error {
	if ns == nil {
		return nil
	}
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	n := r.Notice
	if h, ok := ns.versions[n.ID][n.Version]; ok && h != n.Hash {
		return fmt.Errorf("%w: notice %s v%d", ErrNoticeHash, n.ID, n.Version)
	}
	if min := ns.minimum[n.ID]; n.Version < min {
		return fmt.Errorf("%w: notice %s v%d, re-consent needed since v%d", ErrNoticeSuperseded, n.ID, n.Version, min)
	}
	return nil
}
