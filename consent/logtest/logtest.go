// Package logtest checks that a consent.LogStore keeps the store contract
// that consent.Log relies on: compare-and-append at an expected index,
// atomic batches, one entry per leaf hash, lookups by leaf hash, and
// several Logs appending to one store at once. Every LogStore, in this
// module or outside it, runs the same suite from its tests:
//
//	func TestConformance(t *testing.T) {
//		logtest.Run(t, func(t *testing.T) consent.LogStore { return openEmptyStore(t) })
//	}
//
// Durability across a crash is the one part of the contract the suite
// cannot check; each store tests it its own way.
package logtest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/sensible-iot/sensible/consent"
)

// Run runs the suite. open returns a new, empty store for each subtest;
// it registers any closing with t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) consent.LogStore) {
	t.Run("Empty", func(t *testing.T) { testEmpty(t, open(t)) })
	t.Run("AppendBatch", func(t *testing.T) { testAppendBatch(t, open(t)) })
	t.Run("Conflict", func(t *testing.T) { testConflict(t, open(t)) })
	t.Run("DuplicateLeaf", func(t *testing.T) { testDuplicateLeaf(t, open(t)) })
	t.Run("ConcurrentStoreAppends", func(t *testing.T) { testConcurrentStoreAppends(t, open(t)) })
	t.Run("IdempotentLogAppend", func(t *testing.T) { testIdempotentLogAppend(t, open(t)) })
	t.Run("TwoLogs", func(t *testing.T) { testTwoLogs(t, open(t)) })
}

// Signer returns the note signer the suite signs with: a fixed Ed25519
// key named "logtest.example/log".
func Signer(t testing.TB) *consent.NoteSigner {
	t.Helper()
	seed := sha256.Sum256([]byte("consent logtest key"))
	s, err := consent.NewNoteSigner("logtest.example/log", ed25519.NewKeyFromSeed(seed[:]))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Entry returns the data of the suite's entry i of writer w: distinct for
// distinct (w, i).
func Entry(w, i int) []byte { return fmt.Appendf(nil, "logtest writer %d entry %d", w, i) }

// batch builds the entries and tree hashes of appending data to st at
// start, reading the hashes already stored.
func batch(t testing.TB, st consent.LogStore, start int64, data ...[]byte) ([]consent.LogEntry, []consent.Hash) {
	t.Helper()
	entries, hashes, err := newBatch(st, start, data)
	if err != nil {
		t.Fatal(err)
	}
	return entries, hashes
}

// newBatch is batch without the test: for writers racing others, whose
// store may have grown past start.
func newBatch(st consent.LogStore, start int64, data [][]byte) ([]consent.LogEntry, []consent.Hash, error) {
	ctx := context.Background()
	base := tlog.StoredHashCount(start)
	var added []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			if x >= base {
				out[i] = added[x-base]
				continue
			}
			hs, err := st.ReadHashes(ctx, []int64{x})
			if err != nil {
				return nil, err
			}
			out[i] = tlog.Hash(hs[0])
		}
		return out, nil
	})
	var entries []consent.LogEntry
	for i, d := range data {
		hs, err := tlog.StoredHashes(start+int64(i), d, r)
		if err != nil {
			return nil, nil, err
		}
		added = append(added, hs...)
		entries = append(entries, consent.LogEntry{Data: d, Leaf: consent.LeafHash(d)})
	}
	hashes := make([]consent.Hash, len(added))
	for i, h := range added {
		hashes[i] = consent.Hash(h)
	}
	return entries, hashes, nil
}

// checkHolds checks that st holds exactly want, in order, found by their
// leaf hashes, with the tree hashes of those entries.
func checkHolds(t testing.TB, st consent.LogStore, want [][]byte) {
	t.Helper()
	ctx := context.Background()
	n, err := st.Size(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(want)) {
		t.Fatalf("store holds %d entries, want %d", n, len(want))
	}
	var hashes []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = hashes[x]
		}
		return out, nil
	})
	for i, w := range want {
		got, err := st.Entry(ctx, int64(i))
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("entry %d is %q, want %q", i, got, w)
		}
		j, ok, err := st.Find(ctx, consent.LeafHash(w))
		if err != nil || !ok || j != int64(i) {
			t.Fatalf("Find(entry %d) = %d, %v, %v", i, j, ok, err)
		}
		hs, err := tlog.StoredHashes(int64(i), w, r)
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, hs...)
	}
	idx := make([]int64, len(hashes))
	for i := range idx {
		idx[i] = int64(i)
	}
	got, err := st.ReadHashes(ctx, idx)
	if err != nil {
		t.Fatalf("reading %d hashes: %v", len(idx), err)
	}
	if len(got) != len(hashes) {
		t.Fatalf("ReadHashes returned %d hashes for %d indexes", len(got), len(idx))
	}
	for i := range hashes {
		if got[i] != consent.Hash(hashes[i]) {
			t.Fatalf("hash %d differs from the tree hashes of the entries", i)
		}
	}
	if _, err := st.ReadHashes(ctx, []int64{int64(len(hashes))}); err == nil {
		t.Fatalf("ReadHashes of hash %d, past the last, succeeded", len(hashes))
	}
	if _, err := st.Entry(ctx, n); err == nil {
		t.Fatalf("Entry(%d), past the last, succeeded", n)
	}
}

