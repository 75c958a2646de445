package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

func TestTokenStrictJSON(t *testing.T) {
	ctx := context.Background()
	e := newTokenEnv(t, P256, VerifierConfig{})
	es := `{"alg":"ES256","typ":"JWT"}`
	claims := func(extra string) string {
		c := e.claims()
		return `{"iss":"` + c["iss"].(string) + `","sub":"` + c["sub"].(string) + `","iat":` + itoa(c["iat"]) + `,"exp":` + itoa(c["exp"]) + `,"jti":"` + c["jti"].(string) + `"` + extra + `}`
	}
	raw := func(header, body string) string {
		in := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(body))
		return in + "." + b64.EncodeToString(es256(e.key)([]byte(in)))
	}
	if _, err := e.v.Verify(ctx, raw(es, claims(`,"aud":"`+testAud+`"`))); err != nil {
		t.Fatalf("hand-built token refused: %v", err)
	}
	for name, tok := range map[string]string{
		"duplicate aud":       raw(es, claims(`,"aud":"coap://evil","aud":"`+testAud+`"`)),
		"duplicate alg":       raw(`{"alg":"none","alg":"ES256"}`, claims(`,"aud":"`+testAud+`"`)),
		"upper-case ALG":      raw(`{"ALG":"ES256"}`, claims(`,"aud":"`+testAud+`"`)),
		"upper-case AUD":      raw(es, claims(`,"AUD":"`+testAud+`"`)),
		"escaped member name": raw(es, claims(`,"a\u0075d":"`+testAud+`"`)),
		"claims an array":     raw(es, `["iss"]`),
	} {
		if _, err := e.v.Verify(ctx, tok); !errors.Is(err, ErrTokenMalformed) {
			t.Errorf("%s: %v, want ErrTokenMalformed", name, err)
		}
	}
	good := e.sign(t, TokenParams{})
	if _, err := e.v.Verify(ctx, good[:20]+"\r\n"+good[20:]); !errors.Is(err, ErrTokenMalformed) {
		t.Errorf("line break inside token: %v, want ErrTokenMalformed", err)
	}
	c := e.claims()
	c["sub"] = strings.ToLower(e.id.String())
	c["iss"] = c["sub"]
	if _, err := e.v.Verify(ctx, craft(map[string]any{"alg": "ES256"}, c, es256(e.key))); !errors.Is(err, ErrTokenClaims) {
		t.Errorf("non-canonical sub: %v, want ErrTokenClaims", err)
	}
}

func itoa(v any) string {
	b, _ := jsonMarshal(v)
	return string(b)
}

func TestCheckNames(t *testing.T) {
	deep := strings.Repeat(`{"a":`, maxJSONDepth-1) + "[1]" + strings.Repeat("}", maxJSONDepth-1) // maxJSONDepth levels
	for in, ok := range map[string]bool{
		`{}`:                                true,
		` { "a" : [1,{"b":"}"}] , "c":2 } `: true,
		`{"a":"x\"y","b":null}`:             true,
		`{"a":{"x":1},"b":{"x":1}}`:         true,
		`{"x":` + deep + `}`:                false,
		deep:                                true,
		`{"a":1,"a":2}`:                     false,
		`{"a":{"x":1},"a":2}`:               false,
		`{"a":{"x":1,"x":2}}`:               false,
		`{"a":[{"x":1,"x":2}]}`:             false,
		`{"a\u0062":1}`:                     false,
		`{"a":{"\u0062":1}}`:                false,
		`{"Iss":1}`:                         false,
		"{\"\u017fub\":1}":                  false,
		`{"iss":1}{}`:                       false,
		`{"iss":1} x`:                       false,
		`[]`:                                false,
		`"iss"`:                             false,
		`{"a":1`:                            false,
		`{"a"`:                              false,
		`{"a":"unterminated}`:               false,
		`{"a":[1,2}`:                        false,
		`{"a" 1}`:                           false,
		`{1:2}`:                             false,
		``:                                  false,
	} {
		err := checkNames([]byte(in), claimNames, nil)
		if (err == nil) != ok {
			t.Errorf("checkNames(%s) = %v, want ok=%v", in, err, ok)
		}
	}
}

