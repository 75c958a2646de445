package cloud

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
)

// Bounds of one group commit.
const (
	// maxGroupBatches is the most batches one transaction stores.
	maxGroupBatches = 64
	// maxGroupReadings is the most readings one transaction stores,
	// unless a single batch has more.
	maxGroupReadings = 16384
	// commitTimeout bounds one transaction, whichever request runs it.
	commitTimeout = 30 * time.Second
)

// A committer stores the batches of concurrent requests together: the
// batches that arrive while a transaction runs wait, and then the first
// of them stores all of them (up to maxGroupBatches) in one
// store.Ingest.StoreBatches transaction, one sync to disk, and hands the
// turn to the first batch that arrived in the meantime. Each request
// waits for the result of its own batch, so that nothing is acknowledged
// before it is durable.
//
// The requests' own goroutines take turns at committing, so a committer
// has no goroutine of its own to stop: when the node closes, the server
// waits for its handlers, and with them for every commit in progress.
type committer struct {
	st store.Ingest

	mu    sync.Mutex
	queue []*pending // batches waiting, in the order they came
	busy  bool       // a request is committing
}

// A pending batch waits for its result or its turn to commit.
type pending struct {
	batch store.Batch
	res   store.BatchResult
	err   error
	lead  bool          // set with wake: commit the queue
	wake  chan struct{} // the result is in, or it is this batch's turn
}

// store stores b and returns its result once it is durable. The store's
// own refusal of b (ErrConflict, ErrInvalid, ErrNotFound) is the error,
// as from StoreBatch.
//
// A request that waits does so until its batch is committed even when
// its context ends, for the batch may be in a transaction already;
// commitTimeout bounds the wait.
func (c *committer) store(ctx context.Context, b store.Batch) (store.BatchResult, error) {
	p := &pending{batch: b, wake: make(chan struct{}, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, p)
	lead := !c.busy
	c.busy = true
	c.mu.Unlock()
	if !lead {
		<-p.wake
		if !p.lead {
			return p.res, p.err
		}
	}
	c.commit(ctx)
	return p.res, p.err
}

// commit stores a group of batches from the front of the queue, the
// caller's first, sets their results and wakes their requests, and hands
// the turn to the next batch waiting, if any.
func (c *committer) commit(ctx context.Context) {
	c.mu.Lock()
	n, readings := 0, 0
	for n < len(c.queue) && n < maxGroupBatches {
		readings += len(c.queue[n].batch.Readings)
		if n > 0 && readings > maxGroupReadings {
			break
		}
		n++
	}
	group := c.queue[:n:n]
	c.queue = append([]*pending(nil), c.queue[n:]...)
	c.mu.Unlock()

	batches := make([]store.Batch, len(group))
	for i, p := range group {
		batches[i] = p.batch
	}
	results, err := c.storeGroup(ctx, batches)
	for i, p := range group {
		if err != nil {
			p.err = err
			continue
		}
		p.res, p.err = results[i], results[i].Err
		p.res.Err = nil
	}

	c.mu.Lock()
	var next *pending
	if len(c.queue) > 0 {
		next = c.queue[0]
		next.lead = true
	} else {
		c.busy = false
	}
	c.mu.Unlock()
	for _, p := range group[1:] {
		p.wake <- struct{}{}
	}
	if next != nil {
		next.wake <- struct{}{}
	}
}

// storeGroup stores a group in one transaction. A store that panics fails
// the group instead of the process, and the turn still passes on: the
// batches waiting behind it would otherwise wait for good.
func (c *committer) storeGroup(ctx context.Context, batches []store.Batch) (results []store.BatchResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			results, err = nil, fmt.Errorf("cloud: the store failed storing %d batches: %v", len(batches), r)
		}
	}()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	results, err = c.st.StoreBatches(ctx, batches)
	if err == nil && len(results) != len(batches) {
		err = fmt.Errorf("cloud: the store answered %d results for %d batches", len(results), len(batches))
	}
	return results, err
}
