package transport

// Hostile-peer tests of the coaps:// listener (dtlslisten.go), over real
// DTLS on 127.0.0.0/8. They are sized for CI (a few seconds each); the
// full-size run is
//
//	SENSIBLE_HOSTILE_FULL=1 go test -run TestHostileDTLS -timeout 10m ./transport
//
// Wrong keys and bad certificates are refused by TestDTLSWrongKey and
// TestBadDeviceCertificate; TestHostileDTLSRefusedHandshakeFreesSlots
// checks that such a refusal gives back what it took.

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	dtlsnet "github.com/pion/dtls/v3/pkg/net"

	"github.com/sensible-iot/sensible/device/identity"
)

// pskHandshake runs a DTLS-PSK client handshake with identity hint and key.
func pskHandshake(ctx context.Context, addr, hint string, key []byte) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	dc, err := piondtls.ClientWithOptions(dtlsnet.PacketConnFromConn(nc), nc.RemoteAddr(),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
		piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		piondtls.WithPSKIdentityHint([]byte(hint)),
		piondtls.WithLoggerFactory(silentLogs{}))
	if err != nil {
		return err
	}
	defer dc.Close()
	return dc.HandshakeContext(ctx)
}

// TestHostileDTLSNonCanonicalPSKIdentity: a PSK identity must be the
// device ID exactly as ID.String writes it; another spelling that ParseID
// would forgive (lower case, separators, look-alike letters) is refused
// before the key is looked up, so one device has one name.
func TestHostileDTLSNonCanonicalPSKIdentity(t *testing.T) {
	var lookups atomic.Int32
	f := newFixture(t, "coaps", ServerConfig{PSK: func(_ context.Context, id identity.ID) ([]byte, error) {
		lookups.Add(1)
		return DerivePSK(fleetSecret, id)
	}})
	addr := strings.TrimPrefix(f.url, "coaps://")
	key, err := DerivePSK(fleetSecret, f.dev)
	must(t, err)
	canon := f.dev.String()
	spellings := map[string]string{
		"lower case": strings.ToLower(canon),
		"hyphens":    canon[:9] + "-" + canon[9:18] + "-" + canon[18:],
		"space":      " " + canon,
	}
	if i := strings.IndexAny(canon, "01"); i >= 0 {
		alias := map[byte]string{'0': "O", '1': "I"}[canon[i]]
		spellings["look-alike"] = canon[:i] + alias + canon[i+1:]
	}
	for name, hint := range spellings {
		t.Run(name, func(t *testing.T) {
			if id, err := identity.ParseID(hint); err != nil || id != f.dev {
				t.Fatalf("ParseID(%q) = %v, %v: the spelling is not the device", hint, id, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := pskHandshake(ctx, addr, hint, key); err == nil {
				t.Fatalf("handshake with identity %q succeeded", hint)
			}
		})
	}
	if n := lookups.Load(); n != 0 {
		t.Fatalf("the key was looked up %d times for non-canonical identities", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := pskHandshake(ctx, addr, canon, key); err != nil {
		t.Fatalf("canonical identity: %v", err)
	}
	// The device itself, through the Client, is served.
	c := f.dial(t, true)
	must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))
}
