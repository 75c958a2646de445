package protocol_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
)

// The fixed inputs of the golden vectors: keys from fixed seeds, fixed
// times, fixed secrets, so that every vector is the same on every run.
var (
	// goldenTime is 2026-11-23 09:00:00 UTC.
	goldenTime = time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	// goldenKey is the idempotency key of the golden batches.
	goldenKey = protocol.Key{Epoch: 0x1f2e3d4c5b6a7988, Seq: 42}
	// pseudonymSecret is the golden device's pseudonym secret.
	pseudonymSecret = []byte("golden device pseudonym secret")
	// claimToken is the golden claim token.
	claimToken = []byte("claim-0123456789abcdef")
	// tokenAudience is the golden token's audience.
	tokenAudience = "coaps://cloud.example.com"
)

// seededKey returns the Ed25519 key whose seed is SHA-256 of name.
func seededKey(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte(name))
	return ed25519.NewKeyFromSeed(seed[:])
}

// fixture holds what the golden vectors, the examples and the tests
// share.
type fixture struct {
	aircon, mower  *policy.Manifest
	airconHash     [32]byte
	mowerHash      [32]byte
	reg            *policy.Manifests
	device         ed25519.PrivateKey
	deviceID       identity.ID
	maker, app     ed25519.PrivateKey
	keys           *consent.KeySet // maker (controller), app (subject) and device keys
	airconE        *policy.Enforcer
	mowerE         *policy.Enforcer
	logKey, logVer string // the consent log's note keys
}

const goldenSubject = "subj-7f3a2c"

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{reg: &policy.Manifests{}, keys: &consent.KeySet{}}
	f.aircon, f.airconHash = loadManifest(t, f.reg, "aircon.json")
	f.mower, f.mowerHash = loadManifest(t, f.reg, "mower.json")
	f.device = seededKey("sensible golden device")
	f.maker = seededKey("sensible golden maker")
	f.app = seededKey("sensible golden app")
	var err error
	if f.deviceID, err = identity.IDOf(f.device); err != nil {
		t.Fatal(err)
	}
	for _, k := range []consent.TrustedKey{
		{KID: []byte("maker-1"), Key: f.maker.Public(), Role: consent.ControllerKey},
		{KID: []byte("app-1"), Key: f.app.Public(), Role: consent.SubjectKey, Subject: goldenSubject},
		{KID: []byte(f.deviceID.String()), Key: f.device.Public(), Role: consent.DeviceKey, Subject: goldenSubject},
	} {
		if err := f.keys.Add(k); err != nil {
			t.Fatal(err)
		}
	}
	if f.airconE, err = policy.NewEnforcer(f.aircon, f.deviceID.String(), pseudonymSecret); err != nil {
		t.Fatal(err)
	}
	if f.mowerE, err = policy.NewEnforcer(f.mower, f.deviceID.String(), pseudonymSecret); err != nil {
		t.Fatal(err)
	}
	seed := sha256.Sum256([]byte("sensible golden consent log"))
	if f.logKey, f.logVer, err = note.GenerateKey(bytes.NewReader(seed[:]), "consent.example.com/log"); err != nil {
		t.Fatal(err)
	}
	return f
}

func loadManifest(t testing.TB, reg *policy.Manifests, name string) (*policy.Manifest, [32]byte) {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	m, err := policy.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	h, err := reg.Add(m)
	if err != nil {
		t.Fatal(err)
	}
	return m, h
}

// apply runs the enforcer and fails the test if nothing leaves.
func apply(t testing.TB, e *policy.Enforcer, stream string, r policy.Reading) policy.Reading {
	t.Helper()
	out, err := e.Apply(stream, r)
	if err != nil || out == nil {
		t.Fatalf("Apply(%s): %v, %v", stream, out, err)
	}
	return out.Fields
}

// powerBatch is two readings of the air conditioner's power stream.
func (f *fixture) powerBatch(t testing.TB) protocol.Batch {
	return protocol.Batch{
		Manifest: f.airconHash, Stream: "power", Key: goldenKey,
		Readings: []policy.Reading{
			apply(t, f.airconE, "power", policy.Reading{"ts": goldenTime.Add(7*time.Minute + 12345*time.Millisecond), "watts": 1234.5, "serial": "SN-0042"}),
			apply(t, f.airconE, "power", policy.Reading{"ts": goldenTime.Add(72 * time.Minute), "watts": 987.6}),
		},
	}
}

