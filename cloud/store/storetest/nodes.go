package storetest

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/logtest"
	"github.com/sensible-iot/sensible/device/identity"
)

// RunNodes runs the tests of nodes that share one database, each node a
// store of its own: the consent log and the replay cache, written
// through two nodes at once. newDatabase makes a new, empty database for
// each test and returns a function that opens a store on it, another
// node with each call; RunNodes closes every node when its test ends.
func RunNodes(t *testing.T, newDatabase func(t *testing.T) (open func(t *testing.T) store.Store)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b store.Store)
	}{
		{"ConsentLog", testNodesConsentLog},
		{"Tokens", testNodesTokens},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			open := newDatabase(t)
			var nodes [2]store.Store
			for i := range nodes {
				nodes[i] = open(t)
				t.Cleanup(func() { nodes[i].Close() })
			}
			tc.fn(t, nodes[0], nodes[1])
		})
	}
}

// testNodesConsentLog appends through a Log on each node from several
// goroutines, some entries through both: every entry is stored once, and
// every receipt verifies and is consistent with the log at the end, on
// either node.
func testNodesConsentLog(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	signer := logtest.Signer(t)
	stores := []consent.LogStore{a.ConsentLog(), b.ConsentLog()}
	logs := make([]*consent.Log, len(stores))
	for i, st := range stores {
		var err error
		logs[i], err = consent.OpenLog(ctx, st, signer)
		ok(t, err, "OpenLog")
	}
	const goroutines, each = 4, 12
	var mu sync.Mutex
	var data [][]byte
	var receipts []*consent.Receipt
	var wg sync.WaitGroup
	for node, l := range logs {
		for g := range goroutines {
			wg.Go(func() {
				for i := range each {
					d := logtest.Entry(100*node+g, i)
					if i%3 == 0 {
						d = logtest.Entry(g, 1000+i) // appended on both nodes
					}
					r, err := l.Append(ctx, d)
					if err != nil {
						t.Errorf("node %d: Append: %v", node, err)
						return
					}
					mu.Lock()
					data, receipts = append(data, d), append(receipts, r)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, l := range logs {
		logtest.CheckAppended(t, l, stores[i], signer.VerifierKey(), data, receipts)
	}
}

// testNodesTokens verifies device tokens on two nodes, each with its own
// verifier and its own node's replay cache: a token one node accepted,
// the other refuses as a replay, and of concurrent presentations of one
// token to both, exactly one is accepted.
func testNodesTokens(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	seed := sha256.Sum256([]byte("storetest device key"))
	key := ed25519.NewKeyFromSeed(seed[:])
	keys, err := identity.StaticKeys(key.Public())
	ok(t, err, "StaticKeys")
	now := func() time.Time { return t0.Add(time.Second) }
	verifier := func(s store.Store) *identity.TokenVerifier {
		v, err := identity.NewTokenVerifier(identity.VerifierConfig{
			Audience: "storetest",
			Keys:     keys,
			Replay:   s.ReplayCache(store.ReplayConfig{Now: now}),
			Now:      now,
		})
		ok(t, err, "NewTokenVerifier")
		return v
	}
	va, vb := verifier(a), verifier(b)
	token := func() string {
		tok, err := identity.SignToken(key, identity.TokenParams{Audience: "storetest", IssuedAt: t0})
		ok(t, err, "SignToken")
		return tok
	}

	tok := token()
	_, err = va.Verify(ctx, tok)
	ok(t, err, "Verify on node A")
	for name, v := range map[string]*identity.TokenVerifier{"B": vb, "A": va} {
		_, err = v.Verify(ctx, tok)
		is(t, err, identity.ErrTokenReplay, "the token again, on node "+name)
	}
	_, err = vb.Verify(ctx, token())
	ok(t, err, "Verify of a new token on node B")

	// Every presentation but one is refused as a replay; any other
	// error fails the test.
	verifiers := []*identity.TokenVerifier{va, vb}
	for round := range 3 {
		tok := token()
		accepted := onceOnly(t, 16, func(i int) (bool, error) {
			_, err := verifiers[i%2].Verify(ctx, tok)
			if errors.Is(err, identity.ErrTokenReplay) {
				return true, nil
			}
			return false, err
		})
		if accepted != 1 {
			t.Fatalf("round %d: %d of 16 concurrent presentations accepted, want 1", round, accepted)
		}
	}
}
