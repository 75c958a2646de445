package consent

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// The Merkle tree of RFC 9162 §2.1, written out from its definitions
// with crypto/sha256 alone, to check the log against.

func rfcLeaf(d []byte) Hash { return sha256.Sum256(append([]byte{0}, d...)) }

func rfcNode(l, r Hash) Hash { return sha256.Sum256(append(append([]byte{1}, l[:]...), r[:]...)) }

// rfcSplit is k, the largest power of two smaller than n (n > 1).
func rfcSplit(n int) int {
	k := 1
	for k*2 < n {
		k *= 2
	}
	return k
}

// rfcMTH is MTH(D[n]), §2.1.1.
func rfcMTH(d [][]byte) Hash {
	switch len(d) {
	case 0:
		return sha256.Sum256(nil)
	case 1:
		return rfcLeaf(d[0])
	}
	k := rfcSplit(len(d))
	return rfcNode(rfcMTH(d[:k]), rfcMTH(d[k:]))
}

// rfcPath is PATH(m, D[n]), the inclusion proof of §2.1.3.1.
func rfcPath(m int, d [][]byte) []Hash {
	if len(d) <= 1 {
		return nil
	}
	k := rfcSplit(len(d))
	if m < k {
		return append(rfcPath(m, d[:k]), rfcMTH(d[k:]))
	}
	return append(rfcPath(m-k, d[k:]), rfcMTH(d[:k]))
}

// rfcProof is PROOF(m, D[n]), the consistency proof of §2.1.4.1.
func rfcProof(m int, d [][]byte) []Hash { return rfcSubproof(m, d, true) }

func rfcSubproof(m int, d [][]byte, b bool) []Hash {
	if m == len(d) {
		if b {
			return nil
		}
		return []Hash{rfcMTH(d)}
	}
	k := rfcSplit(len(d))
	if m <= k {
		return append(rfcSubproof(m, d[:k], b), rfcMTH(d[k:]))
	}
	return append(rfcSubproof(m-k, d[k:], false), rfcMTH(d[:k]))
}

