package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"time"
)

// URIPrefix starts the URI subject alternative name of a device
// certificate; the device ID follows it.
const URIPrefix = "urn:sensible:device:"

// Default certificate lifetimes. Devices outlive most certificates, so
// device certificates default to the product's service life.
const (
	// DefaultRootValidity is the lifetime of a manufacturer root: 30 years.
	DefaultRootValidity = 30 * 365 * 24 * time.Hour
	// DefaultIntermediateValidity is the lifetime of an intermediate: 25 years.
	DefaultIntermediateValidity = 25 * 365 * 24 * time.Hour
	// DefaultDeviceValidity is the lifetime of a device certificate: 20
	// years, capped at its issuer's.
	DefaultDeviceValidity = 20 * 365 * 24 * time.Hour
)

// CertOptions tunes a certificate being issued. A nil *CertOptions, and
// every zero field, means the default.
type CertOptions struct {
	// NotBefore is the start of validity; zero means now minus one hour
	// (to tolerate devices whose clocks run a little behind).
	NotBefore time.Time
	// Validity is how long the certificate lasts from NotBefore; zero
	// means the default for the certificate's kind.
	Validity time.Duration
	// Organization goes into the subject's O attribute.
	Organization string
}

func (o *CertOptions) window(def time.Duration) (time.Time, time.Time) {
	var nb time.Time
	v := def
	if o != nil {
		nb = o.NotBefore
		if o.Validity > 0 {
			v = o.Validity
		}
	}
	if nb.IsZero() {
		nb = time.Now().Add(-time.Hour)
	}
	nb = nb.UTC().Truncate(time.Second)
	return nb, nb.Add(v)
}

func (o *CertOptions) org() []string {
	if o == nil || o.Organization == "" {
		return nil
	}
	return []string{o.Organization}
}

// A CA is a certificate authority of a manufacturing chain: the
// manufacturer's root, or an intermediate (one per factory or product line,
// as Matter's PAA signs PAIs that sign device certificates). Signer may
// live in an HSM.
type CA struct {
	Cert   *x509.Certificate // the CA's own certificate
	Signer crypto.Signer     // the CA's private key
}

// NewRootCA creates a self-signed manufacturer root that may sign one
// level of intermediates.
func NewRootCA(signer crypto.Signer, commonName string, opts *CertOptions) (*CA, error) {
	if _, err := TypeOf(signer.Public()); err != nil {
		return nil, err
	}
	nb, na := opts.window(DefaultRootValidity)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: opts.org()},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	return selfOrIssue(tmpl, nil, signer)
}

// NewIntermediate creates an intermediate CA under ca that may sign device
// certificates only.
func (ca *CA) NewIntermediate(signer crypto.Signer, commonName string, opts *CertOptions) (*CA, error) {
	if _, err := TypeOf(signer.Public()); err != nil {
		return nil, err
	}
	nb, na := opts.window(DefaultIntermediateValidity)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: opts.org()},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	return selfOrIssue(tmpl, ca, signer)
}

func selfOrIssue(tmpl *x509.Certificate, parent *CA, signer crypto.Signer) (*CA, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	pub := signer.Public()
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, wrap(ErrUnsupportedKey, "%v", err)
	}
	ski := sha256.Sum256(spki)
	tmpl.SubjectKeyId = ski[:20]
	parentCert, parentSigner := tmpl, signer
	if parent != nil {
		parentCert, parentSigner = parent.Cert, parent.Signer
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, pub, parentSigner)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Signer: signer}, nil
}

// NewCSR returns a DER certificate signing request for the device key
// behind signer, naming its device ID. A device makes one on the factory
// line; its private key never leaves it.
func NewCSR(signer crypto.Signer) ([]byte, error) {
	id, err := IDOf(signer)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(URIPrefix + id.String())
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: id.String()},
		URIs:    []*url.URL{u},
	}, signer)
}

// IssueDevice checks a DER certificate signing request and issues a device
// certificate for its key: the device ID (derived from the key, whatever the
// request claims) as subject common name and as a URI SAN, key usage
// digital signature, extended key usage client authentication. A request
// whose signature fails, whose key type is unsupported, or that names a
// different device ID is refused.
func (ca *CA) IssueDevice(csrDER []byte, opts *CertOptions) (*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, wrap(ErrMalformedCSR, "%v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, wrap(ErrMalformedCSR, "%v", err)
	}
	id, err := IDFromPublicKey(csr.PublicKey)
	if err != nil {
		return nil, err
	}
	if cn := csr.Subject.CommonName; cn != "" {
		claimed, err := ParseID(cn)
		if err != nil || claimed != id {
			return nil, wrap(ErrIDMismatch, "request names %q but its key is %s", cn, id)
		}
	}
	u, _ := url.Parse(URIPrefix + id.String())
	return ca.issueLeaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: id.String(), Organization: opts.org()},
		URIs:        []*url.URL{u},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, csr.PublicKey, opts)
}

