package identity

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"
	"time"
)

func TestVerifyChain(t *testing.T) {
	for _, kt := range []KeyType{P256, Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			c := newTestChain(t, kt)
			id, err := VerifyChain(c.chain(), c.roots, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			want, _ := IDOf(c.devKey)
			if id != want {
				t.Fatalf("chain proves %s, want %s", id, want)
			}
			if c.dev.Subject.CommonName != want.String() || len(c.dev.URIs) != 1 || c.dev.URIs[0].String() != URIPrefix+want.String() {
				t.Errorf("device cert names %q %v", c.dev.Subject.CommonName, c.dev.URIs)
			}
			if c.dev.IsCA || c.dev.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("device cert IsCA=%v KeyUsage=%v", c.dev.IsCA, c.dev.KeyUsage)
			}
			if !c.inter.Cert.MaxPathLenZero || c.root.Cert.MaxPathLen != 1 {
				t.Errorf("path length constraints: root %d, intermediate zero=%v", c.root.Cert.MaxPathLen, c.inter.Cert.MaxPathLenZero)
			}
		})
	}
}

func TestVerifyChainBadInput(t *testing.T) {
	c := newTestChain(t, P256)
	devID, _ := IDOf(c.devKey)
	u, _ := url.Parse(URIPrefix + devID.String())
	now := time.Now()
	base := func() *x509.Certificate {
		return &x509.Certificate{
			Subject:     pkix.Name{CommonName: devID.String()},
			URIs:        []*url.URL{u},
			NotBefore:   now.Add(-time.Hour),
			NotAfter:    now.Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
	}
	other := newTestChain(t, P256) // a different manufacturer
	staleInter, err := c.root.NewIntermediate(mustKey(t, P256), "Closed Factory", &CertOptions{NotBefore: now.Add(-3 * time.Hour), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stale := &testChain{root: c.root, inter: staleInter}

	noSign := base()
	noSign.KeyUsage = x509.KeyUsageKeyEncipherment
	serverOnly := base()
	serverOnly.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	wrongCN := base()
	otherID, _ := IDOf(mustKey(t, P256))
	wrongCN.Subject.CommonName = otherID.String()
	wrongURI := base()
	ou, _ := url.Parse(URIPrefix + otherID.String())
	wrongURI.URIs = []*url.URL{ou}
	noURI := base()
	noURI.URIs = nil
	notID := base()
	notID.Subject.CommonName = "fridge-42"

	cases := []struct {
		name  string
		chain []*x509.Certificate
		roots *x509.CertPool
		at    time.Time
		want  error
	}{
		{"expired", c.chain(), c.roots, c.dev.NotAfter.Add(time.Second), ErrCertExpired},
		{"not yet valid", c.chain(), c.roots, c.dev.NotBefore.Add(-time.Second), ErrCertNotYetValid},
		{"expired intermediate, valid leaf", []*x509.Certificate{stale.issueRaw(t, base(), c.devKey.Public()), stale.inter.Cert}, c.roots, now, ErrCertExpired},
		{"untrusted root", c.chain(), other.roots, now, ErrUntrustedChain},
		{"missing intermediate", []*x509.Certificate{c.dev}, c.roots, now, ErrUntrustedChain},
		{"empty chain", nil, c.roots, now, ErrUntrustedChain},
		{"key usage forbids signing", []*x509.Certificate{c.issueRaw(t, noSign, c.devKey.Public()), c.inter.Cert}, c.roots, now, ErrKeyUsage},
		{"server-only EKU", []*x509.Certificate{c.issueRaw(t, serverOnly, c.devKey.Public()), c.inter.Cert}, c.roots, now, ErrKeyUsage},
		{"leaf is a CA", []*x509.Certificate{c.inter.Cert}, c.roots, now, ErrKeyUsage},
		{"ID in CN does not match key", []*x509.Certificate{c.issueRaw(t, wrongCN, c.devKey.Public()), c.inter.Cert}, c.roots, now, ErrIDMismatch},
		{"ID in URI does not match key", []*x509.Certificate{c.issueRaw(t, wrongURI, c.devKey.Public()), c.inter.Cert}, c.roots, now, ErrIDMismatch},
		{"no URI SAN", []*x509.Certificate{c.issueRaw(t, noURI, c.devKey.Public()), c.inter.Cert}, c.roots, now, ErrNotDeviceCert},
		{"CN not an ID", []*x509.Certificate{c.issueRaw(t, notID, c.devKey.Public()), c.inter.Cert}, c.roots, now, ErrNotDeviceCert},
		{"chain swapped with another device's intermediate", []*x509.Certificate{c.dev, other.inter.Cert}, c.roots, now, ErrUntrustedChain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := VerifyChain(tc.chain, tc.roots, tc.at)
			if !errors.Is(err, tc.want) {
				t.Fatalf("VerifyChain = %s, %v; want %v", id, err, tc.want)
			}
		})
	}
}

func TestIssueDeviceBadCSR(t *testing.T) {
	c := newTestChain(t, P256)
	good, err := NewCSR(mustKey(t, Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	corrupt := append([]byte(nil), good...)
	corrupt[len(corrupt)-5] ^= 0xff // inside the signature
	if _, err := c.inter.IssueDevice(corrupt, nil); !errors.Is(err, ErrMalformedCSR) {
		t.Errorf("corrupted CSR: %v", err)
	}
	if _, err := c.inter.IssueDevice(good[:len(good)/2], nil); !errors.Is(err, ErrMalformedCSR) {
		t.Errorf("truncated CSR: %v", err)
	}
	// A request that claims another device's ID.
	k := mustKey(t, P256)
	otherID, _ := IDOf(mustKey(t, P256))
	der, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{Subject: pkix.Name{CommonName: otherID.String()}}, k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.inter.IssueDevice(der, nil); !errors.Is(err, ErrIDMismatch) {
		t.Errorf("CSR claiming another ID: %v", err)
	}
	// Device certificates never outlive their issuer.
	cert, err := c.inter.IssueDevice(good, &CertOptions{Validity: 100 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if cert.NotAfter.After(c.inter.Cert.NotAfter) {
		t.Errorf("device cert outlives its intermediate: %v > %v", cert.NotAfter, c.inter.Cert.NotAfter)
	}
}

func TestHardwareSignerCA(t *testing.T) {
	// Every signing path works with an opaque crypto.Signer.
	root, err := NewRootCA(hwSigner{mustKey(t, P256)}, "HSM Root", nil)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate(hwSigner{mustKey(t, Ed25519)}, "HSM Factory", nil)
	if err != nil {
		t.Fatal(err)
	}
	dev := hwSigner{mustKey(t, P256)}
	csr, err := NewCSR(dev)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := inter.IssueDevice(csr, nil)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	if _, err := VerifyChain([]*x509.Certificate{cert, inter.Cert}, roots, time.Now()); err != nil {
		t.Fatal(err)
	}
}

func TestIssueServer(t *testing.T) {
	c := newTestChain(t, P256)
	k := mustKey(t, P256)
	cert, err := c.root.IssueServer(k.Public(), []string{"cloud.example.com", "127.0.0.1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: c.roots, DNSName: "cloud.example.com"}); err != nil {
		t.Errorf("DNS name: %v", err)
	}
	if err := cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("IP address: %v", err)
	}
	if _, err := VerifyChain([]*x509.Certificate{cert}, c.roots, time.Now()); err == nil {
		t.Error("a server certificate verified as a device chain")
	}
	if _, err := c.root.IssueServer(k.Public(), nil, nil); err == nil {
		t.Error("server certificate without names issued")
	}
}