func testEmpty(t *testing.T, st consent.LogStore) {
	ctx := context.Background()
	checkHolds(t, st, nil)
	if _, ok, err := st.Find(ctx, consent.LeafHash(Entry(0, 0))); ok || err != nil {
		t.Fatalf("Find in an empty store: %v, %v", ok, err)
	}
	if _, err := st.Entry(ctx, -1); err == nil {
		t.Fatal("Entry(-1) succeeded")
	}
}

func testAppendBatch(t *testing.T, st consent.LogStore) {
	ctx := context.Background()
	var want [][]byte
	for _, k := range []int{1, 5, 2, 9} {
		n := int64(len(want))
		var data [][]byte
		for i := range k {
			data = append(data, Entry(0, len(want)+i))
		}
		entries, hashes := batch(t, st, n, data...)
		if err := st.Append(ctx, n, entries, hashes); err != nil {
			t.Fatalf("append of %d at %d: %v", k, n, err)
		}
		// The store keeps its own copy.
		for _, d := range data {
			want = append(want, bytes.Clone(d))
			d[0] ^= 0xff
		}
		checkHolds(t, st, want)
	}
}

func testConflict(t *testing.T, st consent.LogStore) {
	ctx := context.Background()
	want := [][]byte{Entry(0, 0), Entry(0, 1)}
	entries, hashes := batch(t, st, 0, want...)
	if err := st.Append(ctx, 0, entries, hashes); err != nil {
		t.Fatal(err)
	}
	for _, at := range []int64{0, 1, 3, 100} {
		// Hashes for the wrong place have the right count for a store to
		// reach its check of the size.
		e, h := batch(t, st, 2, Entry(1, 0), Entry(1, 1))
		if err := st.Append(ctx, at, e, h); !errors.Is(err, consent.ErrLogConflict) {
			t.Errorf("append at %d to a store of 2: %v, want ErrLogConflict", at, err)
		}
		checkHolds(t, st, want)
	}
	if _, ok, _ := st.Find(ctx, consent.LeafHash(Entry(1, 0))); ok {
		t.Fatal("an entry of a refused append is found")
	}
}

func testDuplicateLeaf(t *testing.T, st consent.LogStore) {
	ctx := context.Background()
	want := [][]byte{Entry(0, 0), Entry(0, 1), Entry(0, 2)}
	entries, hashes := batch(t, st, 0, want...)
	if err := st.Append(ctx, 0, entries, hashes); err != nil {
		t.Fatal(err)
	}
	// A batch holding an entry already stored is refused whole.
	e, h := batch(t, st, 3, Entry(1, 0), Entry(0, 1))
	if err := st.Append(ctx, 3, e, h); !errors.Is(err, consent.ErrLogConflict) {
		t.Errorf("append of a stored entry: %v, want ErrLogConflict", err)
	}
	checkHolds(t, st, want)
	// So is a batch holding one entry twice.
	e, h = batch(t, st, 3, Entry(1, 0), Entry(1, 0))
	if err := st.Append(ctx, 3, e, h); !errors.Is(err, consent.ErrLogConflict) {
		t.Errorf("append of one entry twice: %v, want ErrLogConflict", err)
	}
	checkHolds(t, st, want)
	// And a new entry still goes in.
	e, h = batch(t, st, 3, Entry(1, 0))
	if err := st.Append(ctx, 3, e, h); err != nil {
		t.Fatal(err)
	}
	checkHolds(t, st, append(want, Entry(1, 0)))
}

