package cloud

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sensible-iot/sensible/device/identity"
)

// TestAppTokens: app routes take only a fresh token signed by a
// registered app key, under its key ID and algorithm, for the app
// audience, living at most five minutes, once.
func TestAppTokens(t *testing.T) {
	e := newAppEnv(t, nil)
	_, id := e.importDevice("acme-aircon-x1")
	path := "/v1/app/devices/" + id.String() + "/transfer"
	if err := e.n.Store().SetOwner(context.Background(), id, "subj-alice"); err != nil {
		t.Fatal(err)
	}
	// A transfer by a stranger is 403 once the token passes, which
	// tells a good token from a refused one without changing anything.
	check := func(what, tok string, status int, code string) {
		t.Helper()
		r := e.do("POST", path, tok, nil)
		want(t, what, r, status, code)
		if status == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", what, r.header.Get("WWW-Authenticate"))
		}
	}
	now := e.clock.Now()
	sign := func(k appKey, kid []byte, c AppClaims) string {
		t.Helper()
		tok, err := SignAppToken(k.signer, kid, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	bobClaims := AppClaims{Subject: "subj-bob", Audience: DefaultAppAudience, IssuedAt: now}
	// raw signs claims as given, for tokens SignAppToken will not make.
	raw := func(method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
		t.Helper()
		tk := jwt.NewWithClaims(method, claims)
		if kid != "" {
			tk.Header["kid"] = kid
		}
		s, err := tk.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	bobKid := base64.RawURLEncoding.EncodeToString(e.bob.kid)
	rawClaims := func(drop string) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "subj-bob", "aud": DefaultAppAudience, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "jti": strings.Repeat("j", 20) + drop}
		delete(c, drop)
		return c
	}

	check("bob's token", sign(e.bob, e.bob.kid, bobClaims), 403, "not_owner")
	check("alice's Ed25519 token", sign(e.alice, e.alice.kid, AppClaims{Subject: "subj-alice", Audience: DefaultAppAudience, IssuedAt: now}), 200, "")
	// alice handed the device on: a token that passes is now 403 for her too.
	check("raw token", raw(jwt.SigningMethodES256, e.bob.signer, bobKid, rawClaims("")), 403, "not_owner")

	check("no token", "", 401, "unauthorized")
	check("an operator token", e.opsToken(allScopes...), 401, "invalid_token")
	check("unknown kid", sign(e.bob, []byte("app-nobody"), bobClaims), 401, "invalid_token")
	check("alice's key ID for bob's key", sign(e.bob, e.alice.kid, AppClaims{Subject: "subj-alice", Audience: DefaultAppAudience, IssuedAt: now}), 401, "invalid_token")
	check("bob's key ID for alice's key", sign(e.alice, e.bob.kid, bobClaims), 401, "invalid_token")
	check("kid not base64url", raw(jwt.SigningMethodES256, e.bob.signer, "app-bob!", rawClaims("")), 401, "invalid_token")
	check("kid as text", raw(jwt.SigningMethodES256, e.bob.signer, string(e.bob.kid), rawClaims("")), 401, "invalid_token")
	check("no kid", raw(jwt.SigningMethodES256, e.bob.signer, "", rawClaims("")), 401, "invalid_token")
	c := bobClaims
	c.Subject = "subj-alice"
	check("another subject's sub", sign(e.bob, e.bob.kid, c), 401, "invalid_token")
	c = bobClaims
	c.Audience = DefaultOperatorAudience
	check("wrong audience", sign(e.bob, e.bob.kid, c), 401, "invalid_token")
	c = bobClaims
	c.IssuedAt, c.Expires = now.Add(-5*time.Minute), now.Add(-2*time.Minute)
	check("expired", sign(e.bob, e.bob.kid, c), 401, "invalid_token")
	c = bobClaims
	c.IssuedAt, c.Expires = now.Add(-5*time.Minute), now.Add(-30*time.Second)
	check("expired within the leeway", sign(e.bob, e.bob.kid, c), 403, "not_owner")
	c = bobClaims
	c.Expires = now.Add(MaxAppTokenLifetime + time.Second)
	check("lives too long", sign(e.bob, e.bob.kid, c), 401, "invalid_token")
	c = bobClaims
	c.IssuedAt = now.Add(time.Hour)
	check("issued in the future", sign(e.bob, e.bob.kid, c), 401, "invalid_token")
	c = bobClaims
	c.ID = strings.Repeat("j", 65)
	check("jti too long", sign(e.bob, e.bob.kid, c), 401, "invalid_token")
	for _, claim := range []string{"exp", "iat", "jti", "sub", "aud"} {
		check("no "+claim, raw(jwt.SigningMethodES256, e.bob.signer, bobKid, rawClaims(claim)), 401, "invalid_token")
	}
	stranger, _ := identity.GenerateKey(identity.P256)
	check("signed by a stranger", sign(appKey{signer: stranger}, e.bob.kid, bobClaims), 401, "invalid_token")
	der, err := x509.MarshalPKIXPublicKey(e.bob.signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	check("HS256 keyed with the public key", raw(jwt.SigningMethodHS256, der, bobKid, rawClaims("")), 401, "invalid_token")
	check("alg none", raw(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, bobKid, rawClaims("")), 401, "invalid_token")
	tok := sign(e.bob, e.bob.kid, bobClaims)
	parts := strings.Split(tok, ".")
	check("padded base64", parts[0]+"=."+parts[1]+"."+parts[2], 401, "invalid_token")
	check("too long", tok+strings.Repeat("A", MaxAppToken), 401, "invalid_token")

	// Each token once.
	c = bobClaims
	c.ID = "once"
	tok = sign(e.bob, e.bob.kid, c)
	check("first use", tok, 403, "not_owner")
	check("replayed", tok, 401, "invalid_token")
	c.IssuedAt = now.Add(time.Second)
	check("another token with the jti", sign(e.bob, e.bob.kid, c), 401, "invalid_token")
	check("alice's token with the jti", sign(e.alice, e.alice.kid, AppClaims{Subject: "subj-alice", Audience: DefaultAppAudience, IssuedAt: now, ID: "once"}), 403, "not_owner")

	// A removed key signs nothing more.
	if err := e.n.Store().RemoveAppKey(context.Background(), e.bob.kid, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	check("removed key", sign(e.bob, e.bob.kid, bobClaims), 401, "invalid_token")

	if logs := e.logs.String(); strings.Contains(logs, parts[2]) {
		t.Error("an app token reached the log")
	}
}

// TestAppTokenAudience: Config.AppAudience sets the audience.
func TestAppTokenAudience(t *testing.T) {
	e := newAppEnv(t, func(c *Config) { c.AppAudience = "https://cloud.example.com/app" })
	c := AppClaims{Subject: "subj-alice", Audience: "https://cloud.example.com/app", IssuedAt: e.clock.Now()}
	tok, err := SignAppToken(e.alice.signer, e.alice.kid, c)
	if err != nil {
		t.Fatal(err)
	}
	want(t, "configured audience", e.do("POST", "/v1/app/claims", tok, map[string]string{"label": "x"}), http.StatusBadRequest, "bad_request")
	want(t, "default audience", e.claim(e.alice, map[string]string{"label": "x"}), http.StatusUnauthorized, "invalid_token")
}

// TestAppTokenFailures: refused app tokens count against the client's
// address, as refused operator tokens do.
func TestAppTokenFailures(t *testing.T) {
	e := newAppEnv(t, func(c *Config) { c.HTTP.AuthFailureRate, c.HTTP.AuthFailureBurst = 0.001, 2 })
	for range 2 {
		want(t, "bad token", e.do("POST", "/v1/app/claims", "not.a.token", map[string]string{"label": "x"}), http.StatusUnauthorized, "invalid_token")
	}
	r := e.claim(e.alice, map[string]string{"label": "x"})
	want(t, "good token after failures", r, http.StatusTooManyRequests, "too_many_requests")
	if r.header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	want(t, "an operator token too", e.do("GET", "/v1/models", e.opsToken(ScopeModelsRead), nil), http.StatusTooManyRequests, "too_many_requests")
}

func TestSignAppToken(t *testing.T) {
	k, _ := identity.GenerateKey(identity.P256)
	for what, c := range map[string]AppClaims{
		"no subject":  {Audience: DefaultAppAudience},
		"no audience": {Subject: "s"},
	} {
		if _, err := SignAppToken(k, []byte("kid"), c); err == nil {
			t.Errorf("%s: signed", what)
		}
	}
	if _, err := SignAppToken(k, nil, AppClaims{Subject: "s", Audience: DefaultAppAudience}); err == nil {
		t.Error("no key ID: signed")
	}
	if _, err := SignAppToken(opaqueSigner{k}, []byte("kid"), AppClaims{Subject: "s", Audience: DefaultAppAudience}); err == nil {
		t.Error("an opaque ECDSA signer: signed")
	}
	tok, err := SignAppToken(k, []byte{0xff, 0x00}, AppClaims{Subject: "s", Audience: DefaultAppAudience})
	if err != nil {
		t.Fatal(err)
	}
	var claims jwt.RegisteredClaims
	parsed, _, err := jwt.NewParser().ParseUnverified(tok, &claims)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Header["kid"] != "_wA" || parsed.Header["alg"] != "ES256" || claims.ID == "" ||
		claims.ExpiresAt.Sub(claims.IssuedAt.Time) != MaxAppTokenLifetime {
		t.Errorf("header %v, claims %+v", parsed.Header, claims)
	}
}
