package identity

import (
	"bytes"
	"container/heap"
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
	"math"
	"math/big"
	"slices"
	"strings"
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
	// DefaultMaxLiveTokens bounds how many unexpired tokens of one device
	// a verifier remembers: a device that opens more sessions than this
	// within a token lifetime is refused, and the others are not affected.
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
	// MaxLiveTokens caps how many unexpired tokens of one device are
	// remembered; zero means DefaultMaxLiveTokens. Past it the device's
	// tokens are refused with ErrReplayCacheFull, so one device cannot
	// fill the cache for the fleet.
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

	mu     sync.Mutex
	seen   map[replayKey]struct{}
	perDev map[ID]int
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
	if cfg.MaxLiveTokens <= 0 {
		cfg.MaxLiveTokens = DefaultMaxLiveTokens
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &TokenVerifier{
		cfg:    cfg,
		seen:   make(map[replayKey]struct{}),
		perDev: make(map[ID]int),
	}, nil
}

// Verify checks token and, if it is valid and not seen before, remembers its
// jti until it expires and returns its claims. The algorithm is pinned to
// the type of the device's key; iss, sub, aud, iat, exp and jti are
// required; the lifetime and clock skew are capped. The error matches one
// of the ErrToken* sentinels, ErrReplayCacheFull, ErrIDMismatch, or
// whatever the KeyFunc returned (such as ErrUnknownDevice).
//
// The compact serialization is parsed here, strictly (unpadded base64url,
// no unknown critical header parameters), rather than by the JWT library's
// general parser, which costs as much again as the checks themselves; the
// library's ES256 and EdDSA implementations check the signature.
func (v *TokenVerifier) Verify(ctx context.Context, token string) (*TokenClaims, error) {
	if len(token) > v.cfg.MaxSize {
		return nil, wrap(ErrTokenTooLarge, "%d bytes, limit %d", len(token), v.cfg.MaxSize)
	}
	tok, err := parseCompact(token)
	if err != nil {
		return nil, err
	}
	c := &tok.claims
	dev, err := parseCanonicalID(c.Sub)
	if err != nil {
		return nil, wrap(ErrTokenClaims, "sub is not a device ID")
	}
	if c.Iss != c.Sub {
		return nil, wrap(ErrTokenClaims, "iss differs from sub")
	}
	pub, err := v.cfg.Keys(ctx, dev)
	if err != nil {
		return nil, err
	}
	kt, err := checkID(dev, pub)
	if err != nil {
		return nil, err
	}
	method := methodFor(kt)
	if tok.header.Alg != method.Alg() {
		return nil, wrap(ErrTokenAlgorithm, "alg %q, device key needs %s", tok.header.Alg, method.Alg())
	}
	if !verifyJWS(kt, pub, tok.signingInput, tok.sig, method) {
		return nil, wrap(ErrTokenSignature, "%s", dev)
	}
	return v.checkClaims(c, dev)
}

// verifyJWS checks a JWS signature: ES256 with VerifySignature, EdDSA
// with the JWT library, which calls crypto/ed25519 directly.
func verifyJWS(kt KeyType, pub crypto.PublicKey, input string, sig []byte, method jwt.SigningMethod) bool {
	if kt != P256 {
		return method.Verify(input, sig, pub) == nil
	}
	return VerifySignature(pub, []byte(input), sig)
}

// VerifySignature checks a signature in the fixed-size form JOSE (ES256,
// EdDSA) and COSE (-7, -8) use: for a P-256 key, the 64-byte r||s ECDSA
// signature over SHA-256 of msg; for an Ed25519 key, the 64-byte Ed25519
// signature of msg. Other keys never verify.
//
// For P-256 the signature is put into ASN.1 form for ecdsa.VerifyASN1: the
// math/big path the JWT library takes re-encodes the same signature and
// costs as much as all of a token's own checks.
func VerifySignature(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		if _, err := TypeOf(k); err != nil || len(sig) != 64 {
			return false
		}
		var buf [72]byte
		digest := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, digest[:], asn1Signature(buf[:0], sig[:32], sig[32:]))
	}
	return false
}

