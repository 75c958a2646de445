package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
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
	// MaxSkewLimit is the largest VerifierConfig.MaxSkew NewTokenVerifier
	// accepts: the skew Kerberos tolerates by default. A larger one would
	// keep an expired token valid for about as long as it lived.
	MaxSkewLimit = 5 * time.Minute
	// DefaultMaxTokenSize bounds the token length accepted for parsing.
	// A token SignToken makes is under 400 bytes.
	DefaultMaxTokenSize = 2048
	// DefaultReplayCapacity bounds how many unexpired token IDs the
	// default replay cache remembers.
	DefaultReplayCapacity = 1 << 17
	// DefaultMaxLiveTokens bounds how many unexpired tokens of one device
	// the default replay cache remembers: a device that opens more
	// sessions than this within a token lifetime is refused, and the
	// others are not affected.
	DefaultMaxLiveTokens = 64
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
	// aud is a single string (RFC 7519 section 4.1.3 allows either form).
	body, err := json.Marshal(struct {
		Iss string `json:"iss"`
		Sub string `json:"sub"`
		Aud string `json:"aud"`
		Iat int64  `json:"iat"`
		Exp int64  `json:"exp"`
		Jti string `json:"jti"`
	}{id.String(), id.String(), p.Audience, iat.Unix(), iat.Add(life).Unix(), b64.EncodeToString(jti[:])})
	if err != nil {
		return "", err
	}
	header := headerES256
	if kt == Ed25519 {
		header = headerEdDSA
	}
	unsigned := header + "." + b64.EncodeToString(body)
	sig, err := signJWS(signer, kt, unsigned)
	if err != nil {
		return "", err
	}
	return unsigned + "." + b64.EncodeToString(sig), nil
}

var b64 = base64.RawURLEncoding.Strict()

// The headers SignToken writes, base64url-encoded. Never written after
// initialisation.
var (
	headerES256 = b64.EncodeToString([]byte(`{"alg":"ES256","typ":"JWT"}`))
	headerEdDSA = b64.EncodeToString([]byte(`{"alg":"EdDSA","typ":"JWT"}`))
)

func methodFor(t KeyType) jwt.SigningMethod {
	if t == Ed25519 {
		return jwt.SigningMethodEdDSA
	}
	return jwt.SigningMethodES256
}

// signJWS signs the JWS signing input with any crypto.Signer, converting an
// ECDSA ASN.1 signature to the fixed 64-byte r||s form JWS requires.
// (golang-jwt's ES256 signs only with an *ecdsa.PrivateKey, not with a key
// held in hardware.)
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
	// MaxSkew is the clock skew tolerated on iat, nbf and exp; zero means
	// DefaultMaxSkew. It may not exceed MaxSkewLimit.
	MaxSkew time.Duration
	// MaxSize caps the token length; zero means DefaultMaxTokenSize.
	// Verification time grows linearly with the length up to the cap.
	MaxSize int
	// Replay remembers accepted tokens so that each is accepted once.
	// Verifiers that share one refuse a token any of them accepted, which
	// is what a service of several nodes needs. Nil means a
	// MemoryReplayCache of this verifier alone, made with ReplayCapacity,
	// MaxLiveTokens and Now.
	Replay ReplayCache
	// ReplayCapacity is MemoryReplayConfig.Capacity for the cache made
	// when Replay is nil, and is otherwise unused; zero means
	// DefaultReplayCapacity.
	ReplayCapacity int
	// MaxLiveTokens is MemoryReplayConfig.MaxLiveTokens for the cache made
	// when Replay is nil, and is otherwise unused; zero means
	// DefaultMaxLiveTokens.
	MaxLiveTokens int
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// TokenClaims is what a verified token says.
type TokenClaims struct {
	// Device is the token's issuer and subject, proved by its signature.
	Device ID
	// Audience is the verifier's audience, which the token named.
	Audience string
	// IssuedAt is the iat claim.
	IssuedAt time.Time
	// Expires is the exp claim.
	Expires time.Time
	// TokenID is the jti claim.
	TokenID string
}

// A TokenVerifier checks device tokens and refuses replays. It is safe for
// concurrent use.
type TokenVerifier struct {
	cfg VerifierConfig
}