func TestTokenRegistryKeyMismatch(t *testing.T) {
	e := newTokenEnv(t, P256, VerifierConfig{})
	wrong := mustKey(t, P256).Public()
	v, err := NewTokenVerifier(VerifierConfig{Audience: testAud, Now: func() time.Time { return e.now },
		Keys: func(context.Context, ID) (crypto.PublicKey, error) { return wrong, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), e.sign(t, TokenParams{})); !errors.Is(err, ErrIDMismatch) {
		t.Fatalf("registry key of another device: %v, want ErrIDMismatch", err)
	}
	broken := &ecdsa.PublicKey{Curve: elliptic.P256()}
	v, _ = NewTokenVerifier(VerifierConfig{Audience: testAud, Now: func() time.Time { return e.now },
		Keys: func(context.Context, ID) (crypto.PublicKey, error) { return broken, nil }})
	if _, err := v.Verify(context.Background(), e.sign(t, TokenParams{})); !errors.Is(err, ErrUnsupportedKey) {
		t.Fatalf("incomplete registry key: %v, want ErrUnsupportedKey", err)
	}
	var nilKey *ecdsa.PublicKey
	for _, k := range []crypto.PublicKey{nilKey, broken, &ecdsa.PublicKey{}} {
		if _, err := IDFromPublicKey(k); !errors.Is(err, ErrUnsupportedKey) {
			t.Errorf("IDFromPublicKey(%#v) = %v", k, err)
		}
	}
}

func TestTokenPerDeviceCap(t *testing.T) {
	ctx := context.Background()
	a := newTokenEnv(t, Ed25519, VerifierConfig{})
	b := mustKey(t, Ed25519)
	keys, _ := StaticKeys(a.key.Public(), b.Public())
	v, err := NewTokenVerifier(VerifierConfig{Audience: testAud, Keys: keys, MaxLiveTokens: 3, Now: func() time.Time { return a.now }})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := v.Verify(ctx, a.sign(t, TokenParams{})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Verify(ctx, a.sign(t, TokenParams{})); !errors.Is(err, ErrReplayCacheFull) {
		t.Fatalf("fourth live token of one device: %v, want ErrReplayCacheFull", err)
	}
	tb, _ := SignToken(b, TokenParams{Audience: testAud, IssuedAt: a.now})
	if _, err := v.Verify(ctx, tb); err != nil {
		t.Fatalf("another device refused because one filled its share: %v", err)
	}
}

func TestVerifyChainMore(t *testing.T) {
	c := newTestChain(t, P256)
	now := time.Now()
	devID, _ := IDOf(c.devKey)
	u, _ := url.Parse(URIPrefix + devID.String())
	leaf := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, URIs: []*url.URL{u},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	}
	// A root that is not valid yet.
	future, err := NewRootCA(mustKey(t, P256), "Future Root", &CertOptions{NotBefore: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := future.NewIntermediate(mustKey(t, P256), "Future Factory", &CertOptions{NotBefore: now.Add(-time.Hour)})
	fc := &testChain{inter: fi}
	roots := x509.NewCertPool()
	roots.AddCert(future.Cert)
	if _, err := VerifyChain([]*x509.Certificate{fc.issueRaw(t, leaf(devID.String()), c.devKey.Public()), fi.Cert}, roots, now); !errors.Is(err, ErrCertNotYetValid) {
		t.Errorf("root not yet valid: %v, want ErrCertNotYetValid", err)
	}
	// An intermediate whose key usage does not include certSign.
	bad := &x509.Certificate{SerialNumber: bigOne(), Subject: pkix.Name{CommonName: "No Sign"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true}
	badKey := mustKey(t, P256)
	der, err := x509.CreateCertificate(nil, bad, c.root.Cert, badKey.Public(), c.root.Signer)
	if err != nil {
		t.Fatal(err)
	}
	badCert, _ := x509.ParseCertificate(der)
	bc := &testChain{inter: &CA{Cert: badCert, Signer: badKey}}
	if _, err := VerifyChain([]*x509.Certificate{bc.issueRaw(t, leaf(devID.String()), c.devKey.Public()), badCert}, c.roots, now); !errors.Is(err, ErrKeyUsage) {
		t.Errorf("intermediate without certSign: %v, want ErrKeyUsage", err)
	}
	// A device ID in its lenient spelling is not a certificate name.
	lower := strings.ToLower(devID.String())
	if _, err := VerifyChain([]*x509.Certificate{c.issueRaw(t, leaf(lower), c.devKey.Public()), c.inter.Cert}, c.roots, now); !errors.Is(err, ErrNotDeviceCert) {
		t.Errorf("lower-case CN: %v, want ErrNotDeviceCert", err)
	}
}

func TestKeyFileOddInput(t *testing.T) {
	good, _ := MarshalPrivateKeyPEM(mustKey(t, P256))
	if _, err := ParsePrivateKeyPEM(append([]byte("junk before\n"), good...)); !errors.Is(err, ErrMalformedKey) {
		t.Errorf("text before the block: %v", err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(dir); !errors.Is(err, ErrMalformedKey) {
		t.Errorf("directory: %v, want ErrMalformedKey", err)
	}
}