// issueLeaf completes tmpl as an end-entity certificate (serial, validity
// capped at the issuer's, key usage digital signature, not a CA) and
// issues it for pub.
func (ca *CA) issueLeaf(tmpl *x509.Certificate, pub crypto.PublicKey, opts *CertOptions) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	nb, na := opts.window(DefaultDeviceValidity)
	if na.After(ca.Cert.NotAfter) {
		na = ca.Cert.NotAfter
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = nb, na
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// IssueServer issues a TLS server certificate for a cloud endpoint: the
// key pub, the names in hosts (DNS names or IP addresses) as subject
// alternative names, extended key usage server authentication. Devices
// trust the cloud through the CA that signs these, which need not be the
// manufacturer's.
func (ca *CA) IssueServer(pub crypto.PublicKey, hosts []string, opts *CertOptions) (*x509.Certificate, error) {
	if _, err := TypeOf(pub); err != nil {
		return nil, err
	}
	if len(hosts) == 0 {
		return nil, errors.New("identity: a server certificate needs at least one host name or address")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0], Organization: opts.org()},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issueLeaf(tmpl, pub, opts)
}

func randomSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	b[0] &= 0x7f
	b[0] |= 0x40 // positive and always 16 bytes
	return new(big.Int).SetBytes(b), nil
}

// VerifyChain checks a device certificate chain at time at: chain[0] is the
// device certificate, the rest intermediates, and roots holds the trusted
// manufacturer roots. It checks signatures up to a root, validity dates of
// every certificate, CA constraints and key usage, that the device
// certificate may sign and authenticate a client, and that the device ID in
// its subject and URI SAN is the one derived from its key. It returns that
// ID.
//
// Errors match ErrCertExpired, ErrCertNotYetValid, ErrUntrustedChain,
// ErrKeyUsage, ErrNotDeviceCert, ErrIDMismatch or ErrUnsupportedKey.
func VerifyChain(chain []*x509.Certificate, roots *x509.CertPool, at time.Time) (ID, error) {
	if len(chain) == 0 || chain[0] == nil {
		return ID{}, wrap(ErrUntrustedChain, "empty chain")
	}
	leaf := chain[0]
	for _, c := range chain {
		if c == nil {
			return ID{}, wrap(ErrUntrustedChain, "nil certificate in chain")
		}
		if at.Before(c.NotBefore) {
			return ID{}, wrap(ErrCertNotYetValid, "%q valid from %s", c.Subject.CommonName, c.NotBefore.Format(time.RFC3339))
		}
		if at.After(c.NotAfter) {
			return ID{}, wrap(ErrCertExpired, "%q expired %s", c.Subject.CommonName, c.NotAfter.Format(time.RFC3339))
		}
	}
	if leaf.IsCA {
		return ID{}, wrap(ErrKeyUsage, "device certificate is a CA")
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return ID{}, wrap(ErrKeyUsage, "device certificate key usage lacks digitalSignature")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if !c.IsCA || (c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0) {
			return ID{}, wrap(ErrKeyUsage, "%q may not sign certificates", c.Subject.CommonName)
		}
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return ID{}, classifyVerifyError(err, at)
	}
	id, err := IDFromPublicKey(leaf.PublicKey)
	if err != nil {
		return ID{}, err
	}
	if err := checkCertNamesID(leaf, id); err != nil {
		return ID{}, err
	}
	return id, nil
}

// checkCertNamesID requires the subject CN and exactly one URI SAN with the
// device prefix, both naming id.
func checkCertNamesID(c *x509.Certificate, id ID) error {
	cn, err := parseCanonicalID(c.Subject.CommonName)
	if err != nil {
		return wrap(ErrNotDeviceCert, "subject common name %q is not a device ID", c.Subject.CommonName)
	}
	if cn != id {
		return wrap(ErrIDMismatch, "subject names %s but the key is %s", cn, id)
	}
	found := 0
	for _, u := range c.URIs {
		s := u.String()
		if len(s) < len(URIPrefix) || s[:len(URIPrefix)] != URIPrefix {
			continue
		}
		found++
		sid, err := parseCanonicalID(s[len(URIPrefix):])
		if err != nil {
			return wrap(ErrNotDeviceCert, "URI SAN %q is not a device ID", s)
		}
		if sid != id {
			return wrap(ErrIDMismatch, "URI SAN names %s but the key is %s", sid, id)
		}
	}
	if found != 1 {
		return wrap(ErrNotDeviceCert, "want one %s URI SAN, found %d", URIPrefix, found)
	}
	return nil
}

func classifyVerifyError(err error, verifyTime time.Time) error {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		switch inv.Reason {
		case x509.Expired:
			if inv.Cert != nil && verifyTime.Before(inv.Cert.NotBefore) {
				return wrap(ErrCertNotYetValid, "%v", err)
			}
			return wrap(ErrCertExpired, "%v", err)
		case x509.IncompatibleUsage, x509.NotAuthorizedToSign, x509.TooManyIntermediates, x509.CANotAuthorizedForThisName:
			return wrap(ErrKeyUsage, "%v", err)
		}
	}
	return wrap(ErrUntrustedChain, "%v", err)
}
