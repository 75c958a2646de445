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
	"strconv"
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

// TestTokenHostile covers forgeries and malformations beyond
// TestTokenBadInput: spellings of alg, headers that name a key, repeated
// and disguised names, base64 that is not canonical, DER signatures,
// segments, size and nesting.
func TestTokenHostile(t *testing.T) {
	ctx := context.Background()
	e := newTokenEnv(t, P256, VerifierConfig{})
	ed := newTokenEnv(t, Ed25519, VerifierConfig{})
	big := newTokenEnv(t, P256, VerifierConfig{MaxSize: 64 << 10})
	attacker := mustKey(t, P256)
	hdr := func(kv ...any) map[string]any {
		h := map[string]any{"alg": "ES256"}
		for i := 0; i+1 < len(kv); i += 2 {
			h[kv[i].(string)] = kv[i+1]
		}
		return h
	}
	hs256 := func(secret []byte) func([]byte) []byte {
		return func(in []byte) []byte {
			m := hmac.New(sha256.New, secret)
			m.Write(in)
			return m.Sum(nil)
		}
	}
	ecPub, _ := e.key.Public().(*ecdsa.PublicKey).Bytes()
	edPub := []byte(ed.key.Public().(ed25519.PublicKey))
	attackerJWK := map[string]any{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}

	// A valid ES256 token with its signature in DER instead of r||s.
	good := e.sign(t, TokenParams{})
	dot := strings.LastIndexByte(good, '.')
	rs, _ := b64.DecodeString(good[dot+1:])
	der := derSignature(rs[:32], rs[32:])
	derTok := good[:dot+1] + b64.EncodeToString(der)
	// Non-canonical base64: the last character of a segment with unused
	// low bits set decodes to the same bytes under a lenient decoder.
	// (A segment whose length is a multiple of 4 has no unused bits.)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	noncanon := func(seg string) string {
		if len(seg)%4 == 0 {
			t.Fatalf("segment %q has no unused bits", seg)
		}
		last := strings.IndexByte(alphabet, seg[len(seg)-1])
		out := seg[:len(seg)-1] + alphabet[last^1:last^1+1]
		a, _ := base64.RawURLEncoding.DecodeString(seg)
		if b, err := base64.RawURLEncoding.DecodeString(out); err != nil || string(a) != string(b) {
			t.Fatalf("%q is not a lenient spelling of %q", out, seg)
		}
		return out
	}
	parts := strings.Split(good, ".")
	// Claims and header with unused bits, non-canonical, signed as they
	// are: only strict decoding refuses them.
	sloppy := e.body("")
	for len(sloppy)%3 == 0 {
		sloppy = sloppy[:len(sloppy)-1] + " }"
	}
	signedAs := func(h, c string) string { return h + "." + c + "." + b64.EncodeToString(es256(e.key)([]byte(h+"."+c))) }
	sloppyClaims := signedAs(parts[0], noncanon(b64.EncodeToString([]byte(sloppy))))
	sloppyHeader := signedAs(noncanon(b64.EncodeToString([]byte(`{"alg":"ES256" }`))), b64.EncodeToString([]byte(e.body(""))))
	deepClaims := big.body(`,"x":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000))
	deepHeader := `{"alg":"ES256","x":` + strings.Repeat(`{"a":`, 5000) + "1" + strings.Repeat("}", 5000) + `}`
	nested := strings.Repeat("[", maxJSONDepth-1) + strings.Repeat("]", maxJSONDepth-1)

	cases := []struct {
		name string
		v    *TokenVerifier
		tok  string
		want error
	}{
		{"alg NONE", e.v, craft(hdr("alg", "NONE"), e.claims(), nil), ErrTokenAlgorithm},
		{"alg nOnE", e.v, craft(hdr("alg", "nOnE"), e.claims(), nil), ErrTokenAlgorithm},
		{"alg none with a signature", e.v, craft(hdr("alg", "none"), e.claims(), es256(e.key)), ErrTokenAlgorithm},
		{"alg es256", e.v, craft(hdr("alg", "es256"), e.claims(), es256(e.key)), ErrTokenAlgorithm},
		{"alg EDDSA", ed.v, craft(hdr("alg", "EDDSA"), ed.claims(), eddsa(ed.key)), ErrTokenAlgorithm},
		{"alg Ed25519", ed.v, craft(hdr("alg", "Ed25519"), ed.claims(), eddsa(ed.key)), ErrTokenAlgorithm},
		{"alg empty", e.v, craft(hdr("alg", ""), e.claims(), es256(e.key)), ErrTokenAlgorithm},
		{"alg missing", e.v, craft(map[string]any{"typ": "JWT"}, e.claims(), es256(e.key)), ErrTokenAlgorithm},
		{"alg a number", e.v, craft(hdr("alg", 256), e.claims(), es256(e.key)), ErrTokenAlgorithm},
		{"ES384 from a P-256 key", e.v, craft(hdr("alg", "ES384"), e.claims(), es256(e.key)), ErrTokenAlgorithm},
		{"HS256 keyed with the raw P-256 point", e.v, craft(hdr("alg", "HS256"), e.claims(), hs256(ecPub)), ErrTokenAlgorithm},
		{"HS256 keyed with the Ed25519 key", ed.v, craft(hdr("alg", "HS256"), ed.claims(), hs256(edPub)), ErrTokenAlgorithm},
		{"HS512 keyed with the Ed25519 key", ed.v, craft(hdr("alg", "HS512"), ed.claims(), hs256(edPub)), ErrTokenAlgorithm},
		{"RS256", e.v, craft(hdr("alg", "RS256"), e.claims(), es256(e.key)), ErrTokenAlgorithm},
		{"jwk header with the attacker's key", e.v, craft(hdr("jwk", attackerJWK), e.claims(), es256(attacker)), ErrTokenMalformed},
		{"jwk header, device's signature", e.v, craft(hdr("jwk", attackerJWK), e.claims(), es256(e.key)), ErrTokenMalformed},
		{"kid header", e.v, craft(hdr("kid", "1"), e.claims(), es256(e.key)), ErrTokenMalformed},
		{"jku header", e.v, craft(hdr("jku", "https://evil.example/jwks"), e.claims(), es256(attacker)), ErrTokenMalformed},
		{"x5u header", e.v, craft(hdr("x5u", "https://evil.example/cert"), e.claims(), es256(attacker)), ErrTokenMalformed},
		{"x5c header", e.v, craft(hdr("x5c", []string{"MIIB"}), e.claims(), es256(attacker)), ErrTokenMalformed},
		{"x5t header", e.v, craft(hdr("x5t", "AAAA"), e.claims(), es256(e.key)), ErrTokenMalformed},
		{"KID header", e.v, craft(hdr("KID", "1"), e.claims(), es256(e.key)), ErrTokenMalformed},
		{"kid spelt with the Kelvin sign", e.v, craft(hdr("\u212aid", "1"), e.claims(), es256(e.key)), ErrTokenMalformed},
		{"crit empty", e.v, craft(hdr("crit", []string{}), e.claims(), es256(e.key)), ErrTokenMalformed},
		{"typ jwt", e.v, craft(hdr("typ", "jwt"), e.claims(), es256(e.key)), ErrTokenMalformed},
		{"typ a number", e.v, craft(hdr("typ", 1), e.claims(), es256(e.key)), ErrTokenMalformed},
		{"repeated typ", e.v, e.raw(es256(e.key), `{"alg":"ES256","typ":"JWT","typ":"JWT"}`, e.body("")), ErrTokenMalformed},
		{"repeated sub", e.v, e.raw(es256(e.key), `{"alg":"ES256"}`, e.body(`,"sub":"`+ed.id.String()+`"`)), ErrTokenMalformed},
		{"repeated name in a nested object", e.v, e.raw(es256(e.key), `{"alg":"ES256"}`, e.body(`,"x":{"a":1,"a":2}`)), ErrTokenMalformed},
		{"sub spelt with a long s", e.v, e.raw(es256(e.key), `{"alg":"ES256"}`, e.body(`,"ſub":"`+ed.id.String()+`"`)), ErrTokenMalformed},
		{"exp in upper case", e.v, e.raw(es256(e.key), `{"alg":"ES256"}`, e.body(`,"EXP":1`)), ErrTokenMalformed},
		{"escaped name in the header", e.v, e.raw(es256(e.key), `{"\u0061lg":"ES256"}`, e.body("")), ErrTokenMalformed},
		{"header an array", e.v, e.raw(es256(e.key), `["ES256"]`, e.body("")), ErrTokenMalformed},
		{"data after the claims", e.v, e.raw(es256(e.key), `{"alg":"ES256"}`, e.body("")+`{}`), ErrTokenMalformed},
		{"DER signature", e.v, derTok, ErrTokenSignature},
		{"empty signature", e.v, good[:dot+1], ErrTokenSignature},
		{"non-canonical base64 signature", e.v, parts[0] + "." + parts[1] + "." + noncanon(parts[2]), ErrTokenMalformed},
		{"non-canonical base64 claims", e.v, sloppyClaims, ErrTokenMalformed},
		{"non-canonical base64 header", e.v, sloppyHeader, ErrTokenMalformed},
		{"padded signature", e.v, good + "==", ErrTokenMalformed},
		{"standard base64 alphabet", e.v, strings.NewReplacer("-", "+", "_", "/").Replace(good) + "+/", ErrTokenMalformed},
		{"space in the token", e.v, parts[0] + " ." + parts[1] + "." + parts[2], ErrTokenMalformed},
		{"five segments", e.v, good + ".x.y", ErrTokenMalformed},
		{"trailing dot", e.v, good + ".", ErrTokenMalformed},
		{"one segment", e.v, parts[1], ErrTokenMalformed},
		{"empty segments", e.v, "..", ErrTokenMalformed},
		{"one byte over the size cap", e.v, good + strings.Repeat("A", DefaultMaxTokenSize+1-len(good)), ErrTokenTooLarge},
		{"claims nested 10000 deep", big.v, big.raw(es256(big.key), `{"alg":"ES256"}`, deepClaims), ErrTokenMalformed},
		{"header nested 5000 deep", big.v, big.raw(es256(big.key), deepHeader, big.body("")), ErrTokenMalformed},
		{"claims nested one too deep", e.v, e.raw(es256(e.key), `{"alg":"ES256"}`, e.body(`,"x":[`+nested+`]`)), ErrTokenMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.v.Verify(ctx, tc.tok)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %+v, %v; want %v", c, err, tc.want)
			}
		})
	}

	// Nesting up to the bound is fine, and so is a token that nearly
	// fills a raised size cap.
	if _, err := e.v.Verify(ctx, e.raw(es256(e.key), `{"alg":"ES256"}`, e.body(`,"x":`+nested))); err != nil {
		t.Errorf("nested to the bound: %v", err)
	}
	for name, fill := range map[string]func(int) string{"padding": padding, "members": members} {
		tok := big.sizedToken(t, 64<<10, fill)
		if _, err := big.v.Verify(ctx, tok); err != nil || len(tok) < 64<<10-16 {
			t.Errorf("%d-byte token with %s: %v", len(tok), name, err)
		}
	}
}

// raw signs a hand-written header and claims.
func (e *tokenEnv) raw(sign func([]byte) []byte, header, body string) string {
	in := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(body))
	return in + "." + b64.EncodeToString(sign([]byte(in)))
}

// body returns hand-written valid claims of e's device with extra, which
// is empty or starts with a comma, at their end.
func (e *tokenEnv) body(extra string) string {
	c := e.claims()
	return `{"iss":"` + c["iss"].(string) + `","sub":"` + c["sub"].(string) + `","aud":"` + testAud +
		`","iat":` + itoa(c["iat"]) + `,"exp":` + itoa(c["exp"]) + `,"jti":"` + c["jti"].(string) + `"` + extra + `}`
}

// sizedToken returns the longest valid ES256 token of e's device (a P-256
// one) no longer than size whose claims end with fill(n) for some n; the
// length of fill(n) must grow with n.
func (e *tokenEnv) sizedToken(t testing.TB, size int, fill func(n int) string) string {
	t.Helper()
	mk := func(n int) string { return e.raw(es256(e.key), `{"alg":"ES256","typ":"JWT"}`, e.body(fill(n))) }
	lo, hi := 0, size
	if len(mk(lo)) > size {
		t.Fatalf("no token fits in %d bytes", size)
	}
	for lo < hi {
		if mid := (lo + hi + 1) / 2; len(mk(mid)) <= size {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return mk(lo)
}

// padding is a claim of one long string: n bytes of it.
func padding(n int) string { return `,"pad":"` + strings.Repeat("p", n) + `"` }

// members is n claims with short distinct names: the most members a size
// allows, the worst case for the repeated-name check.
func members(n int) string {
	var sb strings.Builder
	for i := range n {
		sb.WriteString(`,"`)
		sb.WriteString(strconv.Itoa(i))
		sb.WriteString(`":0`)
	}
	return sb.String()
}
