package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzNow is the fixed clock of the fuzz verifiers; the seed tokens in
// testdata/fuzz/FuzzVerifyToken were issued at this time with fuzzKeys.
var fuzzNow = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// fuzzKeys returns two fixed device keys: the RFC 8032 test key and a P-256
// key with a fixed scalar.
func fuzzKeys(t testing.TB) []crypto.Signer {
	t.Helper()
	d, _ := hex.DecodeString("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
	p, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d)
	if err != nil {
		t.Fatal(err)
	}
	return []crypto.Signer{rfcKey(t), p}
}

var tokenSentinels = []error{
	ErrTokenTooLarge, ErrTokenMalformed, ErrTokenAlgorithm, ErrTokenSignature,
	ErrTokenClaims, ErrTokenExpired, ErrTokenNotYetValid, ErrTokenLifetime,
	ErrTokenAudience, ErrTokenReplay, ErrReplayCacheFull, ErrUnknownDevice, ErrIDMismatch,
}

func FuzzVerifyToken(f *testing.F) {
	keys := fuzzKeys(f)
	pubs := make([]crypto.PublicKey, len(keys))
	for i, k := range keys {
		pubs[i] = k.Public()
		tok, err := SignToken(k, TokenParams{Audience: testAud, IssuedAt: fuzzNow})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
		f.Add(tok[:len(tok)-10])
	}
	f.Add(craft(map[string]any{"alg": "none"}, map[string]any{"sub": "x"}, nil))
	// Hostile shapes with a valid signature of the P-256 device: a key in
	// the header, a repeated claim, deep nesting, a DER signature.
	p256 := keys[1]
	id, _ := IDOf(p256)
	claims := func(extra string) string {
		return `{"iss":"` + id.String() + `","sub":"` + id.String() + `","aud":"` + testAud + `","iat":` +
			strconv.FormatInt(fuzzNow.Unix(), 10) + `,"exp":` + strconv.FormatInt(fuzzNow.Add(5*time.Minute).Unix(), 10) +
			`,"jti":"seed"` + extra + `}`
	}
	signed := func(header, body string) string {
		in := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(body))
		return in + "." + b64.EncodeToString(es256(p256)([]byte(in)))
	}
	f.Add(signed(`{"alg":"ES256","jwk":{"kty":"EC"}}`, claims("")))
	f.Add(signed(`{"alg":"ES256"}`, claims(`,"aud":"coap://other"`)))
	f.Add(signed(`{"alg":"ES256"}`, claims(`,"x":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]`)))
	tok := signed(`{"alg":"ES256"}`, claims(""))
	dot := strings.LastIndexByte(tok, '.')
	rs, _ := b64.DecodeString(tok[dot+1:])
	f.Add(tok[:dot+1] + b64.EncodeToString(derSignature(rs[:32], rs[32:])))
	keyFunc, err := StaticKeys(pubs...)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		v, err := NewTokenVerifier(VerifierConfig{Audience: testAud, Keys: keyFunc, Now: func() time.Time { return fuzzNow }})
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(context.Background(), tok)
		if err != nil {
			n := 0
			for _, s := range tokenSentinels {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("error %q matches %d sentinels, want 1", err, n)
			}
			return
		}
		// Accepted: the signature must verify by hand, with the algorithm
		// the device's key pins, independently of the JWT library.
		pub, _ := keyFunc(context.Background(), c.Device)
		if pub == nil {
			t.Fatalf("accepted token of unknown device %s", c.Device)
		}
		parts := strings.Split(tok, ".")
		sig, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil || !rawVerify(pub, []byte(parts[0]+"."+parts[1]), sig) {
			t.Fatalf("accepted token whose signature does not verify by hand: %q", tok)
		}
		if _, err := v.Verify(context.Background(), tok); !errors.Is(err, ErrTokenReplay) {
			t.Fatalf("second presentation: %v, want ErrTokenReplay", err)
		}
	})
}

func rawVerify(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		if len(sig) != 64 {
			return false
		}
		h := sha256.Sum256(msg)
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(k, h[:], r, s)
	}
	return false
}

func FuzzParsePrivateKeyPEM(f *testing.F) {
	for _, k := range fuzzKeys(f) {
		b, err := MarshalPrivateKeyPEM(k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePrivateKeyPEM(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedKey) && !errors.Is(err, ErrUnsupportedKey) {
				t.Fatalf("error %v matches no sentinel", err)
			}
			return
		}
		// Whatever parses re-encodes to a key with the same ID.
		b, err := MarshalPrivateKeyPEM(k)
		if err != nil {
			t.Fatal(err)
		}
		k2, err := ParsePrivateKeyPEM(b)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := IDOf(k)
		c, _ := IDOf(k2)
		if a != c {
			t.Fatalf("re-encoded key changed ID %s → %s", a, c)
		}
	})
}
