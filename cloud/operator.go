package cloud

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/sensible-iot/sensible/device/identity"
)

// Defaults of the operator API's settings in Config.
const (
	// DefaultOperatorAudience is the aud an operator token must name.
	DefaultOperatorAudience = "sensible-operator-api"
	// DefaultOperatorIssuer is the iss an operator token must name.
	DefaultOperatorIssuer = "sensible-operators"
	// OperatorLeeway is the clock skew tolerated on an operator token's
	// exp, nbf and iat.
	OperatorLeeway = identity.DefaultMaxSkew
	// MaxOperatorToken is the longest operator token read; a longer one
	// is refused before it is parsed.
	MaxOperatorToken = 4096
)

// Scopes name what an operator token allows. A token lists the ones it
// grants, separated by spaces, in its scope claim; each route of the
// operator API needs one (docs/operator-api.md).
const (
	ScopeDevicesRead   = "devices:read"   // get and list devices
	ScopeDevicesWrite  = "devices:write"  // import devices, change their standing
	ScopeModelsRead    = "models:read"    // get and list models and manifests
	ScopeModelsWrite   = "models:write"   // add models and manifests
	ScopeClaimsRead    = "claims:read"    // see whether a device has a claim code
	ScopeClaimsWrite   = "claims:write"   // create and delete claim codes
	ScopeStateRead     = "state:read"     // read desired and reported state
	ScopeStateWrite    = "state:write"    // set desired state
	ScopeCommandsRead  = "commands:read"  // see commands and how they ended
	ScopeCommandsWrite = "commands:write" // queue commands
	ScopeIncidentsRead = "incidents:read" // list a device's incidents
	ScopeMetricsRead   = "metrics:read"   // scrape /metrics
)

// maxOperatorLifetime bounds how far ahead an operator token may expire.
const maxOperatorLifetime = 366 * 24 * time.Hour

// OperatorClaims are what an operator token says: who the operator is and
// what the token allows, for how long.
type OperatorClaims struct {
	// Issuer is the iss claim: who issued the token. It must be the
	// node's operator issuer (Config.OperatorIssuer).
	Issuer string
	// Subject is the sub claim: the operator, as the node's logs name
	// them. Required.
	Subject string
	// Audience is the aud claim. It must be the node's operator audience
	// (Config.OperatorAudience).
	Audience string
	// Scopes are what the token allows (ScopeDevicesRead, ...), written
	// to the scope claim separated by spaces.
	Scopes []string
	// IssuedAt is the iat claim; zero means now when signing.
	IssuedAt time.Time
	// Expires is the exp claim. Required.
	Expires time.Time
}

// Allows reports whether the claims grant scope.
func (c *OperatorClaims) Allows(scope string) bool { return slices.Contains(c.Scopes, scope) }

// operatorJWT is an operator token's claims as golang-jwt reads them.
type operatorJWT struct {
	jwt.RegisteredClaims
	Scope string `json:"scope,omitempty"`
}

// SignOperatorToken returns a compact JWT for an operator, signed with
// signer under the key ID kid, which a node's Config.OperatorKeys must map
// to signer's public key: ES256 for a P-256 key, EdDSA for Ed25519. It is
// for tests and command-line tools. An ECDSA key must be an
// *ecdsa.PrivateKey (golang-jwt signs with no other); an Ed25519 key may
// be any crypto.Signer. Subject, Audience, Issuer and Expires are required.
func SignOperatorToken(signer crypto.Signer, kid string, c OperatorClaims) (string, error) {
	if kid == "" || c.Subject == "" || c.Audience == "" || c.Issuer == "" || c.Expires.IsZero() {
		return "", errors.New("cloud: an operator token needs a key ID, a subject, an audience, an issuer and an expiry")
	}
	for _, s := range c.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n") {
			return "", fmt.Errorf("cloud: operator scope %q is empty or has white space", s)
		}
	}
	method, key, err := signingKey(signer)
	if err != nil {
		return "", err
	}
	iat := c.IssuedAt
	if iat.IsZero() {
		iat = time.Now()
	}
	t := jwt.NewWithClaims(method, operatorJWT{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    c.Issuer,
			Subject:   c.Subject,
			Audience:  jwt.ClaimStrings{c.Audience},
			IssuedAt:  jwt.NewNumericDate(iat),
			ExpiresAt: jwt.NewNumericDate(c.Expires),
		},
		Scope: strings.Join(c.Scopes, " "),
	})
	t.Header["kid"] = kid
	return t.SignedString(key)
}

// keyMethod returns the one signing method a key's tokens (operator or
// app tokens) may use.
func keyMethod(pub crypto.PublicKey) (jwt.SigningMethod, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if t, err := identity.TypeOf(k); err == nil && t == identity.P256 {
			return jwt.SigningMethodES256, nil
		}
	case ed25519.PublicKey:
		return jwt.SigningMethodEdDSA, nil
	}
	return nil, fmt.Errorf("cloud: the key is a %T: want ECDSA P-256 or Ed25519", pub)
}

// signingKey returns the signing method of signer's key and the key as
// golang-jwt signs with it: an ECDSA key must be an *ecdsa.PrivateKey, an
// Ed25519 key may be any crypto.Signer.
func signingKey(signer crypto.Signer) (jwt.SigningMethod, any, error) {
	method, err := keyMethod(signer.Public())
	if err != nil {
		return nil, nil, err
	}
	if method == jwt.SigningMethodES256 {
		k, ok := signer.(*ecdsa.PrivateKey)
		if !ok {
			return nil, nil, fmt.Errorf("cloud: an ES256 key must be an *ecdsa.PrivateKey, not a %T", signer)
		}
		return method, k, nil
	}
	return method, signer, nil
}

