package storetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

func testReplays(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := t0
	c := s.ReplayCache(store.ReplayConfig{MaxLiveTokens: 3, Now: func() time.Time { return now }})
	seen := func(dev identity.ID, jti string, until time.Time, want bool) {
		t.Helper()
		got, err := c.Seen(ctx, dev, jti, until)
		ok(t, err, "Seen "+jti)
		if got != want {
			t.Fatalf("Seen(%q) at %v = %v, want %v", jti, now, got, want)
		}
	}
	d1, d2 := newID(), newID()
	seen(d1, "a", at(time.Minute), false)
	seen(d1, "b", at(2*time.Minute), false)
	seen(d1, "", at(3*time.Minute), false) // any bytes are a token ID
	seen(d1, "a", at(time.Hour), true)
	seen(d1, "", at(3*time.Minute), true)
	seen(d2, "a", at(time.Minute), false) // another device's
	seen(d2, "\x00\xff", at(time.Minute), false)
	seen(d2, "\x00\xff", at(time.Minute), true)

	// d1 has its three: a new token is refused, one seen is still seen.
	_, err := c.Seen(ctx, d1, "c", at(time.Minute))
	var limit *store.TokenLimitError
	if !errors.As(err, &limit) || limit.Device != d1 || limit.Limit != 3 || !errors.Is(err, identity.ErrReplayCacheFull) {
		t.Fatalf("a fourth token of one device: %v, want a *TokenLimitError matching identity.ErrReplayCacheFull", err)
	}
	seen(d1, "b", at(2*time.Minute), true)
	// Once a has expired, the refused token, which was not kept, is
	// new; so is a.
	now = at(time.Minute)
	seen(d1, "c", at(time.Minute), false)
	seen(d1, "a", at(time.Hour), false)
	_, err = c.Seen(ctx, d1, "d", at(time.Hour))
	is(t, err, identity.ErrReplayCacheFull, "a fourth unexpired token")
	now = at(3 * time.Minute) // b and "" have expired
	seen(d1, "d", at(time.Hour), false)
	seen(d1, "b", at(time.Hour), false)

	// Another cache over the store sees the same tokens, with its own
	// limit.
	other := s.ReplayCache(store.ReplayConfig{Now: func() time.Time { return now }})
	if got, err := other.Seen(ctx, d1, "d", at(time.Hour)); !got || err != nil {
		t.Fatalf("Seen through another cache: %v, %v", got, err)
	}
	for i := range 5 {
		if got, err := other.Seen(ctx, d2, string(rune('p'+i)), at(time.Hour)); got || err != nil {
			t.Fatalf("Seen of a new token through a cache with the default limit: %v, %v", got, err)
		}
	}

	_, err = c.Seen(ctx, identity.ID{}, "x", at(time.Hour))
	is(t, err, store.ErrInvalid, "Seen of a zero device")
	_, err = c.Seen(ctx, d1, "x", time.Time{})
	is(t, err, store.ErrInvalid, "Seen without an expiry")
}

func testPurgeReplays(t *testing.T, s store.Store) {
	ctx := t.Context()
	c := s.ReplayCache(store.ReplayConfig{Now: func() time.Time { return t0 }})
	d := newID()
	for i, jti := range []string{"a", "b", "c"} {
		got, err := c.Seen(ctx, d, jti, at(time.Duration(i+1)*time.Minute))
		if got || err != nil {
			t.Fatalf("Seen(%s) = %v, %v", jti, got, err)
		}
	}
	purge := func(now time.Time, want int64) {
		t.Helper()
		n, err := s.PurgeReplays(ctx, now)
		ok(t, err, "PurgeReplays")
		same(t, n, want, "tokens purged at "+now.String())
	}
	purge(t0, 0)
	purge(at(2*time.Minute), 2)
	purge(at(2*time.Minute), 0)
	// c is still remembered; a, purged, is new again.
	for jti, want := range map[string]bool{"c": true, "a": false} {
		got, err := c.Seen(ctx, d, jti, at(time.Hour))
		if got != want || err != nil {
			t.Fatalf("Seen(%s) after the purge = %v, %v; want %v", jti, got, err, want)
		}
	}
	_, err := s.PurgeReplays(ctx, time.Time{})
	is(t, err, store.ErrInvalid, "PurgeReplays without a time")
}

// testConcurrentReplays presents one token through several caches at
// once: exactly one reports it new.
func testConcurrentReplays(t *testing.T, s store.Store) {
	caches := []identity.ReplayCache{s.ReplayCache(store.ReplayConfig{}), s.ReplayCache(store.ReplayConfig{})}
	d := newID()
	for round := range 3 {
		fresh := onceOnly(t, 16, func(i int) (bool, error) {
			return caches[i%2].Seen(t.Context(), d, string(rune('a'+round)), time.Now().Add(time.Hour))
		})
		if fresh != 1 {
			t.Fatalf("round %d: %d of 16 concurrent calls found the token new, want 1", round, fresh)
		}
	}
}

// onceOnly runs n calls of seen at once and returns how many reported
// false; it fails the test on an error.
func onceOnly(t *testing.T, n int, seen func(i int) (bool, error)) int {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	fresh := 0
	for i := range n {
		wg.Go(func() {
			s, err := seen(i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Error(err)
			} else if !s {
				fresh++
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return fresh
}
