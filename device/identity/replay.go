package identity

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// A ReplayCache remembers the device tokens that verifiers have accepted,
// so that each token is accepted once. Verifiers that share one cache
// refuse a token any of them has accepted: to stop a token being replayed
// to another node of a service, give every node's [TokenVerifier] the same
// cache, backed by a store they all reach.
//
// [MemoryReplayCache] is the implementation in process memory, and the
// default.
type ReplayCache interface {
	// Seen records that device dev presented the token whose jti is
	// tokenID, to be remembered at least until the time until, and
	// reports whether that token was recorded already. Checking and
	// recording must be one atomic step: of any number of concurrent
	// calls for the same dev and tokenID, in this process or another,
	// exactly one reports false. In SQL that is an insert of (dev,
	// tokenID, until) under a unique key on (dev, tokenID) that does
	// nothing on conflict and reports whether it inserted a row. Records
	// whose until has passed may be deleted at any time: by then the
	// token is refused as expired.
	//
	// A non-nil error refuses the token, and Verify returns it as is; an
	// implementation that cannot reach its store should say so rather
	// than report false.
	Seen(ctx context.Context, dev ID, tokenID string, until time.Time) (bool, error)
}

var _ ReplayCache = (*MemoryReplayCache)(nil)

// MemoryReplayConfig configures a MemoryReplayCache. Every zero field means
// its default.
type MemoryReplayConfig struct {
	// Capacity caps how many tokens are remembered; zero means
	// DefaultReplayCapacity. When it is reached, Seen refuses new tokens
	// with ErrReplayCacheFull rather than forget one.
	Capacity int
	// MaxLiveTokens caps how many tokens of one device are remembered;
	// zero means DefaultMaxLiveTokens. Past it the device's new tokens
	// are refused with ErrReplayCacheFull, so one device cannot fill the
	// cache for the fleet.
	MaxLiveTokens int
	// Now returns the current time, against which records expire; nil
	// means time.Now.
	Now func() time.Time
}

// A MemoryReplayCache is a ReplayCache in the memory of one process, in
// bounded space: it forgets a token once its until has passed, and when
// full it refuses new tokens rather than forget live ones. Verifiers in the
// same process may share one. It is safe for concurrent use.
type MemoryReplayCache struct {
	capacity, perDevice int
	now                 func() time.Time

	mu     sync.Mutex
	seen   map[replayKey]struct{}
	perDev map[ID]int
	expiry replayHeap
}

type replayKey struct {
	dev ID
	jti string
}

// NewMemoryReplayCache returns an empty cache configured by cfg.
func NewMemoryReplayCache(cfg MemoryReplayConfig) *MemoryReplayCache {
	c := &MemoryReplayCache{
		capacity:  cfg.Capacity,
		perDevice: cfg.MaxLiveTokens,
		now:       cfg.Now,
		seen:      make(map[replayKey]struct{}),
		perDev:    make(map[ID]int),
	}
	if c.capacity <= 0 {
		c.capacity = DefaultReplayCapacity
	}
	if c.perDevice <= 0 {
		c.perDevice = DefaultMaxLiveTokens
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// Seen implements ReplayCache. It first forgets the tokens whose until has
// passed; the error, if any, matches ErrReplayCacheFull.
func (c *MemoryReplayCache) Seen(_ context.Context, dev ID, tokenID string, until time.Time) (bool, error) {
	now := c.now()
	k := replayKey{dev, tokenID}
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.expiry) > 0 && !c.expiry[0].at.After(now) {
		e := heap.Pop(&c.expiry).(replayEntry)
		delete(c.seen, e.key)
		if n := c.perDev[e.key.dev] - 1; n > 0 {
			c.perDev[e.key.dev] = n
		} else {
			delete(c.perDev, e.key.dev)
		}
	}
	if _, ok := c.seen[k]; ok {
		return true, nil
	}
	if n := c.perDev[dev]; n >= c.perDevice {
		return false, wrap(ErrReplayCacheFull, "%s has %d live tokens", dev, n)
	}
	if len(c.seen) >= c.capacity {
		return false, wrap(ErrReplayCacheFull, "%d live tokens", len(c.seen))
	}
	c.seen[k] = struct{}{}
	c.perDev[dev]++
	heap.Push(&c.expiry, replayEntry{key: k, at: until})
	return false, nil
}

// Len reports how many tokens the cache remembers, counting any whose until
// has passed but that have not been forgotten yet.
func (c *MemoryReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

type replayEntry struct {
	key replayKey
	at  time.Time
}

// replayHeap orders remembered tokens by when they may be forgotten.
type replayHeap []replayEntry

func (h replayHeap) Len() int           { return len(h) }
func (h replayHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h replayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *replayHeap) Push(x any)        { *h = append(*h, x.(replayEntry)) }
func (h *replayHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
