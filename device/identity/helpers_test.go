package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"io"
	"math/big"
	"strings"
	"testing"
)

// hwSigner hides the concrete key type, as a signer backed by a secure
// element or TPM would: only Public and Sign are reachable.
type hwSigner struct{ k crypto.Signer }

func (h hwSigner) Public() crypto.PublicKey { return h.k.Public() }
func (h hwSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return h.k.Sign(r, d, o)
}

func mustKey(t testing.TB, kt KeyType) crypto.Signer {
	t.Helper()
	k, err := GenerateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// testChain is a manufacturer root, a factory intermediate, and one device.
type testChain struct {
	root, inter *CA
	devKey      crypto.Signer
	dev         *x509.Certificate
	roots       *x509.CertPool
}

func newTestChain(t testing.TB, devType KeyType) *testChain {
	t.Helper()
	root, err := NewRootCA(mustKey(t, P256), "Acme Root", &CertOptions{Organization: "Acme"})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate(mustKey(t, P256), "Acme Factory 1", nil)
	if err != nil {
		t.Fatal(err)
	}
	devKey := mustKey(t, devType)
	csr, err := NewCSR(devKey)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := inter.IssueDevice(csr, nil)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	return &testChain{root, inter, devKey, dev, roots}
}

func (c *testChain) chain() []*x509.Certificate { return []*x509.Certificate{c.dev, c.inter.Cert} }

// issueRaw signs tmpl for pub with the intermediate, bypassing IssueDevice's
// checks, to build certificates that verification must refuse.
func (c *testChain) issueRaw(t testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(42)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.inter.Cert, pub, c.inter.Signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func bigOne() *big.Int { return big.NewInt(1) }

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// derSignature writes an r||s ECDSA signature in ASN.1 DER, the form JOSE
// does not allow.
func derSignature(r, s []byte) []byte {
	der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(r), new(big.Int).SetBytes(s)})
	if err != nil {
		panic(err)
	}
	return der
}
