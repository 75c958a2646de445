package consent

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// FuzzVerifyReceipt feeds VerifyReceipt arbitrary checkpoints, proofs,
// indexes and data: it must not panic, every error must be typed, and it
// must accept only what the log really holds.
func FuzzVerifyReceipt(f *testing.F) {
	ctx := context.Background()
	skey, vkey, err := note.GenerateKey(rand.Reader, "consent.example/log")
	if err != nil {
		f.Fatal(err)
	}
	l, err := OpenLog(ctx, &MemLogStore{}, skey)
	if err != nil {
		f.Fatal(err)
	}
	var last *Receipt
	for i := range 20 {
		r, err := l.Append(ctx, entry(i))
		if err != nil {
			f.Fatal(err)
		}
		last = r
		f.Add(r.Checkpoint, flatten(r.Proof), r.Index, entry(i))
	}
	f.Add(last.Checkpoint, flatten(last.Proof), int64(3), entry(3))
	f.Add([]byte("consent.example/log\n20\nAAAA\n"), []byte{}, int64(0), entry(0))
	f.Fuzz(func(t *testing.T, ckpt, proof []byte, index int64, data []byte) {
		r := &Receipt{Index: index, Proof: unflatten(proof), Checkpoint: ckpt}
		err := VerifyReceipt(r, data, vkey)
		if err != nil {
			if !errors.Is(err, ErrBadProof) && !errors.Is(err, ErrBadCheckpoint) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		got, err := l.store.Entry(ctx, index)
		if err != nil || string(got) != string(data) {
			t.Fatalf("accepted entry %d = %q, but the log holds %q", index, data, got)
		}
	})
}

func flatten(p []tlog.Hash) []byte {
	var out []byte
	for _, h := range p {
		out = append(out, h[:]...)
	}
	return out
}

func unflatten(b []byte) []tlog.Hash {
	var out []tlog.Hash
	for len(b) >= tlog.HashSize {
		var h tlog.Hash
		copy(h[:], b)
		out = append(out, h)
		b = b[tlog.HashSize:]
	}
	return out
}
