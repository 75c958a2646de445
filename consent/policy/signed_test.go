package policy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

func TestSignedManifest(t *testing.T) {
	m := mustParseFile(t, "vacuum.json")
	maker, _ := identity.GenerateKey(identity.P256)
	app, _ := identity.GenerateKey(identity.Ed25519)
	stranger, _ := identity.GenerateKey(identity.P256)
	keys := &consent.KeySet{}
	must(t, keys.Add(consent.TrustedKey{KID: []byte("maker-1"), Key: maker.Public(), Role: consent.ControllerKey}))
	must(t, keys.Add(consent.TrustedKey{KID: []byte("app-1"), Key: app.Public(), Role: consent.SubjectKey, Subject: "s"}))

	msg, err := m.Sign(maker, []byte("maker-1"))
	must(t, err)
	got, err := OpenSigned(context.Background(), msg, keys)
	must(t, err)
	h1, _ := m.Hash()
	h2, _ := got.Hash()
	if h1 != h2 {
		t.Fatal("signed manifest opened to a different manifest")
	}
	tampered := append([]byte(nil), msg...)
	tampered[len(tampered)/2] ^= 1
	if _, err := OpenSigned(context.Background(), tampered, keys); err == nil {
		t.Error("tampered manifest opened")
	}
	bySubject, _ := m.Sign(app, []byte("app-1"))
	if _, err := OpenSigned(context.Background(), bySubject, keys); !errors.Is(err, ErrNotMaker) {
		t.Errorf("manifest signed by a customer's app key: %v", err)
	}
	byStranger, _ := m.Sign(stranger, []byte("maker-1"))
	if _, err := OpenSigned(context.Background(), byStranger, keys); !errors.Is(err, consent.ErrBadSignature) {
		t.Errorf("manifest signed by a stranger under the maker's kid: %v", err)
	}
	unknown, _ := m.Sign(stranger, []byte("maker-2"))
	if _, err := OpenSigned(context.Background(), unknown, keys); !errors.Is(err, consent.ErrUnknownKey) {
		t.Errorf("manifest signed by an unknown key: %v", err)
	}
	bad := *m
	bad.Streams = nil
	if _, err := bad.Sign(maker, []byte("maker-1")); !errors.Is(err, ErrInvalid) {
		t.Errorf("signing an invalid manifest: %v", err)
	}
}

func TestSignedManifestLarge(t *testing.T) {
	// A manifest well over a consent record's size limit still opens.
	m := mustParseFile(t, "aircon.json")
	base := m.Streams[2]
	for i := range 150 {
		s := base
		s.Name = fmt.Sprintf("power-%d", i)
		m.Streams = append(m.Streams, s)
	}
	maker, _ := identity.GenerateKey(identity.Ed25519)
	keys := &consent.KeySet{}
	must(t, keys.Add(consent.TrustedKey{KID: []byte("maker-1"), Key: maker.Public(), Role: consent.ControllerKey}))
	msg, err := m.Sign(maker, []byte("maker-1"))
	must(t, err)
	if len(msg) <= consent.MaxRecordSize {
		t.Fatalf("test manifest is only %d bytes", len(msg))
	}
	if _, err := OpenSigned(context.Background(), msg, keys); err != nil {
		t.Fatalf("large signed manifest: %v", err)
	}
}

// TestSignedManifestDurations: a signed manifest's durations, which CBOR
// carries as seconds, are range-checked as JSON's are: a negative
// retention, window or bucket, or a number of seconds a time.Duration
// cannot hold, is refused with a *ManifestError, though the signature is
// good.
func TestSignedManifestDurations(t *testing.T) {
	maker, _ := identity.GenerateKey(identity.Ed25519)
	keys := &consent.KeySet{}
	must(t, keys.Add(consent.TrustedKey{KID: []byte("maker-1"), Key: maker.Public(), Role: consent.ControllerKey}))
	// signed signs the manifest in file after set changes stream i of its
	// CBOR form, bypassing Sign's validation as a careless or hostile
	// signing tool would.
	signed := func(file string, i int, set func(stream map[any]any)) []byte {
		var raw map[any]any
		must(t, codec.Unmarshal(mustCBOR(t, mustParseFile(t, file)), &raw))
		set(raw[uint64(3)].([]any)[i].(map[any]any))
		payload, err := codec.Marshal(raw)
		must(t, err)
		msg, err := consent.SignPayload(payload, maker, []byte("maker-1"))
		must(t, err)
		return msg
	}
	cases := []struct {
		name string
		msg  []byte
	}{
		{"negative cloud retention", signed("vacuum.json", 1, func(s map[any]any) { s[uint64(8)] = int64(-3600) })},
		{"negative device retention", signed("vacuum.json", 0, func(s map[any]any) { s[uint64(9)] = int64(-1) })},
		{"retention overflowing", signed("vacuum.json", 1, func(s map[any]any) { s[uint64(8)] = int64(math.MaxInt64 / 1000) })},
		{"negative aggregate window", signed("aircon.json", 1, func(s map[any]any) { s[uint64(10)].(map[any]any)[uint64(1)] = int64(-900) })},
		{"negative bucket", signed("vacuum.json", 1, func(s map[any]any) {
			s[uint64(4)].([]any)[0].(map[any]any)[uint64(4)].(map[any]any)[uint64(6)] = int64(-3600)
		})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := OpenSigned(context.Background(), c.msg, keys)
			var me *ManifestError
			if !errors.As(err, &me) || !errors.Is(err, ErrInvalid) || !strings.Contains(me.Problem, "bad duration") {
				t.Fatalf("OpenSigned = %v, %v; want a *ManifestError for a bad duration", m, err)
			}
		})
	}
	// The same manifest is valid with a positive retention.
	if _, err := OpenSigned(context.Background(), signed("vacuum.json", 1, func(s map[any]any) { s[uint64(8)] = int64(3600) }), keys); err != nil {
		t.Fatalf("positive retention: %v", err)
	}
	// A manifest built in Go with a negative retention neither validates
	// nor gets signed.
	m := mustParseFile(t, "vacuum.json")
	m.Streams[1].CloudRetention = Duration(-time.Hour)
	if _, err := m.Sign(maker, []byte("maker-1")); !errors.Is(err, ErrInvalid) {
		t.Errorf("signing a negative retention: %v", err)
	}
}

func mustCBOR(t *testing.T, v any) []byte {
	t.Helper()
	b, err := codec.Marshal(v)
	must(t, err)
	return b
}
