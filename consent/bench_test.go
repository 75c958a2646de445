package consent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/big"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veraison/go-cose"
	"golang.org/x/mod/sumdb/note"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// BenchmarkRecordVerify verifies a signed record with Verify
// (parse, key lookup, algorithm pin, Sig_structure, signature, strict
// decode and field checks) and, alternately in the same loop, the raw
// signature over the same Sig_structure, and reports verify/raw.
func BenchmarkRecordVerify(b *testing.B) {
	for _, kt := range []identity.KeyType{identity.P256, identity.Ed25519} {
		b.Run(kt.String(), func(b *testing.B) {
			k := newKeyring(b, kt)
			msg, err := Sign(testRecord(), k.app, []byte("app-1"))
			if err != nil {
				b.Fatal(err)
			}
			var m cose.Sign1Message
			if err := m.UnmarshalCBOR(msg); err != nil {
				b.Fatal(err)
			}
			var prot []byte
			codec.Unmarshal(m.Headers.RawProtected, &prot)
			tbs, err := codec.Marshal([]any{"Signature1", prot, []byte{}, m.Payload})
			if err != nil {
				b.Fatal(err)
			}
			pub := k.app.Public()
			var tRaw, tRec time.Duration
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				if !rawVerify(pub, tbs, m.Signature) {
					b.Fatal("raw verify failed")
				}
				t1 := time.Now()
				if _, err := Verify(context.Background(), k.set, msg); err != nil {
					b.Fatal(err)
				}
				tRec += time.Since(t1)
				tRaw += t1.Sub(t0)
			}
			b.ReportMetric(float64(tRaw.Nanoseconds())/float64(b.N), "raw-ns/op")
			b.ReportMetric(float64(tRec.Nanoseconds())/float64(b.N), "record-ns/op")
			b.ReportMetric(float64(tRaw)/float64(tRec), "record-rate/raw-rate")
		})
	}
}

// BenchmarkLogAppend appends to an in-memory log up to 1,000,000 entries
// (each append signs a checkpoint and proves the entry), reporting appends
// per second, then the inclusion proof size at each power of ten.
func BenchmarkLogAppend(b *testing.B) {
	const total = 1_000_000
	ctx := context.Background()
	skey, _, _ := note.GenerateKey(rand.Reader, "consent.example/log")
	signer, _ := note.NewSigner(skey)
	for b.Loop() {
		l, err := OpenLog(ctx, &MemLogStore{}, signer)
		if err != nil {
			b.Fatal(err)
		}
		entry := make([]byte, 400) // about one signed record
		start := time.Now()
		for i := 0; i < total; i++ {
			entry[0], entry[1], entry[2] = byte(i), byte(i>>8), byte(i>>16)
			if _, err := l.Append(ctx, entry); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(total/time.Since(start).Seconds(), "appends/s")
		for size := int64(1000); size <= total; size *= 10 {
			p, err := l.Prove(ctx, size/2, size)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(len(p)*32), fmt.Sprintf("proof-bytes@%d", size))
			c, err := l.ProveConsistency(ctx, size/3, size)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(len(c)*32), fmt.Sprintf("consistency-bytes@%d", size))
		}
	}
}

// rawVerify checks a COSE signature (r||s for ES256) with the standard
// library alone: the baseline of BenchmarkRecordVerify.
func rawVerify(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		digest := sha256.Sum256(msg)
		return len(sig) == 64 && ecdsa.Verify(k, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	}
	return false
}

// BenchmarkLogAppendFile appends 400-byte entries to a FileLogStore (a
// real file, synced before each store append returns) from 1, 8 and 64
// goroutines at once, reporting appends per second and appends per store
// append (per fsync): with one appender every append has its own fsync;
// with more, appends that arrive while one is being synced share the next.
func BenchmarkLogAppendFile(b *testing.B) {
	for _, appenders := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			ctx := context.Background()
			fs, err := OpenFileLogStore(filepath.Join(b.TempDir(), "consent.log"))
			if err != nil {
				b.Fatal(err)
			}
			defer fs.Close()
			st := &countingStore{LogStore: fs}
			l, err := OpenLog(ctx, st, testSigner(b))
			if err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range appenders {
				wg.Go(func() {
					data := make([]byte, 400) // about one signed record
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						binary.BigEndian.PutUint64(data, uint64(i))
						if _, err := l.Append(ctx, data); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
			b.ReportMetric(float64(b.N)/float64(st.appends.Load()), "appends/fsync")
		})
	}
}
