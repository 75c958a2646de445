package cloud

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/sqlite"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// allScopes grants every route.
var allScopes = []string{
	ScopeDevicesRead, ScopeDevicesWrite, ScopeModelsRead, ScopeModelsWrite, ScopeClaimsRead, ScopeClaimsWrite,
	ScopeStateRead, ScopeStateWrite, ScopeCommandsRead, ScopeCommandsWrite, ScopeIncidentsRead, ScopeMetricsRead,
}

// sqlStrings are texts that mean something to SQL, LIKE, shells and
// JSON; each must come back exactly as it went in.
var sqlStrings = []string{
	`Robert'); DROP TABLE devices;--`,
	`" OR 1=1 --`,
	`100% _match_ \ escape`,
	`$1 $2 ? :name @p1`,
	"line\nbreak\ttab",
	`{"json": [1, 2]}`,
	"ünïcödé ✓ 𝄞",
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// opsEnv is a node with the operator API on a real loopback listener, its
// operator and maker keys, and what it logged.
type opsEnv struct {
	t      *testing.T
	n      *Node
	url    string
	client *http.Client
	key    *ecdsa.PrivateKey // operator key "ops-p256"
	edKey  crypto.Signer     // operator key "ops-ed25519"
	maker  crypto.Signer     // controller key "maker-1", signs manifests
	logs   *syncBuffer
}

// newOpsEnv starts a node on SQLite in a temporary directory with one
// product model (as testNode does), two operator keys and a maker key,
// serving the operator API on http://127.0.0.1:0. configure, if not nil,
// adjusts the Config first.
func newOpsEnv(t *testing.T, configure func(*Config)) *opsEnv {
	t.Helper()
	key, err := identity.GenerateKey(identity.P256)
	if err != nil {
		t.Fatal(err)
	}
	edKey, _ := identity.GenerateKey(identity.Ed25519)
	maker, _ := identity.GenerateKey(identity.P256)
	e := &opsEnv{t: t, key: key.(*ecdsa.PrivateKey), edKey: edKey, maker: maker, logs: &syncBuffer{}}
	cfg := Config{
		Dir:          t.TempDir(),
		FleetSecret:  testFleetSecret,
		Logger:       slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Controllers:  []consent.TrustedKey{{KID: []byte("maker-1"), Key: maker.Public(), Role: consent.ControllerKey}},
		OperatorKeys: map[string]crypto.PublicKey{"ops-p256": key.Public(), "ops-ed25519": edKey.Public()},
	}
	if configure != nil {
		configure(&cfg)
	}
	ctx := context.Background()
	e.n, err = New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.n.Close() })
	if err := e.n.Store().AddModel(ctx, store.Model{ID: "acme-aircon-x1", Name: "Acme Aircon X1"}); err != nil {
		t.Fatal(err)
	}
	e.url, err = e.n.Listen("http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	e.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return e
}

// token signs an operator token for "alice" with the P-256 key.
func (e *opsEnv) token(scopes ...string) string {
	e.t.Helper()
	tok, err := SignOperatorToken(e.key, "ops-p256", e.claims(scopes...))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *opsEnv) claims(scopes ...string) OperatorClaims {
	return OperatorClaims{
		Issuer: DefaultOperatorIssuer, Subject: "alice", Audience: DefaultOperatorAudience,
		Scopes: scopes, Expires: time.Now().Add(10 * time.Minute),
	}
}

// response is an answer of the API.
type response struct {
	status int
	header http.Header
	body   []byte
}

// decode reads the answer's JSON into v.
func (r response) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("answer %d %q: %v", r.status, r.body, err)
	}
}

// errCode returns the code of a JSON error answer.
func (r response) errCode(t *testing.T) string {
	t.Helper()
	var e struct{ Error, Code string }
	r.decode(t, &e)
	if e.Error == "" || e.Code == "" {
		t.Fatalf("error answer %d without error and code: %s", r.status, r.body)
	}
	return e.Code
}

// do sends a request with token (none if empty) and body: nil for none,
// a string or []byte as it is, anything else as JSON. Headers come in
// pairs.
func (e *opsEnv) do(method, path, token string, body any, headers ...string) response {
	e.t.Helper()
	return e.doWith(e.client, method, path, token, body, headers...)
}

func (e *opsEnv) doWith(c *http.Client, method, path, token string, body any, headers ...string) response {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{res.StatusCode, res.Header, b}
}

// want fails unless the answer has the status and, for an error, the code.
func want(t *testing.T, what string, r response, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d: %s", what, r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); r.status != http.StatusNoContent && ct != "application/json" && !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("%s: Content-Type %q", what, ct)
	}
	if code != "" {
		if got := r.errCode(t); got != code {
			t.Fatalf("%s: code %q, want %q: %s", what, got, code, r.body)
		}
	}
}

