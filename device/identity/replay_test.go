package identity

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// Two nodes of one service, each with its own verifier, share a replay
// cache: a token one of them accepted is refused by the other.
func TestTokenReplayAcrossVerifiers(t *testing.T) {
	ctx := context.Background()
	e := newTokenEnv(t, P256, VerifierConfig{})
	keys, _ := StaticKeys(e.key.Public())
	now := func() time.Time { return e.now }
	shared := NewMemoryReplayCache(MemoryReplayConfig{Now: now})
	node := func() *TokenVerifier {
		v, err := NewTokenVerifier(VerifierConfig{Audience: testAud, Keys: keys, Replay: shared, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	a, b := node(), node()
	tok := e.sign(t, TokenParams{})
	if _, err := a.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Verify(ctx, tok); !errors.Is(err, ErrTokenReplay) {
		t.Fatalf("other node: %v, want ErrTokenReplay", err)
	}
	if _, err := b.Verify(ctx, e.sign(t, TokenParams{})); err != nil {
		t.Fatalf("fresh token at the other node: %v", err)
	}

	// Of many concurrent presentations of one token to both nodes,
	// exactly one wins.
	tok = e.sign(t, TokenParams{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, replays := 0, 0
	for i := range 16 {
		v := a
		if i%2 == 1 {
			v = b
		}
		wg.Go(func() {
			_, err := v.Verify(ctx, tok)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrTokenReplay):
				replays++
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok != 1 || replays != 15 {
		t.Fatalf("%d accepted, %d replays; want 1 and 15", ok, replays)
	}
}

// failingCache stands for a shared store that cannot be reached.
type failingCache struct{ err error }

func (f failingCache) Seen(context.Context, ID, string, time.Time) (bool, error) { return false, f.err }

// recordingCache is a map with the ReplayCache contract, recording what the
// verifier asks of it.
type recordingCache struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (r *recordingCache) Seen(_ context.Context, dev ID, tokenID string, until time.Time) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := dev.String() + "/" + tokenID
	if _, ok := r.until[k]; ok {
		return true, nil
	}
	r.until[k] = until
	return false, nil
}

func TestTokenReplayCacheContract(t *testing.T) {
	ctx := context.Background()
	down := errors.New("replay store unreachable")
	e := newTokenEnv(t, Ed25519, VerifierConfig{Replay: failingCache{down}})
	if _, err := e.v.Verify(ctx, e.sign(t, TokenParams{})); !errors.Is(err, down) {
		t.Fatalf("store down: %v, want its error", err)
	}

	rc := &recordingCache{until: map[string]time.Time{}}
	e = newTokenEnv(t, Ed25519, VerifierConfig{Replay: rc, MaxSkew: 30 * time.Second})
	c, err := e.v.Verify(ctx, e.sign(t, TokenParams{Lifetime: 5 * time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	until, ok := rc.until[e.id.String()+"/"+c.TokenID]
	if !ok || !until.Equal(c.Expires.Add(30*time.Second)) {
		t.Fatalf("recorded %v until %v; want the token until exp plus skew, %v", ok, until, c.Expires.Add(30*time.Second))
	}
}

func TestMemoryReplayCache(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c := NewMemoryReplayCache(MemoryReplayConfig{Capacity: 4, MaxLiveTokens: 3, Now: func() time.Time { return now }})
	var d1, d2 ID
	d1[0], d2[0] = 1, 2
	seen := func(dev ID, jti string, until time.Time) (bool, error) {
		t.Helper()
		return c.Seen(ctx, dev, jti, until)
	}
	for i, jti := range []string{"a", "b", "c"} {
		if s, err := seen(d1, jti, now.Add(time.Duration(i+1)*time.Minute)); s || err != nil {
			t.Fatalf("first %s: %v, %v", jti, s, err)
		}
	}
	if s, err := seen(d1, "a", now.Add(time.Hour)); !s || err != nil {
		t.Fatalf("second a: %v, %v; want seen", s, err)
	}
	if s, err := seen(d2, "a", now.Add(time.Minute)); s || err != nil {
		t.Fatalf("another device's a: %v, %v", s, err)
	}
	// d1 has its share of three; the cache, four in all, is full.
	if _, err := seen(d1, "d", now.Add(time.Minute)); !errors.Is(err, ErrReplayCacheFull) {
		t.Fatalf("fourth of one device: %v, want ErrReplayCacheFull", err)
	}
	var d3 ID
	d3[0] = 3
	if _, err := seen(d3, "a", now.Add(time.Minute)); !errors.Is(err, ErrReplayCacheFull) {
		t.Fatalf("fifth in all: %v, want ErrReplayCacheFull", err)
	}
	if n := c.Len(); n != 4 {
		t.Fatalf("Len = %d, want 4", n)
	}
	// A record is kept until its time and forgotten after it.
	now = now.Add(time.Minute)
	if s, _ := seen(d1, "b", now.Add(time.Hour)); !s {
		t.Fatal("b forgotten before its time")
	}
	if n := c.Len(); n != 2 {
		t.Fatalf("Len = %d after two expired, want 2", n)
	}
	if s, err := seen(d1, "a", now.Add(time.Minute)); s || err != nil {
		t.Fatalf("a after it expired: %v, %v; want accepted", s, err)
	}
	now = now.Add(time.Hour)
	if s, err := seen(d3, "x", now.Add(time.Minute)); s || err != nil {
		t.Fatalf("after all expired: %v, %v", s, err)
	}
	if n := c.Len(); n != 1 {
		t.Fatalf("Len = %d after all expired, want 1", n)
	}
}

func TestNewTokenVerifierSkewLimit(t *testing.T) {
	keys, _ := StaticKeys()
	if _, err := NewTokenVerifier(VerifierConfig{Audience: "a", Keys: keys, MaxSkew: MaxSkewLimit}); err != nil {
		t.Errorf("MaxSkew at the limit: %v", err)
	}
	if _, err := NewTokenVerifier(VerifierConfig{Audience: "a", Keys: keys, MaxSkew: MaxSkewLimit + 1}); err == nil {
		t.Error("MaxSkew over the limit accepted")
	}
}