// occupancyBatch is one window of the air conditioner's occupancy
// aggregate.
func (f *fixture) occupancyBatch(t testing.TB) protocol.Batch {
	a, err := f.airconE.Aggregator("occupancy")
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []int64{1, 2, 1, 2} {
		if err := a.Add(goldenTime.Add(time.Duration(i)*3*time.Minute), policy.Reading{"people": n}); err != nil {
			t.Fatal(err)
		}
	}
	outs := a.Flush(goldenTime.Add(time.Hour))
	if len(outs) != 1 {
		t.Fatalf("%d windows", len(outs))
	}
	return protocol.Batch{Manifest: f.airconHash, Stream: "occupancy", Key: protocol.Key{Epoch: goldenKey.Epoch, Seq: 43},
		Readings: []policy.Reading{outs[0].Fields}}
}

// tripBatch is a mowing trip with a value of every type, for a partner.
// Its time is whole milliseconds, which SenML carries.
func (f *fixture) tripBatch(t testing.TB, at time.Time) protocol.Batch {
	return protocol.Batch{
		Manifest: f.mowerHash, Stream: "trip", Key: protocol.Key{Epoch: goldenKey.Epoch, Seq: 44}, Partner: "garden-co",
		Readings: []policy.Reading{apply(t, f.mowerE, "trip", policy.Reading{
			"ts": at, "area": policy.Point{Lat: 52.516275, Lon: 13.377704}, "dock": policy.Point{Lat: 52.51634, Lon: 13.37771},
			"battery": int64(67), "zone": int64(3), "blade_rpm": 3137.0, "rain": false,
			"owner": "alice@example.com", "camera": "<jpeg>",
		})},
	}
}

// token returns a device token made by hand, with a fixed ID (jti), so
// that the golden vector is stable; identity.SignToken makes the same
// form with a random one.
func (f *fixture) token() string {
	enc := base64.RawURLEncoding
	id := f.deviceID.String()
	header := enc.EncodeToString([]byte(`{"alg":"EdDSA","typ":"JWT"}`))
	claims := enc.EncodeToString([]byte(`{"iss":"` + id + `","sub":"` + id + `","aud":"` + tokenAudience +
		`","iat":1795424400,"exp":1795425000,"jti":"Z29sZGVuLXRva2VuLTAx"}`))
	sig := ed25519.Sign(f.device, []byte(header+"."+claims))
	return header + "." + claims + "." + enc.EncodeToString(sig)
}

// notice is the golden consent notice.
var notice = consent.Notice{ID: "analytics", Version: 3, Language: "en-GB", Hash: consent.HashText([]byte("We use your air conditioner's power readings to ..."))}

// appGrant is a consent the owner gave in the app for the device.
func (f *fixture) appGrant() *consent.Record {
	return &consent.Record{
		Schema: consent.SchemaVersion, ID: consent.ID{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 1, 2, 3, 4, 5, 6, 7, 8},
		Subject: goldenSubject, Controller: "acme",
		Notice:    notice,
		Processes: []consent.Process{{Purpose: "analytics", Categories: []string{"device.sensor.power", "device.usage"}, LegalBasis: "consent", Retention: 365 * 24 * 3600}},
		Devices:   []identity.ID{f.deviceID},
		Event:     consent.Event{Time: goldenTime.Unix() - 86400, Actor: "subject:app", State: consent.StateGiven},
	}
}

// deviceGrant is a consent the owner gave on the device's own screen.
func (f *fixture) deviceGrant() *consent.Record {
	return &consent.Record{
		Schema: consent.SchemaVersion, ID: consent.ID{0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, 8, 7, 6, 5, 4, 3, 2, 1},
		Subject: goldenSubject, Controller: "acme",
		Notice: consent.Notice{ID: "garden-offers", Version: 1, Language: "de-DE",
			Hash: consent.HashText([]byte("Garden Co. erfährt, wann und ungefähr wo ..."))},
		Processes: []consent.Process{{Purpose: "garden-offers", Categories: []string{"device.usage", "user.location"},
			Recipients: []string{"garden-co"}, LegalBasis: "consent", Retention: 90 * 24 * 3600}},
		Devices: []identity.ID{f.deviceID},
		Event:   consent.Event{Time: goldenTime.Unix(), Actor: "device", State: consent.StateGiven},
	}
}

// sign signs a record or fails the test.
func sign(t testing.TB, r *consent.Record, key ed25519.PrivateKey, kid string) []byte {
	t.Helper()
	b, err := consent.Sign(r, key, []byte(kid))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// receipt appends the golden records to a fresh log and returns the
// receipt of the device's record.
func (f *fixture) receipt(t testing.TB) (*consent.Receipt, []byte) {
	t.Helper()
	ctx := context.Background()
	signer, err := note.NewSigner(f.logKey)
	if err != nil {
		t.Fatal(err)
	}
	log, err := consent.OpenLog(ctx, &consent.MemLogStore{}, signer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := log.Append(ctx, sign(t, f.appGrant(), f.app, "app-1")); err != nil {
		t.Fatal(err)
	}
	rec := sign(t, f.deviceGrant(), f.device, f.deviceID.String())
	r, err := log.Append(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	return r, rec
}
