package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
)

// An observer hears of a change to a device's state and re-reads it; a
// resync tells it to re-read everything it watches.
func ExampleLocalNotifier() {
	ctx := context.Background()
	var n store.LocalNotifier // a SQLite store's Notifier is one
	defer n.Close()
	sub, err := n.Listen(ctx, "state")
	if err != nil {
		panic(err)
	}
	defer sub.Close()

	read := func() {
		nt, err := sub.Next(ctx)
		if err != nil {
			panic(err)
		}
		if nt.Resync {
			fmt.Println("re-read every device watched")
			return
		}
		fmt.Printf("re-read %s of %s\n", nt.Topic, nt.Payload)
	}

	// After a change commits, its writer says what changed.
	n.Notify(ctx, "state", []byte("device 2f0c version 7"))
	read()
	// What a notifier does when its link between nodes failed: the
	// reader may have missed changes.
	n.Resync()
	read()
	// Output:
	// re-read state of device 2f0c version 7
	// re-read every device watched
}

// TestSubscriptionReaders has several goroutines read one subscription:
// each notification is read once, and Close wakes every reader.
func TestSubscriptionReaders(t *testing.T) {
	ctx := t.Context()
	var n store.LocalNotifier
	sub, err := n.Listen(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	const readers, total = 4, 100
	got := make(chan string, total)
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for {
				nt, err := sub.Next(ctx)
				if errors.Is(err, store.ErrClosed) {
					return
				}
				if err != nil || nt.Resync {
					t.Errorf("Next: %+v, %v", nt, err)
					return
				}
				got <- string(nt.Payload)
			}
		})
	}
	for i := range total {
		if err := n.Notify(ctx, "t", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	seen := make(map[string]bool)
	for range total {
		select {
		case p := <-got:
			if seen[p] {
				t.Fatalf("%s read twice", p)
			}
			seen[p] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d notifications read", len(seen), total)
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := n.Notify(ctx, "t", nil); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Notify after Close: %v", err)
	}
}
