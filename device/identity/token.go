package identity

import (
	"container/heap"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"math/big"
	"slices"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token limits and defaults.
const (
	// DefaultTokenLifetime is the lifetime SignToken gives a token when
	// TokenParams.Lifetime is zero.
	DefaultTokenLifetime = 10 * time.Minute
	// DefaultMaxTokenLifetime caps exp minus iat at verification.
	DefaultMaxTokenLifetime = time.Hour
	// DefaultMaxSkew is the clock skew tolerated on iat, nbf and exp.
	DefaultMaxSkew = time.Minute
	// DefaultMaxTokenSize bounds the token length accepted for parsing.
	DefaultMaxTokenSize = 2048
	// DefaultReplayCapacity bounds how many unexpired token IDs a verifier
	// remembers.
	DefaultReplayCapacity = 1 << 17
	// maxJTI bounds the jti length so each remembered token costs little.
	maxJTI = 64
)

// TokenParams describes a device token to sign. Only Audience is required.
type TokenParams struct {
	// Audience names the service the token is for (aud); required.
	Audience string
	// IssuedAt is the iat; zero means now.
	IssuedAt time.Time
	// Lifetime is exp minus iat; zero means DefaultTokenLifetime.
	Lifetime time.Duration
}

// SignToken returns a compact JWT signed by the device key behind signer:
// ES256 for a P-256 key, EdDSA for Ed25519. Its claims are iss and sub (both
// the device ID), aud, iat, exp and a random jti. signer may be a key in a
// secure element: for ES256 it is asked to sign a SHA-256 digest (opts
// crypto.SHA256, ASN.1 signature as crypto/ecdsa returns), for EdDSA the
// message itself (opts crypto.Hash(0)).
func SignToken(signer crypto.Signer, p TokenParams) (string, error) {
	if p.Audience == "" {
		return "", wrap(ErrTokenClaims, "no audience")
	}
	kt, err := TypeOf(signer.Public())
	if err != nil {
		return "", err
	}
	id, err := IDOf(signer)
	if err != nil {
		return "", err
	}
	iat := p.IssuedAt
	if iat.IsZero() {
		iat = time.Now()
	}
	life := p.Lifetime
	if life <= 0 {
		life = DefaultTokenLifetime
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	claims := jwt.RegisteredClaims{
		Issuer:    id.String(),
		Subject:   id.String(),
		Audience:  jwt.ClaimStrings{p.Audience},
		IssuedAt:  jwt.NewNumericDate(iat),
		ExpiresAt: jwt.NewNumericDate(iat.Add(life)),
		ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
	}
	method := methodFor(kt)
	unsigned, err := jwt.NewWithClaims(method, claims).SigningString()
	if err != nil {
		return "", err
	}
	sig, err := signJWS(signer, kt, unsigned)
	if err != nil {
		return "", err
	}
	return unsigned + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

func methodFor(t KeyType) jwt.SigningMethod {
	if t == Ed25519 {
		return jwt.SigningMethodEdDSA
	}
	return jwt.SigningMethodES256
}

// signJWS signs the JWS signing input with any crypto.Signer, converting an
// ECDSA ASN.1 signature to the fixed 64-byte r||s form JWS requires.
func signJWS(signer crypto.Signer, t KeyType, input string) ([]byte, error) {
	if t == Ed25519 {
		return signer.Sign(rand.Reader, []byte(input), crypto.Hash(0))
	}
	digest := sha256.Sum256([]byte(input))
	der, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, err
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
		return nil, errors.New("identity: signer returned a malformed ECDSA signature")
	}
	out := make([]byte, 64)
	if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.BitLen() > 256 || rs.S.BitLen() > 256 {
		return nil, errors.New("identity: signer returned an out-of-range ECDSA signature")
	}
	rs.R.FillBytes(out[:32])
	rs.S.FillBytes(out[32:])
	return out, nil
}

// A KeyFunc returns the public key registered for a device, or an error
// matching ErrUnknownDevice. It is called with the unverified subject of a
// token, before its signature is checked.
type KeyFunc func(ctx context.Context, id ID) (crypto.PublicKey, error)

// StaticKeys returns a KeyFunc that knows exactly the given keys.
func StaticKeys(keys ...crypto.PublicKey) (KeyFunc, error) {
	m := make(map[ID]crypto.PublicKey, len(keys))
	for _, k := range keys {
		id, err := IDFromPublicKey(k)
		if err != nil {
			return nil, err
		}
		m[id] = k
	}
	return func(_ context.Context, id ID) (crypto.PublicKey, error) {
		if k, ok := m[id]; ok {
			return k, nil
		}
		return nil, wrap(ErrUnknownDevice, "%s", id)
	}, nil
}

// VerifierConfig configures a TokenVerifier. Audience and Keys are
// required; every other zero field means its default.
type VerifierConfig struct {
	// Audience is the aud a token must name.
	Audience string
	// Keys finds a device's public key.
	Keys KeyFunc
	// MaxLifetime caps exp minus iat; zero means DefaultMaxTokenLifetime.
	MaxLifetime time.Duration
	// MaxSkew is the clock skew tolerated; zero means DefaultMaxSkew.
	MaxSkew time.Duration
	// MaxSize caps the token length; zero means DefaultMaxTokenSize.
	MaxSize int
	// ReplayCapacity caps how many unexpired token IDs are remembered;
	// zero means DefaultReplayCapacity. When it is reached the verifier
	// refuses new tokens with ErrReplayCacheFull rather than forget one.
	ReplayCapacity int
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// TokenClaims is what a verified token says.
type TokenClaims struct {
	Device   ID        // iss and sub
	Audience string    // the aud that matched
	IssuedAt time.Time // iat
	Expires  time.Time // exp
	TokenID  string    // jti
}

// A TokenVerifier checks device tokens and refuses replays. It is safe for
// concurrent use.
type TokenVerifier struct {
	cfg    VerifierConfig
	parser *jwt.Parser

	mu     sync.Mutex
	seen   map[replayKey]struct{}
	expiry replayHeap
}

type replayKey struct {
	dev ID
	jti string
}

// NewTokenVerifier returns a verifier for cfg.
func NewTokenVerifier(cfg VerifierConfig) (*TokenVerifier, error) {
	if cfg.Audience == "" {
		return nil, errors.New("identity: VerifierConfig.Audience is required")
	}
	if cfg.Keys == nil {
		return nil, errors.New("identity: VerifierConfig.Keys is required")
	}
	if cfg.MaxLifetime <= 0 {
		cfg.MaxLifetime = DefaultMaxTokenLifetime
	}
	if cfg.MaxSkew <= 0 {
		cfg.MaxSkew = DefaultMaxSkew
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxTokenSize
	}
	if cfg.ReplayCapacity <= 0 {
		cfg.ReplayCapacity = DefaultReplayCapacity
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &TokenVerifier{
		cfg: cfg,
		// Claims are validated below, not by the library, so each failure
		// gets its own error and iat is required.
		parser: jwt.NewParser(jwt.WithoutClaimsValidation(), jwt.WithStrictDecoding()),
		seen:   make(map[replayKey]struct{}),
	}, nil
}

// Verify checks token and, if it is valid and not seen before, remembers its
// jti until it expires and returns its claims. The algorithm is pinned to
// the type of the device's key; iss, sub, aud, iat, exp and jti are
// required; the lifetime and clock skew are capped. The error matches one
// of the ErrToken* sentinels, ErrReplayCacheFull, ErrIDMismatch, or
// whatever the KeyFunc returned (such as ErrUnknownDevice).
func (v *TokenVerifier) Verify(ctx context.Context, token string) (*TokenClaims, error) {
	if len(token) > v.cfg.MaxSize {
		return nil, wrap(ErrTokenTooLarge, "%d bytes, limit %d", len(token), v.cfg.MaxSize)
	}
	var claims jwt.RegisteredClaims
	var dev ID
	var keyErr error
	_, err := v.parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		id, err := ParseID(claims.Subject)
		if err != nil {
			keyErr = wrap(ErrTokenClaims, "sub is not a device ID")
			return nil, keyErr
		}
		if claims.Issuer != claims.Subject {
			keyErr = wrap(ErrTokenClaims, "iss differs from sub")
			return nil, keyErr
		}
		pub, err := v.cfg.Keys(ctx, id)
		if err != nil {
			keyErr = err
			return nil, err
		}
		if err := id.Check(pub); err != nil {
			keyErr = err
			return nil, err
		}
		kt, _ := TypeOf(pub)
		if want := methodFor(kt); t.Method != want {
			keyErr = wrap(ErrTokenAlgorithm, "alg %v, device key needs %s", t.Header["alg"], want.Alg())
			return nil, keyErr
		}
		dev = id
		switch k := pub.(type) {
		case *ecdsa.PublicKey:
			return k, nil
		case ed25519.PublicKey:
			return k, nil
		}
		return nil, ErrUnsupportedKey
	})
	switch {
	case keyErr != nil:
		return nil, keyErr
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// The header names an algorithm the library does not know.
		return nil, wrap(ErrTokenAlgorithm, "%v", err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return nil, wrap(ErrTokenSignature, "%s", dev)
	case err != nil:
		return nil, wrap(ErrTokenMalformed, "%v", err)
	}
	return v.checkClaims(&claims, dev)
}

func (v *TokenVerifier) checkClaims(c *jwt.RegisteredClaims, dev ID) (*TokenClaims, error) {
	now := v.cfg.Now()
	skew := v.cfg.MaxSkew
	switch {
	case c.IssuedAt == nil || c.ExpiresAt == nil:
		return nil, wrap(ErrTokenClaims, "iat and exp are required")
	case c.ID == "" || len(c.ID) > maxJTI:
		return nil, wrap(ErrTokenClaims, "jti is required and at most %d bytes", maxJTI)
	}
	iat, exp := c.IssuedAt.Time, c.ExpiresAt.Time
	switch {
	case !exp.After(iat):
		return nil, wrap(ErrTokenClaims, "exp is not after iat")
	case exp.Sub(iat) > v.cfg.MaxLifetime:
		return nil, wrap(ErrTokenLifetime, "%s, limit %s", exp.Sub(iat), v.cfg.MaxLifetime)
	case now.Add(skew).Before(iat):
		return nil, wrap(ErrTokenNotYetValid, "issued at %s", iat.Format(time.RFC3339))
	case c.NotBefore != nil && now.Add(skew).Before(c.NotBefore.Time):
		return nil, wrap(ErrTokenNotYetValid, "not before %s", c.NotBefore.Time.Format(time.RFC3339))
	case !now.Add(-skew).Before(exp):
		return nil, wrap(ErrTokenExpired, "expired at %s", exp.Format(time.RFC3339))
	case !slices.Contains(c.Audience, v.cfg.Audience):
		return nil, wrap(ErrTokenAudience, "token is for %q", []string(c.Audience))
	}
	if err := v.remember(replayKey{dev, c.ID}, exp.Add(skew), now); err != nil {
		return nil, err
	}
	return &TokenClaims{Device: dev, Audience: v.cfg.Audience, IssuedAt: iat, Expires: exp, TokenID: c.ID}, nil
}

// remember records k until forget, refusing a key already present.
func (v *TokenVerifier) remember(k replayKey, forget, now time.Time) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for len(v.expiry) > 0 && !v.expiry[0].at.After(now) {
		e := heap.Pop(&v.expiry).(replayEntry)
		delete(v.seen, e.key)
	}
	if _, ok := v.seen[k]; ok {
		return wrap(ErrTokenReplay, "jti %q of %s", k.jti, k.dev)
	}
	if len(v.seen) >= v.cfg.ReplayCapacity {
		return ErrReplayCacheFull
	}
	v.seen[k] = struct{}{}
	heap.Push(&v.expiry, replayEntry{key: k, at: forget})
	return nil
}

type replayEntry struct {
	key replayKey
	at  time.Time
}

// replayHeap orders remembered tokens by when they may be forgotten.
type replayHeap []replayEntry

func (h replayHeap) Len() int           { return len(h) }
func (h replayHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h replayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *replayHeap) Push(x any)        { *h = append(*h, x.(replayEntry)) }
func (h *replayHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