func publicKeyPEM(t *testing.T, k crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// importDevice imports a new device through the API and returns its key
// and ID.
func (e *opsEnv) importDevice(model string) (crypto.Signer, identity.ID) {
	e.t.Helper()
	key, id := newDeviceKey(e.t)
	r := e.do("POST", "/v1/devices", e.token(ScopeDevicesWrite), map[string]string{"public_key": publicKeyPEM(e.t, key.Public()), "model": model})
	want(e.t, "import", r, http.StatusCreated, "")
	return key, id
}

func TestOperatorDevices(t *testing.T) {
	e := newOpsEnv(t, nil)
	read, write := e.token(ScopeDevicesRead), e.token(ScopeDevicesWrite)
	key, id := newDeviceKey(t)
	body := map[string]string{"public_key": publicKeyPEM(t, key.Public()), "model": "acme-aircon-x1"}
	r := e.do("POST", "/v1/devices", write, body)
	want(t, "import", r, http.StatusCreated, "")
	if loc := r.header.Get("Location"); loc != "/v1/devices/"+id.String() {
		t.Errorf("Location %q", loc)
	}
	var d deviceJSON
	r.decode(t, &d)
	if d.ID != id.String() || d.Model != "acme-aircon-x1" || d.Standing != "active" || d.StandingReason != "imported" || d.PublicKey != body["public_key"] || d.Created.IsZero() {
		t.Errorf("imported device: %+v", d)
	}

	r = e.do("GET", "/v1/devices/"+strings.ToLower(id.String()), read, nil)
	want(t, "get by lower-case ID", r, http.StatusOK, "")
	var got deviceJSON
	r.decode(t, &got)
	if got.ID != id.String() || got.PublicKey != d.PublicKey {
		t.Errorf("got %+v, want %+v", got, d)
	}

	strangerKey, stranger := newDeviceKey(t)
	for _, c := range []struct {
		what, method, path string
		body               any
		status             int
		code               string
	}{
		{"get unknown", "GET", "/v1/devices/" + stranger.String(), nil, 404, "not_found"},
		{"get malformed ID", "GET", "/v1/devices/not-an-id", nil, 400, "bad_request"},
		{"import twice", "POST", "/v1/devices", body, 409, "conflict"},
		{"import of unknown model", "POST", "/v1/devices", map[string]string{"public_key": publicKeyPEM(t, strangerKey.Public()), "model": "no-such-model"}, 400, "unknown_model"},
		{"import without PEM", "POST", "/v1/devices", map[string]string{"public_key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE", "model": "acme-aircon-x1"}, 400, "bad_request"},
		{"import of a PEM private key", "POST", "/v1/devices", map[string]string{"public_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "model": "acme-aircon-x1"}, 400, "bad_request"},
		{"import without a body", "POST", "/v1/devices", "", 400, "bad_request"},
	} {
		tok := read
		if c.method == "POST" {
			tok = write
		}
		want(t, c.what, e.do(c.method, c.path, tok, c.body), c.status, c.code)
	}

	// Pagination: five more devices of a second model, pages of two.
	if err := e.n.Store().AddModel(context.Background(), store.Model{ID: "acme-robovac-r2", Name: "Robovac"}); err != nil {
		t.Fatal(err)
	}
	var all []string
	for range 5 {
		_, id := e.importDevice("acme-robovac-r2")
		all = append(all, id.String())
	}
	var listed []string
	cursor := ""
	for page := 0; ; page++ {
		q := url.Values{"model": {"acme-robovac-r2"}, "limit": {"2"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		r := e.do("GET", "/v1/devices?"+q.Encode(), read, nil)
		want(t, "list page", r, http.StatusOK, "")
		var p struct {
			Devices    []deviceJSON `json:"devices"`
			NextCursor string       `json:"next_cursor"`
		}
		r.decode(t, &p)
		for _, d := range p.Devices {
			listed = append(listed, d.ID)
		}
		if p.NextCursor == "" {
			if page != 2 || len(p.Devices) != 1 {
				t.Errorf("last page %d has %d devices", page, len(p.Devices))
			}
			break
		}
		if len(p.Devices) != 2 || p.NextCursor != p.Devices[1].ID {
			t.Fatalf("page %d: %d devices, next %q", page, len(p.Devices), p.NextCursor)
		}
		cursor = p.NextCursor
	}
	if len(listed) != 5 {
		t.Fatalf("listed %v, want the 5 of %v", listed, all)
	}
	for i := range listed {
		if i > 0 && listed[i-1] >= listed[i] {
			t.Errorf("not in ID order: %v", listed)
		}
		if !strings.Contains(strings.Join(all, " "), listed[i]) {
			t.Errorf("listed %s, not imported", listed[i])
		}
	}
	r = e.do("GET", "/v1/devices?owner=", read, nil)
	want(t, "list unowned", r, http.StatusOK, "")
	var unowned struct{ Devices []deviceJSON }
	r.decode(t, &unowned)
	if len(unowned.Devices) != 6 {
		t.Errorf("%d unowned devices, want 6", len(unowned.Devices))
	}
	for _, q := range []string{"", "?model=a&owner=b", "?model=a&colour=red", "?model=a&limit=0", "?model=a&limit=1000", "?model=a&limit=x", "?model=a&cursor=nonsense", "?model=a&model=b"} {
		want(t, "list "+q, e.do("GET", "/v1/devices"+q, read, nil), 400, "bad_request")
	}
}

// TestOperatorSuspendClosesSession: suspending a device through the API
// closes its CoAP session at once and keeps it out; reactivating lets it
// back in; a decommissioned device stays so.
func TestOperatorSuspendClosesSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := newOpsEnv(t, nil)
	coapURL, err := e.n.Listen("coaps://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, id := e.importDevice("acme-aircon-x1")
	psk, _ := transport.DerivePSK(testFleetSecret, id)
	dial := func() (*transport.Client, error) {
		return transport.Dial(ctx, coapURL, transport.ClientConfig{PSK: psk, Device: id, Retry: transport.RetryPolicy{Attempts: 1, Timeout: 3 * time.Second}})
	}
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.GetRaw(ctx, "/.well-known/core"); err != nil {
		t.Fatal(err)
	}
	write := e.token(ScopeDevicesWrite)
	path := "/v1/devices/" + id.String() + "/standing"
	r := e.do("PUT", path, write, map[string]string{"standing": "suspended", "reason": "tampering suspected"})
	want(t, "suspend", r, http.StatusOK, "")
	var d deviceJSON
	r.decode(t, &d)
	if d.Standing != "suspended" || d.StandingReason != "tampering suspected" {
		t.Errorf("after suspending: %+v", d)
	}
	if _, _, err := c.GetRaw(ctx, "/.well-known/core"); err == nil {
		t.Fatal("the suspended device's session still answers")
	}
	if c2, err := dial(); err == nil {
		c2.Close()
		t.Fatal("a suspended device got in again")
	}
	want(t, "reactivate", e.do("PUT", path, write, map[string]string{"standing": "active", "reason": "cleared"}), http.StatusOK, "")
	c3, err := dial()
	if err != nil {
		t.Fatalf("reactivated device: %v", err)
	}
	c3.Close()

	want(t, "unknown standing", e.do("PUT", path, write, map[string]string{"standing": "asleep", "reason": "x"}), 400, "bad_request")
	want(t, "no reason", e.do("PUT", path, write, map[string]string{"standing": "suspended"}), 400, "bad_request")
	_, stranger := newDeviceKey(t)
	want(t, "unknown device", e.do("PUT", "/v1/devices/"+stranger.String()+"/standing", write, map[string]string{"standing": "suspended", "reason": "x"}), 404, "not_found")
	want(t, "decommission", e.do("PUT", path, write, map[string]string{"standing": "decommissioned", "reason": "returned"}), http.StatusOK, "")
	want(t, "revive the decommissioned", e.do("PUT", path, write, map[string]string{"standing": "active", "reason": "oops"}), 409, "conflict")
	want(t, "claim the decommissioned", e.do("POST", "/v1/devices/"+id.String()+"/claim", e.token(ScopeClaimsWrite), nil), 409, "conflict")
}

// testManifest signs a small manifest for product.
func testManifest(t *testing.T, product string, signer crypto.Signer, kid string) ([]byte, protocol.Hash) {
	t.Helper()
	m, err := policy.Parse([]byte(`{"product": "` + product + `", "version": "2026.1", "streams": [{
		"name": "power", "description": "power used", "purposes": ["analytics"],
		"fields": [{"name": "watts", "type": "number", "category": "device.sensor.power", "transform": {"op": "keep"}}],
		"destinations": [{"to": "cloud"}], "contract": true, "cloud_retention": "720h"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := m.Sign(signer, []byte(kid))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := m.Hash()
	return signed, h
}

func TestOperatorModelsAndManifests(t *testing.T) {
	e := newOpsEnv(t, nil)
	read, write := e.token(ScopeModelsRead), e.token(ScopeModelsWrite)
	r := e.do("POST", "/v1/models", write, modelJSON{ID: "acme-robovac-r2", Name: "Acme Robovac R2"})
	want(t, "add model", r, http.StatusCreated, "")
	if loc := r.header.Get("Location"); loc != "/v1/models/acme-robovac-r2" {
		t.Errorf("Location %q", loc)
	}
	want(t, "add model twice", e.do("POST", "/v1/models", write, modelJSON{ID: "acme-robovac-r2", Name: "again"}), 409, "conflict")
	want(t, "add model without a name", e.do("POST", "/v1/models", write, modelJSON{ID: "x"}), 400, "bad_request")
	r = e.do("GET", "/v1/models", read, nil)
	want(t, "list models", r, http.StatusOK, "")
	var ms struct{ Models []modelJSON }
	r.decode(t, &ms)
	if len(ms.Models) != 2 || ms.Models[0].ID != "acme-aircon-x1" || ms.Models[1] != (modelJSON{"acme-robovac-r2", "Acme Robovac R2"}) {
		t.Errorf("models %+v", ms.Models)
	}
	want(t, "get model", e.do("GET", "/v1/models/acme-robovac-r2", read, nil), http.StatusOK, "")
	want(t, "get unknown model", e.do("GET", "/v1/models/nope", read, nil), 404, "not_found")

	mpath := "/v1/models/acme-robovac-r2/manifests"
	r = e.do("GET", mpath, read, nil)
	want(t, "no manifests", r, http.StatusOK, "")
	if string(r.body) != "{\"manifests\":[]}\n" {
		t.Errorf("empty list: %s", r.body)
	}
	signed, hash := testManifest(t, "acme-robovac-r2", e.maker, "maker-1")
	r = e.do("POST", mpath, write, map[string][]byte{"signed": signed})
	want(t, "add manifest", r, http.StatusCreated, "")
	var mj manifestJSON
	r.decode(t, &mj)
	if mj.Hash != hash.String() || mj.Model != "acme-robovac-r2" || mj.Version != "2026.1" || mj.Signed != nil {
		t.Errorf("added manifest %+v", mj)
	}
	want(t, "add manifest twice", e.do("POST", mpath, write, map[string][]byte{"signed": signed}), 409, "conflict")
	other, _ := testManifest(t, "acme-aircon-x1", e.maker, "maker-1")
	want(t, "manifest of another product", e.do("POST", mpath, write, map[string][]byte{"signed": other}), 400, "bad_manifest")
	stranger, _ := identity.GenerateKey(identity.P256)
	forged, _ := testManifest(t, "acme-robovac-r2", stranger, "maker-1")
	want(t, "manifest signed by a stranger", e.do("POST", mpath, write, map[string][]byte{"signed": forged}), 400, "bad_manifest")
	unknown, _ := testManifest(t, "acme-robovac-r2", stranger, "maker-2")
	want(t, "manifest signed by an unknown key", e.do("POST", mpath, write, map[string][]byte{"signed": unknown}), 400, "bad_manifest")
	tampered := bytes.Clone(signed)
	tampered[len(tampered)/2] ^= 1
	want(t, "tampered manifest", e.do("POST", mpath, write, map[string][]byte{"signed": tampered}), 400, "bad_manifest")
	want(t, "manifest not in base64", e.do("POST", mpath, write, `{"signed": "not base64!"}`), 400, "bad_request")
	want(t, "no manifest", e.do("POST", mpath, write, `{}`), 400, "bad_request")
	unknownModel, _ := testManifest(t, "acme-kettle-k1", e.maker, "maker-1")
	want(t, "manifest of an unknown model", e.do("POST", "/v1/models/acme-kettle-k1/manifests", write, map[string][]byte{"signed": unknownModel}), 404, "not_found")
	want(t, "manifests of an unknown model", e.do("GET", "/v1/models/acme-kettle-k1/manifests", read, nil), 404, "not_found")

	r = e.do("GET", mpath, read, nil)
	var list struct{ Manifests []manifestJSON }
	r.decode(t, &list)
	if len(list.Manifests) != 1 || list.Manifests[0].Hash != hash.String() || list.Manifests[0].Signed != nil {
		t.Errorf("manifests %+v", list.Manifests)
	}
	r = e.do("GET", "/v1/manifests/"+hash.String(), read, nil)
	want(t, "get manifest", r, http.StatusOK, "")
	mj = manifestJSON{}
	r.decode(t, &mj)
	if !bytes.Equal(mj.Signed, signed) {
		t.Error("the signed manifest did not come back as it was added")
	}
	if _, err := policy.OpenSigned(context.Background(), mj.Signed, e.n.Keys()); err != nil {
		t.Error(err)
	}
	want(t, "get unknown manifest", e.do("GET", "/v1/manifests/"+strings.Repeat("ab", 32), read, nil), 404, "not_found")
	want(t, "get manifest by a short hash", e.do("GET", "/v1/manifests/abcd", read, nil), 400, "bad_request")
}

func TestOperatorClaims(t *testing.T) {
	e := newOpsEnv(t, nil)
	ctx := context.Background()
	_, id := e.importDevice("acme-aircon-x1")
	write, read := e.token(ScopeClaimsWrite), e.token(ScopeClaimsRead)
	path := "/v1/devices/" + id.String() + "/claim"
	want(t, "no claim yet", e.do("GET", path, read, nil), 404, "not_found")
	var codes []string
	for range 2 {
		r := e.do("POST", path, write, nil)
		want(t, "create claim", r, http.StatusCreated, "")
		var c struct {
			Device, Code string
			Created      time.Time
		}
		r.decode(t, &c)
		if c.Device != id.String() || len(c.Code) != 26 || c.Created.IsZero() {
			t.Fatalf("claim %+v", c)
		}
		stored, err := e.n.Store().Claim(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if stored.Hash != store.ClaimCodeHash([]byte(c.Code)) {
			t.Error("the store does not hold the hash of the code handed out")
		}
		codes = append(codes, c.Code)
	}
	if codes[0] == codes[1] {
		t.Error("the same claim code twice")
	}
	r := e.do("GET", path, read, nil)
	want(t, "get claim", r, http.StatusOK, "")
	for _, c := range codes {
		if bytes.Contains(r.body, []byte(c)) {
			t.Error("GET claim shows the code")
		}
	}
	want(t, "delete claim", e.do("DELETE", path, write, nil), http.StatusNoContent, "")
	want(t, "delete claim again", e.do("DELETE", path, write, nil), 404, "not_found")
	want(t, "get deleted claim", e.do("GET", path, read, nil), 404, "not_found")
	_, stranger := newDeviceKey(t)
	want(t, "claim of an unknown device", e.do("POST", "/v1/devices/"+stranger.String()+"/claim", write, nil), 404, "not_found")
	want(t, "claim with a read token", e.do("POST", path, read, nil), 403, "insufficient_scope")

	logs := e.logs.String()
	for _, c := range codes {
		if strings.Contains(logs, c) {
			t.Error("a claim code reached the log")
		}
	}
	if strings.Contains(logs, write) || strings.Contains(logs, read) || strings.Contains(logs, "Bearer") {
		t.Error("a token reached the log")
	}
	if !strings.Contains(logs, `msg="operator request" method=POST route="POST /v1/devices/{id}/claim" status=201`) || !strings.Contains(logs, "operator=alice") {
		t.Errorf("no request line for the claim in the log:\n%s", logs)
	}
}

func TestOperatorState(t *testing.T) {
	e := newOpsEnv(t, nil)
	ctx := context.Background()
	_, id := e.importDevice("acme-aircon-x1")
	read, write := e.token(ScopeStateRead), e.token(ScopeStateWrite)
	path := "/v1/devices/" + id.String() + "/state"
	type state struct {
		Desired, Reported documentJSON
		Seen              uint64
	}
	r := e.do("GET", path, read, nil)
	want(t, "state before any", r, http.StatusOK, "")
	if r.header.Get("ETag") != "" {
		t.Errorf("ETag %q before any desired state", r.header.Get("ETag"))
	}
	var s state
	r.decode(t, &s)
	if s.Desired.Version != 0 || s.Desired.Settings != nil || s.Reported.Version != 0 {
		t.Errorf("state before any: %+v", s)
	}

	settings := `{"settings": {"mode": "cool", "target": 22.0, "fan": 3, "eco": true, "big": 9007199254740993, "tiny": 1e-300}}`
	r = e.do("PUT", path+"/desired", write, settings)
	want(t, "set desired", r, http.StatusOK, "")
	if r.header.Get("ETag") != `"1"` {
		t.Errorf("ETag %q, want \"1\"", r.header.Get("ETag"))
	}
	r = e.do("PUT", path+"/desired", write, `{"settings": {"mode": "heat"}}`, "If-Match", `"1"`)
	want(t, "set desired if at 1", r, http.StatusOK, "")
	r = e.do("PUT", path+"/desired", write, `{"settings": {"mode": "dry"}}`, "If-Match", `"1"`)
	want(t, "set desired if at 1 again", r, http.StatusPreconditionFailed, "stale")
	if r.header.Get("ETag") != `"2"` {
		t.Errorf("stale answer's ETag %q, want \"2\"", r.header.Get("ETag"))
	}
	r = e.do("PUT", path+"/desired", write, settings, "If-Match", `"2"`)
	want(t, "set desired if at 2", r, http.StatusOK, "")
	r = e.do("GET", path, read, nil)
	if r.header.Get("ETag") != `"3"` {
		t.Errorf("ETag %q, want \"3\"", r.header.Get("ETag"))
	}
	if !bytes.Contains(r.body, []byte(`"settings":{"big":9007199254740993,"eco":true,"fan":3,"mode":"cool","target":22.0,"tiny":1e-300}`)) {
		t.Errorf("settings did not round-trip with their types: %s", r.body)
	}
	// What devices read: protocol.Settings, integers as integers and
	// floats as floats.
	st, err := e.n.Store().State(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var ps protocol.Settings
	if err := ps.UnmarshalCBOR(st.Desired.Body); err != nil {
		t.Fatal(err)
	}
	if ps["target"] != 22.0 || ps["fan"] != int64(3) || ps["big"] != int64(9007199254740993) || ps["eco"] != true {
		t.Errorf("stored settings %#v", ps)
	}

	// A report the device made, and one that is not settings.
	rep, _ := protocol.Settings{"mode": "cool", "temp": 21.5}.MarshalCBOR()
	if _, err := e.n.Store().SetReported(ctx, id, rep, 3); err != nil {
		t.Fatal(err)
	}
	r = e.do("GET", path, read, nil)
	r.decode(t, &s)
	if s.Reported.Version != 1 || s.Seen != 3 || s.Reported.Settings["mode"] != "cool" || s.Reported.Settings["temp"] != 21.5 {
		t.Errorf("reported %+v", s)
	}
	if _, err := e.n.Store().SetReported(ctx, id, []byte{0x82, 0x01, 0x02}, 3); err != nil {
		t.Fatal(err)
	}
	r = e.do("GET", path, read, nil)
	s = state{}
	r.decode(t, &s)
	if s.Reported.Settings != nil || !bytes.Equal(s.Reported.CBOR, []byte{0x82, 0x01, 0x02}) {
		t.Errorf("a report that is not settings: %+v", s.Reported)
	}

	for _, c := range []struct {
		what, body, ifMatch, code string
		status                    int
	}{
		{"nested settings", `{"settings": {"a": {"b": 1}}}`, "", "bad_request", 400},
		{"an array setting", `{"settings": {"a": [1]}}`, "", "bad_request", 400},
		{"a null setting", `{"settings": {"a": null}}`, "", "bad_request", 400},
		{"an integer over 64 bits", `{"settings": {"a": 18446744073709551616}}`, "", "bad_request", 400},
		{"a float out of range", `{"settings": {"a": 1e400}}`, "", "bad_request", 400},
		{"an empty name", `{"settings": {"": 1}}`, "", "bad_request", 400},
		{"no settings", `{}`, "", "bad_request", 400},
		{"a weak ETag", `{"settings": {}}`, `W/"3"`, "bad_request", 400},
		{"an unquoted ETag", `{"settings": {}}`, `3`, "bad_request", 400},
		{"version 0", `{"settings": {}}`, `"0"`, "bad_request", 400},
		{"two ETags", `{"settings": {}}`, `"3", "4"`, "bad_request", 400},
		{"a future version", `{"settings": {}}`, `"9"`, "stale", 412},
	} {
		var h []string
		if c.ifMatch != "" {
			h = []string{"If-Match", c.ifMatch}
		}
		want(t, c.what, e.do("PUT", path+"/desired", write, c.body, h...), c.status, c.code)
	}
	r = e.do("PUT", path+"/desired", write, `{"settings": {}}`, "If-Match", "*")
	want(t, "If-Match *", r, http.StatusOK, "")
	_, stranger := newDeviceKey(t)
	want(t, "state of an unknown device", e.do("GET", "/v1/devices/"+stranger.String()+"/state", read, nil), 404, "not_found")
	want(t, "desired state of an unknown device", e.do("PUT", "/v1/devices/"+stranger.String()+"/state/desired", write, `{"settings": {}}`), 404, "not_found")
	want(t, "state with a write token only", e.do("GET", path, write, nil), 403, "insufficient_scope")
}

func TestOperatorCommands(t *testing.T) {
	e := newOpsEnv(t, nil)
	ctx := context.Background()
	_, id := e.importDevice("acme-aircon-x1")
	read, write := e.token(ScopeCommandsRead), e.token(ScopeCommandsWrite)
	path := "/v1/devices/" + id.String() + "/commands"
	cmdID := strings.Repeat("0f", 16)
	before := time.Now()
	r := e.do("POST", path, write, `{"id": "`+cmdID+`", "name": "start-cleaning", "args": {"room": "kitchen", "passes": 2}, "ttl_seconds": 600}`)
	want(t, "enqueue", r, http.StatusCreated, "")
	if loc := r.header.Get("Location"); loc != path+"/"+cmdID {
		t.Errorf("Location %q", loc)
	}
	var c commandJSON
	r.decode(t, &c)
	if c.ID != cmdID || c.Device != id.String() || c.Name != "start-cleaning" || c.State != "pending" || c.Args["room"] != "kitchen" || c.Args["passes"] != 2.0 {
		t.Errorf("enqueued %+v", c)
	}
	if ttl := c.Expires.Sub(c.Created); ttl != 10*time.Minute || c.Created.Before(before.Add(-time.Second)) {
		t.Errorf("created %v, expires %v", c.Created, c.Expires)
	}
	want(t, "enqueue the same ID", e.do("POST", path, write, `{"id": "`+cmdID+`", "name": "again"}`), 409, "conflict")

	r = e.do("POST", path, write, `{"name": "stop"}`)
	want(t, "enqueue without ID or TTL", r, http.StatusCreated, "")
	var c2 commandJSON
	r.decode(t, &c2)
	if len(c2.ID) != 32 || c2.ID == cmdID || !c2.Expires.IsZero() || c2.Args != nil {
		t.Errorf("enqueued %+v", c2)
	}

	r = e.do("GET", path, read, nil)
	want(t, "list", r, http.StatusOK, "")
	var list struct{ Commands []commandJSON }
	r.decode(t, &list)
	if len(list.Commands) != 2 || list.Commands[0].ID != cmdID || list.Commands[1].ID != c2.ID {
		t.Errorf("deliverable %+v", list.Commands)
	}

	var pid protocol.CommandID
	copy(pid[:], bytes.Repeat([]byte{0x0f}, 16))
	out, _ := protocol.Settings{"cleaned_m2": 31.5}.MarshalCBOR()
	if err := e.n.Store().SetCommandResult(ctx, id, pid, store.CommandResult{State: store.Succeeded, Result: out, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r = e.do("GET", path+"/"+cmdID, read, nil)
	want(t, "get", r, http.StatusOK, "")
	c = commandJSON{}
	r.decode(t, &c)
	if c.State != "succeeded" || c.Result["cleaned_m2"] != 31.5 || c.Finished.IsZero() {
		t.Errorf("finished command %+v", c)
	}

	_, stranger := newDeviceKey(t)
	for _, x := range []struct {
		what, method, path, body, code string
		status                         int
	}{
		{"a short ID", "POST", path, `{"id": "0f0f", "name": "x"}`, "bad_request", 400},
		{"an ID not in hex", "POST", path, `{"id": "` + strings.Repeat("zz", 16) + `", "name": "x"}`, "bad_request", 400},
		{"no name", "POST", path, `{"args": {}}`, "bad_request", 400},
		{"a negative TTL", "POST", path, `{"name": "x", "ttl_seconds": -1}`, "bad_request", 400},
		{"a TTL past 2262", "POST", path, `{"name": "x", "ttl_seconds": 9000000000}`, "invalid", 400},
		{"nested args", "POST", path, `{"name": "x", "args": {"a": {}}}`, "bad_request", 400},
		{"an unknown device", "POST", "/v1/devices/" + stranger.String() + "/commands", `{"name": "x"}`, "not_found", 404},
		{"list of an unknown device", "GET", "/v1/devices/" + stranger.String() + "/commands", "", "not_found", 404},
		{"an unknown command", "GET", path + "/" + strings.Repeat("00", 16), "", "not_found", 404},
		{"a malformed command ID", "GET", path + "/xyz", "", "bad_request", 400},
	} {
		tok, body := write, any(x.body)
		if x.method == "GET" {
			tok, body = read, nil
		}
		want(t, x.what, e.do(x.method, x.path, tok, body), x.status, x.code)
	}
}

func TestOperatorIncidents(t *testing.T) {
	e := newOpsEnv(t, nil)
	ctx := context.Background()
	_, id := e.importDevice("acme-aircon-x1")
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i := range 3 {
		if _, err := e.n.Store().RecordIncident(ctx, store.Incident{Device: id, Time: base.Add(time.Duration(i) * time.Hour), Kind: "bad-token", Detail: fmt.Sprintf("try %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	read := e.token(ScopeIncidentsRead)
	path := "/v1/devices/" + id.String() + "/incidents"
	list := func(q string) []incidentJSON {
		t.Helper()
		r := e.do("GET", path+q, read, nil)
		want(t, "incidents"+q, r, http.StatusOK, "")
		var l struct{ Incidents []incidentJSON }
		r.decode(t, &l)
		return l.Incidents
	}
	if is := list(""); len(is) != 3 || is[0].Detail != "try 0" || !is[2].Time.Equal(base.Add(2*time.Hour)) || is[0].Kind != "bad-token" {
		t.Errorf("incidents %+v", is)
	}
	if is := list("?since=" + url.QueryEscape(base.Add(time.Hour).Format(time.RFC3339))); len(is) != 2 || is[0].Detail != "try 1" {
		t.Errorf("since: %+v", is)
	}
	if is := list("?limit=1"); len(is) != 1 || is[0].Detail != "try 0" {
		t.Errorf("limit: %+v", is)
	}
	want(t, "bad since", e.do("GET", path+"?since=yesterday", read, nil), 400, "bad_request")
	want(t, "bad limit", e.do("GET", path+"?limit=-1", read, nil), 400, "bad_request")
	_, stranger := newDeviceKey(t)
	want(t, "unknown device", e.do("GET", "/v1/devices/"+stranger.String()+"/incidents", read, nil), 404, "not_found")
}

// TestOperatorSQLStrings: texts that mean something to SQL come back from
// every text field exactly as they went in.
func TestOperatorSQLStrings(t *testing.T) {
	e := newOpsEnv(t, nil)
	ctx := context.Background()
	tok := e.token(allScopes...)
	_, id := e.importDevice("acme-aircon-x1")
	dev := "/v1/devices/" + id.String()
	for i, s := range sqlStrings {
		// A model: ID (in the path too) and name.
		modelID := fmt.Sprintf("m%d %s", i, s)
		want(t, "add model", e.do("POST", "/v1/models", tok, modelJSON{ID: modelID, Name: s}), http.StatusCreated, "")
		r := e.do("GET", "/v1/models/"+url.PathEscape(modelID), tok, nil)
		want(t, "get model", r, http.StatusOK, "")
		var m modelJSON
		r.decode(t, &m)
		if m.ID != modelID || m.Name != s {
			t.Errorf("model %q %q came back as %q %q", modelID, s, m.ID, m.Name)
		}
		// A device of that model, listed by it.
		_, did := e.importDevice(modelID)
		r = e.do("GET", "/v1/devices?model="+url.QueryEscape(modelID), tok, nil)
		var l struct{ Devices []deviceJSON }
		r.decode(t, &l)
		if len(l.Devices) != 1 || l.Devices[0].ID != did.String() || l.Devices[0].Model != modelID {
			t.Errorf("devices of model %q: %+v", modelID, l.Devices)
		}
		// Listing by an owner of that text finds nobody.
		r = e.do("GET", "/v1/devices?owner="+url.QueryEscape(s), tok, nil)
		l.Devices = nil
		r.decode(t, &l)
		if len(l.Devices) != 0 {
			t.Errorf("owner %q owns %d devices", s, len(l.Devices))
		}
		// A standing reason.
		r = e.do("PUT", dev+"/standing", tok, map[string]string{"standing": "active", "reason": s})
		var d deviceJSON
		r.decode(t, &d)
		if d.StandingReason != s {
			t.Errorf("reason %q came back as %q", s, d.StandingReason)
		}
		// A setting's name and value.
		want(t, "set desired", e.do("PUT", dev+"/state/desired", tok, map[string]any{"settings": map[string]string{s: s}}), http.StatusOK, "")
		r = e.do("GET", dev+"/state", tok, nil)
		var st struct{ Desired documentJSON }
		r.decode(t, &st)
		if len(st.Desired.Settings) != 1 || st.Desired.Settings[s] != s {
			t.Errorf("setting %q came back as %v", s, st.Desired.Settings)
		}
		// A command's name and argument.
		r = e.do("POST", dev+"/commands", tok, map[string]any{"name": s, "args": map[string]string{s: s}})
		want(t, "enqueue", r, http.StatusCreated, "")
		var c commandJSON
		r.decode(t, &c)
		r = e.do("GET", dev+"/commands/"+c.ID, tok, nil)
		c = commandJSON{}
		r.decode(t, &c)
		if c.Name != s || c.Args[s] != s {
			t.Errorf("command %q came back as %q %v", s, c.Name, c.Args)
		}
		// An incident's kind and detail.
		if _, err := e.n.Store().RecordIncident(ctx, store.Incident{Device: id, Time: time.Unix(int64(1000+i), 0), Kind: s, Detail: s}); err != nil {
			t.Fatal(err)
		}
	}
	r := e.do("GET", dev+"/incidents", tok, nil)
	var is struct{ Incidents []incidentJSON }
	r.decode(t, &is)
	if len(is.Incidents) != len(sqlStrings) {
		t.Fatalf("%d incidents", len(is.Incidents))
	}
	for i, x := range is.Incidents {
		if x.Kind != sqlStrings[i] || x.Detail != sqlStrings[i] {
			t.Errorf("incident %q came back as %q %q", sqlStrings[i], x.Kind, x.Detail)
		}
	}
	// Text the store cannot keep is refused, not mangled.
	want(t, "a NUL in a model name", e.do("POST", "/v1/models", tok, modelJSON{ID: "nul", Name: "a\x00b"}), 400, "invalid")
	want(t, "invalid UTF-8", e.do("POST", "/v1/models", tok, []byte("{\"id\": \"x\", \"name\": \"\xff\"}")), 400, "bad_request")
}

func TestOperatorAuthentication(t *testing.T) {
	e := newOpsEnv(t, func(c *Config) { c.HTTP.AuthFailureRate = -1 })
	path := "/v1/models"
	check := func(what, auth string, status int, code string) {
		t.Helper()
		var h []string
		if auth != "" {
			h = []string{"Authorization", auth}
		}
		r := e.do("GET", path, "", nil, h...)
		want(t, what, r, status, code)
		if status == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", what, r.header.Get("WWW-Authenticate"))
		}
	}
	sign := func(c OperatorClaims) string {
		t.Helper()
		tok, err := SignOperatorToken(e.key, "ops-p256", c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// raw signs claims as given, for tokens SignOperatorToken will not make.
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
	good := e.claims(ScopeModelsRead)
	check("good token", "Bearer "+sign(good), 200, "")
	check("bearer in lower case", "bearer "+sign(good), 200, "")
	edTok, err := SignOperatorToken(e.edKey, "ops-ed25519", good)
	if err != nil {
		t.Fatal(err)
	}
	check("Ed25519 token", "Bearer "+edTok, 200, "")

	check("no token", "", 401, "unauthorized")
	check("basic auth", "Basic YWxpY2U6cGFzc3dvcmQ=", 401, "unauthorized")
	check("empty bearer", "Bearer ", 401, "unauthorized")
	check("garbage", "Bearer not.a.token", 401, "invalid_token")
	check("wrong scope", "Bearer "+sign(e.claims(ScopeDevicesRead)), 403, "insufficient_scope")
	c := good
	c.Expires = time.Now().Add(-2 * OperatorLeeway)
	check("expired", "Bearer "+sign(c), 401, "invalid_token")
	c = good
	c.Expires = time.Now().Add(-OperatorLeeway / 2)
	check("expired within the leeway", "Bearer "+sign(c), 200, "")
	c = good
	c.Expires = time.Now().Add(2 * maxOperatorLifetime)
	check("expires too far ahead", "Bearer "+sign(c), 401, "invalid_token")
	c = good
	c.IssuedAt = time.Now().Add(time.Hour)
	check("issued in the future", "Bearer "+sign(c), 401, "invalid_token")
	c = good
	c.Audience = "someone-else"
	check("wrong audience", "Bearer "+sign(c), 401, "invalid_token")
	c = good
	c.Issuer = "mallory"
	check("wrong issuer", "Bearer "+sign(c), 401, "invalid_token")
	wrongKid, _ := SignOperatorToken(e.key, "ops-other", good)
	check("unknown kid", "Bearer "+wrongKid, 401, "invalid_token")
	edUnderP256, _ := SignOperatorToken(e.edKey, "ops-p256", good)
	check("EdDSA under the P-256 key's kid", "Bearer "+edUnderP256, 401, "invalid_token")
	p256UnderEd, _ := SignOperatorToken(e.key, "ops-ed25519", good)
	check("ES256 under the Ed25519 key's kid", "Bearer "+p256UnderEd, 401, "invalid_token")
	stranger, _ := identity.GenerateKey(identity.P256)
	forged, _ := SignOperatorToken(stranger, "ops-p256", good)
	check("signed by a stranger", "Bearer "+forged, 401, "invalid_token")

	claims := jwt.MapClaims{"iss": DefaultOperatorIssuer, "sub": "alice", "aud": DefaultOperatorAudience, "scope": ScopeModelsRead, "exp": time.Now().Add(time.Minute).Unix()}
	check("raw good token", "Bearer "+raw(jwt.SigningMethodES256, e.key, "ops-p256", claims), 200, "")
	check("no kid", "Bearer "+raw(jwt.SigningMethodES256, e.key, "", claims), 401, "invalid_token")
	noExp := jwt.MapClaims{"iss": DefaultOperatorIssuer, "sub": "alice", "aud": DefaultOperatorAudience, "scope": ScopeModelsRead}
	check("no exp", "Bearer "+raw(jwt.SigningMethodES256, e.key, "ops-p256", noExp), 401, "invalid_token")
	noSub := jwt.MapClaims{"iss": DefaultOperatorIssuer, "aud": DefaultOperatorAudience, "scope": ScopeModelsRead, "exp": time.Now().Add(time.Minute).Unix()}
	check("no sub", "Bearer "+raw(jwt.SigningMethodES256, e.key, "ops-p256", noSub), 401, "invalid_token")
	hs := raw(jwt.SigningMethodHS256, []byte("a shared secret"), "ops-p256", claims)
	check("HS256", "Bearer "+hs, 401, "invalid_token")
	none := raw(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "ops-p256", claims)
	check("alg none", "Bearer "+none, 401, "invalid_token")
	// Padded base64 is refused under strict decoding.
	tok := sign(good)
	parts := strings.Split(tok, ".")
	check("padded base64", "Bearer "+parts[0]+"=."+parts[1]+"."+parts[2], 401, "invalid_token")
	check("too long", "Bearer "+tok+strings.Repeat("A", MaxOperatorToken), 401, "invalid_token")
	r := e.do("GET", path, "", nil, "Authorization", "Bearer "+tok)
	want(t, "one header", r, 200, "")
	req, _ := http.NewRequest("GET", e.url+path, nil)
	req.Header.Add("Authorization", "Bearer "+tok)
	req.Header.Add("Authorization", "Bearer "+tok)
	res, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 401 {
		t.Errorf("two Authorization headers: %d", res.StatusCode)
	}
}

func TestSignOperatorToken(t *testing.T) {
	key, _ := identity.GenerateKey(identity.P256)
	good := OperatorClaims{Issuer: "i", Subject: "s", Audience: "a", Expires: time.Now().Add(time.Minute), Scopes: []string{"x:read"}}
	if _, err := SignOperatorToken(key, "k", good); err != nil {
		t.Fatal(err)
	}
	for what, mutate := range map[string]func(*OperatorClaims){
		"no subject":           func(c *OperatorClaims) { c.Subject = "" },
		"no audience":          func(c *OperatorClaims) { c.Audience = "" },
		"no issuer":            func(c *OperatorClaims) { c.Issuer = "" },
		"no expiry":            func(c *OperatorClaims) { c.Expires = time.Time{} },
		"a scope with a space": func(c *OperatorClaims) { c.Scopes = []string{"a b"} },
	} {
		c := good
		mutate(&c)
		if _, err := SignOperatorToken(key, "k", c); err == nil {
			t.Errorf("%s: signed", what)
		}
	}
	if _, err := SignOperatorToken(key, "", good); err == nil {
		t.Error("signed without a key ID")
	}
	if _, err := SignOperatorToken(opaqueSigner{key}, "k", good); err == nil {
		t.Error("signed ES256 with a signer golang-jwt cannot use")
	}
	// A node refuses operator keys of other types.
	rsaLike := struct{ crypto.PublicKey }{}
	if _, err := New(context.Background(), Config{Dir: t.TempDir(), OperatorKeys: map[string]crypto.PublicKey{"k": rsaLike}}); err == nil {
		t.Error("a node took an operator key of an unknown type")
	}
	if _, err := New(context.Background(), Config{Dir: t.TempDir(), OperatorKeys: map[string]crypto.PublicKey{"": key.Public()}}); err == nil {
		t.Error("a node took an operator key without a key ID")
	}
}

// opaqueSigner hides the key type behind crypto.Signer, as a hardware key
// would.
type opaqueSigner struct{ crypto.Signer }

// TestOperatorStrictRequests: bodies are one JSON value of known fields,
// in JSON, within their cap; unknown routes and methods answer in JSON.
func TestOperatorStrictRequests(t *testing.T) {
	e := newOpsEnv(t, func(c *Config) { c.HTTP.MaxBody = 1 << 10 })
	tok := e.token(allScopes...)
	want(t, "an unknown field", e.do("POST", "/v1/models", tok, `{"id": "a", "name": "b", "colour": "red"}`), 400, "bad_request")
	want(t, "two values", e.do("POST", "/v1/models", tok, `{"id": "a", "name": "b"} {"id": "c", "name": "d"}`), 400, "bad_request")
	want(t, "trailing garbage", e.do("POST", "/v1/models", tok, `{"id": "a", "name": "b"} x`), 400, "bad_request")
	want(t, "not JSON", e.do("POST", "/v1/models", tok, `id=a&name=b`), 400, "bad_request")
	want(t, "a form", e.do("POST", "/v1/models", tok, `id=a&name=b`, "Content-Type", "application/x-www-form-urlencoded"), 415, "unsupported_media_type")
	want(t, "Latin-1", e.do("POST", "/v1/models", tok, `{"id": "a", "name": "b"}`, "Content-Type", "application/json; charset=iso-8859-1"), 415, "unsupported_media_type")
	want(t, "JSON in UTF-8", e.do("POST", "/v1/models", tok, `{"id": "a", "name": "b"}`, "Content-Type", "application/json; charset=UTF-8"), 201, "")
	big := `{"id": "big", "name": "` + strings.Repeat("x", 2<<10) + `"}`
	want(t, "an oversize body", e.do("POST", "/v1/models", tok, big), 413, "too_large")
	// Without a Content-Length, the cap is met while reading.
	req, _ := http.NewRequest("POST", e.url+"/v1/models", io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 413 {
		t.Errorf("a chunked oversize body: %d", res.StatusCode)
	}
	// A signed manifest may be larger than MaxBody.
	signed, _ := testManifest(t, "acme-aircon-x1", e.maker, "maker-1")
	padded := append(bytes.Clone(signed), make([]byte, 2<<10)...)
	want(t, "a manifest over MaxBody", e.do("POST", "/v1/models/acme-aircon-x1/manifests", tok, map[string][]byte{"signed": padded}), 400, "bad_manifest")

	r := e.do("GET", "/v1/nothing-here", tok, nil)
	want(t, "an unknown route", r, 404, "not_found")
	r = e.do("DELETE", "/v1/models", tok, nil)
	want(t, "a method the route lacks", r, 405, "method_not_allowed")
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "POST") {
		t.Errorf("Allow %q", allow)
	}
	if r := e.do("GET", "/v1/models", tok, nil); r.header.Get("Cache-Control") != "no-store" || r.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", r.header)
	}
}

// TestOperatorSlowClient: a client that dribbles its headers is cut off
// after ReadHeaderTimeout, and other clients are served meanwhile.
func TestOperatorSlowClient(t *testing.T) {
	const timeout = 500 * time.Millisecond
	e := newOpsEnv(t, func(c *Config) { c.HTTP.ReadHeaderTimeout = timeout })
	tok := e.token(ScopeModelsRead)
	u, _ := url.Parse(e.url)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, "GET /v1/models HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	cut := make(chan time.Duration, 1)
	go func() {
		// Dribble a header byte every 50 ms, for far longer than the
		// timeout, until the server hangs up.
		for i := 0; time.Since(start) < 20*timeout; i++ {
			if _, err := io.WriteString(conn, "X"); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cut <- time.Since(start)
	}()
	go func() {
		conn.SetReadDeadline(time.Now().Add(20 * timeout))
		io.Copy(io.Discard, conn) // returns when the server closes
		conn.Close()
	}()
	// Meanwhile a legitimate client is served.
	for range 3 {
		want(t, "a request beside the slow client", e.do("GET", "/v1/models", tok, nil), 200, "")
		time.Sleep(timeout / 5)
	}
	if d := <-cut; d >= 10*timeout {
		t.Fatalf("the slow client was not cut off within %v", d)
	} else if d < timeout {
		t.Fatalf("the slow client was cut off after %v, before the timeout", d)
	}
}

// TestOperatorAuthFlood: a client that sends bad tokens is refused with
// 429 once it has used its failures, before its tokens are checked;
// another client with a good token is served meanwhile.
func TestOperatorAuthFlood(t *testing.T) {
	e := newOpsEnv(t, func(c *Config) {
		c.HTTP.AuthFailureBurst = 5
		c.HTTP.AuthFailureRate = 0.2
	})
	good := e.token(ScopeModelsRead)
	stranger, _ := identity.GenerateKey(identity.P256)
	bad, _ := SignOperatorToken(stranger, "ops-p256", e.claims(ScopeModelsRead))
	var statuses []int
	for range 30 {
		statuses = append(statuses, e.do("GET", "/v1/models", bad, nil).status)
	}
	for i, s := range statuses {
		if wantS := map[bool]int{true: 401, false: 429}[i < 5]; s != wantS {
			t.Fatalf("bad token %d: status %d, want %d (all: %v)", i, s, wantS, statuses)
		}
	}
	r := e.do("GET", "/v1/models", bad, nil)
	want(t, "flooding", r, 429, "too_many_requests")
	if ra := r.header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After %q", ra)
	}
	// A client at another address is not affected.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	defer other.CloseIdleConnections()
	want(t, "a good token from another address", e.doWith(other, "GET", "/v1/models", good, nil), 200, "")
	want(t, "a bad token from another address", e.doWith(other, "GET", "/v1/models", bad, nil), 401, "invalid_token")
	// The flooding address is refused even with a good token, until its
	// bucket refills.
	want(t, "a good token from the flooding address", e.do("GET", "/v1/models", good, nil), 429, "too_many_requests")
	time.Sleep(6 * time.Second)
	want(t, "a good token after the wait", e.do("GET", "/v1/models", good, nil), 200, "")

	r = e.do("GET", "/metrics", e.token(ScopeMetricsRead), nil)
	for _, s := range []string{`sensible_cloud_operator_auth_failures_total{reason="invalid"} 6`, `sensible_cloud_operator_auth_failures_total{reason="limited"} 27`} {
		if !bytes.Contains(r.body, []byte(s)) {
			t.Errorf("metrics lack %s", s)
		}
	}
}

func TestOperatorMetrics(t *testing.T) {
	e := newOpsEnv(t, nil)
	tok := e.token(ScopeMetricsRead, ScopeModelsRead)
	want(t, "models", e.do("GET", "/v1/models", tok, nil), 200, "")
	want(t, "unknown model", e.do("GET", "/v1/models/none", tok, nil), 404, "not_found")
	want(t, "no token", e.do("GET", "/metrics", "", nil), 401, "unauthorized")
	want(t, "no metrics scope", e.do("GET", "/metrics", e.token(ScopeModelsRead), nil), 403, "insufficient_scope")
	// What ingest and the device side will count.
	e.n.metrics.batchStored(false, 7)
	e.n.metrics.batchStored(true, 7)
	e.n.metrics.refused("consent")
	e.n.metrics.incident("bad-token")
	e.n.metrics.session("psk", true)
	e.n.metrics.session("token", false)
	r := e.do("GET", "/metrics", tok, nil)
	want(t, "metrics", r, 200, "")
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q", ct)
	}
	for _, s := range []string{
		`sensible_cloud_operator_requests_total{code="200",route="GET /v1/models"} 1`,
		`sensible_cloud_operator_requests_total{code="404",route="GET /v1/models/{model}"} 1`,
		`sensible_cloud_operator_requests_total{code="401",route="GET /metrics"} 1`,
		`sensible_cloud_operator_request_duration_seconds_count{route="GET /v1/models"} 1`,
		`sensible_cloud_operator_auth_failures_total{reason="missing"} 1`,
		`sensible_cloud_operator_auth_failures_total{reason="scope"} 1`,
		`sensible_cloud_store_duration_seconds_count{op="list_models"} 1`,
		`sensible_cloud_store_duration_seconds_count{op="model"} 1`,
		`sensible_cloud_telemetry_batches_total{result="stored"} 1`,
		`sensible_cloud_telemetry_batches_total{result="duplicate"} 1`,
		`sensible_cloud_telemetry_readings_total 7`,
		`sensible_cloud_refusals_total{reason="consent"} 1`,
		`sensible_cloud_incidents_total{kind="bad-token"} 1`,
		`sensible_cloud_device_sessions_total{method="psk",result="admitted"} 1`,
		`sensible_cloud_device_sessions_total{method="token",result="refused"} 1`,
		"go_goroutines ",
	} {
		if !bytes.Contains(r.body, []byte(s)) {
			t.Errorf("metrics lack %s", s)
		}
	}

	// A second node in the same process has metrics of its own, and
	// serves them without a token when told to.
	pub := newOpsEnv(t, func(c *Config) { c.PublicMetrics = true })
	r = pub.do("GET", "/metrics", "", nil)
	want(t, "public metrics", r, 200, "")
	if bytes.Contains(r.body, []byte(`route="GET /v1/models"`)) || bytes.Contains(r.body, []byte("sensible_cloud_telemetry_readings_total 7")) {
		t.Error("the second node's metrics count the first node's requests")
	}
	want(t, "the API of the public-metrics node", pub.do("GET", "/v1/models", "", nil), 401, "unauthorized")
}

func TestOperatorHTTPS(t *testing.T) {
	e := newOpsEnv(t, nil)
	u, err := e.n.Listen("https://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u, "https://127.0.0.1:") {
		t.Fatalf("listening on %s", u)
	}
	e.url = u
	for _, h2 := range []bool{true, false} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serverRoots(e.n)}, ForceAttemptHTTP2: h2}
		defer tr.CloseIdleConnections()
		r := e.doWith(&http.Client{Transport: tr}, "GET", "/v1/models", e.token(ScopeModelsRead), nil)
		want(t, "over TLS", r, 200, "")
	}
	// A client that does not trust the node's certificate is refused in
	// the handshake.
	if _, err := (&http.Client{Transport: &http.Transport{}}).Get(u + "/v1/models"); err == nil {
		t.Error("a client that does not trust the node's certificate connected")
	}
}

func TestOperatorListenAndClose(t *testing.T) {
	e := newOpsEnv(t, nil)
	for _, bad := range []string{"http://127.0.0.1:0/v1", "http://127.0.0.1:0?x=1", "http://user@127.0.0.1:0", "http://"} {
		if _, err := e.n.Listen(bad); !errors.Is(err, transport.ErrBadURL) {
			t.Errorf("Listen(%q): %v, want ErrBadURL", bad, err)
		}
	}
	u, _ := url.Parse(e.url)
	if _, err := e.n.Listen("http://" + u.Host); !errors.Is(err, transport.ErrAddressInUse) {
		t.Errorf("Listen on a port in use: %v", err)
	}
	// A request in progress on an open connection, then Close: the
	// listener and the connection are closed, and Close returns.
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", e.token(ScopeModelsRead))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	done := make(chan error, 1)
	go func() { done <- e.n.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	// Close waited for the server's goroutines.
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, f := range []string{"net/http.(*conn).serve", "net/http.(*Server).Serve", "cloud.(*httpAPI)"} {
		if strings.Contains(stacks, f) {
			t.Errorf("a goroutine in %s outlived Close", f)
		}
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("a keep-alive connection outlived Close")
	}
	if c, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		c.Close()
		t.Error("the listener outlived Close")
	}
	if _, err := e.n.Listen("http://127.0.0.1:0"); err == nil {
		t.Error("Listen after Close")
	}
	if err := e.n.Close(); err != nil {
		t.Errorf("Close again: %v", err)
	}
}

// blockingStore blocks ListModels until its context ends.
type blockingStore struct {
	store.Store
	entered  chan struct{}
	returned chan struct{}
}

func (s *blockingStore) ListModels(ctx context.Context) ([]store.Model, error) {
	close(s.entered)
	<-ctx.Done()
	close(s.returned)
	return nil, ctx.Err()
}

// TestOperatorCloseCancelsRequests: Close cancels a request in progress
// and returns only after its handler has.
func TestOperatorCloseCancelsRequests(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, t.TempDir(), sqlite.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bs := &blockingStore{Store: st, entered: make(chan struct{}), returned: make(chan struct{})}
	e := newOpsEnv(t, func(c *Config) { c.Store = bs })
	tok := e.token(ScopeModelsRead)
	answered := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", e.url+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := e.client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		answered <- err
	}()
	select {
	case <-bs.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the store")
	}
	closed := make(chan error, 1)
	go func() { closed <- e.n.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not cancel the request in progress")
	}
	select {
	case <-bs.returned:
	default:
		t.Fatal("Close returned before the handler did")
	}
	<-answered
}

// TestOperatorChangesReachDevices: desired state set and a command queued
// through the operator API reach the device observing them at once.
func TestOperatorChangesReachDevices(t *testing.T) {
	e := newOpsEnv(t, nil)
	key, id := e.importDevice("acme-aircon-x1")
	c := testDevice{key, id}.dial(t, e.n, listen(t, e.n, "coaps"))
	states := observe[protocol.Desired](t, c, protocol.StatePath)
	lists := observe[protocol.Commands](t, c, protocol.CommandsPath)
	<-states
	<-lists

	path := "/v1/devices/" + id.String()
	r := e.do("PUT", path+"/state/desired", e.token(ScopeStateWrite), `{"settings": {"mode": "cool"}}`)
	want(t, "set desired", r, http.StatusOK, "")
	select {
	case d := <-states:
		if d.Version != 1 || d.Settings["mode"] != "cool" {
			t.Fatalf("notified %+v", d)
		}
	case <-time.After(time.Second):
		t.Fatal("desired state set through the API did not reach the observing device within 1 s")
	}
	r = e.do("POST", path+"/commands", e.token(ScopeCommandsWrite), `{"name": "defrost", "ttl_seconds": 60}`)
	want(t, "enqueue", r, http.StatusCreated, "")
	select {
	case l := <-lists:
		if len(l.Commands) != 1 || l.Commands[0].Name != "defrost" {
			t.Fatalf("notified %+v", l)
		}
	case <-time.After(time.Second):
		t.Fatal("a command queued through the API did not reach the observing device within 1 s")
	}
}
