package policy

import (
	"errors"
	"fmt"
	"testing"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
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
	got, err := OpenSigned(msg, keys)
	must(t, err)
	h1, _ := m.Hash()
	h2, _ := got.Hash()
	if h1 != h2 {
		t.Fatal("signed manifest opened to a different manifest")
	}
	tampered := append([]byte(nil), msg...)
	tampered[len(tampered)/2] ^= 1
	if _, err := OpenSigned(tampered, keys); err == nil {
		t.Error("tampered manifest opened")
	}
	bySubject, _ := m.Sign(app, []byte("app-1"))
	if _, err := OpenSigned(bySubject, keys); !errors.Is(err, ErrNotMaker) {
		t.Errorf("manifest signed by a customer's app key: %v", err)
	}
	byStranger, _ := m.Sign(stranger, []byte("maker-1"))
	if _, err := OpenSigned(byStranger, keys); !errors.Is(err, consent.ErrBadSignature) {
		t.Errorf("manifest signed by a stranger under the maker's kid: %v", err)
	}
	unknown, _ := m.Sign(stranger, []byte("maker-2"))
	if _, err := OpenSigned(unknown, keys); !errors.Is(err, consent.ErrUnknownKey) {
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
	if _, err := OpenSigned(msg, keys); err != nil {
		t.Fatalf("large signed manifest: %v", err)
	}
}