// asn1Signature appends the DER ECDSA-Sig-Value SEQUENCE { r, s } for the
// big-endian 32-byte integers r and s.
func asn1Signature(dst, r, s []byte) []byte {
	intLen := func(x []byte) int {
		for len(x) > 1 && x[0] == 0 {
			x = x[1:]
		}
		if x[0]&0x80 != 0 {
			return len(x) + 1
		}
		return len(x)
	}
	appendInt := func(dst, x []byte) []byte {
		for len(x) > 1 && x[0] == 0 {
			x = x[1:]
		}
		dst = append(dst, 0x02, byte(intLen(x)))
		if x[0]&0x80 != 0 {
			dst = append(dst, 0)
		}
		return append(dst, x...)
	}
	dst = append(dst, 0x30, byte(2+intLen(r)+2+intLen(s)))
	return appendInt(appendInt(dst, r), s)
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

type compactToken struct {
	signingInput string
	sig          []byte
	header       struct {
		Alg  string          `json:"alg"`
		Typ  string          `json:"typ"`
		Crit json.RawMessage `json:"crit"`
	}
	claims tokenClaims
}

// tokenClaims are the JSON claims of a device token (decodeClaims). Times
// are JSON numbers (RFC 7519 NumericDate), possibly fractional.
type tokenClaims struct {
	Iss, Sub, Jti string
	Aud           []byte // raw JSON: a string or an array of strings
	Iat, Exp, Nbf *float64
}

var b64 = base64.RawURLEncoding.Strict()

// The headers SignToken writes, base64url-encoded; a token carrying one of
// them skips header decoding. Never written after initialisation.
var (
	headerES256 = b64.EncodeToString([]byte(`{"alg":"ES256","typ":"JWT"}`))
	headerEdDSA = b64.EncodeToString([]byte(`{"alg":"EdDSA","typ":"JWT"}`))
)

func parseCompact(s string) (*compactToken, error) {
	// Only the base64url alphabet and the two dots: encoding/base64 would
	// otherwise skip line breaks.
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return nil, wrap(ErrTokenMalformed, "byte %#x at %d", c, i)
		}
	}
	h, rest, ok1 := strings.Cut(s, ".")
	p, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.IndexByte(sig, '.') >= 0 {
		return nil, wrap(ErrTokenMalformed, "want three dot-separated parts")
	}
	t := &compactToken{signingInput: s[:len(h)+1+len(p)]}
	var err error
	if t.sig, err = b64.DecodeString(sig); err != nil {
		return nil, wrap(ErrTokenMalformed, "signature: %v", err)
	}
	switch h {
	case headerES256:
		t.header.Alg = "ES256"
	case headerEdDSA:
		t.header.Alg = "EdDSA"
	default:
		hb, err := b64.DecodeString(h)
		if err != nil {
			return nil, wrap(ErrTokenMalformed, "header: %v", err)
		}
		if err := checkKeys(hb, headerNames); err != nil {
			return nil, wrap(ErrTokenMalformed, "header: %v", err)
		}
		if err := json.Unmarshal(hb, &t.header); err != nil {
			return nil, wrap(ErrTokenMalformed, "header: %v", err)
		}
		if t.header.Crit != nil {
			return nil, wrap(ErrTokenMalformed, "critical header parameters are not supported")
		}
		if t.header.Typ != "" && t.header.Typ != "JWT" {
			return nil, wrap(ErrTokenMalformed, "typ %q", t.header.Typ)
		}
	}
	pb, err := b64.DecodeString(p)
	if err != nil {
		return nil, wrap(ErrTokenMalformed, "claims: %v", err)
	}
	if err := decodeClaims(pb, &t.claims); err != nil {
		return nil, wrap(ErrTokenMalformed, "claims: %v", err)
	}
	return t, nil
}

