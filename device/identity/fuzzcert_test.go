package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The fuzz chain: a root and an intermediate with fixed keys, valid from
// fuzzNotBefore, so that the chains and requests in testdata/fuzz (made
// with these keys) verify in every run although the root is made afresh,
// with a new serial, each time: a parent is found by its name and key.
var fuzzNotBefore = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fixedEd25519 returns the Ed25519 key whose seed is the SHA-256 of label.
func fixedEd25519(label string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte(label))
	return ed25519.NewKeyFromSeed(seed[:])
}

// fixedP256 returns the P-256 key whose scalar is the SHA-256 of label.
func fixedP256(t testing.TB, label string) *ecdsa.PrivateKey {
	t.Helper()
	d := sha256.Sum256([]byte(label))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fuzzCA returns the fuzz root (a P-256 key) and its intermediate (an
// Ed25519 key), and a pool holding the root.
func fuzzCA(t testing.TB) (root, inter *CA, roots *x509.CertPool) {
	t.Helper()
	opts := &CertOptions{NotBefore: fuzzNotBefore, Organization: "Fuzz Devices"}
	root, err := NewRootCA(fixedP256(t, "fuzz root"), "Fuzz Root", opts)
	if err != nil {
		t.Fatal(err)
	}
	inter, err = root.NewIntermediate(fixedEd25519("fuzz intermediate"), "Fuzz Factory", opts)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(root.Cert)
	return root, inter, roots
}

// chainSentinels are the errors VerifyChain documents.
var chainSentinels = []error{
	ErrCertExpired, ErrCertNotYetValid, ErrUntrustedChain, ErrKeyUsage,
	ErrNotDeviceCert, ErrIDMismatch, ErrUnsupportedKey,
}

// matchesOne reports whether err matches at least one of sentinels.
func matchesOne(err error, sentinels []error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// FuzzVerifyChain checks chains of up to four certificates, given as
// concatenated DER as a peer sends them, against the fuzz root. A refusal
// must match a documented sentinel; an acceptance must prove the ID of the
// leaf's own key, named once in the subject and once in a URI SAN, on a
// chain the standard library also accepts for client authentication.
func FuzzVerifyChain(f *testing.F) {
	_, _, roots := fuzzCA(f)
	f.Fuzz(func(t *testing.T, der []byte) {
		chain, err := x509.ParseCertificates(der)
		if err != nil || len(chain) == 0 || len(chain) > 4 {
			return // not a chain: the parser's business, not ours
		}
		id, err := VerifyChain(chain, roots, fuzzNow)
		if err != nil {
			if !matchesOne(err, chainSentinels) {
				t.Fatalf("error %q matches no documented sentinel", err)
			}
			if !id.IsZero() {
				t.Fatalf("refused chain returned ID %s", id)
			}
			return
		}
		leaf := chain[0]
		want, err := IDFromPublicKey(leaf.PublicKey)
		if err != nil {
			t.Fatalf("accepted a leaf whose key has no ID: %v", err)
		}
		if id != want {
			t.Fatalf("chain proves %s, but the leaf's key is %s", id, want)
		}
		if err := id.Check(leaf.PublicKey); err != nil {
			t.Fatalf("ID.Check of the accepted leaf: %v", err)
		}
		if leaf.Subject.CommonName != id.String() {
			t.Fatalf("accepted leaf's subject is %q, not %s", leaf.Subject.CommonName, id)
		}
		n := 0
		for _, u := range leaf.URIs {
			if u.String() == URIPrefix+id.String() {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("accepted leaf names its ID in %d URI SANs, want 1: %v", n, leaf.URIs)
		}
		if leaf.IsCA {
			t.Fatal("accepted a CA certificate as a device")
		}
		pool := x509.NewCertPool()
		for _, c := range chain[1:] {
			pool.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: roots, Intermediates: pool, CurrentTime: fuzzNow,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}); err != nil {
			t.Fatalf("accepted a chain the standard library refuses: %v", err)
		}
	})
}

// FuzzIssueDevice gives the fuzz intermediate arbitrary certificate
// requests. A refusal must match ErrMalformedCSR, ErrUnsupportedKey or
// ErrIDMismatch; a request whose signature does not verify is always
// refused; an issued certificate carries the request's key and verifies
// as a device chain proving that key's ID.
func FuzzIssueDevice(f *testing.F) {
	_, inter, roots := fuzzCA(f)
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, perr := x509.ParseCertificateRequest(der)
		if perr == nil {
			perr = csr.CheckSignature()
		}
		cert, err := inter.IssueDevice(der, &CertOptions{NotBefore: fuzzNotBefore})
		if err != nil {
			if !matchesOne(err, []error{ErrMalformedCSR, ErrUnsupportedKey, ErrIDMismatch}) {
				t.Fatalf("error %q matches no documented sentinel", err)
			}
			return
		}
		if perr != nil {
			t.Fatalf("issued a certificate for a request that does not verify: %v", perr)
		}
		if !samePublicKey(cert.PublicKey, csr.PublicKey) {
			t.Fatal("issued certificate carries another key than the request's")
		}
		want, err := IDFromPublicKey(csr.PublicKey)
		if err != nil {
			t.Fatalf("issued for a key with no ID: %v", err)
		}
		id, err := VerifyChain([]*x509.Certificate{cert, inter.Cert}, roots, fuzzNow)
		if err != nil {
			t.Fatalf("issued certificate does not verify: %v", err)
		}
		if id != want {
			t.Fatalf("issued certificate proves %s, the request's key is %s", id, want)
		}
	})
}

func samePublicKey(a, b crypto.PublicKey) bool {
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(da, db)
}

// TestFuzzCertSeeds keeps the seed corpora honest: the valid chains and
// requests in testdata/fuzz still verify and issue, and each damaged one
// fails with its own sentinel.
func TestFuzzCertSeeds(t *testing.T) {
	_, inter, roots := fuzzCA(t)
	chains := map[string]error{
		"valid-ed25519":        nil,
		"valid-p256":           nil,
		"with-root":            nil,
		"four-certs":           nil,
		"leaf-only":            ErrUntrustedChain,
		"stranger-root":        ErrUntrustedChain,
		"intermediate-as-leaf": ErrKeyUsage,
		"server-eku":           ErrKeyUsage,
		"expired":              ErrCertExpired,
		"wrong-cn":             ErrIDMismatch,
		"two-uri-sans":         ErrIDMismatch,
	}
	for name, want := range chains {
		chain, err := x509.ParseCertificates(readSeed(t, "FuzzVerifyChain", name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := VerifyChain(chain, roots, fuzzNow); !errors.Is(err, want) {
			t.Errorf("chain %s: %v, want %v", name, err, want)
		}
	}
	requests := map[string]error{
		"valid-ed25519":   nil,
		"valid-p256":      nil,
		"no-subject":      nil,
		"bad-signature":   ErrMalformedCSR,
		"truncated":       ErrMalformedCSR,
		"claims-other-id": ErrIDMismatch,
		"cn-not-an-id":    ErrIDMismatch,
		"p384-key":        ErrUnsupportedKey,
	}
	for name, want := range requests {
		if _, err := inter.IssueDevice(readSeed(t, "FuzzIssueDevice", name), nil); !errors.Is(err, want) {
			t.Errorf("request %s: %v, want %v", name, err, want)
		}
	}
}

// readSeed returns the []byte value of a one-value seed file in
// testdata/fuzz.
func readSeed(t *testing.T, target, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		t.Fatalf("%s/%s: not a one-value seed file", target, name)
	}
	v, ok := strings.CutPrefix(lines[1], "[]byte(")
	if !ok || !strings.HasSuffix(v, ")") {
		t.Fatalf("%s/%s: not a []byte seed", target, name)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(v, ")"))
	if err != nil {
		t.Fatalf("%s/%s: %v", target, name, err)
	}
	return []byte(s)
}
