package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/storetest"
	"github.com/sensible-iot/sensible/internal/pgtest"
)

// TestNotifyAcrossNodes notifies on one node and listens on another: each
// notification arrives within a second, and a subscriber that does not
// read holds up neither the listener nor another subscriber.
func TestNotifyAcrossNodes(t *testing.T) {
	url := pgtest.NewDatabase(t)
	ctx := t.Context()
	a, b := open(t, url), open(t, url)
	reader, err := b.Notifier().Listen(ctx, "devices")
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	stalled, err := b.Notifier().Listen(ctx, "devices")
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	for i := range store.SubscriptionBuffer + 5 {
		payload := "device-1 " + strconv.Itoa(i)
		sent := time.Now()
		if err := a.Notifier().Notify(ctx, "devices", []byte(payload)); err != nil {
			t.Fatal(err)
		}
		storetest.Expect(t, reader, "devices", payload)
		if d := time.Since(sent); d > time.Second {
			t.Fatalf("notification %d took %v to reach the other node", i, d)
		}
	}
	if nt := storetest.Next(t, stalled); !nt.Resync {
		t.Fatalf("the subscriber that did not read got %+v first, want a resync", nt)
	}
}

// TestListenerReconnect kills every node's listener connection: each
// node's subscribers get a resync once it listens again, and later
// notifications arrive. Closing the nodes leaves no goroutine behind.
func TestListenerReconnect(t *testing.T) {
	url := pgtest.NewDatabase(t)
	before := runtime.NumGoroutine()
	ctx := t.Context()
	a, b := open(t, url), open(t, url)
	var subs []*store.Subscription
	for _, s := range []store.Store{a, b} {
		sub, err := s.Notifier().Listen(ctx, "t")
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
	}
	if err := a.Notifier().Notify(ctx, "t", []byte("before")); err != nil {
		t.Fatal(err)
	}
	for _, sub := range subs {
		storetest.Expect(t, sub, "t", "before")
	}

	var killed int
	err := a.DB().QueryRowContext(ctx, `SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN %'`).Scan(&killed)
	if err != nil {
		t.Fatal(err)
	}
	if killed != 2 {
		t.Fatalf("terminated %d listener connections, want 2", killed)
	}
	for i, sub := range subs {
		if nt := storetest.Next(t, sub); !nt.Resync {
			t.Fatalf("subscriber %d got %+v after its listener was killed, want a resync", i, nt)
		}
	}
	if err := b.Notifier().Notify(ctx, "t", []byte("after")); err != nil {
		t.Fatal(err)
	}
	for _, sub := range subs {
		storetest.Expect(t, sub, "t", "after")
	}
	// A new subscription on a node that reconnected hears the next one.
	late, err := a.Notifier().Listen(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Notifier().Notify(ctx, "t", []byte("later")); err != nil {
		t.Fatal(err)
	}
	storetest.Expect(t, late, "t", "later")

	for _, s := range []store.Store{a, b} {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after closing, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestListenerDown keeps the listener from connecting: Listen gives up
// with its context and says why, and once the database takes
// connections again the listener is back and its subscriptions resync.
func TestListenerDown(t *testing.T) {
	url := pgtest.NewDatabase(t)
	ctx := t.Context()
	a := open(t, url)
	// A database's connections are allowed and refused from another.
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	name := cc.Database
	cc.Database = "postgres"
	admin := stdlib.OpenDB(*cc)
	t.Cleanup(func() { admin.Close() })
	allow := func(yes bool) {
		t.Helper()
		q := fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %v", pgx.Identifier{name}.Sanitize(), yes)
		if _, err := admin.ExecContext(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	allow(false)
	t.Cleanup(func() { allow(true) })
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err = a.Notifier().Listen(short, "t")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not currently accepting connections") {
		t.Fatalf("Listen while the database refuses connections: %v", err)
	}
	allow(true)
	sub, err := a.Notifier().Listen(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	// Killed while the database refuses connections, the listener tries
	// again, waiting longer each time, until it is let in.
	allow(false)
	if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = $1 AND query LIKE 'LISTEN %'`, name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	allow(true)
	if nt := storetest.Next(t, sub); !nt.Resync {
		t.Fatalf("got %+v once the listener was back, want a resync", nt)
	}
	if err := a.Notifier().Notify(ctx, "t", []byte("back")); err != nil {
		t.Fatal(err)
	}
	storetest.Expect(t, sub, "t", "back")
}
