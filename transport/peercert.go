package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"

	piondtls "github.com/pion/dtls/v3"

	"github.com/sensible-iot/sensible/device/identity"
)

// PeerCertificates returns the certificate chain, device certificate
// first, with which the device of a handler's request authenticated: the
// chain it presented in the DTLS or TLS handshake of the request's
// session, which the server verified against ServerConfig.DeviceRoots.
// It returns nil when the device authenticated otherwise (a pre-shared
// key, a token), when the chain names a device other than the one the
// session now belongs to, and for a context that is not a handler's.
//
// A cloud that admits devices it does not know yet by their
// manufacturer chain (zero-touch) registers each one's key from it.
func PeerCertificates(ctx context.Context) []*x509.Certificate {
	ss, ok := ctx.Value(sessionKey{}).(*session)
	if !ok {
		return nil
	}
	dev := ss.get()
	if dev.IsZero() {
		return nil
	}
	nc, ok := ss.conn.(interface{ NetConn() net.Conn })
	if !ok {
		return nil
	}
	var chain []*x509.Certificate
	switch c := nc.NetConn().(type) {
	case *piondtls.Conn:
		st, ok := c.ConnectionState()
		if !ok {
			return nil
		}
		for _, raw := range st.PeerCertificates {
			cert, err := x509.ParseCertificate(raw)
			if err != nil {
				return nil
			}
			chain = append(chain, cert)
		}
	case *tcpConn:
		tc, ok := c.Conn.(*tls.Conn)
		if !ok {
			return nil
		}
		chain = tc.ConnectionState().PeerCertificates
	}
	if len(chain) == 0 {
		return nil
	}
	if id, err := identity.IDFromPublicKey(chain[0].PublicKey); err != nil || id != dev {
		return nil
	}
	return chain
}