// testConcurrentStoreAppends races writers appending straight to the
// store, each at the size it last read: every append at an index but one
// conflicts, and every entry ends up in the store once.
func testConcurrentStoreAppends(t *testing.T, st consent.LogStore) {
	ctx := context.Background()
	const writers, each = 4, 12
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := 0; i < each; {
				n, err := st.Size(ctx)
				if err != nil {
					errs <- err
					return
				}
				k := min(1+i%3, each-i) // batches of 1 to 3
				var data [][]byte
				for j := range k {
					data = append(data, Entry(w, i+j))
				}
				entries, hashes, err := newBatch(st, n, data)
				if err != nil {
					continue // another writer appended since Size
				}
				err = st.Append(ctx, n, entries, hashes)
				if errors.Is(err, consent.ErrLogConflict) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				i += k
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n, _ := st.Size(ctx)
	if n != writers*each {
		t.Fatalf("store holds %d entries, want %d", n, writers*each)
	}
	var got [][]byte
	seen := make(map[string]bool)
	for i := range n {
		d, err := st.Entry(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(d)] {
			t.Fatalf("entry %q stored twice", d)
		}
		seen[string(d)] = true
		got = append(got, d)
	}
	for w := range writers {
		for i := range each {
			if !seen[string(Entry(w, i))] {
				t.Fatalf("entry %d of writer %d lost", i, w)
			}
		}
	}
	checkHolds(t, st, got)
}

func testIdempotentLogAppend(t *testing.T, st consent.LogStore) {
	ctx := context.Background()
	s := Signer(t)
	l, err := consent.OpenLog(ctx, st, s)
	if err != nil {
		t.Fatal(err)
	}
	var receipts []*consent.Receipt
	var data [][]byte
	for i := range 5 {
		r, err := l.Append(ctx, Entry(0, i))
		if err != nil {
			t.Fatal(err)
		}
		receipts, data = append(receipts, r), append(data, Entry(0, i))
	}
	for i := range 5 {
		r, err := l.Append(ctx, Entry(0, i))
		if err != nil {
			t.Fatal(err)
		}
		if r.Index != int64(i) {
			t.Fatalf("entry %d appended again got index %d", i, r.Index)
		}
		receipts, data = append(receipts, r), append(data, Entry(0, i))
	}
	CheckAppended(t, l, st, s.VerifierKey(), data, receipts)
}

// testTwoLogs appends from several goroutines through two Logs over the
// one store, some entries through both.
func testTwoLogs(t *testing.T, st consent.LogStore) {
	ctx := context.Background()
	s := Signer(t)
	var logs [2]*consent.Log
	for i := range logs {
		var err error
		if logs[i], err = consent.OpenLog(ctx, st, s); err != nil {
			t.Fatal(err)
		}
	}
	const goroutines, each = 4, 10
	var mu sync.Mutex
	var data [][]byte
	var receipts []*consent.Receipt
	var wg sync.WaitGroup
	errs := make(chan error, len(logs)*goroutines)
	for li, l := range logs {
		for g := range goroutines {
			wg.Go(func() {
				for i := range each {
					d := Entry(li*goroutines+g, i)
					if i%3 == 0 {
						d = Entry(1000+g, i) // the same entry through both logs
					}
					r, err := l.Append(ctx, d)
					if err != nil {
						errs <- err
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
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	CheckAppended(t, logs[0], st, s.VerifierKey(), data, receipts)
	CheckAppended(t, logs[1], st, s.VerifierKey(), data, receipts)
}

// CheckAppended checks, after appends of data[i] returned receipts[i]
// (through l or other Logs sharing st), that st holds each distinct entry
// exactly once and nothing else, that every receipt verifies with vkey
// and names the entry's one index, and that every receipt's checkpoint is
// consistent with l's checkpoint now, so that all are consistent with one
// another.
func CheckAppended(t testing.TB, l *consent.Log, st consent.LogStore, vkey string, data [][]byte, receipts []*consent.Receipt) {
	t.Helper()
	ctx := context.Background()
	if len(data) != len(receipts) {
		t.Fatalf("%d entries and %d receipts", len(data), len(receipts))
	}
	index := make(map[string]int64)
	for i, d := range data {
		r := receipts[i]
		if err := consent.VerifyReceipt(r, d, vkey); err != nil {
			t.Fatalf("receipt of %q: %v", d, err)
		}
		if n, ok := index[string(d)]; ok && n != r.Index {
			t.Fatalf("%q has receipts for indexes %d and %d", d, n, r.Index)
		}
		index[string(d)] = r.Index
	}
	n, err := st.Size(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(index)) {
		t.Fatalf("store holds %d entries for %d distinct appends", n, len(index))
	}
	for d, i := range index {
		got, err := st.Entry(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != d {
			t.Fatalf("entry %d is %q, its receipt says %q", i, got, d)
		}
	}
	now, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots := make(map[int64]consent.Hash)
	for _, r := range receipts {
		then, err := consent.OpenCheckpoint(r.Checkpoint, vkey)
		if err != nil {
			t.Fatal(err)
		}
		if h, ok := roots[then.Size]; ok {
			if h != then.Hash {
				t.Fatalf("two roots for size %d", then.Size)
			}
			continue
		}
		roots[then.Size] = then.Hash
		p, err := l.ProveConsistency(ctx, then.Size, now.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := consent.VerifyConsistency(then, now, p); err != nil {
			t.Fatalf("checkpoint of size %d is not in the log's history: %v", then.Size, err)
		}
	}
}
