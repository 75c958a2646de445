package cloud_test

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// groupStore is a store that records the size of each StoreBatches
// transaction, and holds the first one back a moment, so that the
// batches arriving meanwhile queue behind it.
type groupStore struct {
	store.Store
	mu     sync.Mutex
	groups []int
}

func (s *groupStore) StoreBatches(ctx context.Context, bs []store.Batch) ([]store.BatchResult, error) {
	s.mu.Lock()
	first := len(s.groups) == 0
	s.groups = append(s.groups, len(bs))
	s.mu.Unlock()
	if first {
		time.Sleep(200 * time.Millisecond)
	}
	return s.Store.StoreBatches(ctx, bs)
}

// TestGroupCommit: batches that arrive together, from many devices and
// over both transports, share transactions; each is acknowledged with its
// own result, a repeat among them included, and only once it is stored.
func TestGroupCommit(t *testing.T) {
	st := &groupStore{Store: stores["sqlite"](t)}
	f := newFixture(t, "sqlite", cloud.Config{Store: st})
	f.give(powerGrant(f.clock.now().Add(-24 * time.Hour)))
	const devices = 12
	type sender struct {
		d *device
		c *transport.Client
		b protocol.Batch
	}
	var senders []sender
	for i := range devices {
		d := f.importDevice(aircon)
		scheme := []string{"coaps", "coap+tcp"}[i%2]
		senders = append(senders, sender{d, f.dial(d, scheme), f.power(d, 1, 1+i%3)})
	}
	// The last device sends its batch twice at once: one of them is a
	// repeat.
	senders = append(senders, senders[len(senders)-1])

	acks := make([]protocol.Ack, len(senders))
	errs := make([]error, len(senders))
	var wg sync.WaitGroup
	for i, s := range senders {
		wg.Go(func() { acks[i], errs[i] = post(t, s.c, s.b) })
	}
	wg.Wait()
	repeats := 0
	for i, s := range senders {
		if errs[i] != nil {
			t.Fatalf("device %d: %v", i, errs[i])
		}
		if acks[i].Key != s.b.Key || acks[i].Stored != uint64(len(s.b.Readings)) {
			t.Fatalf("device %d: ack %+v", i, acks[i])
		}
		if acks[i].Duplicate {
			repeats++
		}
		if n := len(f.readings(s.d, "power")); n != len(s.b.Readings) {
			t.Fatalf("device %d: %d readings stored, want %d", i, n, len(s.b.Readings))
		}
	}
	if repeats != 1 {
		t.Fatalf("%d acks of a repeat, want 1", repeats)
	}
	st.mu.Lock()
	groups := st.groups
	st.mu.Unlock()
	total, largest := 0, 0
	for _, n := range groups {
		total += n
		largest = max(largest, n)
	}
	if total != len(senders) || largest < 2 {
		t.Fatalf("transactions of %v batches: want %d batches in all, some together", groups, len(senders))
	}
	t.Logf("%d batches in %d transactions: %v", total, len(groups), groups)
}

// TestCloseLeavesNothing: once its clients and the node are closed, no
// goroutine of the node is left, the group commit's included.
func TestCloseLeavesNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	st := stores["sqlite"](t)
	f := newFixture(t, "sqlite", cloud.Config{Store: st})
	f.give(powerGrant(f.clock.now().Add(-24 * time.Hour)))
	var clients []*transport.Client
	var wg sync.WaitGroup
	for i := range 6 {
		d := f.importDevice(aircon)
		c := f.dial(d, []string{"coaps", "coap+tcp"}[i%2])
		clients = append(clients, c)
		wg.Go(func() {
			if _, err := post(t, c, f.power(d, 1, 2)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, c := range clients {
		must(t, c.Close())
	}
	must(t, f.node.Close())
	must(t, st.Close())
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// panicStore panics in its first StoreBatches.
type panicStore struct {
	store.Store
	once sync.Once
}

func (s *panicStore) StoreBatches(ctx context.Context, bs []store.Batch) ([]store.BatchResult, error) {
	s.once.Do(func() { panic("a store that broke") })
	return s.Store.StoreBatches(ctx, bs)
}

// TestCommitSurvivesAPanic: a store that panics fails its batch with 5.00
// instead of the process, and the next batch is stored: the turn to
// commit still passes on.
func TestCommitSurvivesAPanic(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{Store: &panicStore{Store: stores["sqlite"](t)}})
	d := f.importDevice(aircon)
	f.give(powerGrant(f.clock.now().Add(-24 * time.Hour)))
	c := f.dial(d, "coaps")
	if _, err := post(t, c, f.power(d, 1, 2)); codeOf(err) != transport.InternalServerError {
		t.Fatalf("a batch the store panicked on: %v, want 5.00", err)
	}
	done := make(chan error, 1)
	go func() { _, err := post(t, c, f.power(d, 2, 2)); done <- err }()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the next batch waits for good after a store panicked")
	}
}