// operatorKey is one configured operator key and its pinned algorithm.
type operatorKey struct {
	key    crypto.PublicKey
	method jwt.SigningMethod
}

// operatorAuth verifies operator tokens.
type operatorAuth struct {
	keys   map[string]operatorKey
	parser *jwt.Parser
	now    func() time.Time
}

// newOperatorAuth checks the configured keys and builds the parser:
// exp required, aud and iss pinned, bounded leeway, strict base64, only
// ES256 and EdDSA (and each key only its own).
func newOperatorAuth(keys map[string]crypto.PublicKey, audience, issuer string, now func() time.Time) (*operatorAuth, error) {
	a := &operatorAuth{keys: make(map[string]operatorKey, len(keys)), now: now}
	for kid, k := range keys {
		if kid == "" {
			return nil, errors.New("cloud: an operator key without a key ID")
		}
		m, err := keyMethod(k)
		if err != nil {
			return nil, fmt.Errorf("cloud: operator key %q: %w", kid, err)
		}
		a.keys[kid] = operatorKey{key: k, method: m}
	}
	a.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodES256.Alg(), jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithAudience(audience),
		jwt.WithIssuer(issuer),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(OperatorLeeway),
		jwt.WithStrictDecoding(),
		jwt.WithTimeFunc(now),
	)
	return a, nil
}

// tokenError is why a token was refused; its text goes to the
// client, which sent the token and may know why.
type tokenError struct{ reason string }

func (e *tokenError) Error() string { return "invalid operator token: " + e.reason }

// verify checks a token and returns its claims. The kid header selects the
// key, and the key's type the algorithm.
func (a *operatorAuth) verify(token string) (*OperatorClaims, error) {
	if len(token) > MaxOperatorToken {
		return nil, &tokenError{fmt.Sprintf("%d bytes, limit %d", len(token), MaxOperatorToken)}
	}
	var claims operatorJWT
	_, err := a.parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		k, ok := a.keys[kid]
		if !ok {
			return nil, fmt.Errorf("unknown key ID %q", kid)
		}
		if t.Method.Alg() != k.method.Alg() {
			return nil, fmt.Errorf("key %q signs with %s, not %s", kid, k.method.Alg(), t.Method.Alg())
		}
		return k.key, nil
	})
	if err != nil {
		return nil, &tokenError{err.Error()}
	}
	if claims.Subject == "" {
		return nil, &tokenError{"no subject"}
	}
	exp := claims.ExpiresAt.Time
	if exp.Sub(a.now()) > maxOperatorLifetime {
		return nil, &tokenError{"expires more than a year ahead"}
	}
	c := &OperatorClaims{
		Issuer:   claims.Issuer,
		Subject:  claims.Subject,
		Audience: claims.Audience[0],
		Scopes:   strings.Fields(claims.Scope),
		Expires:  exp,
	}
	if claims.IssuedAt != nil {
		c.IssuedAt = claims.IssuedAt.Time
	}
	return c, nil
}

// maxAuthClients bounds how many clients the failure limiter remembers.
const maxAuthClients = 1 << 16

// authLimiter limits failed authentications per client address (an IPv4
// address, an IPv6 /64), each with a token bucket of golang.org/x/time/rate
// that every failure drains. A client whose bucket is empty is refused
// with 429 before its token is looked at, so a flood of bad tokens costs
// no signature checks; clients elsewhere are not affected.
type authLimiter struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	clients map[netip.Prefix]*rate.Limiter
}

// newAuthLimiter returns a limiter of perSecond failures in bursts of
// burst; nil, which limits nothing, for a negative perSecond.
func newAuthLimiter(perSecond float64, burst int) *authLimiter {
	if perSecond < 0 {
		return nil
	}
	return &authLimiter{limit: rate.Limit(perSecond), burst: burst, clients: make(map[netip.Prefix]*rate.Limiter)}
}

// clientOf returns the key a remote address is limited under; ok is false
// for an address that does not parse.
func clientOf(remoteAddr string) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Prefix{}, false
	}
	a := ap.Addr().Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, err := a.Prefix(bits)
	return p, err == nil
}

// limited reports whether c has no failures left, and if so after how
// long it has one again.
func (l *authLimiter) limited(c netip.Prefix, now time.Time) (time.Duration, bool) {
	if l == nil {
		return 0, false
	}
	l.mu.Lock()
	lim := l.clients[c]
	l.mu.Unlock()
	if lim == nil {
		return 0, false
	}
	tokens := lim.TokensAt(now)
	if tokens >= 1 {
		return 0, false
	}
	return time.Duration((1 - tokens) / float64(l.limit) * float64(time.Second)), true
}

// failed takes one failure from c's bucket. When more clients than
// maxAuthClients are remembered, those whose buckets have refilled are
// forgotten, and if that is not enough, all of them.
func (l *authLimiter) failed(c netip.Prefix, now time.Time) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.clients[c]
	if lim == nil {
		if len(l.clients) >= maxAuthClients {
			for k, v := range l.clients {
				if v.TokensAt(now) >= float64(l.burst) {
					delete(l.clients, k)
				}
			}
			if len(l.clients) >= maxAuthClients {
				clear(l.clients)
			}
		}
		lim = rate.NewLimiter(l.limit, l.burst)
		l.clients[c] = lim
	}
	lim.AllowN(now, 1)
}

// retryAfter rounds a wait up to whole seconds, at least one, for a
// Retry-After header.
func retryAfter(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