// NewTokenVerifier returns a verifier for cfg. It fails if Audience or Keys
// is missing or MaxSkew exceeds MaxSkewLimit.
func NewTokenVerifier(cfg VerifierConfig) (*TokenVerifier, error) {
	if cfg.Audience == "" {
		return nil, errors.New("identity: VerifierConfig.Audience is required")
	}
	if cfg.Keys == nil {
		return nil, errors.New("identity: VerifierConfig.Keys is required")
	}
	if cfg.MaxSkew > MaxSkewLimit {
		return nil, fmt.Errorf("identity: VerifierConfig.MaxSkew %s exceeds MaxSkewLimit %s", cfg.MaxSkew, MaxSkewLimit)
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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Replay == nil {
		cfg.Replay = NewMemoryReplayCache(MemoryReplayConfig{
			Capacity: cfg.ReplayCapacity, MaxLiveTokens: cfg.MaxLiveTokens, Now: cfg.Now,
		})
	}
	return &TokenVerifier{cfg: cfg}, nil
}

// Verify checks token and, if it is valid and its ReplayCache has not seen
// it, has the cache remember it until it expires, and returns its claims.
//
// The token is parsed and its signature and standard claims checked by
// golang-jwt, configured strictly: the algorithm pinned to the type of the
// key the KeyFunc returns for the token's subject (ES256 for P-256, EdDSA
// for Ed25519), unpadded canonical base64url, exp and aud required, iss
// and sub the device ID, iat and nbf not in the future and exp not in the
// past beyond the clock skew. Before that, this package caps the size and
// refuses what golang-jwt would accept but other readers may read
// differently: repeated, escaped or case-variant JSON member names,
// line breaks, deep nesting, a crit header, and header parameters that
// name a key (kid, jku, jwk, x5u, x5c, x5t, x5t#S256), since the key is the
// one registered for the subject; and it checks that the registered key
// is the one the device ID names. Beside golang-jwt's claim checks it
// requires iat and a jti of at most 64 bytes, refuses times that are
// negative or absurdly far, and caps the lifetime.
//
// The error matches one of the ErrToken* sentinels, ErrIDMismatch or
// ErrUnsupportedKey for a registered key that does not fit the device, or
// is whatever the KeyFunc (such as ErrUnknownDevice) or the ReplayCache
// (such as ErrReplayCacheFull) returned.
func (v *TokenVerifier) Verify(ctx context.Context, token string) (*TokenClaims, error) {
	// golang-jwt has no size limit: bound all work before anything else.
	if len(token) > v.cfg.MaxSize {
		return nil, wrap(ErrTokenTooLarge, "%d bytes, limit %d", len(token), v.cfg.MaxSize)
	}
	// encoding/base64, and so golang-jwt, skips CR and LF inside a segment.
	for i := 0; i < len(token); i++ {
		if c := token[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return nil, wrap(ErrTokenMalformed, "byte %#x at %d", c, i)
		}
	}
	sub, err := precheck(token)
	if err != nil {
		return nil, err
	}
	// The key is looked up by the unverified subject; golang-jwt does
	// not know devices.
	dev, err := parseCanonicalID(sub)
	if err != nil {
		return nil, wrap(ErrTokenClaims, "sub is not a device ID")
	}
	pub, err := v.cfg.Keys(ctx, dev)
	if err != nil {
		return nil, err
	}
	// golang-jwt trusts the key it is given: the registered key must be
	// the one the device ID names.
	kt, err := checkID(dev, pub)
	if err != nil {
		return nil, err
	}
	alg := methodFor(kt).Alg()
	c := &tokenClaims{maxLife: v.cfg.MaxLifetime}
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{alg}),
		jwt.WithStrictDecoding(),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithAudience(v.cfg.Audience),
		jwt.WithIssuer(sub),
		jwt.WithSubject(sub),
		jwt.WithLeeway(v.cfg.MaxSkew),
		jwt.WithTimeFunc(v.cfg.Now),
	)
	tok, err := p.ParseWithClaims(token, c, func(*jwt.Token) (any, error) { return pub, nil })
	if err != nil {
		return nil, tokenError(err, tok, c, alg)
	}
	iat, exp := numericDate(c.Iat), numericDate(c.Exp)
	// The token may be forgotten once it would be refused as expired.
	seen, err := v.cfg.Replay.Seen(ctx, dev, c.Jti, exp.Add(v.cfg.MaxSkew))
	if err != nil {
		return nil, err
	}
	if seen {
		return nil, wrap(ErrTokenReplay, "jti %q of %s", c.Jti, dev)
	}
	return &TokenClaims{Device: dev, Audience: v.cfg.Audience, IssuedAt: iat.Time, Expires: exp.Time, TokenID: c.Jti}, nil
}

