package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

const testAud = "coaps://cloud.example"

type tokenEnv struct {
	key crypto.Signer
	id  ID
	v   *TokenVerifier
	now time.Time
}

func newTokenEnv(t testing.TB, kt KeyType, cfg VerifierConfig) *tokenEnv {
	t.Helper()
	e := &tokenEnv{key: mustKey(t, kt), now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	e.id, _ = IDOf(e.key)
	keys, err := StaticKeys(e.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Audience == "" {
		cfg.Audience = testAud
	}
	cfg.Keys = keys
	cfg.Now = func() time.Time { return e.now }
	e.v, err = NewTokenVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *tokenEnv) sign(t testing.TB, p TokenParams) string {
	t.Helper()
	if p.Audience == "" {
		p.Audience = testAud
	}
	if p.IssuedAt.IsZero() {
		p.IssuedAt = e.now
	}
	tok, err := SignToken(e.key, p)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// craft builds a compact JWS from a header and claims, signing the input
// with sign (nil leaves the signature empty).
func craft(header, claims map[string]any, sign func(input []byte) []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	var sig []byte
	if sign != nil {
		sig = sign([]byte(in))
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func (e *tokenEnv) claims() map[string]any {
	var j [8]byte
	rand.Read(j[:])
	return map[string]any{
		"iss": e.id.String(), "sub": e.id.String(), "aud": testAud,
		"iat": e.now.Unix(), "exp": e.now.Add(5 * time.Minute).Unix(),
		"jti": base64.RawURLEncoding.EncodeToString(j[:]),
	}
}

// es256 signs like JWS ES256 with key k.
func es256(k crypto.Signer) func([]byte) []byte {
	return func(in []byte) []byte {
		sig, err := signJWS(k, P256, string(in))
		if err != nil {
			panic(err)
		}
		return sig
	}
}

func eddsa(k crypto.Signer) func([]byte) []byte {
	return func(in []byte) []byte { return ed25519.Sign(k.(ed25519.PrivateKey), in) }
}

func TestTokenRoundTrip(t *testing.T) {
	for _, kt := range []KeyType{P256, Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			e := newTokenEnv(t, kt, VerifierConfig{})
			tok := e.sign(t, TokenParams{})
			c, err := e.v.Verify(context.Background(), tok)
			if err != nil {
				t.Fatal(err)
			}
			if c.Device != e.id || c.Audience != testAud || c.TokenID == "" ||
				!c.IssuedAt.Equal(e.now) || !c.Expires.Equal(e.now.Add(DefaultTokenLifetime)) {
				t.Errorf("claims %+v", c)
			}
			// A hardware-held key signs the same way.
			hw := hwSigner{e.key}
			tok2, err := SignToken(hw, TokenParams{Audience: testAud, IssuedAt: e.now})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.v.Verify(context.Background(), tok2); err != nil {
				t.Fatalf("token from opaque signer: %v", err)
			}
		})
	}
}

func TestTokenBadInput(t *testing.T) {
	ctx := context.Background()
	e := newTokenEnv(t, P256, VerifierConfig{})
	ed := newTokenEnv(t, Ed25519, VerifierConfig{})
	pubDER, _ := x509.MarshalPKIXPublicKey(e.key.Public())
	impostor := mustKey(t, P256)

	hs256 := func(secret []byte) func([]byte) []byte {
		return func(in []byte) []byte {
			m := hmac.New(sha256.New, secret)
			m.Write(in)
			return m.Sum(nil)
		}
	}
	with := func(e *tokenEnv, k string, v any) map[string]any {
		c := e.claims()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	es := map[string]any{"alg": "ES256", "typ": "JWT"}
	good := e.sign(t, TokenParams{})
	dot := strings.LastIndexByte(good, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(good[dot+1:])
	sig[10] ^= 0x01
	flipped := good[:dot+1] + base64.RawURLEncoding.EncodeToString(sig)

	cases := []struct {
		name string
		v    *TokenVerifier
		tok  string
		want error
	}{
		{"alg none", e.v, craft(map[string]any{"alg": "none"}, e.claims(), nil), ErrTokenAlgorithm},
		{"alg None", e.v, craft(map[string]any{"alg": "None"}, e.claims(), nil), ErrTokenAlgorithm},
		{"HS256 with public key DER as secret", e.v, craft(map[string]any{"alg": "HS256"}, e.claims(), hs256(pubDER)), ErrTokenAlgorithm},
		{"HS256 with public key PEM-ish bytes", e.v, craft(map[string]any{"alg": "HS256"}, e.claims(), hs256([]byte(base64.StdEncoding.EncodeToString(pubDER)))), ErrTokenAlgorithm},
		{"ES256 token for an Ed25519 device", ed.v, craft(es, ed.claims(), es256(impostor)), ErrTokenAlgorithm},
		{"EdDSA token for a P-256 device", e.v, craft(map[string]any{"alg": "EdDSA"}, e.claims(), eddsa(ed.key)), ErrTokenAlgorithm},
		{"unknown alg", e.v, craft(map[string]any{"alg": "ES256K"}, e.claims(), es256(e.key)), ErrTokenAlgorithm},
		{"signed by another key", e.v, craft(es, e.claims(), es256(impostor)), ErrTokenSignature},
		{"flipped signature bit", e.v, flipped, ErrTokenSignature},
		{"signature of other claims", e.v, strings.Join(append(strings.Split(craft(es, e.claims(), nil), ".")[:2], strings.Split(good, ".")[2]), "."), ErrTokenSignature},
		{"expired", e.v, e.sign(t, TokenParams{IssuedAt: e.now.Add(-12 * time.Minute), Lifetime: 10 * time.Minute}), ErrTokenExpired},
		{"expired long ago", e.v, e.sign(t, TokenParams{IssuedAt: e.now.Add(-time.Hour)}), ErrTokenExpired},
		{"future-dated", e.v, e.sign(t, TokenParams{IssuedAt: e.now.Add(10 * time.Minute)}), ErrTokenNotYetValid},
		{"nbf in the future", e.v, craft(es, with(e, "nbf", e.now.Add(10*time.Minute).Unix()), es256(e.key)), ErrTokenNotYetValid},
		{"over-long lifetime", e.v, e.sign(t, TokenParams{Lifetime: 2 * time.Hour}), ErrTokenLifetime},
		{"wrong audience", e.v, e.sign(t, TokenParams{Audience: "coaps://evil.example"}), ErrTokenAudience},
		{"no audience", e.v, craft(es, with(e, "aud", nil), es256(e.key)), ErrTokenAudience},
		{"no exp", e.v, craft(es, with(e, "exp", nil), es256(e.key)), ErrTokenClaims},
		{"no iat", e.v, craft(es, with(e, "iat", nil), es256(e.key)), ErrTokenClaims},
		{"no jti", e.v, craft(es, with(e, "jti", nil), es256(e.key)), ErrTokenClaims},
		{"jti too long", e.v, craft(es, with(e, "jti", strings.Repeat("j", 65)), es256(e.key)), ErrTokenClaims},
		{"iss differs from sub", e.v, craft(es, with(e, "iss", "someone"), es256(e.key)), ErrTokenClaims},
		{"sub not an ID", e.v, craft(es, with(e, "sub", "fridge"), es256(e.key)), ErrTokenClaims},
		{"unknown device", e.v, craft(es, ed.claims(), es256(e.key)), ErrUnknownDevice},
		{"exp before iat", e.v, craft(es, with(e, "exp", e.now.Add(-time.Hour).Unix()), es256(e.key)), ErrTokenClaims},
		{"1 MB token", e.v, strings.Repeat("A", 1<<20), ErrTokenTooLarge},
		{"two segments", e.v, "abc.def", ErrTokenMalformed},
		{"bad base64", e.v, "!!!.???.***", ErrTokenMalformed},
		{"claims not JSON", e.v, base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256"}`)) + ".bm90IGpzb24." + strings.Split(good, ".")[2], ErrTokenMalformed},
		{"empty", e.v, "", ErrTokenMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.v.Verify(ctx, tc.tok)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %+v, %v; want %v", c, err, tc.want)
			}
		})
	}
}

func TestTokenReplay(t *testing.T) {
	ctx := context.Background()
	e := newTokenEnv(t, Ed25519, VerifierConfig{})
	tok := e.sign(t, TokenParams{Lifetime: 5 * time.Minute})
	if _, err := e.v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := e.v.Verify(ctx, tok); !errors.Is(err, ErrTokenReplay) {
		t.Fatalf("replay: %v, want ErrTokenReplay", err)
	}
	// After it expires the token is refused as expired, and its jti is
	// forgotten when the next token is remembered.
	e.now = e.now.Add(10 * time.Minute)
	if _, err := e.v.Verify(ctx, tok); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("after expiry: %v, want ErrTokenExpired", err)
	}
	if _, err := e.v.Verify(ctx, e.sign(t, TokenParams{})); err != nil {
		t.Fatal(err)
	}
	if n := e.v.cfg.Replay.(*MemoryReplayCache).Len(); n != 1 {
		t.Errorf("%d token IDs remembered after expiry, want 1", n)
	}
}

func TestTokenReplayConcurrent(t *testing.T) {
	// Of many concurrent presentations of one token exactly one wins.
	e := newTokenEnv(t, P256, VerifierConfig{})
	tok := e.sign(t, TokenParams{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, replays := 0, 0
	for range 16 {
		wg.Go(func() {
			_, err := e.v.Verify(context.Background(), tok)
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

func TestTokenReplayCacheBounded(t *testing.T) {
	ctx := context.Background()
	e := newTokenEnv(t, Ed25519, VerifierConfig{ReplayCapacity: 3})
	for i := range 3 {
		if _, err := e.v.Verify(ctx, e.sign(t, TokenParams{Lifetime: time.Duration(i+1) * time.Minute})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.v.Verify(ctx, e.sign(t, TokenParams{})); !errors.Is(err, ErrReplayCacheFull) {
		t.Fatalf("fourth token: %v, want ErrReplayCacheFull", err)
	}
	// Once the shortest-lived one can be forgotten there is room again.
	e.now = e.now.Add(time.Minute + DefaultMaxSkew + time.Second)
	if _, err := e.v.Verify(ctx, e.sign(t, TokenParams{})); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if n := e.v.cfg.Replay.(*MemoryReplayCache).Len(); n != 3 {
		t.Errorf("%d remembered, want 3", n)
	}
}

func TestTokenSkew(t *testing.T) {
	ctx := context.Background()
	e := newTokenEnv(t, P256, VerifierConfig{MaxSkew: 30 * time.Second})
	// Within the skew a device clock slightly ahead is fine.
	if _, err := e.v.Verify(ctx, e.sign(t, TokenParams{IssuedAt: e.now.Add(20 * time.Second)})); err != nil {
		t.Errorf("20 s ahead: %v", err)
	}
	if _, err := e.v.Verify(ctx, e.sign(t, TokenParams{IssuedAt: e.now.Add(40 * time.Second)})); !errors.Is(err, ErrTokenNotYetValid) {
		t.Errorf("40 s ahead: %v", err)
	}
	if _, err := e.v.Verify(ctx, e.sign(t, TokenParams{IssuedAt: e.now.Add(-DefaultTokenLifetime - 20*time.Second)})); err != nil {
		t.Errorf("expired 20 s ago: %v", err)
	}
}

func TestNewTokenVerifierConfig(t *testing.T) {
	keys, _ := StaticKeys()
	if _, err := NewTokenVerifier(VerifierConfig{Keys: keys}); err == nil {
		t.Error("no audience accepted")
	}
	if _, err := NewTokenVerifier(VerifierConfig{Audience: "a"}); err == nil {
		t.Error("no key func accepted")
	}
	if _, err := SignToken(mustKey(t, P256), TokenParams{}); !errors.Is(err, ErrTokenClaims) {
		t.Errorf("sign without audience: %v", err)
	}
}

func TestSignJWSRejectsBadSigner(t *testing.T) {
	bad := badSigner{mustKey(t, P256).(*ecdsa.PrivateKey)}
	if _, err := SignToken(bad, TokenParams{Audience: "a"}); err == nil {
		t.Fatal("malformed ECDSA signature from signer accepted")
	}
}

type badSigner struct{ k *ecdsa.PrivateKey }

func (b badSigner) Public() crypto.PublicKey { return b.k.Public() }
func (b badSigner) Sign(_ io.Reader, _ []byte, _ crypto.SignerOpts) ([]byte, error) {
	return []byte{0x30, 0x03, 0x02, 0x01}, nil
}

func TestCheckIDAgreesWithIDFromPublicKey(t *testing.T) {
	for _, kt := range []KeyType{P256, Ed25519} {
		for range 20 {
			k := mustKey(t, kt)
			id, _ := IDOf(k)
			if got, err := checkID(id, k.Public()); err != nil || got != kt {
				t.Fatalf("checkID(own key) = %v, %v", got, err)
			}
			if _, err := checkID(id, mustKey(t, kt).Public()); !errors.Is(err, ErrIDMismatch) {
				t.Fatalf("checkID(other key) = %v", err)
			}
		}
	}
}

func TestTokenHeaderAndClaimForms(t *testing.T) {
	ctx := context.Background()
	e := newTokenEnv(t, P256, VerifierConfig{})
	es := map[string]any{"alg": "ES256", "typ": "JWT"}
	c := e.claims()
	c["aud"] = []string{"other", testAud}
	c["iat"] = float64(e.now.Unix()) + 0.5
	if _, err := e.v.Verify(ctx, craft(es, c, es256(e.key))); err != nil {
		t.Errorf("array audience, fractional iat: %v", err)
	}
	for name, tc := range map[string]struct {
		header map[string]any
		claims func(map[string]any)
		want   error
	}{
		"crit header":    {map[string]any{"alg": "ES256", "crit": []string{"exp"}}, nil, ErrTokenMalformed},
		"typ not JWT":    {map[string]any{"alg": "ES256", "typ": "JOSE+JSON"}, nil, ErrTokenMalformed},
		"aud a number":   {es, func(c map[string]any) { c["aud"] = 7 }, ErrTokenAudience},
		"iat a string":   {es, func(c map[string]any) { c["iat"] = "now" }, ErrTokenMalformed},
		"negative exp":   {es, func(c map[string]any) { c["exp"] = -1 }, ErrTokenClaims},
		"nbf not a time": {es, func(c map[string]any) { c["nbf"] = 1e300 }, ErrTokenClaims},
		"empty claims":   {es, func(c map[string]any) { clear(c) }, ErrTokenClaims},
	} {
		t.Run(name, func(t *testing.T) {
			c := e.claims()
			if tc.claims != nil {
				tc.claims(c)
			}
			if _, err := e.v.Verify(ctx, craft(tc.header, c, es256(e.key))); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// Padded base64 is not the compact serialization.
	good := e.sign(t, TokenParams{})
	parts := strings.Split(good, ".")
	if _, err := e.v.Verify(ctx, parts[0]+"=."+parts[1]+"."+parts[2]); !errors.Is(err, ErrTokenMalformed) {
		t.Errorf("padded header: %v", err)
	}
	if _, err := e.v.Verify(ctx, good+".x"); !errors.Is(err, ErrTokenMalformed) {
		t.Errorf("four parts: %v", err)
	}
}
