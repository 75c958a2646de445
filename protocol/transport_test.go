package protocol_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"testing"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// The DTLS-PSK test vector of docs/protocol.md: a fleet secret of the
// bytes 00 to 1f and the golden device.
const (
	pskFleetSecret = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	pskDeviceID    = "PEYT32HXJN7P3KF7YKZ5YK8FZWZ"
	pskPRK         = "346c46f973f0466d0b53e23ded726c158a8402a361d30c75ac29084cdb0a09f8"
	pskKey         = "4fe402f20f4a8e6c553b4a40fd317d3a"
	// The golden device's Ed25519 public key and its DER
	// SubjectPublicKeyInfo, from which its ID is derived.
	deviceSPKI = "302a300506032b6570032100"
)

// TestPSKVector checks the test vector against transport.DerivePSK, and
// the steps of HKDF-SHA256 (RFC 5869) as the document spells them out,
// for firmware that implements them itself.
func TestPSKVector(t *testing.T) {
	secret, _ := hex.DecodeString(pskFleetSecret)
	id, err := identity.ParseID(pskDeviceID)
	if err != nil {
		t.Fatal(err)
	}
	psk, err := transport.DerivePSK(secret, id)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(psk); got != pskKey {
		t.Errorf("DerivePSK = %s, the document says %s", got, pskKey)
	}
	// HKDF-Extract: PRK = HMAC-SHA256(salt, IKM).
	ext := hmac.New(sha256.New, []byte("sensible dtls psk v1"))
	ext.Write(secret)
	prk := ext.Sum(nil)
	if got := hex.EncodeToString(prk); got != pskPRK {
		t.Errorf("PRK = %s, the document says %s", got, pskPRK)
	}
	// HKDF-Expand, one block: T(1) = HMAC-SHA256(PRK, info || 0x01).
	exp := hmac.New(sha256.New, prk)
	exp.Write([]byte(pskDeviceID))
	exp.Write([]byte{1})
	if got := hex.EncodeToString(exp.Sum(nil)[:transport.PSKSize]); got != pskKey {
		t.Errorf("T(1)[:16] = %s, want %s", got, pskKey)
	}
}

// TestDeviceIDVector: the golden device's ID is the one the document
// derives from its public key.
func TestDeviceIDVector(t *testing.T) {
	f := newFixture(t)
	if f.deviceID.String() != pskDeviceID {
		t.Fatalf("golden device ID %s, the document says %s", f.deviceID, pskDeviceID)
	}
	der, err := x509.MarshalPKIXPublicKey(f.device.Public())
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(der[:12]) != deviceSPKI {
		t.Fatalf("SPKI prefix %x", der[:12])
	}
	h := sha256.Sum256(append([]byte("sensible device id v1\x00"), der...))
	if identity.ID(h[:16]) != f.deviceID {
		t.Fatal("the ID is not the first 16 bytes of the hash")
	}
}

// TestSameAsTransport: the names this package and package transport
// share have the same values.
func TestSameAsTransport(t *testing.T) {
	if protocol.AuthPath != transport.AuthPath {
		t.Errorf("AuthPath %q, transport's %q", protocol.AuthPath, transport.AuthPath)
	}
	for _, c := range []struct {
		ours   transport.Format
		theirs transport.Format
	}{
		{protocol.FormatCBOR, transport.CBOR},
		{protocol.FormatSenMLCBOR, transport.SenMLCBOR},
		{protocol.FormatLinkFormat, transport.LinkFormat},
	} {
		if c.ours != c.theirs {
			t.Errorf("content-format %d, transport's %d", c.ours, c.theirs)
		}
	}
	if protocol.MaxTokenBody != identity.DefaultMaxTokenSize+16 {
		t.Errorf("MaxTokenBody %d", protocol.MaxTokenBody)
	}
}
