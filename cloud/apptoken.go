package cloud

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// App tokens.
const (
	// DefaultAppAudience is the aud an app token must name.
	DefaultAppAudience = "sensible-app-api"
	// MaxAppTokenLifetime is the longest an app token may live, from its
	// iat to its exp.
	MaxAppTokenLifetime = 5 * time.Minute
	// MaxAppToken is the longest app token read; a longer one is refused
	// before it is parsed.
	MaxAppToken = 4096
	// maxAppTokenID bounds an app token's jti.
	maxAppTokenID = 64
	// appTokenLeeway is the clock skew tolerated on an app token's exp,
	// nbf and iat.
	appTokenLeeway = identity.DefaultMaxSkew
)

// AppClaims are what an app token says: whose app sent it, to whom, and
// for how long.
type AppClaims struct {
	// Subject is the sub claim: the subject whose app key signs the
	// token, which the node takes as the caller. Required.
	Subject string
	// Audience is the aud claim. It must be the node's app audience
	// (Config.AppAudience). Required.
	Audience string
	// ID is the jti claim, which the node accepts once; empty means 16
	// random bytes in base64url.
	ID string
	// IssuedAt is the iat claim; zero means now.
	IssuedAt time.Time
	// Expires is the exp claim; zero means MaxAppTokenLifetime after
	// IssuedAt, which is also the latest it may be.
	Expires time.Time
}

// SignAppToken returns a compact JWT for a subject's app, signed with
// signer, whose public key the registry holds as the app key with key ID
// kid (store.AppKey): ES256 for a P-256 key, EdDSA for Ed25519. The kid
// header is kid in unpadded base64url. It is for tests and tools; an app
// makes the same token with any JWT library. An ECDSA key must be an
// *ecdsa.PrivateKey; an Ed25519 key may be any crypto.Signer.
func SignAppToken(signer crypto.Signer, kid []byte, c AppClaims) (string, error) {
	if len(kid) == 0 || c.Subject == "" || c.Audience == "" {
		return "", errors.New("cloud: an app token needs a key ID, a subject and an audience")
	}
	method, key, err := signingKey(signer)
	if err != nil {
		return "", err
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if c.Expires.IsZero() {
		c.Expires = c.IssuedAt.Add(MaxAppTokenLifetime)
	}
	if c.ID == "" {
		var b [16]byte
		rand.Read(b[:])
		c.ID = base64.RawURLEncoding.EncodeToString(b[:])
	}
	t := jwt.NewWithClaims(method, jwt.RegisteredClaims{
		Subject:   c.Subject,
		Audience:  jwt.ClaimStrings{c.Audience},
		IssuedAt:  jwt.NewNumericDate(c.IssuedAt),
		ExpiresAt: jwt.NewNumericDate(c.Expires),
		ID:        c.ID,
	})
	t.Header["kid"] = base64.RawURLEncoding.EncodeToString(kid)
	return t.SignedString(key)
}

// appAuth verifies app tokens against the registry's app keys, each token
// once.
type appAuth struct {
	keys   store.AppKeys
	replay identity.ReplayCache
	parser *jwt.Parser
	now    func() time.Time
}

// newAppAuth builds the parser: exp required, aud pinned, bounded leeway,
// strict base64, only ES256 and EdDSA (and each key only its own).
func newAppAuth(keys store.AppKeys, replay identity.ReplayCache, audience string, now func() time.Time) *appAuth {
	return &appAuth{keys: keys, replay: replay, now: now, parser: jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodES256.Alg(), jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithAudience(audience),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(appTokenLeeway),
		jwt.WithStrictDecoding(),
		jwt.WithTimeFunc(now),
	)}
}

// appTokenError is why an app token was refused; its text goes to the
// client, which sent the token and may know why.
type appTokenError struct{ reason string }

func (e *appTokenError) Error() string { return "invalid app token: " + e.reason }

// verify checks an app token and returns its subject, the caller. The kid
// header selects the app key, and the key's type the algorithm; sub must
// be the key's subject; iat, exp and jti are required, exp at most
// MaxAppTokenLifetime after iat, and the jti is new. A refused token is
// an *appTokenError; any other error is a failure of the store.
func (a *appAuth) verify(ctx context.Context, token string) (string, error) {
	if len(token) > MaxAppToken {
		return "", &appTokenError{fmt.Sprintf("%d bytes, limit %d", len(token), MaxAppToken)}
	}
	var (
		claims  jwt.RegisteredClaims
		key     store.AppKey
		failure error
	)
	_, err := a.parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		s, _ := t.Header["kid"].(string)
		kid, err := base64.RawURLEncoding.Strict().DecodeString(s)
		if err != nil || len(kid) == 0 {
			return nil, errors.New("the kid header is not an app key ID in unpadded base64url")
		}
		key, err = a.keys.AppKey(ctx, kid)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("unknown app key %q", s)
		}
		if err != nil {
			failure = err
			return nil, err
		}
		pub, err := x509.ParsePKIXPublicKey(key.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("app key %q does not parse", s)
		}
		m, err := keyMethod(pub)
		if err != nil {
			return nil, fmt.Errorf("app key %q: %v", s, err)
		}
		if t.Method.Alg() != m.Alg() {
			return nil, fmt.Errorf("app key %q signs with %s, not %s", s, m.Alg(), t.Method.Alg())
		}
		return pub, nil
	})
	if failure != nil {
		return "", failure
	}
	if err != nil {
		return "", &appTokenError{err.Error()}
	}
	switch {
	case claims.Subject == "" || claims.Subject != key.Subject:
		return "", &appTokenError{"sub is not the app key's subject"}
	case claims.IssuedAt == nil:
		return "", &appTokenError{"no iat"}
	case claims.ExpiresAt.Sub(claims.IssuedAt.Time) > MaxAppTokenLifetime:
		return "", &appTokenError{fmt.Sprintf("lives longer than %v", MaxAppTokenLifetime)}
	case claims.ID == "" || len(claims.ID) > maxAppTokenID:
		return "", &appTokenError{fmt.Sprintf("jti must be 1 to %d bytes", maxAppTokenID)}
	}
	seen, err := a.replay.Seen(ctx, appReplayID(key.KID), claims.ID, claims.ExpiresAt.Add(appTokenLeeway))
	switch {
	case errors.Is(err, identity.ErrReplayCacheFull):
		return "", &appTokenError{"the app key has too many unexpired tokens; wait for some to expire"}
	case err != nil:
		return "", err
	case seen:
		return "", &appTokenError{"replayed: its jti was used before"}
	}
	return key.Subject, nil
}

// appReplayID names an app key in the replay cache, which keeps tokens by
// device ID: the first 128 bits of SHA-256 of a prefix and the key ID,
// which no device ID (SHA-256 under another prefix) is but by chance. An
// app key thus has at most store.ReplayConfig.MaxLiveTokens unexpired
// tokens remembered, as a device does.
func appReplayID(kid []byte) identity.ID {
	h := sha256.New()
	h.Write([]byte("sensible app token replay v1\x00"))
	h.Write(kid)
	var id identity.ID
	copy(id[:], h.Sum(nil))
	return id
}
