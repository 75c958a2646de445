package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchTokens signs n distinct tokens (the verifier refuses replays) and
// returns them with a verifier that knows the key.
func benchTokens(b *testing.B, k crypto.Signer, n int) ([]string, *TokenVerifier) {
	b.Helper()
	now := time.Now()
	toks := make([]string, n)
	for i := range toks {
		t, err := SignToken(k, TokenParams{Audience: testAud, IssuedAt: now})
		if err != nil {
			b.Fatal(err)
		}
		toks[i] = t
	}
	keys, _ := StaticKeys(k.Public())
	v, err := NewTokenVerifier(VerifierConfig{Audience: testAud, Keys: keys, ReplayCapacity: n + 1, MaxLiveTokens: n + 1})
	if err != nil {
		b.Fatal(err)
	}
	return toks, v
}

// rawVerifiers return, for each token, a function that verifies its
// signature over its signing input directly with crypto/ecdsa or
// crypto/ed25519: the floor that token verification is measured against.
// The signatures are decoded (and, for ECDSA, put in ASN.1 form) ahead of
// time; hashing the signing input is part of the raw cost.
func rawVerifiers(b *testing.B, pub crypto.PublicKey, toks []string) []func() bool {
	fs := make([]func() bool, len(toks))
	for i, tok := range toks {
		dot := strings.LastIndexByte(tok, '.')
		msg := []byte(tok[:dot])
		sig, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
		if err != nil {
			b.Fatal(err)
		}
		switch pub := pub.(type) {
		case ed25519.PublicKey:
			fs[i] = func() bool { return ed25519.Verify(pub, msg, sig) }
		case *ecdsa.PublicKey:
			asn, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])})
			if err != nil {
				b.Fatal(err)
			}
			fs[i] = func() bool {
				h := sha256.Sum256(msg)
				return ecdsa.VerifyASN1(pub, h[:], asn)
			}
		}
	}
	return fs
}

func rawSigner(k crypto.Signer, msg []byte) func() {
	switch key := k.(type) {
	case ed25519.PrivateKey:
		return func() { ed25519.Sign(key, msg) }
	case *ecdsa.PrivateKey:
		return func() {
			h := sha256.Sum256(msg)
			ecdsa.SignASN1(rand.Reader, key, h[:])
		}
	}
	return nil
}

// BenchmarkToken measures device token signing and verification beside a
// raw signature operation on the same bytes, in one run. The verify-ratio
// sub-benchmark verifies each token both ways, alternately, so that both
// see the same machine state and the same (variable-time) signatures, and
// reports the ratio token/raw.
func BenchmarkToken(b *testing.B) {
	for _, kt := range []KeyType{P256, Ed25519} {
		k := mustKey(b, kt)
		alg := methodFor(kt).Alg()
		b.Run(alg+"/sign-raw", func(b *testing.B) {
			tok, _ := SignToken(k, TokenParams{Audience: testAud})
			f := rawSigner(k, []byte(tok[:strings.LastIndexByte(tok, '.')]))
			b.ReportAllocs()
			for b.Loop() {
				f()
			}
		})
		b.Run(alg+"/sign-token", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := SignToken(k, TokenParams{Audience: testAud}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(alg+"/verify-raw", func(b *testing.B) {
			toks, _ := benchTokens(b, k, b.N)
			fs := rawVerifiers(b, k.Public(), toks)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if !fs[i]() {
					b.Fatal("raw verify failed")
				}
			}
		})
		b.Run(alg+"/verify-token", func(b *testing.B) {
			toks, v := benchTokens(b, k, b.N)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := v.Verify(ctx, toks[i]); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(alg+"/verify-ratio", func(b *testing.B) {
			toks, v := benchTokens(b, k, b.N)
			raw := rawVerifiers(b, k.Public(), toks)
			ctx := context.Background()
			var tRaw, tTok time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if !raw[i]() {
					b.Fatal("raw verify failed")
				}
				t1 := time.Now()
				if _, err := v.Verify(ctx, toks[i]); err != nil {
					b.Fatal(err)
				}
				tTok += time.Since(t1)
				tRaw += t1.Sub(t0)
			}
			b.ReportMetric(float64(tRaw.Nanoseconds())/float64(b.N), "raw-ns/op")
			b.ReportMetric(float64(tTok.Nanoseconds())/float64(b.N), "token-ns/op")
			b.ReportMetric(float64(tTok)/float64(tRaw), "token/raw")
		})
	}
}

// noReplay accepts every token, so that one token can be verified b.N
// times.
type noReplay struct{}

func (noReplay) Seen(context.Context, ID, string, time.Time) (bool, error) { return false, nil }

// BenchmarkTokenSize verifies valid ES256 tokens of 2 KiB (the default
// MaxSize), 16 KiB and 64 KiB (MaxSize raised to 64 KiB), to show that
// verification time grows linearly with size. A "padding" token carries one
// long string claim; a "members" token as many short claims as fit, the
// worst case for the repeated-name check (some 7,000 members at 64 KiB).
// "raw" verifies the padding token's signature directly, as in
// BenchmarkToken. The replay cache accepts every token here; it costs the
// same at every size.
func BenchmarkTokenSize(b *testing.B) {
	e := newTokenEnv(b, P256, VerifierConfig{MaxSize: 64 << 10, Replay: noReplay{}})
	ctx := context.Background()
	for _, size := range []int{2 << 10, 16 << 10, 64 << 10} {
		name := strconv.Itoa(size>>10) + "KiB"
		pad := e.sizedToken(b, size, padding)
		b.Run(name+"/raw", func(b *testing.B) {
			f := rawVerifiers(b, e.key.Public(), []string{pad})[0]
			b.SetBytes(int64(len(pad)))
			b.ReportAllocs()
			for b.Loop() {
				if !f() {
					b.Fatal("raw verify failed")
				}
			}
		})
		for kind, fill := range map[string]func(int) string{"padding": padding, "members": members} {
			tok := e.sizedToken(b, size, fill)
			b.Run(name+"/"+kind, func(b *testing.B) {
				b.SetBytes(int64(len(tok)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := e.v.Verify(ctx, tok); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