// testSigner is a NoteSigner on a fixed key.
func testSigner(t testing.TB) *NoteSigner {
	t.Helper()
	seed := sha256.Sum256([]byte("consent test log key"))
	s, err := NewNoteSigner("consent.example/log", ed25519.NewKeyFromSeed(seed[:]))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func rfcEntries(n int) [][]byte {
	d := make([][]byte, n)
	for i := range d {
		d[i] = fmt.Appendf(nil, "d%d", i)
	}
	return d
}

// TestRFC9162Trees checks, for every tree of 0 to 8 entries, the log's
// roots, inclusion proofs and consistency proofs against the RFC's
// definitions computed independently above, and that each verifies.
func TestRFC9162Trees(t *testing.T) {
	ctx := context.Background()
	s := testSigner(t)
	l, err := OpenLog(ctx, &MemLogStore{}, s)
	if err != nil {
		t.Fatal(err)
	}
	d := rfcEntries(8)
	ckpts := make([]*Checkpoint, len(d)+1)
	for n := 0; n <= len(d); n++ {
		if n > 0 {
			if _, err := l.Append(ctx, d[n-1]); err != nil {
				t.Fatal(err)
			}
		}
		ck, err := l.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ck.Size != int64(n) || ck.Hash != rfcMTH(d[:n]) {
			t.Fatalf("tree of %d: root %s, want %s", n, ck.Hash, rfcMTH(d[:n]))
		}
		if ckpts[n], err = OpenCheckpoint(ck.Signed, s.VerifierKey()); err != nil {
			t.Fatal(err)
		}
	}
	for n := 0; n <= len(d); n++ {
		for m := range n {
			p, err := l.Prove(ctx, int64(m), int64(n))
			if err != nil {
				t.Fatal(err)
			}
			if want := rfcPath(m, d[:n]); !slices.Equal(p, want) {
				t.Errorf("inclusion of %d in %d: %v, want %v", m, n, p, want)
			}
			if err := VerifyReceipt(&Receipt{Index: int64(m), Proof: p, Checkpoint: ckpts[n].Signed}, d[m], s.VerifierKey()); err != nil {
				t.Errorf("inclusion of %d in %d: %v", m, n, err)
			}
		}
		for m := 0; m <= n; m++ {
			p, err := l.ProveConsistency(ctx, int64(m), int64(n))
			if err != nil {
				t.Fatal(err)
			}
			var want []Hash // from the empty tree: PROOF is defined for m > 0 only
			if m > 0 {
				want = rfcProof(m, d[:n])
			}
			if len(p) != len(want) || !slices.Equal(p, want) {
				t.Errorf("consistency %d→%d: %v, want %v", m, n, p, want)
			}
			if err := VerifyConsistency(ckpts[m], ckpts[n], p); err != nil {
				t.Errorf("consistency %d→%d: %v", m, n, err)
			}
		}
	}
}

// TestRFC9162Examples checks the proofs RFC 9162 §2.1.5 gives for its
// tree of seven leaves, d0 to d6, named as in the RFC's figure.
func TestRFC9162Examples(t *testing.T) {
	ctx := context.Background()
	d := rfcEntries(7)
	l, err := OpenLog(ctx, &MemLogStore{}, testSigner(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range d {
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	a, b, c, dd := rfcLeaf(d[0]), rfcLeaf(d[1]), rfcLeaf(d[2]), rfcLeaf(d[3])
	e, f, j := rfcLeaf(d[4]), rfcLeaf(d[5]), rfcLeaf(d[6])
	g, h, i := rfcNode(a, b), rfcNode(c, dd), rfcNode(e, f)
	k, lh := rfcNode(g, h), rfcNode(i, j)
	if root, _ := l.Checkpoint(ctx); root.Hash != rfcNode(k, lh) {
		t.Fatal("root of the seven-leaf tree")
	}
	for _, c := range []struct {
		leaf int64
		want []Hash
	}{
		{0, []Hash{b, h, lh}},
		{3, []Hash{c, g, lh}},
		{4, []Hash{f, j, k}},
		{6, []Hash{i, k}},
	} {
		p, err := l.Prove(ctx, c.leaf, 7)
		if err != nil || !slices.Equal(p, c.want) {
			t.Errorf("inclusion proof for d%d: %v %v", c.leaf, p, err)
		}
	}
	for _, c := range []struct {
		old  int64
		want []Hash
	}{
		{3, []Hash{c, dd, g, lh}},
		{4, []Hash{lh}},
		{6, []Hash{i, j, k}},
	} {
		p, err := l.ProveConsistency(ctx, c.old, 7)
		if err != nil || !slices.Equal(p, c.want) {
			t.Errorf("consistency proof from %d: %v %v", c.old, p, err)
		}
	}
}

// TestEmptyTreeConsistency: the empty tree is consistent with every tree
// (RFC 9162 §2.1.4) through the empty proof, and only that.
func TestEmptyTreeConsistency(t *testing.T) {
	ctx := context.Background()
	s := testSigner(t)
	vkey := s.VerifierKey()
	l, err := OpenLog(ctx, &MemLogStore{}, s)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if empty.Size != 0 || empty.Hash != sha256.Sum256(nil) {
		t.Fatalf("empty checkpoint %d %s", empty.Size, empty.Hash)
	}
	if p, err := l.ProveConsistency(ctx, 0, 0); err != nil || len(p) != 0 {
		t.Fatalf("ProveConsistency(0, 0) = %v, %v", p, err)
	}
	if err := VerifyConsistency(empty, empty, nil); err != nil {
		t.Fatalf("empty to empty: %v", err)
	}
	m := NewMonitor(vkey)
	if _, err := m.Update(empty.Signed, nil); err != nil {
		t.Fatal(err)
	}
	var ckpts []*Checkpoint
	for i := range 5 {
		r, err := l.Append(ctx, entry(i))
		if err != nil {
			t.Fatal(err)
		}
		ck, _ := OpenCheckpoint(r.Checkpoint, vkey)
		ckpts = append(ckpts, ck)
	}
	p, err := l.ProveConsistency(ctx, 0, 5)
	if err != nil || p == nil || len(p) != 0 {
		t.Fatalf("ProveConsistency(0, 5) = %#v, %v; want an empty proof", p, err)
	}
	if err := VerifyConsistency(empty, ckpts[4], p); err != nil {
		t.Fatalf("empty to 5: %v", err)
	}
	// A non-empty proof from the empty tree is refused.
	if err := VerifyConsistency(empty, ckpts[4], []Hash{ckpts[0].Hash}); !errors.Is(err, ErrBadProof) {
		t.Errorf("non-empty proof from the empty tree: %v", err)
	}
	// An empty tree with another root is no empty tree.
	fake := *empty
	fake.Hash = Hash{1}
	if err := VerifyConsistency(&fake, ckpts[4], nil); !errors.Is(err, ErrBadProof) {
		t.Errorf("empty tree with a root of its own: %v", err)
	}
	if err := VerifyConsistency(empty, &fake, nil); !errors.Is(err, ErrBadProof) {
		t.Errorf("to an empty tree with a root of its own: %v", err)
	}
	if err := VerifyConsistency(ckpts[0], empty, nil); !errors.Is(err, ErrLogShrunk) {
		t.Errorf("from 1 to empty: %v", err)
	}
	// Even signed by the log, an empty checkpoint with another root is
	// refused.
	signed, err := note.Sign(&note.Note{Text: fmt.Sprintf("%s\n0\n%s\n", s.Name(), Hash{1})}, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCheckpoint(signed, vkey); !errors.Is(err, ErrBadCheckpoint) {
		t.Errorf("signed empty checkpoint with another root: %v", err)
	}
	// A monitor that first saw the empty log takes the later checkpoints.
	if _, err := m.Update(ckpts[1].Signed, nil); err != nil {
		t.Fatalf("monitor from the empty log to 2: %v", err)
	}
	p, _ = l.ProveConsistency(ctx, 2, 5)
	if _, err := m.Update(ckpts[4].Signed, p); err != nil {
		t.Fatalf("monitor from 2 to 5: %v", err)
	}
	if _, err := m.Update(empty.Signed, nil); !errors.Is(err, ErrLogShrunk) {
		t.Fatalf("monitor back to empty: %v", err)
	}
	// The log refuses proofs it cannot give.
	for _, c := range [][2]int64{{-1, 3}, {4, 3}, {0, 6}, {0, -1}} {
		if _, err := l.ProveConsistency(ctx, c[0], c[1]); err == nil {
			t.Errorf("ProveConsistency(%d, %d) succeeded", c[0], c[1])
		}
	}
	for _, c := range [][2]int64{{-1, 3}, {3, 3}, {0, 0}, {0, 6}} {
		if _, err := l.Prove(ctx, c[0], c[1]); err == nil {
			t.Errorf("Prove(%d, %d) succeeded", c[0], c[1])
		}
	}
}
