package protocol_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sensible-iot/sensible/protocol"
)

// protocolDoc is the document firmware is built from.
const protocolDoc = "../docs/protocol.md"

// TestDocumentMatches keeps docs/protocol.md honest: it names every
// resource and golden vector, shows the golden vectors it quotes exactly
// as their .diag files, and carries the test vectors the tests check.
func TestDocumentMatches(t *testing.T) {
	b, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	f := newFixture(t)
	der, err := x509.MarshalPKIXPublicKey(f.device.Public())
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(append([]byte("sensible device id v1\x00"), der...))
	want := []string{
		protocol.AuthPath, protocol.EnrollPath, protocol.TelemetryPath, protocol.ManifestPath,
		protocol.StatePath, protocol.CommandsPath, protocol.ConsentPath,
		protocol.DiagnosticUnknownManifest, protocol.DiagnosticKeyReused,
		pskFleetSecret, pskDeviceID, pskPRK, pskKey,
		hex.EncodeToString(f.device.Public().(ed25519.PublicKey)),
		hex.EncodeToString(der), hex.EncodeToString(h[:]), f.deviceID.String(),
	}
	for _, w := range want {
		if !strings.Contains(doc, w) {
			t.Errorf("%s does not mention %q", protocolDoc, w)
		}
	}
	for _, v := range vectors(t) {
		if !strings.Contains(doc, "`"+v.name+"`") {
			t.Errorf("%s does not list the golden vector %s", protocolDoc, v.name)
		}
		diag := strings.TrimSuffix(string(readFile(t, filepath.Join("testdata", v.name+".diag"))), "\n")
		if quotable(diag) && !strings.Contains(doc, "```\n"+diag+"\n```") {
			t.Errorf("%s does not show %s.diag as it is", protocolDoc, v.name)
		}
	}
}

// quotable reports whether a .diag file is short enough for the document
// to quote: no line over 100 characters.
func quotable(diag string) bool {
	for _, l := range strings.Split(diag, "\n") {
		if len(l) > 100 {
			return false
		}
	}
	return true
}