// precheck decodes the header and claims of a compact JWS and applies to
// them the checks golang-jwt lacks (checkNames, checkHeader); it returns
// the unverified sub, or "" if there is no string sub.
func precheck(token string) (sub string, err error) {
	h, rest, ok1 := strings.Cut(token, ".")
	p, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.IndexByte(sig, '.') >= 0 {
		return "", wrap(ErrTokenMalformed, "want three dot-separated parts")
	}
	hb, err := b64.DecodeString(h)
	if err != nil {
		return "", wrap(ErrTokenMalformed, "header: %v", err)
	}
	if err := checkNames(hb, headerNames, checkHeader); err != nil {
		return "", wrap(ErrTokenMalformed, "header: %v", err)
	}
	pb, err := b64.DecodeString(p)
	if err != nil {
		return "", wrap(ErrTokenMalformed, "claims: %v", err)
	}
	err = checkNames(pb, claimNames, func(name string, v json.Token) error {
		if name == "sub" {
			sub, _ = v.(string)
		}
		return nil
	})
	if err != nil {
		return "", wrap(ErrTokenMalformed, "claims: %v", err)
	}
	return sub, nil
}

// checkHeader refuses the header parameters golang-jwt ignores but a
// device token may not carry.
func checkHeader(name string, v json.Token) error {
	switch name {
	case "crit":
		// RFC 7515 section 4.1.11: a recipient must refuse a token whose
		// critical extensions it does not understand; we know none.
		return errors.New("critical header parameters are not supported")
	case "kid", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256":
		// The key is the one registered for sub; a header that names or
		// carries another is refused, not half-honoured.
		return fmt.Errorf("header parameter %q is not accepted", name)
	case "typ":
		if v != "JWT" {
			return fmt.Errorf("typ %v, want JWT", v)
		}
	}
	return nil
}

// tokenError turns an error from golang-jwt's parser into one that matches
// exactly one of this package's sentinels.
func tokenError(err error, tok *jwt.Token, c *tokenClaims, alg string) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return wrap(ErrTokenMalformed, "%v", err)
	case tok == nil || tok.Method == nil || tok.Method.Alg() != alg:
		// alg missing, unknown (golang-jwt matches it case-sensitively, so
		// "None" is unknown), or not the one the key pins ("none" among them).
		var got any
		if tok != nil {
			got = tok.Header["alg"]
		}
		return wrap(ErrTokenAlgorithm, "alg %v, device key needs %s", got, alg)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return wrap(ErrTokenSignature, "%v", err)
	case c.invalid != nil:
		return c.invalid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), errors.Is(err, jwt.ErrTokenInvalidSubject):
		return wrap(ErrTokenClaims, "iss differs from sub")
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return wrap(ErrTokenNotYetValid, "issued at %s", numericDate(c.Iat).Format(time.RFC3339))
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return wrap(ErrTokenNotYetValid, "not before %s", numericDate(c.Nbf).Format(time.RFC3339))
	case errors.Is(err, jwt.ErrTokenExpired):
		return wrap(ErrTokenExpired, "expired at %s", numericDate(c.Exp).Format(time.RFC3339))
	case errors.Is(err, jwt.ErrTokenInvalidAudience),
		errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && c.Iss != "":
		// A missing iss or aud is reported alike; iss is here.
		aud, _ := c.GetAudience()
		return wrap(ErrTokenAudience, "token is for %q", []string(aud))
	}
	return wrap(ErrTokenClaims, "%v", err)
}

// tokenClaims are a device token's claims as golang-jwt decodes them, with
// the checks it lacks in Validate. Times are JSON numbers (RFC 7519
// NumericDate), possibly fractional; golang-jwt's NumericDate accepts any
// number, so they are decoded and range-checked here.
type tokenClaims struct {
	Iss string          `json:"iss"`
	Sub string          `json:"sub"`
	Aud json.RawMessage `json:"aud"` // a string or an array of strings
	Iat *float64        `json:"iat"`
	Exp *float64        `json:"exp"`
	Nbf *float64        `json:"nbf"`
	Jti string          `json:"jti"`

	maxLife time.Duration // set by the verifier, not a claim
	invalid error         // what Validate found, matching one sentinel
}

