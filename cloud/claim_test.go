package cloud

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// An appKey is an app key in the registry and the key that signs with it.
type appKey struct {
	kid     []byte
	signer  crypto.Signer
	subject string
}

// appEnv is an opsEnv on a clock the test moves, with two subjects' app
// keys: alice's Ed25519 key and bob's P-256 key.
type appEnv struct {
	*opsEnv
	clock      *testClock
	alice, bob appKey
}

// newAppEnv starts an opsEnv on a test clock, without a limit on failed
// authentications unless configure sets one.
func newAppEnv(t *testing.T, configure func(*Config)) *appEnv {
	t.Helper()
	clock := &testClock{now: time.Now()}
	e := &appEnv{clock: clock}
	e.opsEnv = newOpsEnv(t, func(c *Config) {
		c.Now = clock.Now
		c.HTTP.AuthFailureRate = -1
		if configure != nil {
			configure(c)
		}
	})
	ed, err := identity.GenerateKey(identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := identity.GenerateKey(identity.P256)
	if err != nil {
		t.Fatal(err)
	}
	e.alice = e.addAppKey([]byte("app-alice"), ed, "subj-alice")
	e.bob = e.addAppKey([]byte("app-bob"), p256, "subj-bob")
	return e
}

func (e *appEnv) addAppKey(kid []byte, signer crypto.Signer, subject string) appKey {
	e.t.Helper()
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.n.Store().AddAppKey(context.Background(), store.AppKey{KID: kid, Subject: subject, PublicKey: der, Added: e.clock.Now()}); err != nil {
		e.t.Fatal(err)
	}
	return appKey{kid, signer, subject}
}

// appToken signs a new app token of k, valid now on the test clock.
func (e *appEnv) appToken(k appKey) string {
	e.t.Helper()
	tok, err := SignAppToken(k.signer, k.kid, AppClaims{Subject: k.subject, Audience: DefaultAppAudience, IssuedAt: e.clock.Now()})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// opsToken is e.token on the test clock.
func (e *appEnv) opsToken(scopes ...string) string {
	e.t.Helper()
	c := e.claims(scopes...)
	c.IssuedAt, c.Expires = e.clock.Now(), e.clock.Now().Add(10*time.Minute)
	tok, err := SignOperatorToken(e.key, "ops-p256", c)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// importDevice is opsEnv.importDevice on the test clock.
func (e *appEnv) importDevice(model string) (crypto.Signer, identity.ID) {
	e.t.Helper()
	key, id := newDeviceKey(e.t)
	r := e.do("POST", "/v1/devices", e.opsToken(ScopeDevicesWrite), map[string]string{"public_key": publicKeyPEM(e.t, key.Public()), "model": model})
	want(e.t, "import", r, http.StatusCreated, "")
	return key, id
}

// createClaim makes a claim code for a device through the operator API,
// and returns the code and the label.
func (e *appEnv) createClaim(id identity.ID) (code, label string) {
	e.t.Helper()
	r := e.do("POST", "/v1/devices/"+id.String()+"/claim", e.opsToken(ScopeClaimsWrite), nil)
	want(e.t, "create claim", r, http.StatusCreated, "")
	var c claimCodeJSON
	r.decode(e.t, &c)
	if c.Device != id.String() || c.Label != ClaimLabel(id, c.Code) {
		e.t.Fatalf("claim %+v", c)
	}
	return c.Code, c.Label
}

// claim posts a claim with k's token.
func (e *appEnv) claim(k appKey, body any) response {
	e.t.Helper()
	return e.do("POST", "/v1/app/claims", e.appToken(k), body)
}

// owner returns a device's owner in the store.
func (e *appEnv) owner(id identity.ID) string {
	e.t.Helper()
	d, err := e.n.Store().Device(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return d.Owner
}

func TestClaimLabel(t *testing.T) {
	_, id := newDeviceKey(t)
	code := "60RK4CSM6MV3EE1SC5H66S35CR"
	label := ClaimLabel(id, code)
	if len(label) != 61 || !strings.HasPrefix(label, ClaimLabelPrefix) {
		t.Fatalf("label %q of %d characters", label, len(label))
	}
	// QR alphanumeric mode: digits, upper case, space and $%*+-./:
	for _, c := range label {
		if !strings.ContainsRune("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:", c) {
			t.Fatalf("label %q has %q, outside QR alphanumeric mode", label, c)
		}
	}
	typed := []string{
		label,
		"  " + label + "\n",
		strings.ToLower(label),
		"snsbl1:" + id.String() + ":60rk-4csm-6mv3-ee1s-c5h6-6s35-cr",
		ClaimLabelPrefix + id.String() + ":6ORK4CSM6MV3EEISC5H66S35CR", // O and I for 0 and 1
		ClaimLabelPrefix + id.String()[:9] + "-" + id.String()[9:] + ":" + code,
	}
	for _, s := range typed {
		gotID, gotCode, err := ParseClaimLabel(s)
		if err != nil || gotID != id || gotCode != code {
			t.Errorf("ParseClaimLabel(%q) = %s, %q, %v", s, gotID, gotCode, err)
		}
	}
	bad := []string{
		"",
		"SNSBL1:",
		"SNSBL2:" + id.String() + ":" + code,
		id.String() + ":" + code,
		ClaimLabelPrefix + id.String(),
		ClaimLabelPrefix + id.String() + code,
		ClaimLabelPrefix + id.String() + ":" + code[:25],
		ClaimLabelPrefix + id.String() + ":" + code + "0",
		ClaimLabelPrefix + id.String() + ":" + code[:25] + "U",
		ClaimLabelPrefix + id.String() + ":" + code + ":" + code,
		ClaimLabelPrefix + id.String()[:26] + wrongCheck(id.String()[26]) + ":" + code, // check character
		ClaimLabelPrefix + ":" + code,
		ClaimLabelPrefix + id.String() + ":" + strings.Repeat("0", 300),
	}
	for _, s := range sqlStrings {
		bad = append(bad, s, ClaimLabelPrefix+s+":"+code, ClaimLabelPrefix+id.String()+":"+s, ClaimLabelPrefix+id.String()+":"+code[:10]+s)
	}
	for _, s := range bad {
		_, _, err := ParseClaimLabel(s)
		if !errors.Is(err, ErrBadClaimLabel) {
			t.Errorf("ParseClaimLabel(%q): %v, want ErrBadClaimLabel", s, err)
		} else if strings.Contains(err.Error(), code[:10]) {
			t.Errorf("ParseClaimLabel(%q): the error %q quotes the code", s, err)
		}
	}
}

func FuzzParseClaimLabel(f *testing.F) {
	var id identity.ID
	copy(id[:], "0123456789abcdef")
	f.Add(ClaimLabel(id, "60RK4CSM6MV3EE1SC5H66S35CR"))
	f.Add("snsbl1:" + strings.ToLower(id.String()) + ":60rk-4csm-6mv3-ee1s-c5h6-6s35-cr")
	f.Add(ClaimLabelPrefix + `Robert'); DROP TABLE devices;--`)
	f.Fuzz(func(t *testing.T, s string) {
		id, code, err := ParseClaimLabel(s)
		if err != nil {
			if !errors.Is(err, ErrBadClaimLabel) {
				t.Fatalf("error %v does not match ErrBadClaimLabel", err)
			}
			return
		}
		// What parses is written back canonically and parses the same.
		label := ClaimLabel(id, code)
		id2, code2, err := ParseClaimLabel(label)
		if err != nil || id2 != id || code2 != code || len(label) != 61 {
			t.Fatalf("%q parsed to %s %q, written %q, parsed again %s %q %v", s, id, code, label, id2, code2, err)
		}
	})
}

// TestAppClaim: an owner's app claims a device with the label the
// operator made, or with its ID and code; the code is used once; a
// device with another owner is 409, the same owner again 200.
func TestAppClaim(t *testing.T) {
	e := newAppEnv(t, nil)
	_, id := e.importDevice("acme-aircon-x1")
	code, label := e.createClaim(id)
	stored, err := e.n.Store().Claim(context.Background(), id)
	if err != nil || stored.Hash != store.ClaimCodeHash([]byte(code)) {
		t.Fatalf("stored claim %+v, %v", stored, err)
	}

	r := e.claim(e.alice, map[string]string{"label": label})
	want(t, "claim", r, http.StatusOK, "")
	var o ownerJSON
	r.decode(t, &o)
	if o != (ownerJSON{Device: id.String(), Owner: "subj-alice"}) || e.owner(id) != "subj-alice" {
		t.Fatalf("claim answered %+v; owner %q", o, e.owner(id))
	}
	if _, err := e.n.Store().Claim(context.Background(), id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the claim is kept after use: %v", err)
	}
	want(t, "the same owner again", e.claim(e.alice, map[string]string{"label": label}), http.StatusOK, "")
	want(t, "another claimant with the used code", e.claim(e.bob, map[string]string{"label": label}), http.StatusForbidden, "bad_claim")
	if e.owner(id) != "subj-alice" {
		t.Fatalf("owner %q", e.owner(id))
	}
	// A code made for a device with an owner does not take it from them.
	_, label2 := e.createClaim(id)
	want(t, "another claimant with a good code", e.claim(e.bob, map[string]string{"label": label2}), http.StatusForbidden, "bad_claim")

	// Device and code, typed by a person.
	_, id2 := e.importDevice("acme-aircon-x1")
	code2, _ := e.createClaim(id2)
	r = e.claim(e.bob, map[string]string{"device": strings.ToLower(id2.String()), "code": strings.ToLower(code2[:13] + "-" + code2[13:])})
	want(t, "claim with device and code", r, http.StatusOK, "")
	if e.owner(id2) != "subj-bob" {
		t.Fatalf("owner %q", e.owner(id2))
	}
	// The operator API shows the owner.
	r = e.do("GET", "/v1/devices/"+id2.String(), e.opsToken(ScopeDevicesRead), nil)
	var d deviceJSON
	r.decode(t, &d)
	if d.Owner != "subj-bob" {
		t.Fatalf("operator API shows owner %q", d.Owner)
	}

	for what, body := range map[string]any{
		"no body":             nil,
		"empty":               map[string]string{},
		"label and device":    map[string]string{"label": label, "device": id.String()},
		"device without code": map[string]string{"device": id.String()},
		"malformed label":     map[string]string{"label": "SNSBL1:nonsense"},
		"malformed code":      map[string]string{"device": id.String(), "code": "not a code"},
		"malformed device":    map[string]string{"device": "nonsense", "code": code},
		"unknown member":      map[string]string{"label": label, "owner": "subj-bob"},
	} {
		r := e.claim(e.bob, body)
		if body == nil {
			want(t, what, r, http.StatusUnsupportedMediaType, "unsupported_media_type")
		} else {
			want(t, what, r, http.StatusBadRequest, "bad_request")
		}
	}
	logs := e.logs.String()
	if strings.Contains(logs, code) || strings.Contains(logs, code2) || strings.Contains(logs, "Bearer") {
		t.Errorf("a claim code or a token reached the log:\n%s", logs)
	}
	if !strings.Contains(logs, `route="POST /v1/app/claims" status=200`) || !strings.Contains(logs, "subject=subj-alice") {
		t.Errorf("no request line for the claim in the log:\n%s", logs)
	}
}

// TestAppClaimRefused: a wrong code and an unknown device are refused
// alike, and so are a device without a code and a decommissioned one.
func TestAppClaimRefused(t *testing.T) {
	e := newAppEnv(t, func(c *Config) { c.Claims.PerDevice, c.Claims.PerClaimant = -1, -1 })
	_, id := e.importDevice("acme-aircon-x1")
	code, _ := e.createClaim(id)
	wrong := "0000000000000000000000000" + "0"
	if wrong == code {
		t.Skip("the random code is all zeros")
	}
	_, unknown := newDeviceKey(t)
	_, noCode := e.importDevice("acme-aircon-x1")
	_, gone := e.importDevice("acme-aircon-x1")
	goneCode, _ := e.createClaim(gone)
	if err := e.n.SetStanding(context.Background(), gone, store.Decommissioned, "scrapped"); err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for what, label := range map[string]string{
		"wrong code":     ClaimLabel(id, wrong),
		"unknown device": ClaimLabel(unknown, code),
		"no claim code":  ClaimLabel(noCode, code),
		"decommissioned": ClaimLabel(gone, goneCode),
	} {
		r := e.claim(e.alice, map[string]string{"label": label})
		want(t, what, r, http.StatusForbidden, "bad_claim")
		bodies = append(bodies, string(r.body))
	}
	for _, b := range bodies[1:] {
		if b != bodies[0] {
			t.Errorf("refusals differ: %s and %s", bodies[0], b)
		}
	}
	for _, d := range []identity.ID{id, noCode, gone} {
		if o := e.owner(d); o != "" {
			t.Errorf("device %s owned by %q", d, o)
		}
	}
	want(t, "the right code after wrong ones", e.claim(e.alice, map[string]string{"label": ClaimLabel(id, code)}), http.StatusOK, "")
}

// TestAppClaimLimits: guessing stops at the limit per device (whoever
// guesses) and per claimant (on any devices), the right code included,
// until the window passes.
func TestAppClaimLimits(t *testing.T) {
	e := newAppEnv(t, nil)
	_, id := e.importDevice("acme-aircon-x1")
	code, label := e.createClaim(id)
	wrong := ClaimLabel(id, strings.Repeat("Z", ClaimCodeLength))
	for i := range DefaultMaxClaimsPerDevice {
		k := e.alice
		if i%2 == 1 {
			k = e.bob
		}
		want(t, "guess "+strconv.Itoa(i), e.claim(k, map[string]string{"label": wrong}), http.StatusForbidden, "bad_claim")
	}
	carol := e.addAppKey([]byte("app-carol"), e.edKey, "subj-carol")
	r := e.claim(carol, map[string]string{"label": label})
	want(t, "the right code past the device's limit", r, http.StatusTooManyRequests, "claim_limited")
	if ra := r.header.Get("Retry-After"); ra != strconv.Itoa(int(DefaultClaimWindow.Seconds())) {
		t.Errorf("Retry-After %q", ra)
	}
	if e.owner(id) != "" {
		t.Fatalf("claimed while limited, by %q", e.owner(id))
	}
	e.clock.Add(DefaultClaimWindow + time.Second)
	want(t, "the right code after the window", e.claim(carol, map[string]string{"label": label}), http.StatusOK, "")
	if e.owner(id) != "subj-carol" {
		t.Fatalf("owner %q", e.owner(id))
	}

	// A claimant guessing across devices: each device sees one attempt.
	_, id2 := e.importDevice("acme-aircon-x1")
	_, label2 := e.createClaim(id2)
	for i := range DefaultMaxClaimsPerClaimant {
		_, other := newDeviceKey(t)
		want(t, "guess "+strconv.Itoa(i), e.claim(e.bob, map[string]string{"label": ClaimLabel(other, code)}), http.StatusForbidden, "bad_claim")
	}
	want(t, "the claimant's right code past its limit", e.claim(e.bob, map[string]string{"label": label2}), http.StatusTooManyRequests, "claim_limited")
	want(t, "another claimant", e.claim(e.alice, map[string]string{"label": label2}), http.StatusOK, "")

	// Node.ClaimDevice says which limit.
	var lim *ClaimLimitError
	err := e.n.ClaimDevice(context.Background(), "subj-bob", id2, code)
	if !errors.As(err, &lim) || !lim.Claimant || !errors.Is(err, ErrClaimLimited) {
		t.Fatalf("ClaimDevice: %v", err)
	}
}

// TestAppClaimLimitsConfigured: Config.Claims sets the window and the
// limits.
func TestAppClaimLimitsConfigured(t *testing.T) {
	e := newAppEnv(t, func(c *Config) { c.Claims = ClaimConfig{Window: time.Minute, PerDevice: 2, PerClaimant: -1} })
	_, id := e.importDevice("acme-aircon-x1")
	_, label := e.createClaim(id)
	wrong := ClaimLabel(id, strings.Repeat("Z", ClaimCodeLength))
	for range 2 {
		want(t, "guess", e.claim(e.alice, map[string]string{"label": wrong}), http.StatusForbidden, "bad_claim")
	}
	r := e.claim(e.alice, map[string]string{"label": label})
	want(t, "the third attempt", r, http.StatusTooManyRequests, "claim_limited")
	if ra := r.header.Get("Retry-After"); ra != "60" {
		t.Errorf("Retry-After %q", ra)
	}
	e.clock.Add(time.Minute)
	want(t, "after the window", e.claim(e.alice, map[string]string{"label": label}), http.StatusOK, "")
}

// TestAppTransfer: the owner's app hands a device over with a new code;
// the new owner claims it; the old owner can no longer transfer it.
func TestAppTransfer(t *testing.T) {
	e := newAppEnv(t, nil)
	_, id := e.importDevice("acme-aircon-x1")
	_, label := e.createClaim(id)
	want(t, "claim", e.claim(e.alice, map[string]string{"label": label}), http.StatusOK, "")
	path := "/v1/app/devices/" + id.String() + "/transfer"

	want(t, "transfer by a stranger", e.do("POST", path, e.appToken(e.bob), nil), http.StatusForbidden, "not_owner")
	_, unknown := newDeviceKey(t)
	want(t, "transfer of an unknown device", e.do("POST", "/v1/app/devices/"+unknown.String()+"/transfer", e.appToken(e.alice), nil), http.StatusForbidden, "not_owner")
	want(t, "transfer of a malformed ID", e.do("POST", "/v1/app/devices/nonsense/transfer", e.appToken(e.alice), nil), http.StatusBadRequest, "bad_request")

	r := e.do("POST", path, e.appToken(e.alice), nil)
	want(t, "transfer", r, http.StatusOK, "")
	var c claimCodeJSON
	r.decode(t, &c)
	if c.Device != id.String() || len(c.Code) != ClaimCodeLength || c.Label != ClaimLabel(id, c.Code) || c.Created.IsZero() {
		t.Fatalf("transfer answered %+v", c)
	}
	if e.owner(id) != "" {
		t.Fatalf("owner %q after the transfer", e.owner(id))
	}
	want(t, "the old label", e.claim(e.bob, map[string]string{"label": label}), http.StatusForbidden, "bad_claim")
	want(t, "transfer again by the old owner", e.do("POST", path, e.appToken(e.alice), nil), http.StatusForbidden, "not_owner")
	want(t, "the new owner claims", e.claim(e.bob, map[string]string{"label": c.Label}), http.StatusOK, "")
	if e.owner(id) != "subj-bob" {
		t.Fatalf("owner %q", e.owner(id))
	}
	want(t, "the old owner claims back", e.claim(e.alice, map[string]string{"label": c.Label}), http.StatusForbidden, "bad_claim")
	want(t, "transfer by the old owner", e.do("POST", path, e.appToken(e.alice), nil), http.StatusForbidden, "not_owner")

	// A decommissioned device is not handed on.
	if err := e.n.SetStanding(context.Background(), id, store.Decommissioned, "scrapped"); err != nil {
		t.Fatal(err)
	}
	want(t, "transfer of a decommissioned device", e.do("POST", path, e.appToken(e.bob), nil), http.StatusConflict, "conflict")
	if e.owner(id) != "subj-bob" {
		t.Fatalf("owner %q", e.owner(id))
	}
	if logs := e.logs.String(); strings.Contains(logs, c.Code) {
		t.Errorf("the transfer's code reached the log")
	}
}

// TestOperatorRelease: an operator releases a device from its owner.
func TestOperatorRelease(t *testing.T) {
	e := newAppEnv(t, nil)
	_, id := e.importDevice("acme-aircon-x1")
	if err := e.n.Store().SetOwner(context.Background(), id, "subj-alice"); err != nil {
		t.Fatal(err)
	}
	path := "/v1/devices/" + id.String() + "/release"
	want(t, "release with a read token", e.do("POST", path, e.opsToken(ScopeDevicesRead), nil), http.StatusForbidden, "insufficient_scope")
	want(t, "release with an app token", e.do("POST", path, e.appToken(e.alice), nil), http.StatusUnauthorized, "invalid_token")
	for range 2 {
		r := e.do("POST", path, e.opsToken(ScopeDevicesWrite), nil)
		want(t, "release", r, http.StatusOK, "")
		var d deviceJSON
		r.decode(t, &d)
		if d.ID != id.String() || d.Owner != "" || e.owner(id) != "" {
			t.Fatalf("released device %+v", d)
		}
	}
	_, unknown := newDeviceKey(t)
	want(t, "release of an unknown device", e.do("POST", "/v1/devices/"+unknown.String()+"/release", e.opsToken(ScopeDevicesWrite), nil), http.StatusNotFound, "not_found")
}

// TestAppClaimSQLStrings: subjects that mean something to SQL own
// devices as they are; such text in a label is refused, and changes
// nothing.
func TestAppClaimSQLStrings(t *testing.T) {
	e := newAppEnv(t, func(c *Config) { c.Claims.PerClaimant = -1 })
	for i, s := range sqlStrings {
		k := e.addAppKey([]byte("sql-"+strconv.Itoa(i)), e.edKey, s)
		_, id := e.importDevice("acme-aircon-x1")
		code, label := e.createClaim(id)
		for _, body := range []map[string]string{
			{"label": label + s},
			{"label": ClaimLabelPrefix + s + ":" + code},
			{"label": ClaimLabelPrefix + id.String() + ":" + s},
			{"device": s, "code": code},
			{"device": id.String(), "code": s},
		} {
			want(t, "SQL in "+body["label"]+body["device"]+body["code"], e.claim(k, body), http.StatusBadRequest, "bad_request")
		}
		want(t, "claim by "+s, e.claim(k, map[string]string{"label": label}), http.StatusOK, "")
		if o := e.owner(id); o != s {
			t.Errorf("owner %q came back as %q", s, o)
		}
		if err := e.n.ClaimDevice(context.Background(), "x", id, s); !errors.Is(err, ErrBadClaim) {
			t.Errorf("ClaimDevice with code %q: %v", s, err)
		}
	}
	// Each owner holds one device.
	for _, s := range sqlStrings {
		r := e.do("GET", "/v1/devices?owner="+url.QueryEscape(s), e.opsToken(ScopeDevicesRead), nil)
		want(t, "list", r, http.StatusOK, "")
		var l struct{ Devices []deviceJSON }
		r.decode(t, &l)
		if len(l.Devices) != 1 || l.Devices[0].Owner != s {
			t.Errorf("devices of %q: %+v", s, l.Devices)
		}
	}
}

// wrongCheck returns a check character other than c.
func wrongCheck(c byte) string {
	if c == '0' {
		return "1"
	}
	return "0"
}