func numericDate(f *float64) (time.Time, bool) {
	if f == nil || math.IsNaN(*f) || math.IsInf(*f, 0) || *f < 0 || *f > 1<<40 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(*f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

func (c *tokenClaims) audience() ([]string, bool) {
	if len(c.Aud) == 0 {
		return nil, false
	}
	// A plain string without escapes (the usual case) needs no decoding:
	// encoding/json has already checked that it is a valid JSON string.
	if n := len(c.Aud); n >= 2 && c.Aud[0] == '"' && c.Aud[n-1] == '"' && bytes.IndexByte(c.Aud, '\\') < 0 {
		return []string{string(c.Aud[1 : n-1])}, true
	}
	var one string
	if json.Unmarshal(c.Aud, &one) == nil {
		return []string{one}, true
	}
	var many []string
	if json.Unmarshal(c.Aud, &many) == nil {
		return many, true
	}
	return nil, false
}

func (v *TokenVerifier) checkClaims(c *tokenClaims, dev ID) (*TokenClaims, error) {
	now := v.cfg.Now()
	skew := v.cfg.MaxSkew
	iat, okI := numericDate(c.Iat)
	exp, okE := numericDate(c.Exp)
	switch {
	case !okI || !okE:
		return nil, wrap(ErrTokenClaims, "iat and exp are required")
	case c.Jti == "" || len(c.Jti) > maxJTI:
		return nil, wrap(ErrTokenClaims, "jti is required and at most %d bytes", maxJTI)
	}
	aud, okA := c.audience()
	switch {
	case !exp.After(iat):
		return nil, wrap(ErrTokenClaims, "exp is not after iat")
	case exp.Sub(iat) > v.cfg.MaxLifetime:
		return nil, wrap(ErrTokenLifetime, "%s, limit %s", exp.Sub(iat), v.cfg.MaxLifetime)
	case now.Add(skew).Before(iat):
		return nil, wrap(ErrTokenNotYetValid, "issued at %s", iat.Format(time.RFC3339))
	case !now.Add(-skew).Before(exp):
		return nil, wrap(ErrTokenExpired, "expired at %s", exp.Format(time.RFC3339))
	case !okA || !slices.Contains(aud, v.cfg.Audience):
		return nil, wrap(ErrTokenAudience, "token is for %q", aud)
	}
	if c.Nbf != nil {
		nbf, ok := numericDate(c.Nbf)
		if !ok {
			return nil, wrap(ErrTokenClaims, "nbf is not a time")
		}
		if now.Add(skew).Before(nbf) {
			return nil, wrap(ErrTokenNotYetValid, "not before %s", nbf.Format(time.RFC3339))
		}
	}
	if err := v.remember(replayKey{dev, c.Jti}, exp.Add(skew), now); err != nil {
		return nil, err
	}
	return &TokenClaims{Device: dev, Audience: v.cfg.Audience, IssuedAt: iat, Expires: exp, TokenID: c.Jti}, nil
}

// remember records k until forget, refusing a key already present.
func (v *TokenVerifier) remember(k replayKey, forget, now time.Time) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for len(v.expiry) > 0 && !v.expiry[0].at.After(now) {
		e := heap.Pop(&v.expiry).(replayEntry)
		delete(v.seen, e.key)
		if n := v.perDev[e.key.dev] - 1; n > 0 {
			v.perDev[e.key.dev] = n
		} else {
			delete(v.perDev, e.key.dev)
		}
	}
	if _, ok := v.seen[k]; ok {
		return wrap(ErrTokenReplay, "jti %q of %s", k.jti, k.dev)
	}
	if v.perDev[k.dev] >= v.cfg.MaxLiveTokens {
		return wrap(ErrReplayCacheFull, "%s has %d live tokens", k.dev, v.perDev[k.dev])
	}
	if len(v.seen) >= v.cfg.ReplayCapacity {
		return ErrReplayCacheFull
	}
	v.seen[k] = struct{}{}
	v.perDev[k.dev]++
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