var _ jwt.ClaimsValidator = (*tokenClaims)(nil)

// numericDate returns the time f says, or nil if there is no f or it is
// negative or more than 2^40 seconds (some 34,000 years) away.
func numericDate(f *float64) *jwt.NumericDate {
	if f == nil || math.IsNaN(*f) || *f < 0 || *f > 1<<40 {
		return nil
	}
	sec, frac := math.Modf(*f)
	return &jwt.NumericDate{Time: time.Unix(int64(sec), int64(frac*1e9))}
}

// GetExpirationTime implements jwt.Claims.
func (c *tokenClaims) GetExpirationTime() (*jwt.NumericDate, error) { return numericDate(c.Exp), nil }

// GetIssuedAt implements jwt.Claims.
func (c *tokenClaims) GetIssuedAt() (*jwt.NumericDate, error) { return numericDate(c.Iat), nil }

// GetNotBefore implements jwt.Claims.
func (c *tokenClaims) GetNotBefore() (*jwt.NumericDate, error) { return numericDate(c.Nbf), nil }

// GetIssuer implements jwt.Claims.
func (c *tokenClaims) GetIssuer() (string, error) { return c.Iss, nil }

// GetSubject implements jwt.Claims.
func (c *tokenClaims) GetSubject() (string, error) { return c.Sub, nil }

// GetAudience implements jwt.Claims. An aud of another JSON type reads as
// none here, and Validate refuses it.
func (c *tokenClaims) GetAudience() (jwt.ClaimStrings, error) {
	var aud jwt.ClaimStrings
	if len(c.Aud) == 0 || aud.UnmarshalJSON(c.Aud) != nil {
		return nil, nil
	}
	return aud, nil
}

// Validate implements jwt.ClaimsValidator: golang-jwt calls it after the
// signature has verified, beside its own checks. It records what it finds
// in c.invalid, which takes precedence over golang-jwt's findings.
func (c *tokenClaims) Validate() error {
	c.invalid = c.check()
	return c.invalid
}

func (c *tokenClaims) check() error {
	iat, exp := numericDate(c.Iat), numericDate(c.Exp)
	switch {
	case iat == nil || exp == nil:
		return wrap(ErrTokenClaims, "iat and exp are required, as times")
	case c.Nbf != nil && numericDate(c.Nbf) == nil:
		return wrap(ErrTokenClaims, "nbf is not a time")
	case c.Jti == "" || len(c.Jti) > maxJTI:
		return wrap(ErrTokenClaims, "jti is required and at most %d bytes", maxJTI)
	case !exp.After(iat.Time):
		return wrap(ErrTokenClaims, "exp is not after iat")
	case exp.Sub(iat.Time) > c.maxLife:
		return wrap(ErrTokenLifetime, "%s, limit %s", exp.Sub(iat.Time), c.maxLife)
	}
	var aud jwt.ClaimStrings
	if len(c.Aud) > 0 && aud.UnmarshalJSON(c.Aud) != nil {
		return wrap(ErrTokenAudience, "aud is neither a string nor an array of strings")
	}
	return nil
}

// checkID is ID.Check without re-encoding the key through encoding/asn1:
// the SubjectPublicKeyInfo of both supported key types is a fixed prefix
// followed by the key bytes.
func checkID(id ID, pub crypto.PublicKey) (KeyType, error) {
	kt, err := TypeOf(pub)
	if err != nil {
		return 0, err
	}
	var buf [len(idDomain) + 26 + 65]byte
	in := append(buf[:0], idDomain...)
	switch k := pub.(type) {
	case ed25519.PublicKey:
		in = append(append(in, spkiPrefixEd25519...), k...)
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			return 0, wrap(ErrUnsupportedKey, "%v", err)
		}
		in = append(append(in, spkiPrefixP256...), b...)
	}
	sum := sha256.Sum256(in)
	if subtle.ConstantTimeCompare(sum[:len(id)], id[:]) != 1 {
		return 0, wrap(ErrIDMismatch, "registered key does not belong to %s", id)
	}
	return kt, nil
}

// DER SubjectPublicKeyInfo prefixes (RFC 8410 and RFC 5480).
var (
	spkiPrefixEd25519 = []byte{0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00}
	spkiPrefixP256    = []byte{0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
		0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00}
)
