package cloud

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/transport"
)

var testFleetSecret = []byte("a fleet secret for the cloud tests, 32+ bytes")

// testNode starts a node on SQLite in a temporary directory, with one
// product model.
func testNode(t *testing.T) *Node {
	t.Helper()
	ctx := context.Background()
	n, err := New(ctx, Config{Dir: t.TempDir(), FleetSecret: testFleetSecret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Store().AddModel(ctx, store.Model{ID: "acme-aircon-x1", Name: "Acme Aircon X1"}); err != nil {
		t.Fatal(err)
	}
	return n
}

func newDeviceKey(t *testing.T) (crypto.Signer, identity.ID) {
	t.Helper()
	k, err := identity.GenerateKey(identity.P256)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := identity.IDOf(k)
	return k, id
}

// serverRoots trusts the node's certificate.
func serverRoots(n *Node) *x509.CertPool {
	pool := x509.NewCertPool()
	chain := n.Certificate().Certificate
	root, _ := x509.ParseCertificate(chain[len(chain)-1])
	pool.AddCert(root)
	return pool
}

// TestNodeAuthorizesAgainstTheRegistry: a device from the factory's list
// gets in with its PSK and with a token; one the registry does not know
// does not, whatever it presents; suspending a device closes its session
// and refuses it from then on.
func TestNodeAuthorizesAgainstTheRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := testNode(t)
	psURL, err := n.Listen("coaps://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpURL, err := n.Listen("coaps+tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key, id := newDeviceKey(t)
	if _, err := n.ImportDevice(ctx, ImportedDevice{Key: key.Public(), Model: "acme-aircon-x1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.ImportDevice(ctx, ImportedDevice{Key: key.Public(), Model: "acme-aircon-x1"}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("imported twice: %v, want ErrConflict", err)
	}
	if _, err := n.ImportDevice(ctx, ImportedDevice{Key: key.Public(), Model: "no-such-model"}); err == nil {
		t.Fatal("imported a device of an unknown model")
	}
	psk, _ := transport.DerivePSK(testFleetSecret, id)
	dialPSK := func(psk []byte, id identity.ID) (*transport.Client, error) {
		return transport.Dial(ctx, psURL, transport.ClientConfig{PSK: psk, Device: id, Retry: transport.RetryPolicy{Attempts: 1, Timeout: 3 * time.Second}})
	}
	dialToken := func(k crypto.Signer) (*transport.Client, error) {
		return transport.Dial(ctx, tcpURL, transport.ClientConfig{Signer: k, Audience: DefaultTokenAudience, ServerRoots: serverRoots(n), Retry: transport.RetryPolicy{Attempts: 1, Timeout: 3 * time.Second}})
	}
	c, err := dialPSK(psk, id)
	if err != nil {
		t.Fatalf("imported device over DTLS-PSK: %v", err)
	}
	defer c.Close()
	if _, _, err := c.GetRaw(ctx, "/.well-known/core"); err != nil {
		t.Fatal(err)
	}
	tc, err := dialToken(key)
	if err != nil {
		t.Fatalf("imported device with a token over TLS: %v", err)
	}
	defer tc.Close()

	strangerKey, stranger := newDeviceKey(t)
	strangerPSK, _ := transport.DerivePSK(testFleetSecret, stranger)
	if c, err := dialPSK(strangerPSK, stranger); err == nil {
		c.Close()
		t.Fatal("a device not in the registry got in with a PSK derived from the fleet secret")
	}
	if c, err := dialToken(strangerKey); err == nil {
		c.Close()
		t.Fatal("a device not in the registry got in with a token")
	}

	if err := n.SetStanding(ctx, id, store.Suspended, "test"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.GetRaw(ctx, "/.well-known/core"); err == nil {
		t.Fatal("the suspended device's DTLS session still answers")
	}
	if c2, err := dialPSK(psk, id); err == nil {
		c2.Close()
		t.Fatal("a suspended device got in again")
	}
	if c2, err := dialToken(key); err == nil {
		c2.Close()
		t.Fatal("a suspended device got in again with a token")
	}
	if err := n.SetStanding(ctx, id, store.Active, "test"); err != nil {
		t.Fatal(err)
	}
	c3, err := dialPSK(psk, id)
	if err != nil {
		t.Fatalf("reactivated device: %v", err)
	}
	c3.Close()
}

// TestConsentLogKeyInDir: a node on a directory makes the consent log's
// key there on first start, readable by its owner only, and signs with
// the same key after a restart, so earlier receipts still verify.
func TestConsentLogKeyInDir(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	n, err := New(ctx, Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	first := n.ConsentLogKey()
	r, err := n.ConsentLog().Append(ctx, []byte("an entry"))
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	fi, err := os.Stat(filepath.Join(dir, ConsentLogKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, fi.Mode())
	}
	n, err = New(ctx, Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.ConsentLogKey() != first {
		t.Fatal("the consent log's key changed across a restart")
	}
	if err := consent.VerifyReceipt(r, []byte("an entry"), n.ConsentLogKey()); err != nil {
		t.Fatal(err)
	}
	again, err := n.ConsentLog().Append(ctx, []byte("an entry"))
	if err != nil || again.Index != r.Index {
		t.Fatalf("the entry logged again at %v (%v), first at %d", again, err, r.Index)
	}
}
